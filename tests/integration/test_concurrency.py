"""Concurrent starts on one port: the database lets exactly one win, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from core.charging.tables import Charge
from core.db import transaction
from core.piles.tables import Pile, PileCommand
from tests.support.journey import WebRider
from tests.support.server import seed_city


async def test_fifty_riders_press_start_on_one_port_and_exactly_one_charges(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx, piles_n=3, ports=4)
    async with transaction(server.ctx.sm) as s:
        for pile in (await s.execute(select(Pile))).scalars():
            pile.online = True
            pile.last_seen_at = server.ctx.clock()
    riders = [WebRider(server.http, server.url) for _ in range(50)]
    # Every rider exists first, so the race is about the port and nothing else.
    await asyncio.gather(*(r.say("/start port_P0001-01") for r in riders))
    answers = await asyncio.gather(*(r.press("start:P0001-01") for r in riders))

    async with server.ctx.sm() as s:
        charges = (await s.execute(select(Charge))).scalars().all()
        starts = await s.scalar(select(func.count()).select_from(PileCommand)
                                .where(PileCommand.type == "start"))
    assert len(charges) == 1
    assert starts == 1
    winners = [a for a in answers if "⏳" in a[0]["text"]]
    losers = [a for a in answers if "⏳" not in a[0]["text"]]
    assert len(winners) == 1 and len(losers) == 49
    for replies in losers:
        # A friendly "port busy" plus the nearest alternatives, never the busy port itself.
        assert "P0001-01" in replies[0]["text"]
        alternatives = replies[1]
        piles_offered = [b["data"] for row in alternatives["buttons"] for b in row]
        assert piles_offered and all(d.startswith("pile:") for d in piles_offered)
        assert "pile:P0002" in piles_offered or "pile:P0003" in piles_offered
