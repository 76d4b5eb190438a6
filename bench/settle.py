"""Settlement under load: 50 charges ending at once, on the real app with the (fake) Telegram API.

    .venv/bin/python bench/settle.py        (from the repo root; `make bench` runs it)

50 Telegram riders each have a started charge on their own port (5 piles × 10 ports) and money in
the wallet. All 50 piles' `session_ended` arrive concurrently; figures: settlements per second
(from the first end sent to the last bill committed) and, per charge, the time from its
`session_ended` request to the bill reaching the fake Bot API (p50/p99). Baseline in the same run:
the same 50 requests carrying heartbeats only. Target (issue 4): p99 < 2 s.
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
from core.billing import wallet
from core.charging import sessions as charging
from core.charging.tables import Charge
from core.db import transaction
from core.piles import fleet as piles
from core.riders.identities import rider_for
from tests.support.journey import PileClient

CHARGES = 50
PILES = 5


async def main(url: str) -> None:
    app, runner, base, fake = await app_with_fake_telegram(url)
    settings = app[CTX].settings
    ctx = app[CTX]
    now = datetime.now(UTC)
    async with transaction(ctx.sm) as s:
        await piles.add_site(s, "B01", "bench", 30.27, 120.15)
        await s.flush()
        for p in range(PILES):
            pile = await piles.add_pile(s, "B01", f"P{p + 1:04d}", 10, secret=f"s{p}")
            pile.online, pile.last_seen_at = True, now
    refs: list[tuple[int, str, int, int]] = []  # (pile index, session, port, chat id)
    for i in range(CHARGES):
        async with transaction(ctx.sm) as s:
            chat = 50_000 + i
            rider = await rider_for(s, "telegram", str(chat), chat_id=str(chat))
            await s.flush()
            await wallet.post(s, rider.id, "topup", 5000, f"bench:{i}")  # type: ignore[arg-type]
            code = f"P{i // 10 + 1:04d}-{i % 10 + 1:02d}"
            c = await charging.start_charge(s, rider, code, settings, now)
            refs.append((i // 10, c.session_ref, i % 10 + 1, chat))  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        clients = [PileClient(http, base, f"P{p + 1:04d}", f"s{p}") for p in range(PILES)]
        start = now - timedelta(hours=3)
        await asyncio.gather(*(clients[p].post(
            [clients[p].event("session_started", start, port=prt, session=ref)]
            + [clients[p].event("meter", start + timedelta(minutes=m), port=prt, session=ref,
                                power_w=240.0, energy_wh=4 * m) for m in range(1, 180, 10)])
            for p, ref, prt, _ in refs))

        # The charges ran for hours: their "charging started" messages went out long ago.
        deadline = time.perf_counter() + 30
        while sum(1 for c in fake.calls if c.method == "sendMessage") < CHARGES:
            assert time.perf_counter() < deadline, "start messages not delivered"
            await asyncio.sleep(0.05)

        t0 = time.perf_counter()
        await asyncio.gather(*(clients[p].post([clients[p].event("heartbeat", now)])
                               for p, _, _, _ in refs))
        baseline = time.perf_counter() - t0

        seen = len(fake.calls)
        sent_at: dict[int, float] = {}
        arrived: dict[int, float] = {}

        async def end(p: int, ref: str, prt: int, chat: int) -> None:
            sent_at[chat] = time.perf_counter()
            await clients[p].post([clients[p].event(
                "session_ended", start + timedelta(hours=3), port=prt, session=ref,
                reason="full", energy_wh=720, duration_s=3 * 3600)])

        async def watch() -> None:
            while len(arrived) < CHARGES:
                for call in fake.calls[seen:]:
                    if call.method == "sendMessage" and "🧾" in call.params.get("text", ""):
                        arrived.setdefault(int(call.params["chat_id"]), time.perf_counter())
                await asyncio.sleep(0.005)

        t1 = time.perf_counter()
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(end(*r) for r in refs))
        t_committed = time.perf_counter() - t1
        await asyncio.wait_for(watcher, 60)
    async with ctx.sm() as s:
        settled = len((await s.execute(select(Charge).where(Charge.state == "settled"))).all())
    await runner.cleanup()
    await fake.stop()
    lat = [arrived[c] - sent_at[c] for c in sent_at]
    print(machine())
    print(f"{CHARGES} charges ending at once: {settled} settled, "
          f"{settled / t_committed:,.0f} settlements/s (all ends committed in "
          f"{t_committed * 1000:.0f} ms)")
    print(f"session_ended → bill at the Bot API: p50 {pct(lat, 50) * 1000:.0f} ms, "
          f"p99 {pct(lat, 99) * 1000:.0f} ms (target p99 < 2000 ms: "
          f"{'met' if pct(lat, 99) < 2 else 'MISSED'})")
    print(f"baseline: the same {CHARGES} requests as heartbeats took {baseline * 1000:.0f} ms; "
          f"ratio ends/heartbeats {t_committed / baseline:.1f}x")


if __name__ == "__main__":
    asyncio.run(main(fresh_sqlite("settle")))
