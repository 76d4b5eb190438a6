"""Cold start: the first bill and the first fault notice after `chargebot serve` starts.

    .venv/bin/python bench/cold_start.py [--rounds 3] [--root DIR]   (from the repo root)

Issue 14: a rider heard of an over-temperature fault 4.4 s after the pile's POST, because the
first settlement imported numpy and scipy on the event loop. Each round starts fresh
`chargebot serve` processes (tests/support/served.py: SQLite in a temporary directory, web chat on,
the site and the pile added with `chargebot sites import` and `chargebot piles add`) and
measures, over HTTP as a pile controller and a web-chat rider see it:

  (a) first bill: a web-chat rider starts a charge on a port card; the pile takes the start
      command, reports session_started and meter readings; the clock runs from the signed
      `session_ended` POST until the bill is visible in the rider's web chat (long poll);
  (b) first fault: the same on a second server, but the pile reports an over_temperature
      fault mid-charge; the clock runs from the `fault` POST until the rider sees the bill cut
      short by the fault.

Baseline in the same run: the second bill (or fault) on the same server, another rider on
another port, right after the first. Also printed: start-up (process launched → /healthz
answers) and the server's worst event-loop lag over the last minute from /metrics.

--root runs another checkout of the code (e.g. `git archive HEAD | tar -x -C /tmp/before`) for a
before/after comparison; the benchmark's own client code stays this tree's. Target: the first
bill and the first fault notice under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import common  # noqa: F401  (puts the repo root on sys.path)
from common import ROOT, machine

from tests.support.journey import PileClient, WebRider, button
from tests.support.served import Served, cli, serve

SECRET = "bench-cold-secret"
TARGET_S = 1.0


def _seed(db_url: str, workdir: Path, root: Path) -> None:
    """The operator's way: migrate, import the site, add the pile with a known secret."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sites.csv").write_text("id,name,address,lat,lon,kind,tariff\n"
                                       "C01,冷启动车棚,文三路1号,30.27,120.15,community,standard\n")
    cli(["db", "upgrade"], db_url, workdir, root)
    cli(["sites", "import", str(workdir / "sites.csv")], db_url, workdir, root)
    cli(["piles", "add", "--site", "C01", "--id", "P0001", "--ports", "4", "--secret", SECRET],
        db_url, workdir, root)


