"""Billing a charge announces it once (core.charging.lifecycle); what follows it subscribes."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.charging import lifecycle
from tests.support.journey import PileClient, WebRider, button
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


def test_the_app_wires_the_locker_the_survey_and_the_vouchers() -> None:
    # A fresh interpreter: what the app's own imports register, not what this test run did.
    out = subprocess.run(
        [sys.executable, "-c",
         "import bot.app\nfrom core.charging import lifecycle\n"
         "print(*(f.__module__ + '.' + f.__name__ for f in lifecycle.subscribers()))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert out == ["core.engagement.services.lock_after_charge",
                   "core.engagement.surveys.prompt_after_paid",
                   "core.engagement.vouchers.vouchers_after_paid"]


async def test_a_charge_is_announced_once_though_its_end_is_resent(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "_after_billed", list(lifecycle.subscribers()))
    heard: list[tuple[Any, ...]] = []

    @lifecycle.after_billed
    async def listen(session: Any, event: lifecycle.ChargeBilled) -> None:
        heard.append((event.charge.port_code, event.charge.state, event.charge.amount_fen))

    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2)
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        now = datetime.now(UTC)
        await pile.post([pile.event("heartbeat", now)])
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        await rider.press(button(await rider.say("P0001-02"), "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        await pile.post([pile.event("session_started", now, port=2, session=ref)])
        end = pile.event("session_ended", now + timedelta(minutes=40), port=2, session=ref,
                         reason="full", energy_wh=180, duration_s=2400)
        await pile.post([end])
        await pile.post([end])  # the same event resent
        await pile.post([{**end, "id": "resent-under-a-new-id"}])
    assert len(heard) == 1
    port, state, amount = heard[0]
    assert port == "P0001-02" and state in ("ended", "settled") and amount > 0
