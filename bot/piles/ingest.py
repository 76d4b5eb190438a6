"""Group commit for pile events: concurrent requests share one transaction.

Each request is validated on its own, then waits for the writer, which takes whatever requests
are queued (up to `MAX_GROUP`), applies them in one transaction and answers each with its own
result once the commit is durable. A busy fleet thus pays for one commit per group instead of one
per request, and no request is answered before its events are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from bot.context import Context
from core.db import transaction
from core.piles import commands, events
from core.piles.wire import BatchResult

log = logging.getLogger("chargebot.ingest")
MAX_GROUP = 64
LINGER_S = 0.02  # how long a small group may wait for more requests while the writer is busy
LINGER_UNTIL = 8  # a group this big goes at once
BUSY_GAP_S = 0.1  # a commit this recent means requests are flowing
TOUCH_EVERY_S = 5.0


class IngestWriter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.queue: asyncio.Queue[tuple[str, events.Batch, asyncio.Future[BatchResult]]] = (
            asyncio.Queue())
        self._touched: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.requests = 0
        self.linger_s, self.linger_until, self.busy_gap_s = LINGER_S, LINGER_UNTIL, BUSY_GAP_S

    async def submit(self, pile_id: str, batch: events.Batch) -> BatchResult:
        if self._task is None or self._task.done():
            self.start()
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        await self.queue.put((pile_id, batch, fut))
        return await asyncio.shield(fut)  # a client that hangs up does not undo its events

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def stop(self) -> None:
        if self._task is not None:
            while not self.queue.empty():
                await asyncio.sleep(0.01)
            # Cancelled until it ends: a cancel landing as an await inside completes (the
            # database driver's, a queue's) can be lost, and then the writer would go on.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _due(self, pile_id: str) -> bool:
        return time.monotonic() - self._touched.get(pile_id, 0.0) >= TOUCH_EVERY_S

    async def _run(self) -> None:
        last = -float("inf")
        while True:
            group = [await self.queue.get()]
            taken = time.monotonic()
            while len(group) < MAX_GROUP:
                try:
                    group.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                # A group costs ~8 ms of CPU whatever its size (BENCHMARKS.md): while requests
                # keep coming, a small group waits a moment for company. An idle writer (the
                # last commit long ago) commits a lone request at once.
                left = self.linger_s - (time.monotonic() - taken)
                if len(group) >= self.linger_until or taken - last > self.busy_gap_s or left <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                    # lands as the get completes, and stop() would wait on a writer that goes on.
                    async with asyncio.timeout(left):
                        group.append(await self.queue.get())
                except TimeoutError:
                    break
                except asyncio.CancelledError:
                    # Stopping while holding requests: they are stored and answered first (their
                    # senders wait on them; stop() saw an empty queue).
                    await self._commit(group)
                    raise
            await self._commit(group)
            last = time.monotonic()

    async def _commit(self, group: list[tuple[str, events.Batch, asyncio.Future[Any]]]) -> None:
        ctx = self.ctx
        now = ctx.clock()
        try:
            async with transaction(ctx.sm) as session:
                results = await events.ingest_group(
                    session, [(p, b) for p, b, _ in group], ctx.settings, now, touch=self._due)
        except Exception as exc:
            if len(group) > 1:
                # One bad request must not fail its neighbours: retry each on its own.
                for item in group:
                    await self._commit([item])
                return
            log.exception("ingest failed for pile %s", group[0][0])
            if not group[0][2].done():
                group[0][2].set_exception(exc)
            return
        self.groups += 1
        self.requests += len(group)
        mono = time.monotonic()
        for pile_id, _, _ in group:
            if self._due(pile_id):
                self._touched[pile_id] = mono
        if len(self._touched) > 500_000:
            self._touched.clear()
        if any(r.notify for r in results):
            ctx.wake_outbox()
        for (_, _, fut), result in zip(group, results, strict=True):
            if not fut.done():
                fut.set_result(result)


WRITER = web.AppKey("ingest_writer", IngestWriter)


async def take_due_commands(ctx: Context, live: set[str], woken: set[str] | None = None
                            ) -> dict[str, list[dict[str, Any]]]:
    """The due commands of the piles connected here (`live`): those with commands pending and
    those just woken, taken (marked sent) in one transaction. A transport sends them after this
    returns, so a send lost now goes again after `piles.command_resend_s`."""
    if not live:
        return {}
    async with ctx.reader()() as session:
        pending = await commands.piles_with_pending(session)
    due = sorted((pending | (woken or set())) & live)
    if not due:
        return {}
    settings = ctx.settings.piles
    now = ctx.clock()
    out: dict[str, list[dict[str, Any]]] = {}
    async with transaction(ctx.sm) as session:
        for pile_id in due:
            if cmds := await commands.take(session, pile_id, now,
                                           resend_s=settings.command_resend_s,
                                           ttl_s=settings.command_ttl_s):
                out[pile_id] = cmds
    return out
