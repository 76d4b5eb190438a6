"""No fault code reaches a person raw (issue 18 finding 6: a work order read
"故障：reported_damaged（警告）")."""

from __future__ import annotations

import re

import pytest

from bot.handlers.staff import cause_name, causes_text
from core.support.tickets import PROBLEMS

CODES = ["overload", "over_temperature", "over_voltage", "under_voltage", "leakage",
         "short_circuit", "relay_stuck", "relay_open", "meter_fault", "comm_loss", "power_loss",
         "smoke", "flooding", "door_open", "interrupted", "offline", "meter_backwards",
         "impossible_power", "predicted_wear", *[f"reported_{p}" for p in PROBLEMS]]
SNAKE = re.compile(r"[a-z]+_[a-z_]+")


@pytest.mark.parametrize("code", CODES)
def test_every_code_has_words_in_chinese(code: str) -> None:
    name = cause_name("zh_CN", code)
    assert not SNAKE.search(name) and not re.search(r"[a-z]{3,}", name), name


def test_a_riders_report_is_named_by_its_problem() -> None:
    assert cause_name("zh_CN", "reported_damaged") == "骑手报修：插座损坏"
    assert cause_name("en", "reported_no_power") == "reported by a rider: no power"
    assert causes_text("en", "overload,reported_dirty") == (
        "overload, reported by a rider: dirty or blocked")


def test_codes_from_the_wire_are_labelled_not_shown_bare() -> None:
    assert cause_name("zh_CN", "ocpp_OtherError_E07") == "充电桩报错 OtherError_E07"
    assert cause_name("en", "vendor_x1") == "fault code vendor_x1"
