"""Pile webhook ingest with `chargebot serve --workers 1/2` on PostgreSQL vs a bare aiohttp handler.

    .venv/bin/python bench/ingest_workers.py [--duration 15] [--clients 1] [--piles 1000]
                                             [--profile]      (from the repo root)

Issue 8: "Ingest events/s with 1, 2 workers on PostgreSQL vs a bare aiohttp handler in the same
run; target >= 5,000 events/s on 2 cores (enough for ~150k piles heartbeating every 30 s)."

A fresh database `chargebot_bench_ingest` (dropped first if present) on the PostgreSQL at
CHARGEBOT_BENCH_PG (default postgresql://postgres@127.0.0.1:5432/postgres) is migrated and seeded
like bench/ingest.py: `--piles` piles x 10 ports, 8 started charges per pile with session refs.
Then, one after the other, each server is started as its own process group on a free port and
driven by the same load:

  bare 1 / bare 2   this script's bare handler (parse the JSON, answer) in 1 or 2 processes
                    sharing the port with SO_REUSEPORT, the way `serve --workers` does;
  app 1 / app 2     `python -m bot.cli serve --workers N` (notifier and scheduler on, as in
                    production; CHARGEBOT_LOG=WARNING).

Two loads, each for a fixed time after a warm-up, from `--clients` load-generator processes
(multiprocessing, spawn; 32 concurrent requests in all, split between them), the request bodies
of bench/ingest.py (signed, unique event ids):

  (a) single-event requests, heartbeat and meter alternately -> requests/s
  (b) batches of 100: 80 meters for open charges, 10 heartbeats, 10 port_status -> events/s

Client, server, PostgreSQL and the machine all share the same 2 cores, so every line also shows
where the CPU went during the timed window (cores busy, from /proc): the server's process group,
all `postgres` processes, the load generator(s), and the rest of the machine (other people's
work). After each app run the rows added to pile_events and meter_samples are counted and must
equal what the server said it accepted: nothing acknowledged may be lost.

--profile adds a run of `serve --workers 1` under cProfile with the batch load and prints where
the worker's time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing as mp
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import common  # noqa: F401  (puts the repo root on sys.path)
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from common import ROOT, machine, pct, seed_city
from ingest import BATCH, CHARGES_PER_PILE, PATH, PORTS, batch_body, single_body

from bot.cli.serve import run_workers
from core.db import make_engine, make_sessionmaker, transaction
from core.migrate import upgrade
from core.piles.auth import signed_headers

ADMIN = os.environ.get("CHARGEBOT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "chargebot_bench_ingest"
CONCURRENCY = 32
WARMUP_S = 2.0
TARGET_EVENTS_S = 5_000
TICK = os.sysconf("SC_CLK_TCK")
BODIES = {"single": single_body, "batch": batch_body}
KINDS = {"single": "(a) single events", "batch": f"(b) batches of {BATCH}"}


def db_url(name: str, driver: str = "postgresql+asyncpg") -> str:
    return ADMIN.rsplit("/", 1)[0].replace("postgresql", driver, 1) + f"/{name}"


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> str:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{DB_NAME}"'))
    url = db_url(DB_NAME)
    upgrade(url)
    return url


def drop_database() -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))


async def seed(url: str, piles: int) -> list[dict[str, Any]]:
    import random

    engine = make_engine(url)
    async with transaction(make_sessionmaker(engine)) as session:
        city = await seed_city(session, random.Random(1), piles=piles, ports=PORTS,
                               busy_share=0.0, charges_per_pile=CHARGES_PER_PILE)
    await engine.dispose()
    import asyncpg

    conn = await asyncpg.connect(db_url(DB_NAME, "postgresql"))
    try:
        # seed_city writes explicit ids; PostgreSQL's sequences must move past them or the
        # app's own inserts (riders, ports) would collide.
        for table in ("ports", "riders"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT max(id) FROM {table}))")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return [{"id": pid, "secret": v["secret"], "sessions": v["sessions"]}
            for pid, v in city.items()]


async def _stored() -> tuple[int, int, int]:
    """Rows in pile_events and meter_samples, and connections ever opened to the database."""
    import asyncpg

    conn = await asyncpg.connect(db_url(DB_NAME, "postgresql"))
    try:
        events = await conn.fetchval("SELECT count(*) FROM pile_events")
        samples = await conn.fetchval("SELECT count(*) FROM meter_samples")
        sessions = await conn.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", DB_NAME)
    finally:
        await conn.close()
    return events, samples, sessions


def stored() -> tuple[int, int, int]:
    return asyncio.run(_stored())


# --- CPU accounting from /proc ------------------------------------------------------------------

def _procs() -> list[tuple[str, int, int]]:
    """(comm, process group, utime+stime ticks) of every process we can read; a postgres
    process's comm is its title ("postgres: 15/main: postgres chargebot_bench_ingest …")."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
            comm = text[text.index("(") + 1:text.rindex(")")]
            if comm == "postgres":
                comm = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
        except OSError:
            continue
        f = text[text.rindex(")") + 2:].split()
        out.append((comm, int(f[2]), int(f[11]) + int(f[12])))
    return out


