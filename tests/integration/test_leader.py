"""Several workers, one scheduler (ISSUE 8, part): the PostgreSQL advisory lock picks the
leader; when it goes away another worker takes over. SQLite runs one worker, which leads."""

from __future__ import annotations

import asyncio

from bot.scheduler import LEADERSHIP
from tests.support.journey import wait_until
from tests.support.server import start_server
from tests.support.settings import make_settings


async def test_one_leader_among_workers_and_a_takeover(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"leader_retry_s": 0.1})
    first = start_server(settings, notifier=False)
    a = await first.__aenter__()
    closed = False
    try:
        lead_a = a.app[LEADERSHIP]
        await wait_until(lambda: lead_a.leading)
        async with start_server(settings, notifier=False) as b:
            lead_b = b.app[LEADERSHIP]
            if not db_url.startswith("postgresql"):
                assert lead_b.leading  # SQLite: one process by design, and it leads
                return
            for _ in range(5):  # over several retry periods the second worker only waits
                await asyncio.sleep(0.15)
                assert lead_a.leading and not lead_b.leading
            await first.__aexit__(None, None, None)  # the leader's process goes away
            closed = True
            await wait_until(lambda: lead_b.leading, timeout=5)
    finally:
        if not closed:
            await first.__aexit__(None, None, None)
