"""A pile that stops heartbeating goes offline and drops out of search."""

from __future__ import annotations

from datetime import timedelta

from bot.scheduler import sweep_offline
from core.db import transaction
from core.piles.nearby import nearest_free
from core.piles.tables import Pile
from simulator import Fleet, PileSpec
from tests.support.journey import WebRider, wait_until
from tests.support.server import seed_city, start_server
from tests.support.settings import make_settings


async def _in_search(ctx, pile_id: str) -> bool:  # type: ignore[no-untyped-def]
    async with ctx.sm() as s:
        return pile_id in [n.pile_id for n in await nearest_free(s, 30.2781, 120.1141, 5)]


async def test_silent_pile_goes_offline_and_leaves_search(db_url: str) -> None:
    settings = make_settings(db_url, piles={"offline_after_s": 1},
                             scheduler={"offline_sweep_s": 0.1})
    async with start_server(settings) as server:
        specs = await seed_city(server.ctx, piles_n=2, ports=2)
        fleet = Fleet(server.url, [PileSpec(*s) for s in specs], heartbeat_s=0.2,
                      long_poll_s=0.3, speed=60, seed=3)
        await fleet.start()
        try:
            await wait_until(lambda: _in_search(server.ctx, "P0001"))
            await wait_until(lambda: _in_search(server.ctx, "P0002"))
            fleet.pause_heartbeats("P0001")
            await wait_until(lambda: _offline(server.ctx, "P0001"), timeout=10)
            assert not await _in_search(server.ctx, "P0001")
            assert await _in_search(server.ctx, "P0002")
            rider = WebRider(server.http, server.url)
            found = await rider.send(location={"lat": 30.2781, "lon": 120.1141})
            text = found["replies"][0]["text"]
            assert "P0002" in text and "P0001" not in text
            # Scanning the silent pile's port says so instead of offering Start.
            card = await rider.say("/start port_P0001-01")
            assert not any(b.get("data", "").startswith("start:")
                           for row in card[0]["buttons"] for b in row)
            # It comes back with its next heartbeat.
            fleet.resume_heartbeats("P0001")
            await wait_until(lambda: _in_search(server.ctx, "P0001"), timeout=10)
        finally:
            await fleet.stop()


async def _offline(ctx, pile_id: str) -> bool:  # type: ignore[no-untyped-def]
    async with ctx.sm() as s:
        pile = await s.get(Pile, pile_id)
        return pile is not None and not pile.online


async def test_offline_exactly_after_offline_after_s_by_the_clock(db_url: str) -> None:
    settings = make_settings(db_url, piles={"offline_after_s": 180},
                             scheduler={"enabled": False})
    async with start_server(settings) as server:
        await seed_city(server.ctx, piles_n=1, ports=2)
        seen = server.ctx.clock()
        async with transaction(server.ctx.sm) as s:
            pile = await s.get(Pile, "P0001")
            pile.online, pile.last_seen_at = True, seen
        server.ctx.clock = lambda: seen + timedelta(seconds=179)
        assert await sweep_offline(server.ctx) == []
        server.ctx.clock = lambda: seen + timedelta(seconds=181)
        assert await sweep_offline(server.ctx) == ["P0001"]
        assert not await _in_search(server.ctx, "P0001")