def _ours(title: str) -> bool:
    """A PostgreSQL process working for this bench: a backend of its database, or a shared
    background process (WAL writer, checkpointer, …). Other databases' backends (other
    people's tests) count as the rest of the machine."""
    if not title.startswith("postgres"):
        return False
    if f" {DB_NAME} " in title:
        return True
    return "(" not in title and "[local]" not in title  # no client address: background


def _machine_busy() -> int:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in cpu[:8]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


@dataclass
class CpuSample:
    server: int
    postgres: int
    busy: int

    @classmethod
    def take(cls, server_pgid: int) -> CpuSample:
        server = postgres = 0
        for comm, pgid, ticks in _procs():
            if pgid == server_pgid:
                server += ticks
            elif _ours(comm):
                postgres += ticks
        return cls(server, postgres, _machine_busy())


# --- servers --------------------------------------------------------------------------------

async def bare_handler(request: web.Request) -> web.Response:
    data = await request.json()
    return web.json_response({"accepted": len(data["events"]), "duplicates": 0, "commands": []})


async def bare_health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _bare_one(port: int, reuse_port: bool) -> None:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.router.add_post(PATH, bare_handler)
    app.router.add_get("/healthz", bare_health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, reuse_port=reuse_port,
                access_log=None)


def serve_bare(workers: int, port: int) -> None:
    """The bare handler behind one port in `workers` processes, shaped like `chargebot serve`."""
    if workers == 1:
        _bare_one(port, False)
        return
    run_workers(workers, _bare_one, (port, True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str  # "bare" or "app"
    workers: int
    db: str
    profile_to: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def label(self) -> str:
        name = "bare handler" if self.kind == "bare" else "serve"
        return f"{name}, {self.workers} worker{'s' if self.workers > 1 else ''}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def start(self) -> None:
        self.port = free_port()
        if self.kind == "bare":
            cmd = [sys.executable, __file__, "--serve-bare", str(self.workers), str(self.port)]
        else:
            prof = ["-m", "cProfile", "-o", self.profile_to] if self.profile_to else []
            cmd = [sys.executable, *prof, "-m", "bot.cli", "serve", "--workers",
                   str(self.workers), "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "CHARGEBOT_DATABASE__URL": self.db, "CHARGEBOT_LOG": "WARNING"}
        # Kept open for the server's lifetime (its output on failure); closed in stop().
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        # Its own session, hence its own process group: CPU is counted per group, and the
        # workers are stopped with the group even if the parent dies first.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.append(self)
        health = f"http://127.0.0.1:{self.port}/healthz"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited: {self.output()}")
            try:
                # With several workers the kernel picks one per connection; ask a few times so
                # that, most likely, every worker has bound the port.
                for _ in range(4 * self.workers):
                    with urllib.request.urlopen(health, timeout=2) as r:
                        r.read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.label} not healthy within 90 s: {self.output()}")

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        # Workers left behind by a parent that died hard are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self in RUNNING:
            RUNNING.remove(self)
        if self.log is not None:
            self.log.close()
            self.log = None


RUNNING: list[Server] = []
CLIENTS: list[Any] = []


# --- the load generator ------------------------------------------------------------------------

async def load(url: str, piles: list[dict[str, Any]], kind: str, start_at: float,
               duration: float, concurrency: int, client: int) -> dict[str, Any]:
    """Signed POSTs from `concurrency` workers from wall-clock `start_at`; counts what completes
    inside [start_at + WARMUP_S, + duration], and every acknowledged event for the loss check."""
    make = BODIES[kind]
    run = f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
    base = datetime.now(UTC) - timedelta(minutes=5)
    # Wall-clock alignment, so the parent's CPU samples and every client's window coincide.
    t_start = time.perf_counter() + (start_at - time.time())
    t_from, t_stop = t_start + WARMUP_S, t_start + WARMUP_S + duration
    done = events = errors = accepted = duplicates = meters = 0
    latencies: list[float] = []

    async def worker(w: int, http: ClientSession) -> None:
        nonlocal done, events, errors, accepted, duplicates, meters
        seq = 0
        while (t0 := time.perf_counter()) < t_stop:
            seq += 1
            pile = piles[(client * 1009 + w * 31 + seq) % len(piles)]
            body, n = make(pile, f"{run}-{w}", seq, base)
            headers = signed_headers(pile["id"], pile["secret"], body, time.time())
            try:
                async with http.post(url, data=body, headers=headers) as r:
                    answer = await r.read()
                    ok = r.status == 200
            except OSError:
                ok, answer = False, b""
            t1 = time.perf_counter()
            if ok:
                got = json.loads(answer)
                accepted += got["accepted"]
                duplicates += got["duplicates"]
                if got["accepted"] == n:
                    meters += body.count(b'"type": "meter"')
            if t_from <= t1 <= t_stop:
                done += 1
                events += n
                latencies.append(t1 - t0)
                errors += not ok

    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    cpu0 = time.process_time()
    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=60)) as http:
        await asyncio.gather(*(worker(w, http) for w in range(concurrency)))
    return {"requests": done, "events": events, "errors": errors, "accepted": accepted,
            "duplicates": duplicates, "meters": meters, "latencies": latencies,
            "cpu_s": time.process_time() - cpu0,
            "elapsed_s": time.perf_counter() - t_start}


