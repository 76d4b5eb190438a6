"""/spent: what this month's charging cost, in one message — the example command of
docs/architecture.md (one handler, one core function, the catalogs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from core.charging.tables import Charge
from core.db import transaction
from core.piles.tables import Port
from tests.support.journey import PileClient, button, english_rider_and_id
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings

# 2031-03-17 09:00 in Shanghai, mid-month: the charges below stay in March.
NOW = datetime(2031, 3, 17, 1, 0, tzinfo=UTC)


async def test_spent_adds_up_this_months_charges_and_says_what_is_due(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False}, billing={"tariffs": {"hour": {
        "mode": "time", "fen_per_hour": 600, "unit_minutes": 1, "free_minutes": 0}},
        "default_tariff": "hour"})
    async with start_server(settings, clock=lambda: NOW) as server:
        await seed_city(server.ctx, ports=2, tariff="hour")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", NOW)])
        rider, rider_id = await english_rider_and_id(server)
        assert "No charges yet in 2031-03" in (await rider.say("/spent"))[0]["text"]
        assert "/spent — this month's charging and its cost" in (
            await rider.say("/help"))[0]["text"]

        await rider.press(button(await rider.say("/wallet"), "topup:1000"))
        await rider.press(button(await rider.say("P0001-01"), "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        await pile.run_charge(1, ref, NOW - timedelta(hours=3), 60, power_w=300)
        await rider.wait_message("🧾")
        # ¥6 of the ¥10 paid the first hour; the second hour's bill is partly due.
        await rider.press(button(await rider.say("P0001-02"), "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        await pile.run_charge(2, ref, NOW - timedelta(hours=2), 60, power_w=400)
        await rider.wait_message("🧾")

        async with server.ctx.sm() as s:
            charges = list((await s.execute(select(Charge).where(
                Charge.rider_id == rider_id))).scalars())
        billed = sum(c.amount_fen for c in charges)
        due = sum(c.amount_fen - c.paid_fen for c in charges)
        assert len(charges) == 2 and due > 0

        text = (await rider.say("/spent"))[0]["text"]
    energy = sum(c.energy_wh or 0 for c in charges) / 1000
    assert f"2031-03: 2 charges, {energy:.2f} kWh, ¥{billed // 100}.{billed % 100:02d}" in text
    assert f"Still to pay: ¥{due // 100}.{due % 100:02d}" in text
    assert "2031-02" not in text  # nothing last month, so no comparison line


async def test_a_month_is_the_services_calendar_month_and_last_month_is_shown_beside(
        db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=lambda: NOW) as server:
        await seed_city(server.ctx, ports=2)
        rider, rider_id = await english_rider_and_id(server)
        async with transaction(server.ctx.sm) as s:
            port = (await s.execute(select(Port).where(Port.number == 1))).scalars().first()
            assert port is not None and port.id is not None

            def closed(ended: datetime, fen: int, refunded: int = 0) -> Charge:
                return Charge(rider_id=rider_id, port_id=port.id, pile_id=port.pile_id,
                              port_number=1, port_code="P0001-01", site_id="T01",
                              state="settled", started_at=ended - timedelta(hours=1),
                              ended_at=ended, energy_wh=500, amount_fen=fen, paid_fen=fen,
                              refunded_fen=refunded)

            s.add_all([
                # 2031-03-01 00:30 in Shanghai is still February in UTC: it counts in March.
                closed(datetime(2031, 2, 28, 16, 30, tzinfo=UTC), 120, refunded=30),
                # 2031-02-28 23:30 in Shanghai: February.
                closed(datetime(2031, 2, 28, 15, 30, tzinfo=UTC), 250),
                closed(datetime(2031, 1, 31, 15, 30, tzinfo=UTC), 999),  # January: neither
            ])
        text = (await rider.say("/spent"))[0]["text"]
    assert "2031-03: 1 charge, 0.50 kWh, ¥1.20." in text
    assert "Refunded to you: ¥0.30." in text
    assert "2031-02: ¥2.50 in all." in text
    assert "Still to pay" not in text and "¥9.99" not in text
