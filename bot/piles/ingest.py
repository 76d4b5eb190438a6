"""Group commit for pile events: concurrent requests share one transaction.

Each request is validated on its own, then waits for the writer, which takes whatever requests
are queued (up to `MAX_GROUP`), applies them in one transaction and answers each with its own
result once the commit is durable. A busy fleet thus pays for one commit per group instead of one
per request, and no request is answered before its events are stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from bot.context import Context
from bot.tasks import stop_task
from core.db import transaction
from core.piles import commands, events
from core.piles.wire import BatchResult

log = logging.getLogger("chargebot.ingest")
MAX_GROUP = 64
LINGER_S = 0.02  # how long a small group may wait for more requests while the writer is busy
LINGER_UNTIL = 8  # a group this big goes at once
BUSY_GAP_S = 0.1  # a commit this recent means requests are flowing
TOUCH_EVERY_S = 5.0


STOP_GRACE_S = 30.0  # stop() waits this long for queued requests before it cancels the writer

Item = tuple[str, events.Batch, asyncio.Future[BatchResult]]


class IngestWriter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # None is stop(): the writer stores what is ahead of it, then ends.
        self.queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._touched: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.groups = 0
        self.requests = 0
        self.linger_s, self.linger_until, self.busy_gap_s = LINGER_S, LINGER_UNTIL, BUSY_GAP_S

    async def submit(self, pile_id: str, batch: events.Batch) -> BatchResult:
        if self._task is None or self._task.done():
            self.start()
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((pile_id, batch, fut))
        return await asyncio.shield(fut)  # a client that hangs up does not undo its events

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def stop(self) -> None:
        """Every request queued before this is stored and answered, then the writer ends. No
        cancel on the way: a cancel landing inside a commit would leave its senders waiting."""
        task = self._task
        if task is None or task.done():
            return
        self.queue.put_nowait(None)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await asyncio.shield(task)
        except TimeoutError:
            log.error("ingest writer still busy after %.0f s: cancelled", STOP_GRACE_S)
            await stop_task(task)
        finally:
            while not self.queue.empty():
                if (item := self.queue.get_nowait()) is not None:
                    _stopped(item)

    def _due(self, pile_id: str) -> bool:
        return time.monotonic() - self._touched.get(pile_id, 0.0) >= TOUCH_EVERY_S

    async def _run(self) -> None:
        last = -float("inf")
        while (first := await self.queue.get()) is not None:
            group, stopping = await self._gather(first, busy=time.monotonic() - last
                                                 <= self.busy_gap_s)
            try:
                await self._commit(group)
            except BaseException:
                # Cancelled (stop's last resort) or broken mid-commit: nobody is left waiting.
                for item in group:
                    _stopped(item)
                raise
            last = time.monotonic()
            if stopping:
                return

    async def _gather(self, first: Item, *, busy: bool) -> tuple[list[Item], bool]:
        """`first` and what is queued behind it (up to MAX_GROUP); whether stop() came."""
        group, taken = [first], time.monotonic()
        while len(group) < MAX_GROUP:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                # A group costs ~8 ms of CPU whatever its size (BENCHMARKS.md): while requests
                # keep coming, a small group waits a moment for company. An idle writer (the
                # last commit long ago) commits a lone request at once.
                left = self.linger_s - (time.monotonic() - taken)
                if not busy or len(group) >= self.linger_until or left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        item = await self.queue.get()
                except TimeoutError:
                    break
            if item is None:
                return group, True
            group.append(item)
        return group, False

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


def _stopped(item: Item) -> None:
    """Answer a request the stopped writer will never store: its sender gets an error (a pile
    a 503, and it sends the batch again), not a wait without end."""
    if not item[2].done():
        item[2].set_exception(ConnectionResetError("the ingest writer has stopped"))


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
