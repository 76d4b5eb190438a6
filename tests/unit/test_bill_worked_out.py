"""The bill shows how it was worked out (issue 18 finding 7): minutes × rate, or energy × price,
and the minimum fee or cap when one applied."""

from __future__ import annotations

from typing import Any

from bot.handlers.text import bill_text, worked_out
from core.notices.charging import BillNotice


def _bill(**kw: Any) -> dict[str, Any]:
    return {"mode": "time", "duration_s": 81 * 60, "energy_wh": 300, "billable_minutes": 81,
            "free_minutes": 0, "off_peak_minutes": 0, "band_w": None, "tier_up_to_w": None,
            "fen_per_hour": 40, "amount_fen": 54, **kw}


def test_minutes_times_the_rate_in_both_languages() -> None:
    assert worked_out("zh_CN", _bill(), {}) == "81 分钟 × ¥0.40/小时 = ¥0.54"
    assert worked_out("en", _bill(), {}) == "81 min × ¥0.40/h = ¥0.54"


def test_the_minimum_fee_and_the_cap_are_named() -> None:
    assert worked_out("en", _bill(amount_fen=100), {}) == (
        "81 min × ¥0.40/h = ¥0.54 → minimum fee ¥1.00")
    assert worked_out("en", _bill(billable_minutes=600, amount_fen=300), {}) == (
        "600 min × ¥0.40/h = ¥4.00 → capped at ¥3.00")


def test_energy_times_the_price_per_kwh() -> None:
    bill = _bill(mode="energy", fen_per_hour=None, energy_wh=412.5, amount_fen=58)
    assert worked_out("en", bill, {"fen_per_kwh": 100, "service_fen_per_kwh": 40}) == (
        "0.41 kWh × ¥1.40/kWh = ¥0.58")


def test_no_line_when_nothing_was_billable_or_off_peak_minutes_apply() -> None:
    assert worked_out("en", _bill(billable_minutes=0, amount_fen=0), {}) is None
    assert worked_out("en", _bill(off_peak_minutes=20), {}) is None


def test_the_bill_carries_the_line() -> None:
    notice = BillNotice(charge_id=1, port="P0001-03", reason="full", bill=_bill(), paid=True,
                        balance_fen=946)
    text = bill_text("zh_CN", notice)
    assert "81 分钟 × ¥0.40/小时 = ¥0.54" in text and "¥9.46" in text


def test_dates_are_the_riders_calendar_days() -> None:
    """A plan bought at 23:30 Beijing time ends on a Beijing date, not on the UTC one."""
    from datetime import UTC, datetime

    from bot.handlers.text import local_day

    ends = datetime(2026, 3, 1, 16, 30, tzinfo=UTC)  # 2026-03-02 00:30 in Beijing
    assert local_day(ends, "Asia/Shanghai") == "03-02"
    assert local_day(ends.replace(tzinfo=None), "Asia/Shanghai") == "03-02"  # naive = UTC
    assert local_day(ends, "UTC", "%Y-%m-%d") == "2026-03-01"