async def _started(http: aiohttp.ClientSession, server: Served, pile: PileClient, port: int
                   ) -> tuple[WebRider, str, datetime]:
    """A web-chat rider starts a charge; the pile runs it for 20 minutes (started, metered)
    and the rider has heard that it started: nothing else is left in flight."""
    rider = WebRider(http, server.url)  # its identity: the cookie the server issues
    card = await rider.say(f"P0001-{port:02d}")
    await rider.press(button(card, f"start:P0001-{port:02d}"))
    ref = next(c["session"] for c in await pile.commands(wait=10)
               if c["type"] == "start" and c["port"] == port)
    t0 = datetime.now(UTC) - timedelta(minutes=25)
    await pile.post([pile.event("session_started", t0, port=port, session=ref), *[
        pile.event("meter", t0 + timedelta(minutes=m), port=port, session=ref, power_w=230.0,
                   energy_wh=230 * m // 60, temperature_c=31.0 + m / 10)
        for m in range(1, 21)]])
    await rider.wait_message(f"P0001-{port:02d}")  # "charging started"
    return rider, ref, t0


async def _timed(post: Callable[[], Awaitable[dict]], rider: WebRider, port: int
                 ) -> tuple[float, float]:
    """(POST round trip, POST sent → the bill in the rider's web chat), in seconds."""
    t0 = time.perf_counter()
    await post()
    posted = time.perf_counter() - t0
    while True:
        msg = await rider.wait_message("🧾", timeout=60)
        if f"P0001-{port:02d}" in msg["text"]:
            return posted, time.perf_counter() - t0
        rider.inbox.remove(msg)


async def _bill(http: aiohttp.ClientSession, server: Served, pile: PileClient, port: int
                ) -> tuple[float, float]:
    rider, ref, t0 = await _started(http, server, pile, port)
    return await _timed(lambda: pile.post([pile.event(
        "session_ended", t0 + timedelta(minutes=21), port=port, session=ref, reason="full",
        energy_wh=80, duration_s=21 * 60)]), rider, port)


async def _fault(http: aiohttp.ClientSession, server: Served, pile: PileClient, port: int
                 ) -> tuple[float, float]:
    rider, _ref, t0 = await _started(http, server, pile, port)
    return await _timed(lambda: pile.post([pile.event(
        "fault", t0 + timedelta(minutes=21), port=port, code="over_temperature")]), rider, port)


async def _loop_lag(http: aiohttp.ClientSession, server: Served) -> float | None:
    async with http.get(f"{server.url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("chargebot_event_loop_lag_max_seconds "):
                return float(line.split()[1])
    return None  # a tree from before the gauge (--root)


async def one_server(kind: str, root: Path) -> dict[str, float | None]:
    """A fresh server; the first and the second `kind` (bill or fault) on it."""
    measure = _bill if kind == "bill" else _fault
    with tempfile.TemporaryDirectory(prefix=f"chargebot-cold-{kind}-") as tmp:
        workdir = Path(tmp)
        db_url = f"sqlite+aiosqlite:///{workdir / 'chargebot.db'}"
        _seed(db_url, workdir, root)
        # Its riders have no wallet, and no provider here could fill one: no start floor.
        async with serve(db_url, workdir, {"CHARGEBOT_BILLING__START_MIN_BALANCE_FEN": "0"},
                         root=root) as server, \
                aiohttp.ClientSession() as http:
            pile = PileClient(http, server.url, "P0001", SECRET)
            await pile.post([pile.event("heartbeat", datetime.now(UTC))])
            first_post, first = await measure(http, server, pile, 1)
            lag = await _loop_lag(http, server)
            second_post, second = await measure(http, server, pile, 2)
            return {"startup": server.started_s, "first_post": first_post, "first": first,
                    "second_post": second_post, "second": second, "lag": lag}


def _ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def report(kind: str, runs: list[dict[str, float | None]]) -> None:
    def col(key: str) -> list[float]:
        return [v for r in runs if (v := r[key]) is not None]

    first, second = col("first"), col("second")
    f50, s50 = statistics.median(first), statistics.median(second)
    what = {"bill": "(a) first bill: session_ended POST → bill in the web chat",
            "fault": "(b) first fault: fault POST → the cut-short bill in the web chat"}[kind]
    print(what)
    print(f"    first  : median {_ms(f50)}, max {_ms(max(first))}  "
          f"(each: {', '.join(_ms(x) for x in first)}; the POST itself median "
          f"{_ms(statistics.median(col('first_post')))})")
    print(f"    second : median {_ms(s50)}, max {_ms(max(second))}  (baseline, same server)")
    print(f"    ratio first/second (medians): {f50 / s50:.1f}x; target first < "
          f"{TARGET_S * 1000:.0f} ms: {'met' if max(first) < TARGET_S else 'MISSED'} (max)")
    lags = col("lag")
    print(f"    start-up to /healthz: median {statistics.median(col('startup')):.1f} s; "
          "worst event-loop lag in the minute up to the first (start-up included): "
          + (f"{_ms(max(lags))}" if lags else "n/a (no gauge in this tree)"))


async def main(rounds: int, root: Path) -> None:
    print(machine())
    print(f"code under test: {root}; {rounds} fresh servers for each of (a) and (b)")
    results: dict[str, list[dict[str, float | None]]] = {"bill": [], "fault": []}
    for _ in range(rounds):
        for kind in ("bill", "fault"):
            results[kind].append(await one_server(kind, root))
    for kind in ("bill", "fault"):
        report(kind, results[kind])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the checkout whose `chargebot serve` is measured")
    args = ap.parse_args()
    asyncio.run(main(args.rounds, args.root.resolve()))
