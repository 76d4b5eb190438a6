"""Value-added services (ISSUE 7, part): a mobile van that moves with its timetable, temporary
sites that open and close on their dates, battery lockers, tool kits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.scheduler import site_schedules
from core.db import transaction
from core.piles import fleet as piles
from core.piles.nearby import nearest_free
from core.piles.tables import Pile, PileCommand, Site
from tests.support.journey import PileClient, WebRider, button
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings

# Monday 2031-03-17 09:00 in Shanghai.
MONDAY_9 = datetime(2031, 3, 17, 1, 0, tzinfo=UTC)
TIMETABLE = [
    {"days": ["mon", "wed"], "from": "08:00", "to": "11:00", "lat": 30.30, "lon": 120.20,
     "place": "下沙地铁站B口"},
    {"days": ["mon"], "from": "14:00", "to": "17:00", "lat": 30.31, "lon": 120.21,
     "place": "金沙湖公园"},
]


async def test_van_follows_its_timetable_and_temporary_sites_their_dates(db_url: str) -> None:
    clock = {"now": MONDAY_9}
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=lambda: clock["now"]) as server:
        async with transaction(server.ctx.sm) as s:
            await piles.add_site(s, "VAN1", "移动充电车", 30.0, 120.0, kind="van")
            await piles.add_site(s, "TMP1", "音乐节临时充电点", 30.40, 120.30, kind="temporary")
            await s.flush()
            (await s.get(Site, "VAN1")).timetable = TIMETABLE  # type: ignore[union-attr]
            tmp = await s.get(Site, "TMP1")
            tmp.active_from = MONDAY_9 + timedelta(days=2)  # type: ignore[union-attr]
            tmp.active_until = MONDAY_9 + timedelta(days=4)  # type: ignore[union-attr]
            await piles.add_pile(s, "VAN1", "P0901", 2, secret="v")
            await piles.add_pile(s, "TMP1", "P0902", 2, secret="t")
            for p in ("P0901", "P0902"):
                (await s.get(Pile, p)).online = True  # type: ignore[union-attr]

        async def near(lat: float, lon: float) -> list[str]:
            async with server.ctx.sm() as s:
                return [n.pile_id for n in await nearest_free(s, lat, lon, 5)]

        await site_schedules(server.ctx)
        assert await near(30.30, 120.20) == ["P0901"]  # the van is at its morning stop
        assert "P0902" not in await near(30.40, 120.30)  # the festival site opens Wednesday
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        card = (await rider.say("P0901-01"))[0]["text"]
        assert "here (下沙地铁站B口) until 11:00" in card and "金沙湖公园" in card

        clock["now"] = MONDAY_9 + timedelta(hours=3)  # 12:00: between stops
        await site_schedules(server.ctx)
        assert await near(30.30, 120.20) == []
        clock["now"] = MONDAY_9 + timedelta(hours=6)  # 15:00: the afternoon stop
        await site_schedules(server.ctx)
        assert await near(30.31, 120.21) == ["P0901"]
        async with server.ctx.sm() as s:
            van = await s.get(Pile, "P0901")
        assert van is not None and (van.lat, van.lon) == (30.31, 120.21)

        clock["now"] = MONDAY_9 + timedelta(days=2, hours=1)
        await site_schedules(server.ctx)
        assert "P0902" in await near(30.40, 120.30)
        clock["now"] = MONDAY_9 + timedelta(days=4)
        await site_schedules(server.ctx)
        assert "P0902" not in await near(30.40, 120.30)


async def test_locker_opens_for_its_rider_and_locks_after_the_charge(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2)
        async with transaction(server.ctx.sm) as s:
            (await s.get(Pile, "P0001")).lockers = True  # type: ignore[union-attr]
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        now = datetime.now(UTC)
        await pile.post([pile.event("heartbeat", now)])
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        await rider.press(button(await rider.say("P0001-01"), "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        await pile.post([pile.event("session_started", now, port=1, session=ref)])
        status = await rider.say("/status")
        opened = await rider.press(button(status, "locker:"))
        assert "opening" in opened[0]["text"]
        other = WebRider(server.http, server.url)
        await other.press("lang:en")
        assert "Only your own" in (await other.press(button(status, "locker:")))[0]["text"]
        await pile.post([pile.event("session_ended", now + timedelta(minutes=30), port=1,
                                    session=ref, reason="user", energy_wh=100,
                                    duration_s=1800)])
        async with server.ctx.sm() as s:
            kinds = [(c.type, c.port) for c in (await s.execute(
                select(PileCommand).order_by(PileCommand.id))).scalars()]
        assert kinds == [("start", 1), ("unlock", 1), ("lock", 1)]


async def test_tool_kits_borrow_and_return(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2)
        async with transaction(server.ctx.sm) as s:
            (await s.get(Site, "T01")).tool_kits = 1  # type: ignore[union-attr]
        a, b = (WebRider(server.http, server.url) for i in (1, 2))
        for r in (a, b):
            await r.press("lang:en")
        card = await a.say("P0001-01")
        assert "Tool kits to borrow: 1 of 1" in card[0]["text"]
        assert "Take a tool kit" in (await a.press(button(card, "tool:borrow:")))[0]["text"]
        assert "already have" in (await a.press("tool:borrow:T01"))[0]["text"]
        assert "all tool kits here are out" in (await b.press("tool:borrow:T01"))[0]["text"]
        assert "back" in (await a.press("tool:return"))[0]["text"]
        assert "Take a tool kit" in (await b.press("tool:borrow:T01"))[0]["text"]
        assert "no tool kit" in (await a.press("tool:return"))[0]["text"]
