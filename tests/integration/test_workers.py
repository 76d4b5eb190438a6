"""`chargebot serve --workers N` (ISSUE 8, part): N processes behind one port on PostgreSQL,
exactly one of them running the scheduler; SQLite refuses more than one worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support.served import ROOT, free_port


async def test_two_workers_share_the_port_and_one_leads(pg_database: str) -> None:
    port = free_port()
    env = {**os.environ, "CHARGEBOT_DATABASE__URL": pg_database, "CHARGEBOT_LOG": "WARNING",
           "CHARGEBOT_SCHEDULER__LEADER_RETRY_S": "0.2"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", "--workers", "2", "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    leaders: list[str] = []
    # Until both workers have answered, however long two fresh workers take to load and warm
    # up on a loaded machine (bot.warmup runs before a worker listens).
    deadline = asyncio.get_running_loop().time() + 180
    try:
        while asyncio.get_running_loop().time() < deadline:
            try:
                # A new connection each time, so the kernel may hand it to either worker.
                async with aiohttp.ClientSession() as http, http.get(
                        f"http://127.0.0.1:{port}/metrics",
                        headers={"Connection": "close"}) as r:
                    text = await r.text()
                leaders.append(next(line for line in text.splitlines()
                                    if line.startswith("chargebot_scheduler_leader")))
                if len(set(leaders)) == 2 and len(leaders) >= 20:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        # Both workers answer; one says it leads, the other that it does not.
        assert set(leaders) == {"chargebot_scheduler_leader 1", "chargebot_scheduler_leader 0"}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


def test_sqlite_refuses_several_workers(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--database", f"sqlite+aiosqlite:///{tmp_path}/x.db",
         "serve", "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "CHARGEBOT_LOG": "WARNING"})
    assert r.returncode != 0 and "needs PostgreSQL" in r.stderr
