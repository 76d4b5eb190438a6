"""Group commit: meter-only batches, many piles in one transaction, newest reading wins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.piles import ingest
from bot.piles.ingest import WRITER
from core.charging.tables import Charge, MeterSample
from core.piles.events import parse_batch
from core.piles.tables import PileEvent
from tests.support.journey import PileClient, WebRider, button, wait_until
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


async def test_a_busy_writer_holds_a_small_group_for_company_and_an_idle_one_does_not(
    server: Running,
) -> None:
    """While requests keep coming, a small group waits (up to `linger_s`) so that the next
    requests share its commit; a writer that has been idle commits a lone request at once."""
    specs = await seed_city(server.ctx, piles_n=3, ports=2)
    a, b, c = (PileClient(server.http, server.url, pid, secret) for pid, secret, _ in specs)
    writer = server.app[WRITER]
    now = datetime.now(UTC)
    await c.post([c.event("heartbeat", now)])  # the writer has committed: it is "busy" ...
    # ... for an hour after, with a long linger, and a pair is big enough to go.
    writer.busy_gap_s, writer.linger_s, writer.linger_until = 3600.0, 60.0, 2
    groups, requests = writer.groups, writer.requests
    first = asyncio.create_task(
        writer.submit(a.pile_id, parse_batch({"events": [a.event("heartbeat", now)]})))
    await asyncio.sleep(0)  # submit() has queued A and waits for its answer
    await wait_until(writer.queue.empty)  # the writer took A ...
    assert not first.done()  # ... and holds it for company
    second = await b.post([b.event("heartbeat", now)])
    assert (await first).accepted == second["accepted"] == 1
    assert (writer.groups - groups, writer.requests - requests) == (1, 2)
    # Idle: nothing is held back, even with the long linger still set.
    writer.busy_gap_s = 0.0
    alone = await asyncio.wait_for(c.post([c.event("heartbeat", now + timedelta(seconds=1))]),
                                   10)
    assert alone["accepted"] == 1
    assert (writer.groups - groups, writer.requests - requests) == (2, 3)


async def test_a_writer_stopped_while_holding_a_group_stores_and_answers_it(
    server: Running,
) -> None:
    specs = await seed_city(server.ctx, piles_n=2, ports=2)
    a, b = (PileClient(server.http, server.url, pid, secret) for pid, secret, _ in specs)
    writer = server.app[WRITER]
    now = datetime.now(UTC)
    await b.post([b.event("heartbeat", now)])
    writer.busy_gap_s, writer.linger_s, writer.linger_until = 3600.0, 60.0, 2
    held = asyncio.create_task(
        writer.submit(a.pile_id, parse_batch({"events": [a.event("heartbeat", now)]})))
    await asyncio.sleep(0)
    await wait_until(writer.queue.empty)
    assert not held.done()
    await writer.stop()  # the queue is empty, but A is in the writer's hands
    assert (await asyncio.wait_for(held, 10)).accepted == 1
    async with server.ctx.sm() as s:
        assert await s.scalar(select(func.count()).select_from(PileEvent).where(
            PileEvent.pile_id == a.pile_id)) == 1


async def test_a_writer_stuck_in_a_commit_is_cancelled_and_its_senders_are_answered(
    server: Running, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() waits `STOP_GRACE_S` for the writer; past it the writer is cancelled, and the
    requests in its hands and behind it get an error instead of waiting forever."""
    specs = await seed_city(server.ctx, piles_n=2, ports=2)
    writer = server.app[WRITER]
    entered = asyncio.Event()

    async def stuck(_group: object) -> None:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(writer, "_commit", stuck)
    monkeypatch.setattr(ingest, "STOP_GRACE_S", 0.2)
    now = datetime.now(UTC)
    held, queued = (asyncio.create_task(writer.submit(pid, parse_batch({"events": [
        {"id": f"{pid}-hb", "type": "heartbeat", "ts": now.isoformat()}]})))
        for pid, _, _ in specs)
    await asyncio.wait_for(entered.wait(), 10)
    await writer.stop()
    for task in (held, queued):
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(task, 10)

