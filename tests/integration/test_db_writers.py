"""Writers of one process take turns (core.db): on SQLite a writer that arrives while others
keep committing back to back gets the next turn, instead of polling SQLite's lock with growing
sleeps while they win every race (a bill's "sent" mark once waited 4.3 s behind ingest)."""

from __future__ import annotations

import asyncio

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from core.db import transaction
from core.piles.tables import Site
from tests.support.journey import wait_until

HOLD_S = 0.005  # the stream's transactions hold the write lock this long, like an ingest group


async def test_a_writer_gets_its_turn_behind_writers_committing_back_to_back(
    sm: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sm) as s:
        s.add_all([Site(id=f"W{i}", name="0", lat=30.0, lon=120.0) for i in range(2)])
    commits = 0
    stop = asyncio.Event()

    async def stream() -> None:
        # One writer that begins its next transaction the moment it commits, as the ingest
        # writer does with groups queued.
        nonlocal commits
        while not stop.is_set():
            async with transaction(sm) as s:
                await s.execute(update(Site).where(col(Site.id) == "W0")
                                .values(name=str(commits)))
                await asyncio.sleep(HOLD_S)
            commits += 1

    task = asyncio.create_task(stream())
    try:
        await wait_until(lambda: commits >= 10)
        before = commits
        async with transaction(sm) as s:
            await s.execute(update(Site).where(col(Site.id) == "W1").values(name="y"))
            waited = commits - before  # the stream's commits before this writer got in
    finally:
        stop.set()
        await task
    # The transaction under way when it asked, at most one more: then its turn.
    assert waited <= 2, f"{waited} commits went first"
