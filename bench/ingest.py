"""Pile webhook throughput: the real app (POST /api/piles/events) vs a bare aiohttp JSON handler.

    .venv/bin/python bench/ingest.py [--profile]     (from the repo root; `make bench` runs it)

Both servers run in this process on 127.0.0.1 (web.AppRunner); the real app is bot.app.create_app
on a fresh migrated SQLite file under /tmp/chargebot-bench (notifier off, scheduler on), seeded
with 100 piles x 10 ports and 8 started charges per pile (session refs), so meter events take
the charge lookup path and store meter samples. Signed requests (HMAC, DESIGN §3), ~32 at a time,
for a fixed time each:

  (a) single-event requests, heartbeat and meter alternately, unique ids  -> requests/s
  (b) batches of 100 events: 80 meters for the pile's charges, 10 heartbeats, 10 port_status
      -> events/s

The main figures come from a load generator in a separate process (on 2 cores the server then
has a core to itself); the same load run inside the server's own event loop is shown second,
because there the client eats the server's CPU. --profile adds a cProfile of the real app under
the batch load and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import multiprocessing as mp
import os
import pstats
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import common  # noqa: F401  (puts the repo root on sys.path)
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from common import fresh_sqlite, machine, pct, seed_city, settings_for
from sqlalchemy import func, select

from bot.app import create_app
from bot.piles.ingest import WRITER
from core.charging.tables import MeterSample
from core.db import make_engine, make_sessionmaker, transaction
from core.piles.auth import signed_headers
from core.piles.tables import PileEvent

CONCURRENCY = 32
DURATION_S = 5.0
SAME_PROCESS_DURATION_S = 3.0
WARMUP_S = 1.0
PILES = 100
PORTS = 10
CHARGES_PER_PILE = 8
BATCH = 100
PATH = "/api/piles/events"


# --- request bodies ---------------------------------------------------------------------------

def _ts(base: datetime, n: int) -> str:
    return (base + timedelta(milliseconds=n)).isoformat()


def _energy(base: datetime, n: int) -> int:
    """A cumulative counter that never runs back across runs and processes (1 Wh a second of
    the reading's time since midnight UTC): a newer reading with less energy is a meter fault
    (core.faults), which is not the load this measures."""
    ts = base + timedelta(milliseconds=n)
    return int((ts - ts.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds())


def single_body(pile: dict[str, Any], tag: str, seq: int, base: datetime) -> tuple[bytes, int]:
    eid = f"{tag}-{seq}"
    if seq % 2:
        port, ref = random.choice(list(pile["sessions"].items()))
        event = {"id": eid, "type": "meter", "ts": _ts(base, seq), "port": port,
                 "session": ref, "power_w": 180.0 + seq % 50, "energy_wh": _energy(base, seq)}
    else:
        event = {"id": eid, "type": "heartbeat", "ts": _ts(base, seq), "signal_dbm": -70,
                 "temperature_c": 31.5}
    return json.dumps({"events": [event]}).encode(), 1


def batch_body(pile: dict[str, Any], tag: str, seq: int, base: datetime) -> tuple[bytes, int]:
    sessions = list(pile["sessions"].items())
    events = []
    for i in range(BATCH):
        eid, ts = f"{tag}-{seq}-{i}", _ts(base, seq * BATCH + i)
        if i % 10 == 8:
            events.append({"id": eid, "type": "heartbeat", "ts": ts, "signal_dbm": -71})
        elif i % 10 == 9:
            events.append({"id": eid, "type": "port_status", "ts": ts,
                           "port": PORTS - (i // 10) % (PORTS - CHARGES_PER_PILE),
                           "status": "idle" if seq % 2 else "plugged"})
        else:
            port, ref = sessions[i % len(sessions)]
            events.append({"id": eid, "type": "meter", "ts": ts, "port": port, "session": ref,
                           "power_w": 150.0 + i,
                           "energy_wh": _energy(base, seq * BATCH + i)})
    return json.dumps({"events": events}).encode(), BATCH


BODIES = {"single": single_body, "batch": batch_body}


# --- the load generator -----------------------------------------------------------------------

async def load(url: str, piles: list[dict[str, Any]], kind: str, duration: float,
               warmup: float = WARMUP_S, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """Signed POSTs from `concurrency` workers; counts what completes inside the timed window."""
    make = BODIES[kind]
    run = f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
    base = datetime.now(UTC) - timedelta(minutes=5)
    done, events, errors, latencies = 0, 0, 0, []
    t_start = time.perf_counter()
    t_from, t_stop = t_start + warmup, t_start + warmup + duration

    async def worker(w: int, http: ClientSession) -> None:
        nonlocal done, events, errors
        seq = 0
        while (t0 := time.perf_counter()) < t_stop:
            seq += 1
            pile = piles[(w * 31 + seq) % len(piles)]
            body, n = make(pile, f"{run}-{w}", seq, base)
            headers = signed_headers(pile["id"], pile["secret"], body, time.time())
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            t1 = time.perf_counter()
            if t_from <= t1 <= t_stop:
                done += 1
                events += n
                latencies.append(t1 - t0)
                errors += not ok

    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=60)) as http:
        await asyncio.gather(*(worker(w, http) for w in range(concurrency)))
    return {"requests_s": done / duration, "events_s": events / duration, "errors": errors,
            "requests": done, "p50_ms": pct(latencies, 50) * 1000 if latencies else 0.0,
            "p99_ms": pct(latencies, 99) * 1000 if latencies else 0.0}


def _child(queue: Any, url: str, piles: list[dict[str, Any]], kind: str, duration: float) -> None:
    queue.put(asyncio.run(load(url, piles, kind, duration)))


async def load_elsewhere(url: str, piles: list[dict[str, Any]], kind: str,
                         duration: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, url, piles, kind, duration), daemon=True)
    proc.start()
    try:
        return await asyncio.get_running_loop().run_in_executor(None, queue.get)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)


# --- servers ----------------------------------------------------------------------------------

def _package(where: str, name: str) -> str:
    if "site-packages/" in where:
        return where.split("site-packages/", 1)[1].split("/", 1)[0]
    if where.startswith(str(common.ROOT)):
        return where[len(str(common.ROOT)) + 1:]
    if where == "~":
        return f"builtin {name}"
    return "stdlib " + where.rsplit("/", 1)[-1]


async def profile_app(url: str, piles: list[dict[str, Any]], kind: str) -> str:
    """cProfile the server's thread for 3 s of load from a separate process; own time grouped
    by package, then the top functions. cProfile roughly doubles Python's cost."""
    child = asyncio.ensure_future(load_elsewhere(url, piles, kind, 3.0 + WARMUP_S))
    await asyncio.sleep(WARMUP_S * 1.5)
    prof = cProfile.Profile()
    prof.enable()
    await asyncio.sleep(3.0)
    prof.disable()
    r = await child
    stats = pstats.Stats(prof)
    per_request = 1000 / max(1.0, r["requests_s"] * 3.0)
    by_package: dict[str, float] = {}
    for (where, _line, name), (_cc, _nc, own, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = _package(where, name)
        by_package[key] = by_package.get(key, 0.0) + own
    out = io.StringIO()
    out.write(f"cProfile, real app, {kind} load ({r['requests_s']:.0f} requests/s while "
              f"profiled), own time in ms per request:\n")
    for key, own in sorted(by_package.items(), key=lambda kv: -kv[1])[:10]:
        out.write(f"  {own * per_request:8.2f}  {key}\n")
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(12)
    return "\n".join(ln for ln in out.getvalue().splitlines() if ln.strip()) + "\n"


async def bare_handler(request: web.Request) -> web.Response:
    data = await request.json()
    return web.json_response({"accepted": len(data["events"]), "duplicates": 0, "commands": []})


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}{PATH}"


async def seed(url: str) -> list[dict[str, Any]]:
    engine = make_engine(url)
    async with transaction(make_sessionmaker(engine)) as session:
        city = await seed_city(session, random.Random(1), piles=PILES, ports=PORTS,
                               busy_share=0.0, charges_per_pile=CHARGES_PER_PILE)
    await engine.dispose()
    return [{"id": pid, "secret": v["secret"], "sessions": v["sessions"]}
            for pid, v in city.items()]


async def stored(url: str) -> tuple[int, int]:
    engine = make_engine(url)
    async with make_sessionmaker(engine)() as session:
        n_events = await session.scalar(select(func.count()).select_from(PileEvent))
        n_samples = await session.scalar(select(func.count()).select_from(MeterSample))
    await engine.dispose()
    return n_events or 0, n_samples or 0


def line(label: str, r: dict[str, Any], unit: str) -> str:
    value = r["requests_s"] if unit == "requests/s" else r["events_s"]
    cpu = f", server CPU ~{r['cpu_ms']:.1f} ms/request" if "cpu_ms" in r else ""
    return (f"  {label:<42} {value:>9,.0f} {unit}  (latency p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms, {r['requests']:,} requests, {r['errors']} errors{cpu})")


async def main(db_url: str, profile: bool) -> None:
    piles = await seed(db_url)
    real_app = create_app(settings_for(db_url), notifier=False)
    bare_app = web.Application(client_max_size=2 * 1024 * 1024)
    bare_app.router.add_post(PATH, bare_handler)
    real_runner, real_url = await start(real_app)
    bare_runner, bare_url = await start(bare_app)
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    try:
        for mode, duration in (("separate", DURATION_S), ("same", SAME_PROCESS_DURATION_S)):
            for kind in ("single", "batch"):
                for target, url in (("bare", bare_url), ("app", real_url)):
                    if mode == "separate":
                        cpu0 = time.process_time()
                        r = await load_elsewhere(url, piles, kind, duration)
                        # The server process's CPU (all threads, incl. aiosqlite's) per request;
                        # includes the idle-ish warm-up second and the child's start-up wait.
                        r["cpu_ms"] = (time.process_time() - cpu0) * 1000 / max(
                            1.0, r["requests_s"] * (duration + WARMUP_S))
                    else:
                        r = await load(url, piles, kind, duration)
                    results[(mode, kind, target)] = r
        prof_text = ""
        if profile:
            for kind in ("single", "batch"):
                prof_text += await profile_app(real_url, piles, kind)
    finally:
        await real_runner.cleanup()
        await bare_runner.cleanup()

    writer = real_app[WRITER]
    group_line = (f"group commit: {writer.requests:,} requests in {writer.groups:,} transactions "
                  f"({writer.requests / max(1, writer.groups):.1f} per transaction)")
    n_events, n_samples = await stored(db_url)
    for mode, title in (("separate", f"load generator in a separate process, {DURATION_S:g} s"),
                        ("same", "load generator in the server's own event loop "
                                 f"(competes for CPU), {SAME_PROCESS_DURATION_S:g} s")):
        print(f"{title}, concurrency {CONCURRENCY}:")
        s_app, s_bare = results[(mode, "single", "app")], results[(mode, "single", "bare")]
        b_app, b_bare = results[(mode, "batch", "app")], results[(mode, "batch", "bare")]
        print(line("(a) single events, bare handler", s_bare, "requests/s"))
        print(line("(a) single events, POST /api/piles/events", s_app, "requests/s"))
        ratio = s_app["requests_s"] / s_bare["requests_s"]
        print(f"  (a) ratio app/bare: {ratio:.0%}  (target >= 50 %: "
              f"{'met' if ratio >= 0.5 else 'NOT met'})")
        print(line("(b) batches of 100, bare handler", b_bare, "events/s"))
        print(line("(b) batches of 100, /api/piles/events", b_app, "events/s"))
        print(f"  (b) ratio app/bare: {b_app['events_s'] / b_bare['events_s']:.0%}; "
              f"target >= 10,000 events/s: {'met' if b_app['events_s'] >= 10_000 else 'NOT met'}")
    print(f"stored: {n_events:,} pile events, {n_samples:,} meter samples (all runs)")
    print(group_line)
    if prof_text:
        print(prof_text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the app under load")
    args = parser.parse_args()
    print(f"pile webhook ingest, SQLite file DB, {machine()}")
    url = fresh_sqlite("ingest")
    asyncio.run(main(url, args.profile))
