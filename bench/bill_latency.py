"""Bill latency: from the pile's `session_ended` POST to the bill reaching Telegram.

    .venv/bin/python bench/bill_latency.py        (from the repo root; `make bench` runs it)

The real app on SQLite with python-telegram-bot pointed at the local fake Bot API server
(tests/fakes/telegram_api.py). Each round: a Telegram rider's charge is started through the core,
the pile reports it started and metered, then ends it; the clock runs from the `session_ended`
request until the fake server receives the bill. Baseline in the same run: a round trip of a
signed heartbeat to the same webhook. Target: p99 under 2 s (the contract says 30 s).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import common  # noqa: F401  (puts the repo root on sys.path)
from common import app_with_fake_telegram, fresh_sqlite, machine, pct
from sqlalchemy import select

from bot.context import CTX
from core.charging import sessions as charging
from core.db import transaction
from core.piles import fleet as piles
from core.riders.identities import rider_for
from tests.support.journey import PileClient

ROUNDS = 60
SECRET = "bench-secret"


async def main(url: str) -> None:
    app, runner, base, fake = await app_with_fake_telegram(url)
    settings = app[CTX].settings
    ctx = app[CTX]
    async with transaction(ctx.sm) as s:
        await piles.add_site(s, "B01", "bench", 30.27, 120.15)
        await s.flush()
        await piles.add_pile(s, "B01", "P0001", 2, secret=SECRET)
    latencies: list[float] = []
    baseline: list[float] = []
    async with aiohttp.ClientSession() as http:
        pile = PileClient(http, base, "P0001", SECRET)
        for i in range(ROUNDS):
            t0 = time.perf_counter()
            await pile.post([pile.event("heartbeat", datetime.now(UTC))])
            baseline.append(time.perf_counter() - t0)
            async with transaction(ctx.sm) as s:
                rider = await rider_for(s, "telegram", str(10_000 + i), chat_id=str(10_000 + i))
                await pile_ready(s)
                charge = await charging.start_charge(s, rider, "P0001-01", settings,
                                                     datetime.now(UTC))
                ref = charge.session_ref
            start = datetime.now(UTC)
            await pile.post([pile.event("session_started", start, port=1, session=ref)] + [
                pile.event("meter", start + timedelta(minutes=m), port=1, session=ref,
                           power_w=230.0, energy_wh=int(230 * m / 60)) for m in range(1, 30)])
            seen = len(fake.calls)
            end = pile.event("session_ended", start + timedelta(minutes=30), port=1, session=ref,
                             reason="full", energy_wh=115, duration_s=1800)
            t0 = time.perf_counter()
            await pile.post([end])
            await fake.wait_for(lambda c, i=i: c.method == "sendMessage"
                                and "🧾" in c.params.get("text", "")
                                and int(c.params["chat_id"]) == 10_000 + i, start=seen)
            latencies.append(time.perf_counter() - t0)
    await runner.cleanup()
    await fake.stop()
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    b50 = pct(baseline, 50)
    print(machine())
    print(f"bill latency over {ROUNDS} charges: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
          f"(target p99 < 2000 ms: {'met' if p99 < 2 else 'MISSED'})")
    print(f"baseline signed heartbeat round trip: p50 {b50 * 1000:.2f} ms")
    print(f"ratio bill p50 / heartbeat p50: {p50 / b50:.1f}x")


async def pile_ready(s) -> None:  # type: ignore[no-untyped-def]
    p = await s.get(piles.Pile, "P0001")
    p.online, p.last_seen_at = True, datetime.now(UTC)
    port = (await s.execute(select(piles.Port).where(piles.Port.code == "P0001-01"))
            ).scalars().one()
    port.status = "idle"


if __name__ == "__main__":
    asyncio.run(main(fresh_sqlite("bill_latency")))
