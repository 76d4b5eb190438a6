"""Delivers outbox rows: claim with a lease, render, send, mark; retry with backoff.

A crash between commit and send loses nothing: the row stays pending (or its lease runs out)
and the next notifier, here or in another worker, delivers it. A claimed batch is sent to several
riders at once and the outcomes are written by group commit; the next batch is claimed while one
is still sending (riders of a pass under way wait for it, so each rider's messages keep order);
a stop (the task cancelled) lets the sends under way finish and be recorded and hands the untried
rows straight back, so a restart neither waits for the lease nor sends anything twice.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from core.db import saved_id, transaction, utcnow
from core.outbox import OutboxMessage, OutboxState
from core.riders.tables import Identity, Rider
from notifications.replies import Reply

log = logging.getLogger("chargebot.notifier")


class DeliveryError(Exception):
    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Sender(Protocol):
    async def send(self, identity: Identity, replies: list[Reply], *, lang: str, kind: str,
                   payload: dict[str, Any], outbox_id: int | None = None) -> str:
        """Deliver, or raise DeliveryError; returns the channel used (e.g. 'wechat:template')."""
        ...


Render = Callable[[str, dict[str, Any], str], list[Reply]]


@dataclass
class _Mark:
    """What happened to one claimed message, waiting to be written."""

    msg: OutboxMessage
    state: str  # sent | dead | retry | release
    error: str | None = None
    platform: str | None = None
    channel: str | None = None
    delay: float = 0.0


def backoff_s(attempt: int) -> float:
    return min(300.0, 2.0 ** attempt)


def _pass_done(task: asyncio.Task[None], riders: set[int], passes: set[asyncio.Task[None]],
               busy: set[int]) -> None:
    passes.discard(task)
    busy.difference_update(riders)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("notifier pass failed; its rows are retried after the lease", exc_info=exc)


class Notifier:
    def __init__(
        self, sm: async_sessionmaker[AsyncSession], senders: dict[str, Sender], render: Render,
        *, poll_s: float = 0.5, batch: int = 50, lease_s: float = 30.0, max_attempts: int = 8,
        clock: Callable[[], datetime] = utcnow,
        wait: Callable[[float], Awaitable[bool]] | None = None,
        read_sm: async_sessionmaker[AsyncSession] | None = None,
        concurrency: int = 8, stop_grace_s: float = 10.0, max_passes: int = 2,
    ) -> None:
        self.sm = sm
        self.read_sm = read_sm or sm
        self.senders = senders
        self.render = render
        self.poll_s = poll_s
        self.batch = batch
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self._wait = wait
        self.delivered = 0
        # Riders served at once. Senders pace themselves (Telegram's limiter queues beyond its
        # rate), so this only has to cover the platforms' round trip at their allowed rate.
        self.concurrency = concurrency
        # On a stop, how long sends already under way may take to finish and be recorded.
        self.stop_grace_s = stop_grace_s
        self.max_passes = max_passes
        self._stopping = False

    async def run(self) -> None:
        """Deliver until cancelled. A pass (a claimed batch) sends while the next is claimed, up
        to `max_passes` at once: messages that arrive during a pass go out beside it instead of
        waiting for its last send (a burst of bills at Telegram's pace waited ~0.65 s so). The
        next pass skips riders still in one, so each rider's messages keep their order."""
        self._stopping = False
        passes: set[asyncio.Task[None]] = set()
        busy: set[int] = set()
        try:
            while True:
                claimed: list[OutboxMessage] = []
                if len(passes) < self.max_passes:
                    try:
                        claimed = await self.claim(exclude=busy)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            # A stop whose unwinding failed (a session closed mid-statement
                            # raises on its way out and hides the CancelledError): still a stop.
                            raise asyncio.CancelledError from None
                        log.exception("notifier pass failed; retrying")
                if claimed:
                    riders = {m.rider_id for m in claimed}
                    busy.update(riders)
                    batch = asyncio.create_task(self._deliver_batch(claimed))
                    passes.add(batch)
                    batch.add_done_callback(functools.partial(_pass_done, riders=riders,
                                                              passes=passes, busy=busy))
                    if len(passes) < self.max_passes:
                        continue
                # Nothing to claim, or enough passes under way: until new rows are announced,
                # a pass ends, or poll_s.
                waiter = asyncio.ensure_future(
                    self._wait(self.poll_s) if self._wait is not None
                    else asyncio.sleep(self.poll_s))
                try:
                    await asyncio.wait({waiter, *passes}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        except asyncio.CancelledError:
            # A stop must not cut a send off between the platform accepting it and our mark:
            # that is the one way a rider hears it twice. Sends under way finish and are
            # recorded; untried rows go back at once.
            self._stopping = True
            if passes:
                _done, late = await asyncio.wait(passes, timeout=self.stop_grace_s)
                if late:
                    log.warning("notifier stopped with sends still in flight; their rows are "
                                "retried after the lease")
            raise

    async def claim(self, exclude: set[int] | None = None) -> list[OutboxMessage]:
        """Lease up to `batch` due rows, oldest first; none of the riders in `exclude`."""
        now = self.clock()
        pick = (
            select(col(OutboxMessage.id))
            .where(
                col(OutboxMessage.state) == OutboxState.pending,
                col(OutboxMessage.due_at) <= now,
                or_(col(OutboxMessage.lease_until).is_(None), col(OutboxMessage.lease_until) < now),
            )
            .order_by(col(OutboxMessage.id))
            .limit(self.batch)
        )
        if exclude:
            pick = pick.where(col(OutboxMessage.rider_id).not_in(sorted(exclude)))
        if self.read_sm is not self.sm:
            # Look before taking SQLite's write lock: an idle poll must not queue behind (or
            # starve) the ingest writer for nothing.
            async with self.read_sm() as peek:
                if (await peek.execute(pick.limit(1))).first() is None:
                    return []
        async with transaction(self.sm) as session:
            if session.get_bind().dialect.name == "postgresql":
                # Several workers: each takes rows nobody else holds, without waiting.
                pick = pick.with_for_update(skip_locked=True)
            ids = list((await session.execute(pick)).scalars())
            if not ids:
                return []
            rows = await session.execute(
                update(OutboxMessage)
                .where(
                    col(OutboxMessage.id).in_(ids),
                    col(OutboxMessage.state) == OutboxState.pending,
                    or_(col(OutboxMessage.lease_until).is_(None),
                        col(OutboxMessage.lease_until) < now),
                )
                .values(lease_until=now + timedelta(seconds=self.lease_s),
                        attempts=OutboxMessage.attempts + 1)
                .returning(OutboxMessage)
            )
            return sorted(rows.scalars(), key=lambda m: m.id or 0)

    async def run_once(self) -> int:
        self._stopping = False
        claimed = await self.claim()
        if not claimed:
            return 0
        batch = asyncio.create_task(self._deliver_batch(claimed))
        try:
            # A stop (the task cancelled at shutdown) must not cut a send off between the
            # platform accepting it and our mark: that is the one way a rider hears it twice.
            await asyncio.shield(batch)
        except asyncio.CancelledError:
            self._stopping = True
            try:
                await asyncio.wait_for(batch, self.stop_grace_s)
            except TimeoutError:
                log.warning("notifier stopped with sends still in flight; their rows are "
                            "retried after the lease")
            except Exception:
                log.exception("notifier batch failed while stopping")
            raise
        return len(claimed)

    async def deliver(self, msg: OutboxMessage) -> None:
        await self._deliver_batch([msg])

    async def _deliver_batch(self, claimed: list[OutboxMessage]) -> None:
        """Send a claimed batch, up to `concurrency` riders at a time (each rider's messages in
        order), and record the outcomes by group commit: whatever finished while the last
        write ran goes in the next one. Per-message transactions were the notifier's ceiling:
        one send at a time, three SQLite round trips each, far below Telegram's 30/s burst
        when the limiter has queued work."""
        targets = await self._targets({m.rider_id for m in claimed})
        by_rider: dict[int, list[OutboxMessage]] = {}
        for msg in claimed:
            by_rider.setdefault(msg.rider_id, []).append(msg)
        riders = collections.deque(by_rider.values())
        marks: list[_Mark] = []
        wake = asyncio.Event()
        sending = True

        async def worker() -> None:
            while riders:
                if flush.done():
                    # The writer failed: what we send now could not be marked, and would go
                    # out again after the lease. Stop; the error surfaces below.
                    return
                queue = riders.popleft()
                for i, msg in enumerate(queue):
                    if self._stopping:
                        # Not sent: back to the queue now, not after the lease.
                        marks.extend(_Mark(m, "release") for m in queue[i:])
                        break
                    marks.append(await self._send(msg, targets.get(msg.rider_id)))
                    wake.set()

        async def writer() -> None:
            while True:
                await wake.wait()
                wake.clear()
                while marks:
                    taken = marks[:]
                    del marks[:]
                    await self._record(taken)
                if not sending:
                    return

        flush = asyncio.create_task(writer())
        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(riders)))))
        finally:
            sending = False
            wake.set()
            await flush

    async def _targets(self, rider_ids: set[int]) -> dict[int, tuple[Rider, Identity]]:
        async with self.read_sm() as session:
            found = {saved_id(r): r for r in (await session.execute(
                select(Rider).where(col(Rider.id).in_(rider_ids)))).scalars()}
            idents = list((await session.execute(
                select(Identity).where(col(Identity.rider_id).in_(rider_ids))
                .order_by(col(Identity.id))
            )).scalars())
        out: dict[int, tuple[Rider, Identity]] = {}
        for rid, rider in found.items():
            usable = [i for i in idents if i.rider_id == rid and i.platform in self.senders]
            if not usable:
                continue
            # The platform the rider used last is where they are looking.
            preferred = [i for i in usable if i.platform == rider.last_platform]
            out[rid] = (rider, (preferred or usable)[0])
        return out

    async def _send(self, msg: OutboxMessage, target: tuple[Rider, Identity] | None) -> _Mark:
        if target is None:
            return _Mark(msg, "dead", error="no reachable identity")
        rider, identity = target
        try:
            replies = self.render(msg.kind, msg.payload, rider.language)
            channel = await self.senders[identity.platform].send(
                identity, replies, lang=rider.language, kind=msg.kind, payload=msg.payload,
                outbox_id=msg.id)
        except DeliveryError as exc:
            if not exc.retryable or msg.attempts >= self.max_attempts:
                log.warning("outbox %s to %s gave up: %s", msg.id, identity.platform, exc)
                return _Mark(msg, "dead", error=str(exc), platform=identity.platform)
            delay = exc.retry_after or backoff_s(msg.attempts)
            return _Mark(msg, "retry", error=str(exc), delay=delay)
        except Exception as exc:  # a bug in rendering or a sender must not stop the queue
            log.exception("outbox %s failed", msg.id)
            if msg.attempts >= self.max_attempts:
                return _Mark(msg, "dead", error=repr(exc)[:300])
            return _Mark(msg, "retry", error=repr(exc)[:300], delay=backoff_s(msg.attempts))
        self.delivered += 1
        return _Mark(msg, "sent", platform=identity.platform, channel=channel)

    async def _record(self, marks: list[_Mark]) -> None:
        """All outcomes in one transaction; sent rows in one statement per channel."""
        now = self.clock()
        sent: dict[tuple[str | None, str | None], list[int]] = {}
        async with transaction(self.sm) as session:
            for m in marks:
                if m.state == "sent":
                    sent.setdefault((m.platform, m.channel), []).append(saved_id(m.msg))
                elif m.state == "dead":
                    await session.execute(
                        update(OutboxMessage).where(col(OutboxMessage.id) == m.msg.id).values(
                            state=OutboxState.dead, sent_at=None, last_error=m.error,
                            platform=m.platform, channel=m.channel, lease_until=None))
                elif m.state == "retry":
                    await session.execute(
                        update(OutboxMessage).where(col(OutboxMessage.id) == m.msg.id).values(
                            due_at=now + timedelta(seconds=m.delay), lease_until=None,
                            last_error=(m.error or "")[:300]))
                else:  # release: claimed but never tried, so the claim's attempt is undone
                    await session.execute(
                        update(OutboxMessage).where(col(OutboxMessage.id) == m.msg.id).values(
                            lease_until=None, attempts=OutboxMessage.attempts - 1))
            for (platform, channel), ids in sent.items():
                await session.execute(
                    update(OutboxMessage).where(col(OutboxMessage.id).in_(ids)).values(
                        state=OutboxState.sent, sent_at=now, last_error=None, platform=platform,
                        channel=channel, lease_until=None))
