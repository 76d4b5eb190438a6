"""A broadcast to every rider through the outbox notifier, against a Telegram that enforces its
flood limit (issue 8: "100,000 messages … at the limit, zero lost, zero duplicated, resumable").

    .venv/bin/python bench/broadcast.py            (from the repo root; ~5 minutes)
    .venv/bin/python bench/broadcast.py --quick    (10,000 riders, a shorter true-rate run)

A fresh migrated SQLite gets 100,000 Telegram riders (70 % Chinese, 30 % English);
`core.broadcasts.queue_for_riders` (what `chargebot broadcast --riders` runs) queues one outbox
row per rider, and is run twice to show the second run adds nothing. The real Notifier with the
real TelegramSender (python-telegram-bot + AIORateLimiter at `telegram.max_rate_per_s`) delivers
them to the fake Bot API (tests/fakes/telegram_api.py), which runs in a child process so that it
has its own core, and refuses more than `flood_limit_per_s` sendMessage calls in any rolling
second with 429 + retry_after, like Telegram.

Delivering 100,000 at Telegram's 30 msg/s takes 55 minutes, so there are three runs:
  (a) all riders with the fake's limit and our limiter both scaled up by FACTOR;
  (b) a short run at the true 30 msg/s;
  (c) a short run at 30 msg/s with the app's default `telegram.max_rate_per_s` (28).
In (a) and (b) the fake's limit sits a little below our limiter (so 429 + retry_after really
happen and must be honoured). In each run the notifier task is cancelled part-way (a process
stop) and a fresh Notifier with a fresh Telegram client finishes the job. Figures: achieved
msg/s vs the fake's limit, 429s answered, messages accepted by the fake, riders who got nothing
(lost) or more than one (duplicated). Baseline in the same run: the bare fake's throughput for
sendMessage calls made directly, without the notifier, the database or a rate limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import multiprocessing.connection
import time
from datetime import UTC, datetime
from typing import Any

import common  # noqa: F401  (puts the repo root on sys.path)
from common import fresh_sqlite, machine, settings_for
from pydantic import SecretStr
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.handlers import notices
from bot.skins.telegram import TelegramSender, build_application
from core.config import Settings
from core.db import make_engine, make_read_sessionmaker, make_sessionmaker, transaction
from core.engagement import broadcasts
from core.outbox import OutboxMessage
from core.riders.tables import Identity, Rider
from notifications.worker import Notifier

CHAT0 = 700_000_000  # rider i's Telegram chat id is CHAT0 + i
TELEGRAM_RATE = 30  # messages/s, Telegram's documented broadcast limit
# Our limiter runs this much above the fake's limit, so the fake answers 429 now and then.
OVER = 1.05


# ----------------------------------------------------------------------------- the fake, apart

def _fake_process(conn: multiprocessing.connection.Connection) -> None:
    """The fake Bot API on its own event loop and core; answers commands from the parent."""
    from tests.fakes.telegram_api import FakeTelegram

    async def serve() -> None:
        fake = FakeTelegram()
        fake.keep_history = False  # 100,000 stored messages would be all it does
        await fake.start()
        conn.send((fake.token, fake.base_url, fake.base_file_url))
        loop = asyncio.get_running_loop()
        while True:
            cmd, arg = await loop.run_in_executor(None, conn.recv)
            if cmd == "limit":
                fake.flood_limit_per_s = arg
                fake.throttled = 0
                fake.accepted_per_chat.clear()
                conn.send(None)
            elif cmd == "count":
                conn.send((fake.accepted_per_chat.total(), fake.throttled))
            elif cmd == "per_chat":
                conn.send(dict(fake.accepted_per_chat))
            else:
                await fake.stop()
                conn.send(None)
                return

    asyncio.run(serve())


class FakeProcess:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fake_process, args=(child,), daemon=True)
        self.proc.start()
        self.token, self.base_url, self.base_file_url = self.conn.recv()

    async def ask(self, cmd: str, arg: Any = None) -> Any:
        self.conn.send((cmd, arg))
        return await asyncio.to_thread(self.conn.recv)

    async def stop(self) -> None:
        await self.ask("stop")
        self.proc.join(5)


# ----------------------------------------------------------------------------- the pieces

async def seed_riders(sm: async_sessionmaker[AsyncSession], n: int) -> None:
    now = datetime.now(UTC)
    for start in range(0, n, 20_000):
        ids = range(start + 1, min(n, start + 20_000) + 1)
        async with transaction(sm) as s:
            await s.execute(insert(Rider.__table__), [
                {"id": i, "display_name": f"r{i}", "language": "en" if i % 10 < 3 else "zh_CN",
                 "balance_fen": 0, "last_platform": "telegram", "created_at": now} for i in ids])
            await s.execute(insert(Identity.__table__), [
                {"rider_id": i, "platform": "telegram", "external_id": str(CHAT0 + i),
                 "chat_id": str(CHAT0 + i), "created_at": now} for i in ids])


def telegram_app(fake: FakeProcess, db_url: str, rate: float) -> Any:
    settings = settings_for(db_url)
    settings.telegram.token = SecretStr(fake.token)
    settings.telegram.base_url = fake.base_url
    settings.telegram.base_file_url = fake.base_file_url
    settings.telegram.max_rate_per_s = rate
    return build_application(settings)


async def pending(read_sm: async_sessionmaker[AsyncSession]) -> int:
    async with read_sm() as s:
        return (await s.execute(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.state == "pending"))).scalar_one()


async def bare_fake(fake: FakeProcess, db_url: str, n: int) -> float:
    """sendMessage straight from python-telegram-bot, 8 at a time (the notifier's concurrency),
    no limiter, no database."""
    await fake.ask("limit", None)
    app = telegram_app(fake, db_url, 0)
    async with app:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                await app.bot.send_message(CHAT0 + i, "基线 baseline")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(1, n + 1)))
        return n / (time.perf_counter() - t0)


async def run(label: str, fake: FakeProcess, db_url: str, sm: async_sessionmaker[AsyncSession],
              read_sm: async_sessionmaker[AsyncSession], riders: int, limit: int,
              factor: float, over: float) -> dict[str, Any]:
    """Queue a broadcast to every rider, deliver it with a stop at ~40 %, check every chat."""
    await fake.ask("limit", limit)
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    first = await broadcasts.queue_for_riders(sm, f"🔔 {label}：今晚 22:00 起部分站点检修。",
                                              f"🔔 {label}: some sites close for service tonight "
                                              f"from 22:00.", now, cause=f"bench-{label}",
                                              now=now)
    t_queue = time.perf_counter() - t0
    again = await broadcasts.queue_for_riders(sm, f"🔔 {label}：今晚 22:00 起部分站点检修。",
                                              f"🔔 {label}: some sites close for service tonight "
                                              f"from 22:00.", now, cause=f"bench-{label}",
                                              now=now)
    rate = limit * over

    async def notifier_until(stop_at: int | None) -> float:
        """A notifier 'process': its own Telegram client; runs until the fake has accepted
        `stop_at` messages (then is cancelled, like a SIGTERM) or the queue is empty."""
        app = telegram_app(fake, db_url, rate)
        async with app:
            n = Notifier(sm, {"telegram": TelegramSender(app)}, notices.render, read_sm=read_sm,
                         poll_s=0.2)
            task = asyncio.create_task(n.run())
            t = time.perf_counter()
            while True:
                await asyncio.sleep(0.2)
                if stop_at is not None and (await fake.ask("count"))[0] >= stop_at:
                    break
                if stop_at is None and await pending(read_sm) == 0:
                    break
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return time.perf_counter() - t

    t_first = await notifier_until(int(riders * 0.4))
    at_stop, _ = await fake.ask("count")
    t_second = await notifier_until(None)
    accepted, throttled = await fake.ask("count")
    per_chat: dict[int, int] = await fake.ask("per_chat")
    async with read_sm() as s:
        states = dict((await s.execute(select(OutboxMessage.state, func.count()).where(
            OutboxMessage.dedupe_key.like(f"broadcast:riders:{first.broadcast_id}:%"))
            .group_by(OutboxMessage.state))).all())
        retried = (await s.execute(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.dedupe_key.like(f"broadcast:riders:{first.broadcast_id}:%"),
            OutboxMessage.attempts > 1))).scalar_one()
    expected = {CHAT0 + i for i in range(1, riders + 1)}
    counts = collections.Counter(per_chat[c] for c in expected if c in per_chat)
    return {
        "label": label, "riders": riders, "limit": limit, "rate": rate, "factor": factor,
        "queued": first.queued, "requeued": again.queued, "t_queue": t_queue,
        "accepted": accepted, "throttled": throttled, "at_stop": at_stop,
        "elapsed": t_first + t_second, "msgs_per_s": accepted / (t_first + t_second),
        "lost": len(expected - per_chat.keys()), "dup_riders": sum(
            v for k, v in counts.items() if k > 1), "extra": accepted - len(per_chat),
        "strangers": len(per_chat.keys() - expected), "states": states, "retried": retried,
    }


def report(r: dict[str, Any]) -> None:
    print(f"\n[{r['label']}] {r['riders']:,} riders; fake refuses over {r['limit']:,} msg/s "
          f"(Telegram's {TELEGRAM_RATE} × {r['factor']:g}); our limiter "
          f"telegram.max_rate_per_s = {r['rate']:,.1f}")
    print(f"  queued {r['queued']:,} outbox rows in {r['t_queue']:.2f} s "
          f"({r['queued'] / r['t_queue']:,.0f} rows/s); queued again: {r['requeued']} added")
    print(f"  notifier stopped (task cancelled) after {r['at_stop']:,} accepted; a fresh "
          f"notifier finished the rest")
    print(f"  delivered in {r['elapsed']:.1f} s: {r['msgs_per_s']:,.1f} msg/s achieved = "
          f"{r['msgs_per_s'] / r['limit'] * 100:.1f} % of the fake's limit "
          f"({r['msgs_per_s'] / r['factor']:.1f} msg/s at Telegram's scale of "
          f"{TELEGRAM_RATE})")
    print(f"  429 answers: {r['throttled']:,}; rows that needed more than one attempt: "
          f"{r['retried']:,}")
    print(f"  accepted by the fake: {r['accepted']:,}; lost: {r['lost']}; duplicated riders: "
          f"{r['dup_riders']} ({r['extra']} extra messages); messages to unknown chats: "
          f"{r['strangers']}; outbox rows by state: {r['states']}")


async def with_db(label: str, riders: int, fake: FakeProcess, limit: int, factor: float, *,
                  over: float = OVER) -> dict[str, Any]:
    """A fresh migrated SQLite holding exactly `riders` riders, and one run on it."""
    db_url = await asyncio.to_thread(fresh_sqlite, f"broadcast-{label}")
    engine = make_engine(db_url)
    try:
        sm, read_sm = make_sessionmaker(engine), make_read_sessionmaker(engine)
        t0 = time.perf_counter()
        await seed_riders(sm, riders)
        print(f"\n[{label}] seeded {riders:,} Telegram riders in {time.perf_counter() - t0:.1f} s"
              f" (fresh SQLite)")
        return await run(label, fake, db_url, sm, read_sm, riders, limit, factor, over)
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    print(machine())
    fake = FakeProcess()
    try:
        bare = await bare_fake(fake, "sqlite+aiosqlite://", args.baseline)
        print(f"baseline: the bare fake takes {bare:,.0f} sendMessage/s from python-telegram-bot "
              f"directly (8 at a time like the notifier, no limiter, no database, "
              f"{args.baseline:,} messages)")
        scaled = await with_db("scaled", args.riders, fake, TELEGRAM_RATE * args.factor,
                               args.factor)
        report(scaled)
        true = await with_db("true", args.true_riders, fake, TELEGRAM_RATE, 1)
        report(true)
        default = Settings().telegram.max_rate_per_s
        paced = await with_db("default", args.paced_riders, fake, TELEGRAM_RATE, 1,
                              over=default / TELEGRAM_RATE)
        report(paced)
    finally:
        await fake.stop()
    runs = (scaled, true, paced)
    print(f"\nratio notifier/bare fake (scaled run): {scaled['msgs_per_s'] / bare:.2f}")
    print("zero lost, zero duplicated, resumed after a stop: " + (
        "yes" if all(r["lost"] == r["extra"] == r["strangers"] == 0 and r["states"] == {
            "sent": r["riders"]} for r in runs) else "NO"))
    print(f"429s answered and honoured (all delivered anyway): {true['throttled']} at 30 msg/s"
          f" with our limiter 5 % over, {scaled['throttled']} in the scaled run, "
          f"{paced['throttled']} at the default telegram.max_rate_per_s ({paced['rate']:g}/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--riders", type=int, default=100_000)
    ap.add_argument("--factor", type=int, default=20,
                    help="scale Telegram's 30 msg/s by this for the full run")
    ap.add_argument("--true-riders", type=int, default=1_500)
    ap.add_argument("--paced-riders", type=int, default=600)
    ap.add_argument("--baseline", type=int, default=3_000)
    ap.add_argument("--quick", action="store_true", help="10,000 riders, 600 at the true rate")
    a = ap.parse_args()
    if a.quick:
        a.riders, a.true_riders, a.paced_riders = 10_000, 600, 300
    asyncio.run(main(a))
