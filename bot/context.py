"""What every handler and route shares: settings, database, clock and in-process wake-ups."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.tasks import wait_event
from core.config import Settings
from core.db import utcnow


class Wakeups:
    """Wake waiting loops at once after a commit in this process; other processes poll.

    Each waiter gets its own event, so one wake reaches every loop waiting on that key.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def wake(self, key: str) -> None:
        for ev in self._waiters.get(key, ()):
            ev.set()

    async def wait(self, key: str, timeout: float) -> bool:
        ev = asyncio.Event()
        self._waiters[key].add(ev)
        try:
            return await wait_event(ev, timeout)
        finally:
            self._waiters[key].discard(ev)
            if not self._waiters[key]:
                self._waiters.pop(key, None)


@dataclass
class Context:
    settings: Settings
    engine: AsyncEngine
    sm: async_sessionmaker[AsyncSession]
    clock: Callable[[], datetime] = utcnow
    wakeups: Wakeups = field(default_factory=Wakeups)
    # Read-only sessions: on SQLite they never queue behind writers.
    read_sm: async_sessionmaker[AsyncSession] | None = None
    pile_listeners: list[Callable[[str], None]] = field(default_factory=list)
    # Fetches and stores a rider's photo (bot.skins.photos.intake, set by its setup): the
    # handlers call it without importing the skins that sit above them.
    photo_intake: Callable[..., Awaitable[Any]] | None = None

    def reader(self) -> async_sessionmaker[AsyncSession]:
        return self.read_sm or self.sm

    def wake_outbox(self) -> None:
        self.wakeups.wake("outbox")

    def wake_pile(self, pile_id: str) -> None:
        self.wakeups.wake(f"pile:{pile_id}")
        for listener in self.pile_listeners:  # e.g. the MQTT transport publishing commands
            listener(pile_id)


CTX = web.AppKey("ctx", Context)
