"""Plans and disputes through the chat: buy a plan, see it cover a bill, question a bill."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.i18n import tr
from core.charging.tables import Charge
from tests.support.journey import PileClient, WebRider, button
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


async def test_rider_buys_a_plan_it_covers_the_bill_and_a_dispute_is_recorded(
    db_url: str,
) -> None:
    settings = make_settings(db_url, billing={"tariffs": {"minute": {
        "mode": "time", "fen_per_hour": 60, "unit_minutes": 1, "free_minutes": 0}},
        "default_tariff": "minute"})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2, tariff="minute")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        now = datetime.now(UTC)
        await pile.post([pile.event("heartbeat", now)])
        rider = WebRider(server.http, server.url)
        wallet = await rider.say("/wallet")
        await rider.press(button(wallet, "topup:10000"))
        offer = await rider.say("/plans")
        assert "¥82.00" in offer[0]["text"]
        bought = await rider.press(button(offer, "plan:family_pack"))
        assert "✅" in bought[0]["text"]
        card = await rider.say("/start port_P0001-01")
        await rider.press(button(card, "start:"))
        cmd = (await pile.commands())[0]
        await pile.run_charge(1, cmd["session"], now - timedelta(hours=1), 30)
        bill = await rider.wait_message("🧾")
        assert tr("zh_CN", "− {amount} covered by your plan ({n} min)", amount="¥0.30",
                  n=30) in bill["text"]
        async with server.ctx.sm() as s:
            charge = (await s.execute(select(Charge))).scalars().one()
        assert charge.amount_fen == 0 and charge.state == "settled"
        plans = await rider.say("/plans")
        assert "239" in plans[0]["text"]  # 240 h − 30 min, whole hours left
        disputed = await rider.say("/dispute")
        assert "P0001-01" in disputed[0]["text"] and "24" in disputed[0]["text"]
        again = await rider.say("/dispute")  # one case per bill
        assert again[0]["text"] == disputed[0]["text"]