def _client(queue: Any, *args: Any) -> None:
    queue.put(asyncio.run(load(*args)))


@dataclass
class Result:
    requests_s: float
    events_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    accepted: int
    duplicates: int
    meters: int
    cores: dict[str, float] = field(default_factory=dict)
    client_ms: float = 0.0  # the load generator's CPU per request


def drive(server: Server, piles: list[dict[str, Any]], kind: str, duration: float,
          clients: int) -> Result:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3.0  # spawned clients need ~1-2 s to import the app's modules
    per_client = CONCURRENCY // clients
    procs = [ctx.Process(target=_client, daemon=True,
                         args=(queue, server.url, piles, kind, start_at, duration, per_client, c))
             for c in range(clients)]
    for p in procs:
        p.start()
        CLIENTS.append(p)
    assert server.proc is not None
    time.sleep(max(0.0, start_at + WARMUP_S - time.time()))
    c0 = CpuSample.take(server.proc.pid)
    time.sleep(max(0.0, start_at + WARMUP_S + duration - time.time()))
    c1 = CpuSample.take(server.proc.pid)
    parts = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
        CLIENTS.remove(p)
    lat = [x for r in parts for x in r["latencies"]]
    done = sum(r["requests"] for r in parts)
    client_cpu = sum(r["cpu_s"] for r in parts) / max(r["elapsed_s"] for r in parts)
    window = duration * TICK
    server_cores = (c1.server - c0.server) / window
    pg_cores = (c1.postgres - c0.postgres) / window
    busy = (c1.busy - c0.busy) / window
    return Result(
        requests_s=done / duration, events_s=sum(r["events"] for r in parts) / duration,
        p50_ms=pct(lat, 50) * 1000 if lat else 0.0, p99_ms=pct(lat, 99) * 1000 if lat else 0.0,
        requests=done, errors=sum(r["errors"] for r in parts),
        accepted=sum(r["accepted"] for r in parts),
        duplicates=sum(r["duplicates"] for r in parts), meters=sum(r["meters"] for r in parts),
        cores={"server": server_cores, "postgres": pg_cores, "client": client_cpu,
               "other": max(0.0, busy - server_cores - pg_cores - client_cpu), "busy": busy},
        # The clients' CPU over their whole run (warm-up included) per request.
        client_ms=1000 * sum(r["cpu_s"] for r in parts) / max(
            1, done * (1 + WARMUP_S / duration)),
    )


