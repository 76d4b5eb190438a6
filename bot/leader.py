"""One scheduler among N workers: the PostgreSQL advisory lock decides who leads.

The lock is held by one dedicated connection; if the leader's process dies (or its connection
drops), PostgreSQL releases the lock and another worker takes over at its next try. SQLite is
one process by design (the embedded default), so there the single worker always leads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.tasks import stop_task

log = logging.getLogger("chargebot.leader")
LOCK_KEY = 0x63_68_61_72_67_65  # "charge": one number every worker agrees on


class Leadership:
    """Runs `lead()` while this worker holds the lock, and `follow()` when it loses it."""

    def __init__(self, engine: AsyncEngine, lead: Callable[[], Awaitable[None]],
                 follow: Callable[[], Awaitable[None]], *, retry_s: float = 5.0) -> None:
        self.engine, self.lead, self.follow, self.retry_s = engine, lead, follow, retry_s
        self.leading = False
        self._conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler-leadership")

    async def stop(self) -> None:
        await stop_task(self._task)
        await self._step_down()

    async def _run(self) -> None:
        if self.engine.dialect.name != "postgresql":
            self.leading = True
            await self.lead()
            return
        while True:
            try:
                if not self.leading:
                    await self._try()
                else:
                    await self._check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away: step down, try again later
                log.warning("leadership check failed; stepping down", exc_info=True)
                await self._step_down()
            await asyncio.sleep(self.retry_s)

    async def _try(self) -> None:
        conn = await self.engine.connect()
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                  {"k": LOCK_KEY})).scalar()
        if not got:
            await conn.close()
            return
        self._conn, self.leading = conn, True
        log.info("this worker leads the scheduler")
        await self.lead()

    async def _check(self) -> None:
        assert self._conn is not None
        await self._conn.execute(text("SELECT 1"))

    async def _step_down(self) -> None:
        if self.leading:
            self.leading = False
            try:
                await self.follow()
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        await conn.close()  # closing the session releases the lock
                    except Exception:
                        log.debug("closing the leader connection failed", exc_info=True)
