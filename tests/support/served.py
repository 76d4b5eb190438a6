"""`chargebot serve` in a fresh process, for tests and benchmarks that must see a cold start.

In-process test servers share the pytest process's imports and caches, so they cannot show what
the first request after a start-up costs; a new interpreter can. The server runs with a copy of
bot.toml in its own working directory (no developer's bot.secrets.toml, no CHARGEBOT_* from the
environment unless given), web chat on, everything it writes under that directory, and its log
(stdout and stderr) in `serve.log` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    started_s: float  # from launching the process to the first healthy /healthz

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """A free port for a `chargebot` process, below the kernel's ephemeral range and in a band
    of its own per xdist worker: a test that kills its server and starts another on the same
    port must not find, in the gap, a server of a test running beside it (in-process servers
    and fakes bind port 0, so they stay in the ephemeral range)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = 20_000 + (index % 8) * 1_500
    for port in random.sample(range(low, low + 1_500), 1_500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}–{low + 1_499}")


def environment(db_url: str, workdir: Path, root: Path = ROOT,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a `chargebot` process started here sees: this tree, the copied bot.toml, the
    database, and no CHARGEBOT_* from our own environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "bot.toml").exists():
        shutil.copy(root / "bot.toml", workdir / "bot.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEBOT_")}
    env.update({
        "PYTHONPATH": str(root),  # this tree, whatever the virtualenv's editable install says
        "CHARGEBOT_CONFIG": str(workdir / "bot.toml"),
        "CHARGEBOT_DATABASE__URL": db_url,
        "CHARGEBOT_LOG": "INFO",
        **(extra or {}),
    })
    return env


def cli(args: list[str], db_url: str, workdir: Path, root: Path = ROOT) -> str:
    """Run one `chargebot` command the way an operator would; its output, or AssertionError."""
    done = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=workdir,
                          env=environment(db_url, workdir, root), capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"chargebot {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout


@contextlib.asynccontextmanager
async def serve(db_url: str, workdir: Path, env: dict[str, str] | None = None,
                timeout_s: float = 120.0, root: Path = ROOT) -> AsyncIterator[Served]:
    """Start `python -m bot.cli serve` on a free port; yield once /healthz answers; stop it
    with SIGINT (aiohttp's graceful exit) when the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child_env = environment(db_url, workdir, root, {
        "CHARGEBOT_SERVER__PUBLIC_URL": url, "CHARGEBOT_SERVER__WEBCHAT": "true", **(env or {})})
    with open(workdir / "serve.log", "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port)], cwd=workdir, env=child_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            started = await _healthy(url, proc, t0, timeout_s, workdir / "serve.log")
            yield Served(url, proc, workdir, started)
        finally:
            await _stop(proc)


async def _healthy(url: str, proc: subprocess.Popen[bytes], t0: float, timeout_s: float,
                   log: Path) -> float:
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"chargebot serve exited with {proc.returncode}:\n"
                                     + log.read_text(errors="replace")[-4000:])
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/healthz",
                                    timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout_s:
                raise AssertionError(f"chargebot serve not healthy in {timeout_s:.0f} s:\n"
                                     + log.read_text(errors="replace")[-4000:])
            await asyncio.sleep(0.1)


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    deadline = time.perf_counter() + 20
    while proc.poll() is None and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
