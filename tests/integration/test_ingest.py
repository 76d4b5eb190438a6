"""Group commit: meter-only batches, many piles in one transaction, newest reading wins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from core.charging.tables import Charge, MeterSample
from core.piles.tables import PileEvent
from tests.support.journey import PileClient, WebRider, button
from tests.support.server import Running, seed_city
from tests.support.settings import PILE_SECRET


async def _started_charge(server: Running, pile: PileClient, port: int) -> tuple[str, datetime]:
    now = datetime.now(UTC)
    await pile.post([pile.event("heartbeat", now)])
    rider = WebRider(server.http, server.url)
    card = await rider.say(f"/start port_{pile.pile_id}-{port:02d}")
    await rider.press(button(card, "start:"))
    cmd = [c for c in await pile.commands() if c["port"] == port][0]
    await pile.post([pile.event("session_started", now, port=port, session=cmd["session"])])
    return cmd["session"], now


async def test_meter_only_batches_update_the_live_reading_and_keep_the_newest(
    server: Running,
) -> None:
    await seed_city(server.ctx, ports=2)
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
    ref, t0 = await _started_charge(server, pile, 1)
    for minute, power in ((1, 210.0), (3, 230.0)):
        await pile.post([pile.event("meter", t0 + timedelta(minutes=minute), port=1,
                                    session=ref, power_w=power, energy_wh=minute * 4)])
    # An older reading arriving late is stored but does not replace the newer one.
    await pile.post([pile.event("meter", t0 + timedelta(minutes=2), port=1, session=ref,
                                power_w=999.0, energy_wh=8)])
    async with server.ctx.sm() as s:
        charge = (await s.execute(select(Charge))).scalars().one()
        samples = await s.scalar(select(func.count()).select_from(MeterSample))
    assert charge.state == "started"
    assert (charge.last_power_w, charge.last_energy_wh) == (230.0, 12)
    assert samples == 3


async def test_many_piles_at_once_share_transactions_and_lose_nothing(server: Running) -> None:
    specs = await seed_city(server.ctx, piles_n=12, ports=2)
    clients = [PileClient(server.http, server.url, pid, secret) for pid, secret, _ in specs]
    now = datetime.now(UTC)

    async def burst(c: PileClient) -> None:
        for i in range(10):
            await c.post([c.event("heartbeat", now + timedelta(seconds=i), signal_dbm=20 + i),
                          c.event("port_status", now + timedelta(seconds=i), port=1,
                                  status="idle")])

    await asyncio.gather(*(burst(c) for c in clients))
    # Again, all of it: every event is a duplicate now.
    for c in clients:
        c.seq = 0
    answers = await asyncio.gather(*(c.post([c.event("heartbeat", now)]) for c in clients))
    assert all(a["duplicates"] == 1 and a["accepted"] == 0 for a in answers)
    async with server.ctx.sm() as s:
        stored = await s.scalar(select(func.count()).select_from(PileEvent))
    assert stored == 12 * 10 * 2
    from bot.piles.ingest import WRITER

    writer = server.app[WRITER]
    assert writer.requests >= 12 * 11 and writer.groups <= writer.requests