def line(label: str, r: Result, kind: str) -> str:
    value, unit = (r.requests_s, "requests/s") if kind == "single" else (r.events_s, "events/s")
    c = r.cores
    return (f"  {label:<24} {value:>8,.0f} {unit:<10} ({r.requests_s:,.0f} req/s, "
            f"{r.events_s:,.0f} events/s; p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms; "
            f"{r.requests:,} requests, {r.errors} errors)\n"
            f"  {'':<24} cores busy {c['busy']:.2f}: server {c['server']:.2f}, postgres "
            f"{c['postgres']:.2f}, load generator {c['client']:.2f} "
            f"(~{r.client_ms:.2f} ms/request), rest of machine {c['other']:.2f}; "
            f"{per_core(r):,.0f} events/s per core of server + postgres")


def per_core(r: Result) -> float:
    """Events per second of CPU spent by the server and its database: the machine's other
    load changes how much CPU the server gets, far less what it does with it."""
    return r.events_s / max(1e-9, r.cores["server"] + r.cores["postgres"])


def profile_text(path: str, requests: int) -> str:
    """Own time by package, then the top functions, of a cProfile'd `serve --workers 1`."""
    stats = pstats.Stats(path)
    by_package: dict[str, float] = {}
    for (where, _line, name), (_cc, _nc, own, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in where:
            key = where.split("site-packages/", 1)[1].split("/", 1)[0]
        elif where.startswith(str(ROOT)):
            key = where[len(str(ROOT)) + 1:]
        elif where == "~":
            key = f"builtin {name}"
        else:
            key = "stdlib " + where.rsplit("/", 1)[-1]
        by_package[key] = by_package.get(key, 0.0) + own
    total = sum(by_package.values())
    out = io.StringIO()
    out.write(f"cProfile of serve --workers 1 under the batch load ({requests:,} requests "
              f"answered in the run, {total:.1f} s of profiled CPU incl. start-up and idle "
              f"polling), own time by package, ms per request:\n")
    for key, own in sorted(by_package.items(), key=lambda kv: -kv[1])[:14]:
        out.write(f"  {own * 1000 / max(1, requests):8.2f}  {key}\n")
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(12)
    # The product's own functions by cumulative time: which step of a request the time is in.
    stats.sort_stats("cumulative").print_stats(rf"{ROOT}/(bot|core)/", 12)
    return "\n".join(ln for ln in out.getvalue().splitlines() if ln.strip()) + "\n"


def main(args: argparse.Namespace) -> None:
    print(f"pile webhook ingest, chargebot serve on PostgreSQL, {machine()}")
    t0 = time.perf_counter()
    url = create_database()
    piles = asyncio.run(seed(url, args.piles))
    print(f"fresh database {DB_NAME}, {args.piles:,} piles x {PORTS} ports, "
          f"{args.piles * CHARGES_PER_PILE:,} started charges, seeded in "
          f"{time.perf_counter() - t0:.1f} s; {args.duration:g} s per load after "
          f"{WARMUP_S:g} s warm-up, concurrency {CONCURRENCY} from {args.clients} "
          f"load-generator process(es)")
    results: dict[tuple[str, int, str], Result] = {}
    losses: list[str] = []
    for workers in (1, 2):
        for kind in ("bare", "app"):
            server = Server(kind, workers, url)
            server.start()
            try:
                for load_kind in ("single", "batch"):
                    before = stored() if kind == "app" else (0, 0, 0)
                    r = drive(server, piles, load_kind, args.duration, args.clients)
                    results[(kind, workers, load_kind)] = r
                    if kind == "app":
                        time.sleep(1.5)  # PostgreSQL publishes connection counts ~1 s late
                        after = stored()
                        ev, sm = after[0] - before[0], after[1] - before[1]
                        # Minus this script's own counting connection; a new connection costs
                        # a PostgreSQL backend fork and asyncpg's set-up round trips.
                        opened = after[2] - before[2] - 1
                        ok = ev == r.accepted and sm == r.meters and r.duplicates == 0
                        losses.append(f"  {server.label}, {KINDS[load_kind]}: {r.accepted:,} "
                                      f"events acknowledged, {ev:,} rows stored; {r.meters:,} "
                                      f"meters acknowledged, {sm:,} samples stored; "
                                      f"{r.duplicates} duplicates -> "
                                      f"{'no loss' if ok else 'MISMATCH'}; ~{opened} new "
                                      f"PostgreSQL connections opened during the run")
            finally:
                server.stop()
    for load_kind in ("single", "batch"):
        unit = "requests/s" if load_kind == "single" else "events/s"
        print(f"{KINDS[load_kind]} ({unit}):")
        for workers in (1, 2):
            for kind in ("bare", "app"):
                label = Server(kind, workers, url).label
                print(line(label, results[(kind, workers, load_kind)], load_kind))
        for workers in (1, 2):
            a, b = results[("app", workers, load_kind)], results[("bare", workers, load_kind)]
            print(f"  ratio serve/bare, {workers} worker(s): "
                  f"{a.events_s / max(1e-9, b.events_s):.0%}")
            print(f"  per core of server + postgres, serve/bare, {workers} worker(s): "
                  f"{per_core(a) / max(1e-9, per_core(b)):.0%}")
        a1, a2 = results[("app", 1, load_kind)], results[("app", 2, load_kind)]
        print(f"  serve 2 workers / 1 worker: {a2.events_s / max(1e-9, a1.events_s):.2f}x")
        best = max(a1.events_s, a2.events_s)
        print(f"  target >= {TARGET_EVENTS_S:,} events/s: "
              f"{'met' if best >= TARGET_EVENTS_S else 'NOT met'} (best {best:,.0f} events/s)")
    print("stored vs acknowledged:")
    print("\n".join(losses))
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/serve.prof"
            server = Server("app", 1, url, profile_to=path)
            server.start()
            try:
                r = drive(server, piles, "batch", args.duration, args.clients)
            finally:
                server.stop()
            print(f"profiled run: {r.events_s:,.0f} events/s under cProfile")
            if Path(path).exists():
                print(profile_text(path, r.accepted // BATCH))
            else:
                print("(cProfile wrote no profile: the server did not exit cleanly)")
    print(f"total time {time.perf_counter() - t0:.0f} s")


def _cleanup() -> None:
    for p in list(CLIENTS):
        if p.is_alive():
            p.kill()
        p.join(5)
    for server in list(RUNNING):
        server.stop()
    with contextlib.suppress(Exception):
        drop_database()


def _raise_exit(_sig: int, _frame: object) -> None:
    raise SystemExit(1)  # so the finally below stops the servers and drops the database


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    parser.add_argument("--clients", type=int, choices=(1, 2), default=1,
                        help="load-generator processes")
    parser.add_argument("--piles", type=int, default=1000)
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile serve --workers 1 under the batch load")
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        main(parser.parse_args())
    finally:
        _cleanup()
