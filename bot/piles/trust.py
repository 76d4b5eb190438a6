"""What every pile transport needs to trust a pile: its secret, looked up and cached per
worker, and each signature taken once within the skew window."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict

from aiohttp import web
from sqlalchemy import select
from sqlmodel import col

from bot.context import Context
from core.piles.auth import MAX_SKEW_S
from core.piles.tables import Pile

SECRET_TTL_S = 60.0
# Misses at once (many piles new to this worker, e.g. after a restart) beyond the engine's pool
# (10 on PostgreSQL) made it open and close an overflow connection per lookup, a backend fork
# each: ~480 new connections in 17 s of bench/ingest_workers.py. A few at a time stay in the pool.
SECRET_LOOKUPS = 4


MAX_SECRETS = 200_000  # well above a city's fleet; beyond it the oldest lookups go
# Unknown ids are anyone's to invent: remembered a little (a pile added a moment ago is found
# within SECRET_TTL_S), in their own small store so a flood of them never evicts a real pile.
MAX_MISSES = 4_096


class SecretCache:
    """Pile secrets, looked up once a minute instead of on every request of a busy fleet."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()
        self._lookups = asyncio.Semaphore(SECRET_LOOKUPS)

    async def get(self, ctx: Context, pile_id: str) -> str | None:
        now = time.monotonic()
        hit = self._entries.get(pile_id)
        if hit is not None and now - hit[0] < SECRET_TTL_S:
            return hit[1]
        missed = self._misses.get(pile_id)
        if missed is not None and now - missed < SECRET_TTL_S:
            return None
        async with self._lookups, ctx.reader()() as session:
            secret = await session.scalar(
                select(col(Pile.secret)).where(col(Pile.id) == pile_id))
        if secret is None:
            self._entries.pop(pile_id, None)
            self._misses[pile_id] = now
            self._misses.move_to_end(pile_id)
            while len(self._misses) > MAX_MISSES:
                self._misses.popitem(last=False)
            return None
        self._misses.pop(pile_id, None)
        self._entries[pile_id] = (now, secret)
        self._entries.move_to_end(pile_id)
        while len(self._entries) > MAX_SECRETS:
            self._entries.popitem(last=False)
        return secret

    def cached(self, pile_id: str) -> str | None:
        """The secret held for a pile, without a lookup (for tests and diagnostics)."""
        hit = self._entries.get(pile_id)
        return hit[1] if hit is not None else None


# A pile signature is good for MAX_SKEW_S either side of now; within that window a command poll
# signature is accepted once. Per process: with several workers a replay may land on another
# worker once more (docs/operations.md), which a 300 s window and a one-per-worker budget bound.
MAX_REPLAY_ENTRIES = 500_000


class ReplayCache:
    """Signatures already used, each kept until its timestamp leaves the skew window."""

    def __init__(self, max_entries: int = MAX_REPLAY_ENTRIES) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._expiry: list[tuple[float, tuple[str, str]]] = []  # a heap by expiry
        self.max_entries = max_entries

    def first_use(self, pile_id: str, timestamp: str, signature: str, now: float) -> bool:
        """True the first time (pile, signature) is seen inside the window, False after."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        key = (pile_id, signature)
        if key in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            # Full of live entries (a flood of validly signed requests, i.e. many real piles):
            # the soonest to expire goes; it is the least useful to an attacker.
            self._seen.discard(heapq.heappop(self._expiry)[1])
        self._seen.add(key)
        heapq.heappush(self._expiry, (int(timestamp) + MAX_SKEW_S, key))
        return True

    def __len__(self) -> int:
        return len(self._seen)


SECRETS = web.AppKey("pile_secrets", SecretCache)
REPLAYS = web.AppKey("pile_replays", ReplayCache)
