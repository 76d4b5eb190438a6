"""`chargebot broadcast --riders`: every rider hears it once, in their language, through
Telegram's flood limit (429 + retry_after) and a notifier stopped half-way and started again."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from bot.app import NOTIFIER
from bot.handlers import notices
from core.db import transaction
from core.outbox import OutboxMessage
from core.riders.identities import chat_rider, rider_for
from notifications.worker import Notifier
from tests.fakes.telegram_api import FakeTelegram
from tests.support.server import Running, start_server
from tests.support.settings import all_skins_settings

ROOT = Path(__file__).resolve().parents[2]
CHAT0 = 880_000
RIDERS = 60
GROUP = -100_777
ZH, EN = "明晚 22:00 起 T01 停电检修，请提前充电。", "T01 closes for service tomorrow from 22:00."


async def cli(db_url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "--database", db_url, *args, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CHARGEBOT_LOG": "WARNING"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition (a deadline against hanging, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def outbox_states(server: Running) -> dict[str, int]:
    async with server.ctx.sm() as s:
        rows = await s.execute(select(OutboxMessage.state, func.count()).where(
            OutboxMessage.kind == "broadcast").group_by(OutboxMessage.state))
        return dict(rows.all())  # type: ignore[arg-type]


async def test_fake_telegram_flood_limit_answers_429_like_telegram() -> None:
    async with FakeTelegram() as tg, aiohttp.ClientSession() as http:
        tg.flood_limit_per_s = 3
        answers = []
        for _ in range(5):
            async with http.post(f"{tg.base_url}{tg.token}/sendMessage",
                                 data={"chat_id": "7", "text": "hi"}) as resp:
                answers.append((resp.status, await resp.json()))
    assert [status for status, _ in answers] == [200, 200, 200, 429, 429]
    assert answers[3][1] == {"ok": False, "error_code": 429,
                             "description": "Too Many Requests: retry after 1",
                             "parameters": {"retry_after": 1}}
    assert tg.accepted_per_chat == {7: 3} and tg.throttled == 2


async def test_broadcast_to_riders_once_each_through_429s_and_a_restart(
    db_url: str, fakes: tuple[Any, Any],
) -> None:
    tg, wx = fakes
    # The fake refuses more than 20 a second; our limiter allows 25 and bursts after a pause,
    # so Telegram's 429 + retry_after is met for sure and has to be honoured.
    tg.flood_limit_per_s = 20
    settings = all_skins_settings(db_url, tg, wx, telegram={"max_rate_per_s": 25},
                                  notifications={"poll_s": 0.05})
    async with start_server(settings, notifier=False) as server:
        ctx = server.ctx
        async with transaction(ctx.sm) as s:
            for i in range(RIDERS):
                await rider_for(s, "telegram", str(CHAT0 + i), chat_id=str(CHAT0 + i),
                                language_hint="en-US" if i % 3 == 0 else "zh-hans")
            # A riders' group is an outbox recipient too, but not a rider.
            await chat_rider(s, "telegram", GROUP, "riders' group", "zh_CN")

        code, out = await cli(db_url, "broadcast", "--riders", "--zh", ZH, "--en", EN)
        assert code == 0, out
        assert f"to {RIDERS} riders" in out and f"{RIDERS} queued" in out
        code, out = await cli(db_url, "broadcast", "--riders", "--zh", ZH, "--en", EN)
        assert code == 0, out
        assert "0 queued" in out and f"{RIDERS} already queued before" in out
        assert await outbox_states(server) == {"pending": RIDERS}

        def accepted() -> int:
            return sum(tg.accepted_per_chat.values())

        async def twenty_in() -> bool:
            return accepted() >= 20

        # A notifier stopped part-way, as a process stop cancels it.
        first = server.app[NOTIFIER]
        task = asyncio.create_task(first.run())
        await until(twenty_in, "the first 20 messages")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Every send that went out before the stop was recorded as sent: nothing to repeat.
        states = await outbox_states(server)
        assert states.get("sent", 0) == accepted() < RIDERS

        # A fresh notifier (a restarted process) finishes. Enough 429s in a row that some
        # message meets more than the limiter's two retries (each of the `concurrency` sends
        # under way absorbs at most two): the notifier itself reschedules it by retry_after.
        fresh = Notifier(ctx.sm, first.senders, notices.render, read_sm=ctx.reader(),
                         poll_s=0.05)
        for _ in range(2 * fresh.concurrency + 1):
            tg.fail_next("sendMessage", retry_after=1)
        task = asyncio.create_task(fresh.run())

        async def done() -> bool:
            return (await outbox_states(server)) == {"sent": RIDERS}

        await until(done, "every rider's message")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with ctx.sm() as s:
            retried = (await s.execute(select(OutboxMessage).where(
                OutboxMessage.attempts > 1))).scalars().all()
        # Rescheduled by the notifier after the 429s, then delivered (once: see below).
        assert retried and all(m.state == "sent" for m in retried)

    chats = {CHAT0 + i for i in range(RIDERS)}
    assert dict(tg.accepted_per_chat) == {c: 1 for c in chats}  # none lost, none twice
    assert GROUP not in tg.accepted_per_chat
    assert tg.throttled > 0  # the flood limit was met, and honoured: everyone got it anyway
    for i in range(RIDERS):
        (msg,) = tg.messages_to(CHAT0 + i)
        assert msg["text"] == (EN if i % 3 == 0 else ZH)

    # Once delivered, running the command again still sends nothing.
    code, out = await cli(db_url, "broadcast", "--riders", "--zh", ZH, "--en", EN)
    assert code == 0 and "0 queued" in out, out

