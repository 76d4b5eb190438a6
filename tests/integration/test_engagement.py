"""Riders who come back (ISSUE 7, part): the year in charging as text and an image card, pushed
once in late December; their usual piles first on the menu."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy import func, insert, select

from bot.scheduler import annual_reports
from core.charging.tables import Charge
from core.db import transaction
from core.engagement import annual
from core.outbox import OutboxMessage
from core.piles.tables import Port
from core.riders.identities import rider_for
from tests.support.journey import WebRider
from tests.support.server import seed_city, start_server
from tests.support.settings import make_settings


def test_km_and_co2_estimates_follow_the_documented_factors() -> None:
    km, co2 = annual.estimate(10.0)
    assert km == pytest.approx(500.0)
    assert co2 == pytest.approx(500 * 0.058 - 10 * 0.5703)


async def test_my_year_text_card_push_and_usual_piles(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2031, 12, 28, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
    settings = make_settings(db_url, scheduler={"enabled": False},
                             support={"photo_dir": str(tmp_path)})
    async with start_server(settings, clock=lambda: now) as server:
        await seed_city(server.ctx, piles_n=2, ports=2)
        web = WebRider(server.http, server.url)
        await web.press("lang:en")
        async with transaction(server.ctx.sm) as s:
            rider = await rider_for(s, "webchat", web.client_id)
            ports = {(p.pile_id, p.number): p.id for p in (await s.execute(select(Port))).scalars()}
            rows = []
            # 4 charges at P0002, 1 at P0001 this year; 1 last year (not counted).
            for i, (pile, day) in enumerate([("P0002", 300), ("P0002", 320), ("P0002", 330),
                                             ("P0002", 340), ("P0001", 200), ("P0001", -40)]):
                ended = datetime(2031, 1, 1, 4, tzinfo=UTC) + timedelta(days=day)
                rows.append({"rider_id": rider.id, "port_id": ports[(pile, 1)],
                             "pile_id": pile, "port_number": 1, "port_code": f"{pile}-01",
                             "site_id": "T01", "state": "settled", "tariff": {},
                             "requested_at": ended - timedelta(hours=3),
                             "started_at": ended - timedelta(hours=3), "ended_at": ended,
                             "duration_s": 3 * 3600, "energy_wh": 800, "amount_fen": 75,
                             "paid_fen": 75, "refunded_fen": 0, "session_ref": f"A{i}"})
            await s.execute(insert(Charge), rows)
        reply = (await web.say("/myyear"))[0]
        assert "5 charges · 15 hours · 4.0 kWh · ¥3.75 spent" in reply["text"]
        assert "≈ 200 km ridden and 9 kg CO₂ avoided" in reply["text"]
        assert "测试小区车棚" in reply["text"]
        path = reply["photo_url"].split("/photos/", 1)[1]
        async with server.http.get(f"{server.url}/photos/{path}") as r:
            assert r.status == 200
            Image.open(io.BytesIO(await r.read())).verify()

        await annual_reports(server.ctx)
        await annual_reports(server.ctx)  # a second run adds nothing
        async with server.ctx.sm() as s:
            n = (await s.execute(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.kind == "annual_ready"))).scalar()
        assert n == 1
        await web.wait_message("is ready")

        menu = (await web.say("/menu"))[0]
        first_row = [b["data"] for b in menu["buttons"][0]]
        assert first_row == ["pile:P0002"]  # P0001 was more than 90 days ago


async def test_festival_red_packet_reaches_an_active_rider_once(db_url: str) -> None:
    from bot.scheduler import red_packets
    from core.billing import wallet
    from core.engagement.redpackets import festivals

    day = next(f.day for f in festivals(2031) if f.slug == "mid_autumn")
    now = datetime(day.year, day.month, day.day, 2, 30, tzinfo=UTC)  # 10:30 local: greet now
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=lambda: now) as server:
        await seed_city(server.ctx, ports=1)
        web = WebRider(server.http, server.url)
        await web.press("lang:en")
        idle = WebRider(server.http, server.url)
        await idle.press("lang:en")
        async with transaction(server.ctx.sm) as s:
            rider = await rider_for(s, "webchat", web.client_id)
            port = (await s.execute(select(Port))).scalars().first()
            ended = now - timedelta(days=10)
            await s.execute(insert(Charge), [{
                "rider_id": rider.id, "port_id": port.id, "pile_id": "P0001",  # type: ignore[union-attr]
                "port_number": 1, "port_code": "P0001-01", "site_id": "T01", "state": "settled",
                "tariff": {}, "requested_at": ended, "started_at": ended, "ended_at": ended,
                "amount_fen": 0, "paid_fen": 0, "refunded_fen": 0, "session_ref": "F1"}])
        await red_packets(server.ctx)
        await red_packets(server.ctx)  # again: nothing more
        async with server.ctx.sm() as s:
            balance = await wallet.balance(s, rider.id)  # type: ignore[arg-type]
            sent = (await s.execute(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.kind == "red_packet"))).scalar()
        assert 100 <= balance <= 200 and sent == 1
        msg = await web.wait_message("Mid-Autumn")
        assert "red packet" in msg["text"]
        assert idle.inbox == []


async def test_broadcasts_reach_rider_groups_once_and_offpeak_reminders_are_opt_in(
        db_url: str, fakes: tuple) -> None:
    from bot.scheduler import community_broadcasts, offpeak_reminders
    from core.engagement import broadcasts
    from tests.support.settings import all_skins_settings

    tg, wx = fakes
    group = -1_002_000_000_777
    monday_evening = datetime(2031, 3, 17, 11, 30, tzinfo=UTC)  # 19:30 local
    clock = {"now": monday_evening}
    settings = all_skins_settings(db_url, tg, wx, scheduler={"enabled": False},
                                  support={"rider_groups": [group]})
    async with start_server(settings, clock=lambda: clock["now"]) as server:
        await seed_city(server.ctx, ports=1)
        async with transaction(server.ctx.sm) as s:
            await broadcasts.schedule(s, "今晚 22:00 起 T01 停电检修。", "T01: power works "
                                      "tonight from 22:00.", monday_evening - timedelta(minutes=1))
        await community_broadcasts(server.ctx)
        await community_broadcasts(server.ctx)  # again: nothing twice
        from tests.support.journey import wait_until

        await wait_until(lambda: len(tg.messages_to(group)) >= 2)
        texts = [m["text"] for m in tg.messages_to(group)]
        assert len(texts) == 2 and any("停电检修" in t for t in texts)
        assert any(t.startswith("🛡") for t in texts)  # the week's safety tip

        # Off-peak reminders: only riders who opted in and charge at the evening peak.
        web = WebRider(server.http, server.url)
        await web.press("lang:en")
        assert "On:" in (await web.say("/offpeak"))[0]["text"]
        async with transaction(server.ctx.sm) as s:
            rider = await rider_for(s, "webchat", web.client_id)
            port = (await s.execute(select(Port))).scalars().first()
            rows = []
            for i in range(3):
                start = datetime(2031, 3, 10 + i, 10, 0, tzinfo=UTC)  # 18:00 local
                rows.append({"rider_id": rider.id, "port_id": port.id, "pile_id": "P0001",  # type: ignore[union-attr]
                             "port_number": 1, "port_code": "P0001-01", "site_id": "T01",
                             "state": "settled", "tariff": {}, "requested_at": start,
                             "started_at": start, "ended_at": start + timedelta(hours=2),
                             "amount_fen": 0, "paid_fen": 0, "refunded_fen": 0,
                             "session_ref": f"O{i}"})
            await s.execute(insert(Charge), rows)
        clock["now"] = datetime(2031, 3, 17, 9, 0, tzinfo=UTC)  # 17:00 local
        await offpeak_reminders(server.ctx)
        await offpeak_reminders(server.ctx)
        msg = await web.wait_message("charging after 22:00")
        assert "80%" in msg["text"]
        async with server.ctx.sm() as s:
            n = (await s.execute(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.kind == "offpeak_reminder"))).scalar()
        assert n == 1
        assert "off" in (await web.say("/offpeak"))[0]["text"]
