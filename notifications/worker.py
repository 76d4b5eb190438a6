"""Delivers outbox rows: claim with a lease, render, send, mark; retry with backoff.

A crash between commit and send loses nothing: the row stays pending (or its lease runs out)
and the next notifier, here or in another worker, delivers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.replies import Reply
from core.db import transaction, utcnow
from core.outbox import OutboxMessage
from core.riders import Identity, Rider

log = logging.getLogger("chargebot.notifier")


class DeliveryError(Exception):
    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Sender(Protocol):
    async def send(self, identity: Identity, replies: list[Reply], *, lang: str, kind: str,
                   payload: dict) -> str:
        """Deliver, or raise DeliveryError; returns the channel used (e.g. 'wechat:template')."""
        ...


Render = Callable[[str, dict, str], list[Reply]]


def backoff_s(attempt: int) -> float:
    return min(300.0, 2.0 ** attempt)


class Notifier:
    def __init__(
        self, sm: async_sessionmaker[AsyncSession], senders: dict[str, Sender], render: Render,
        *, poll_s: float = 0.5, batch: int = 50, lease_s: float = 30.0, max_attempts: int = 8,
        clock: Callable[[], datetime] = utcnow,
        wait: Callable[[float], Awaitable[bool]] | None = None,
        read_sm: async_sessionmaker[AsyncSession] | None = None,
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

    async def run(self) -> None:
        while True:
            try:
                n = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notifier pass failed; retrying")
                n = 0
            if n == 0:
                if self._wait is not None:
                    await self._wait(self.poll_s)
                else:
                    await asyncio.sleep(self.poll_s)

    async def claim(self) -> list[OutboxMessage]:
        now = self.clock()
        pick = (
            select(OutboxMessage.id)
            .where(
                OutboxMessage.state == "pending",
                OutboxMessage.due_at <= now,
                or_(OutboxMessage.lease_until.is_(None), OutboxMessage.lease_until < now),
            )
            .order_by(OutboxMessage.id)
            .limit(self.batch)
        )
        if self.read_sm is not self.sm:
            # Look before taking SQLite's write lock: an idle poll must not queue behind (or
            # starve) the ingest writer for nothing.
            async with self.read_sm() as peek:
                if (await peek.execute(pick.limit(1))).first() is None:
                    return []
        async with transaction(self.sm) as session:
            if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                # Several workers: each takes rows nobody else holds, without waiting.
                pick = pick.with_for_update(skip_locked=True)
            ids = list((await session.execute(pick)).scalars())
            if not ids:
                return []
            rows = await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id.in_(ids),
                    OutboxMessage.state == "pending",
                    or_(OutboxMessage.lease_until.is_(None), OutboxMessage.lease_until < now),
                )
                .values(lease_until=now + timedelta(seconds=self.lease_s),
                        attempts=OutboxMessage.attempts + 1)
                .returning(OutboxMessage)
            )
            return sorted(rows.scalars(), key=lambda m: m.id or 0)

    async def run_once(self) -> int:
        claimed = await self.claim()
        for msg in claimed:
            await self.deliver(msg)
        return len(claimed)

    async def _target(self, rider_id: int) -> tuple[Rider, Identity] | None:
        async with self.read_sm() as session:
            rider = await session.get(Rider, rider_id)
            if rider is None:
                return None
            idents = list((await session.execute(
                select(Identity).where(Identity.rider_id == rider_id).order_by(Identity.id)
            )).scalars())
        usable = [i for i in idents if i.platform in self.senders]
        if not usable:
            return None
        # The platform the rider used last is where they are looking.
        preferred = [i for i in usable if i.platform == rider.last_platform]
        return rider, (preferred or usable)[0]

    async def deliver(self, msg: OutboxMessage) -> None:
        target = await self._target(msg.rider_id)
        if target is None:
            await self._finish(msg, "dead", error="no reachable identity")
            return
        rider, identity = target
        try:
            replies = self.render(msg.kind, msg.payload, rider.language)
            channel = await self.senders[identity.platform].send(
                identity, replies, lang=rider.language, kind=msg.kind, payload=msg.payload)
        except DeliveryError as exc:
            if not exc.retryable or msg.attempts >= self.max_attempts:
                log.warning("outbox %s to %s gave up: %s", msg.id, identity.platform, exc)
                await self._finish(msg, "dead", error=str(exc), platform=identity.platform)
            else:
                delay = exc.retry_after or backoff_s(msg.attempts)
                await self._retry(msg, delay, str(exc))
            return
        except Exception as exc:  # a bug in rendering or a sender must not stop the queue
            log.exception("outbox %s failed", msg.id)
            if msg.attempts >= self.max_attempts:
                await self._finish(msg, "dead", error=repr(exc)[:300])
            else:
                await self._retry(msg, backoff_s(msg.attempts), repr(exc)[:300])
            return
        self.delivered += 1
        await self._finish(msg, "sent", platform=identity.platform, channel=channel)

    async def _finish(self, msg: OutboxMessage, state: str, *, error: str | None = None,
                      platform: str | None = None, channel: str | None = None) -> None:
        async with transaction(self.sm) as session:
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id == msg.id).values(
                    state=state, sent_at=self.clock() if state == "sent" else None,
                    last_error=error, platform=platform, channel=channel, lease_until=None,
                )
            )

    async def _retry(self, msg: OutboxMessage, delay: float, error: str) -> None:
        async with transaction(self.sm) as session:
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id == msg.id).values(
                    due_at=self.clock() + timedelta(seconds=delay), lease_until=None,
                    last_error=error[:300],
                )
            )
