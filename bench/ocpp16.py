"""OCPP 1.6J gateway: MeterValues/s through the real app vs a bare `ocpp` echo charge-point
server, in the same run (issue 17: target ≥ 30 %).

    .venv/bin/python bench/ocpp16.py [--points 50] [--seconds 10] [--rounds 2] [--profile]
    .venv/bin/python bench/ocpp16.py --quick          # a smoke run (~30 s): 2 s, 1 round

(Named ocpp16.py, not ocpp.py: the bench scripts run with bench/ first on sys.path, so a
bench/ocpp.py would shadow the `ocpp` package for every other script that imports the app.)

Both servers run in this process, on 127.0.0.1:

- bare: the `ocpp` package's own server pattern, a `ocpp.v16.ChargePoint` subclass whose
  `@on(MeterValues)` returns `call_result.MeterValues()` (plus the minimum BootNotification and
  Heartbeat handlers), schema validation on as shipped, over aiohttp's WebSocket server (the
  transport the gateway uses; `--bare websockets` uses the `websockets` package instead, when it
  is installed). No database, no authentication.
- gateway: the real app (bot.app.create_app, `[piles.ocpp]` on, scheduler off, notifier on with
  python-telegram-bot pointed at the local fake Bot API) on a fresh migrated SQLite file under
  /tmp/chargebot-bench, N piles with protocol ocpp16 bulk-inserted. Before any round every
  charge point connects (the `ocpp` package's ChargePoint from tests/support/ocpp_point.py),
  boots, and a rider's charge on its connector 1 is started through the core: the gateway sends
  RemoteStartTransaction, the point answers Accepted and sends StartTransaction(idTag = the
  session ref), which gives the transactionId the load then uses. So every MeterValues of the
  load names a transaction the service knows and becomes a `meter` event on the ingest path
  (group commit, a meter sample, the charge's last reading); the script checks at the end that
  the gateway stored exactly one meter sample per MeterValues it answered.

The load generator is one separate process (multiprocessing, spawn), the same code for both
servers: M charge points on aiohttp WebSockets (subprotocol ocpp1.6, HTTP Basic auth), each
sending OCPP-J MeterValues frames back to back, one outstanding call at a time as OCPP requires:
Energy.Active.Import.Register in kWh with 4 decimals, Power.Active.Import (W) and Temperature,
for the point's transaction, timestamps 0.1 s apart, never repeated across rounds. A round
connects all points (and sends a BootNotification each), runs a warm-up, then counts the calls
answered inside the timed window. Rounds alternate (bare, gateway, bare, gateway, …) so that both
see the same machine. `server CPU` is this process's CPU time (all threads, SQLite's included)
over the whole round divided by the calls answered in it. --profile adds one more gateway round
under cProfile (the event loop's thread only) and prints its top functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This directory holds common.py; the repository root holds the app. The bench directory goes
# after site-packages, so that `ocpp` is always the package (and in the generator's process too).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))
sys.path.append(str(_BENCH))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import common  # noqa: E402, F401  (the repo root on sys.path)
from aiohttp import web  # noqa: E402
from common import NOW, app_with_fake_telegram, fresh_sqlite, machine, pct  # noqa: E402
from ocpp.routing import on  # noqa: E402
from ocpp.v16 import ChargePoint, call, call_result  # noqa: E402
from ocpp.v16.enums import Action, RegistrationStatus  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

PORTS = 2
METER_START_WH = 1000
POWER_W = 250.5
STEP_MS = 100  # reading time between two MeterValues of one point
SUBPROTOCOL = "ocpp1.6"


@dataclass
class Point:
    cp_id: str
    pile_id: str
    secret: str
    tx: int = 0
    ts0_ms: int = 0  # the transaction's start, ms since the epoch


# --- the load generator (a separate process) --------------------------------------------------

def _auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _ocpp_time(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def meter_frame(uid: str, p: Point, n: int) -> str:
    """The n-th MeterValues of point p: reading time ts0 + n × STEP_MS, the register in kWh."""
    ms = p.ts0_ms + n * STEP_MS
    kwh = (METER_START_WH + POWER_W * n * STEP_MS / 3_600_000) / 1000
    return (
        f'[2,"{uid}","MeterValues",{{"connectorId":1,"transactionId":{p.tx},"meterValue":[{{'
        f'"timestamp":"{_ocpp_time(ms)}","sampledValue":['
        f'{{"value":"{kwh:.4f}","context":"Sample.Periodic",'
        f'"measurand":"Energy.Active.Import.Register","unit":"kWh"}},'
        f'{{"value":"{POWER_W}","context":"Sample.Periodic",'
        f'"measurand":"Power.Active.Import","unit":"W"}},'
        f'{{"value":"36.5","context":"Sample.Periodic","measurand":"Temperature",'
        f'"location":"Body","unit":"Celsius"}}]}}]}}]')


class LoadPoint:
    """One charge point of the generator: a WebSocket and its message counter."""

    def __init__(self, p: Point) -> None:
        self.p = p
        self.n = 0  # MeterValues sent so far, over all rounds (their readings never repeat)
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, http: aiohttp.ClientSession, base: str) -> None:
        self.ws = await http.ws_connect(f"{base}/ocpp/{self.p.cp_id}", protocols=[SUBPROTOCOL],
                                        headers=_auth(self.p.cp_id, self.p.secret),
                                        autoping=True)
        assert self.ws.protocol == SUBPROTOCOL, self.ws.protocol
        self.n += 1
        boot = (f'[2,"b{self.n}","BootNotification",{{"chargePointModel":"EB-2",'
                f'"chargePointVendor":"Bench","firmwareVersion":"1.6.2"}}]')
        reply = await self.call(f"b{self.n}", boot)
        assert reply[0] == 3 and reply[2].get("status") == "Accepted", reply

    async def call(self, uid: str, text: str) -> list[Any]:
        """Send one call and wait for its answer; calls from the server get a CallError."""
        ws = self.ws
        assert ws is not None
        await ws.send_str(text)
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"websocket {msg.type.name}")
            frame: list[Any] = json.loads(msg.data)
            if frame[0] == 2:  # the server's call (none is expected during the load)
                await ws.send_str(json.dumps([4, frame[1], "NotImplemented", "bench point", {}]))
                continue
            if frame[1] == uid:
                return frame

    async def load(self, t_from: float, t_stop: float, stats: dict[str, Any]) -> None:
        lat = stats["latencies"]
        while (t0 := time.perf_counter()) < t_stop:
            self.n += 1
            uid = f"m{self.n}"
            reply = await self.call(uid, meter_frame(uid, self.p, self.n))
            t1 = time.perf_counter()
            ok = reply[0] == 3 and reply[2] == {}
            stats["total"] += 1
            stats["errors"] += not ok
            if t_from <= t1 <= t_stop:
                stats["done"] += 1
                lat.append(t1 - t0)


async def generate(points: list[Point], cmds: Any, out: Any) -> None:
    loop = asyncio.get_running_loop()
    conns = [LoadPoint(p) for p in points]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        while True:
            cmd = await loop.run_in_executor(None, cmds.get)
            if cmd[0] == "connect":
                t0 = time.perf_counter()
                await asyncio.gather(*(c.connect(http, cmd[1]) for c in conns))
                out.put(("connected", time.perf_counter() - t0))
            elif cmd[0] == "run":
                warm, seconds = cmd[1], cmd[2]
                stats: dict[str, Any] = {"done": 0, "total": 0, "errors": 0, "latencies": []}
                t_from = time.perf_counter() + warm
                await asyncio.gather(*(c.load(t_from, t_from + seconds, stats) for c in conns))
                lat = stats.pop("latencies")
                out.put(("done", {**stats, "rate": stats["done"] / seconds,
                                  "p50": pct(lat, 50) if lat else 0.0,
                                  "p99": pct(lat, 99) if lat else 0.0}))
            elif cmd[0] == "close":
                for c in conns:
                    if c.ws is not None:
                        await c.ws.close()
                out.put(("closed", None))
            else:
                return


def _generator(points: list[Point], cmds: Any, out: Any) -> None:
    try:
        asyncio.run(generate(points, cmds, out))
    except BaseException as exc:  # the server process is waiting for an answer: give it one
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Generator:
    def __init__(self, points: list[Point]) -> None:
        ctx = mp.get_context("spawn")
        self.cmds, self.out = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_generator, args=(points, self.cmds, self.out),
                                daemon=True)
        self.proc.start()

    async def ask(self, *cmd: Any) -> Any:
        self.cmds.put(cmd)
        kind, value = await asyncio.get_running_loop().run_in_executor(None, self.out.get)
        if kind == "error":
            raise RuntimeError(f"load generator failed: {value}")
        assert kind in ("connected", "done", "closed"), kind
        return value

    async def close(self) -> None:
        self.cmds.put(("exit",))
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 30)


# --- the baseline: a bare `ocpp` echo charge-point server ------------------------------------

class EchoPoint(ChargePoint):
    """What the `ocpp` package's examples serve, minus everything: boot, heartbeat, meters."""

    @on(Action.boot_notification)
    async def on_boot_notification(self, **_: Any) -> Any:
        return call_result.BootNotification(
            current_time=datetime.now(UTC).isoformat(), interval=60,
            status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=datetime.now(UTC).isoformat())

    @on(Action.meter_values)
    async def on_meter_values(self, **_: Any) -> Any:
        return call_result.MeterValues()


class _AiohttpSocket:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def recv(self) -> str:
        msg = await self.ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(msg.type.name)
        return str(msg.data)

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)


async def start_bare(kind: str) -> tuple[str, Any]:
    """The echo server on 127.0.0.1: (base URL, an async closer)."""
    if kind == "websockets":
        # Optional: websockets is not a project dependency (pip install websockets to use it).
        serve = importlib.import_module("websockets.asyncio.server").serve

        async def handler(conn: Any) -> None:
            cp_id = conn.request.path.rsplit("/", 1)[-1]
            with contextlib.suppress(Exception):
                await EchoPoint(cp_id, conn).start()

        server = await serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL])
        port = next(iter(server.sockets)).getsockname()[1]

        async def close_ws() -> None:
            server.close()
            await server.wait_closed()

        return f"http://127.0.0.1:{port}", close_ws

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,))
        await ws.prepare(request)
        with contextlib.suppress(ConnectionError):
            await EchoPoint(request.match_info["cp"], _AiohttpSocket(ws)).start()
        return ws

    app = web.Application()
    app.router.add_get("/ocpp/{cp}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", runner.cleanup


# --- the subject: the real app, N OCPP piles, one charge each started over OCPP ---------------

async def seed(url: str, n: int) -> list[Point]:
    from core.db import make_engine, make_sessionmaker, table_of, transaction
    from core.piles.tables import Pile, PileProtocol, Port, Site, port_code

    points = [Point(f"CP{i:04d}", f"P{1000 + i:04d}", f"bench-ocpp-secret-{i:04d}")
              for i in range(1, n + 1)]
    sites = [{"id": f"S{i:03d}", "name": f"车棚{i}", "address": f"文三路{i}号", "lat": 30.27,
              "lon": 120.15, "kind": "community", "tariff": "standard"}
             for i in range(max(1, n // 10))]
    piles, ports = [], []
    for i, p in enumerate(points):
        piles.append({"id": p.pile_id, "site_id": sites[i % len(sites)]["id"],
                      "model": "generic-10", "secret": p.secret, "ports": PORTS, "lat": 30.27,
                      "lon": 120.15, "online": True, "maintenance": False, "last_seen_at": NOW,
                      "protocol": PileProtocol.ocpp16, "wire_id": p.cp_id})
        for k in range(1, PORTS + 1):
            ports.append({"pile_id": p.pile_id, "number": k, "code": port_code(p.pile_id, k),
                          "status": "idle", "maintenance": False})
    engine = make_engine(url)
    async with transaction(make_sessionmaker(engine)) as s:
        for model, rows in ((Site, sites), (Pile, piles), (Port, ports)):
            await s.execute(insert(table_of(model)), rows)
    await engine.dispose()
    return points


async def start_app(url: str) -> tuple[Any, Any, Any, str]:
    def tune(settings: Any) -> None:
        settings.scheduler.enabled = False
        settings.piles.ocpp = type(settings.piles.ocpp)(enabled=True)

    app, runner, base, fake = await app_with_fake_telegram(url, tune)
    return app, runner, fake, base


async def start_charges(app: Any, base: str, points: list[Point]) -> None:
    """Each point's charge on connector 1, started the way a rider's is: the core queues the
    start, the gateway sends RemoteStartTransaction, the point starts its transaction."""
    from sqlmodel import col

    from bot.context import CTX
    from core.charging import sessions as charging
    from core.charging.tables import Charge
    from core.db import transaction
    from core.piles.tables import CommandState, PileCommand, port_code
    from core.riders.identities import rider_for
    from tests.support.journey import wait_until
    from tests.support.ocpp_point import connected, ocpp_time

    ctx = app[CTX]
    gate = asyncio.Semaphore(10)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    async def one(i: int, p: Point) -> None:
        async with gate, connected(base, p.cp_id, p.secret) as cp:
            assert (await cp.boot()).status == "Accepted"
            for k in range(1, PORTS + 1):
                await cp.status(k, "Available", t0 - timedelta(minutes=1))
            chat = 80_000 + i
            async with transaction(ctx.sm) as s:
                rider = await rider_for(s, "telegram", str(chat), chat_id=str(chat))
                await s.flush()
                charge = await charging.start_charge(s, rider, port_code(p.pile_id, 1),
                                                     ctx.settings, ctx.clock())
                ref = charge.session_ref
            ctx.wake_pile(p.pile_id)
            start = await cp.wait_for("RemoteStartTransaction", timeout=60)
            assert start["id_tag"] == ref and start["connector_id"] == 1, start
            started = await cp.send(call.StartTransaction(
                connector_id=1, id_tag=ref, meter_start=METER_START_WH, timestamp=ocpp_time(t0)))
            assert started.id_tag_info["status"] == "Accepted", started
            p.tx, p.ts0_ms = started.transaction_id, int(t0.timestamp() * 1000)
            await cp.status(1, "Charging", t0)

            async def acked() -> bool:  # before hanging up: a lost ack would be resent later
                async with ctx.sm() as s:
                    state = (await s.execute(select(col(PileCommand.state)).where(
                        col(PileCommand.pile_id) == p.pile_id, col(PileCommand.type) == "start"))
                    ).scalar_one()
                return bool(state == CommandState.acked)

            await wait_until(acked, timeout=60)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(points)))
    async with ctx.sm() as s:
        states = (await s.execute(select(col(Charge.state), func.count()).group_by(
            col(Charge.state)))).all()
    assert dict(states) == {"started": len(points)}, states


async def stored(app: Any) -> dict[str, int]:
    from bot.context import CTX
    from core.charging.tables import MeterSample
    from core.faults.tables import Fault
    from core.piles.tables import PileEvent, RejectedEvent

    async with app[CTX].sm() as s:
        async def count(model: Any, *where: Any) -> int:
            return int((await s.execute(
                select(func.count()).select_from(model).where(*where))).scalar_one())

        return {"samples": await count(MeterSample),
                "meter_events": await count(PileEvent, PileEvent.type == "meter"),
                "rejected": await count(RejectedEvent), "faults": await count(Fault)}


# --- the rounds -------------------------------------------------------------------------------

async def one_round(gen: Generator, base: str, warm: float, seconds: float,
                    profile: cProfile.Profile | None = None) -> dict[str, Any]:
    connect_s = await gen.ask("connect", base)
    await asyncio.sleep(0.5)  # the gateway's on-connect sweeps are done
    cpu0 = time.process_time()
    if profile is not None:
        profile.enable()
    r = await gen.ask("run", warm, seconds)
    if profile is not None:
        profile.disable()
    r["cpu_per_1000"] = (time.process_time() - cpu0) / max(1, r["total"]) * 1000
    r["connect_s"] = connect_s
    await gen.ask("close")
    await asyncio.sleep(0.3)
    return r


AREAS = (  # where a function's own time goes, by its file's path
    ("bot/piles/ocpp", "/bot/piles/ocpp/"), ("bot/piles/ingest + core", "/work/main/core/"),
    ("bot/piles/ingest + core", "/bot/piles/ingest"), ("ocpp package", "/ocpp/"),
    ("jsonschema", "/jsonschema"), ("aiohttp", "/aiohttp/"), ("sqlalchemy", "/sqlalchemy/"),
    ("aiosqlite", "/aiosqlite/"), ("pydantic", "/pydantic"), ("asyncio", "/asyncio/"),
    ("json", "/json/"), ("re", "/re/"), ("inspect", "/inspect.py"),
)


def by_area(profile: cProfile.Profile) -> list[tuple[str, float]]:
    """Own time (tottime) summed by area; the event loop's wait (epoll) apart."""
    out: dict[str, float] = {}
    stats: dict[Any, Any] = getattr(pstats.Stats(profile), "stats")  # noqa: B009 (untyped)
    for (path, _line, name), (_cc, _nc, tt, _ct, _callers) in stats.items():
        if "poll' of 'select.epoll" in name:
            area = "(waiting: epoll)"
        else:
            area = next((a for a, frag in AREAS if frag in path), "other")
            if path == "~":
                area = "builtins (C)"
        out[area] = out.get(area, 0.0) + tt
    return sorted(out.items(), key=lambda kv: -kv[1])


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process (Linux /proc)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def print_profile(profile: cProfile.Profile, threads: dict[str, float], top: int = 30) -> None:
    print("--- CPU of the profiled gateway round by thread: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in threads.items()) + " ---")
    areas = by_area(profile)
    total = sum(t for a, t in areas if not a.startswith("(waiting"))
    print(f"--- event loop thread, own time by area (of {total:.2f} s, epoll wait apart) ---")
    for area, t in areas:
        share = "" if area.startswith("(waiting") else f" {t / total:6.1%}"
        print(f"  {area:<28} {t:7.2f} s{share}")
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        lines = text.getvalue().splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        print(f"--- cProfile of a gateway round, event loop thread, by {order} ---")
        print("\n".join(lines[start - 3:start + top + 1]))


async def main(args: argparse.Namespace, url: str) -> None:
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # the package logs each message at INFO
    t = time.perf_counter()
    points = await seed(url, args.points)
    app, runner, fake, app_base = await start_app(url)
    bare_base, bare_close = await start_bare(args.bare)
    gen: Generator | None = None
    try:
        await start_charges(app, app_base, points)
        print(f"seeded {args.points} OCPP piles × {PORTS} connectors; {args.points} charges "
              f"started over OCPP (RemoteStartTransaction → StartTransaction) in "
              f"{time.perf_counter() - t:.1f} s")
        print(f"load: {args.points} charge points, MeterValues back to back (one call "
              f"outstanding each), {args.warmup:g} s warm-up + {args.seconds:g} s timed, "
              f"{args.rounds} round(s) of each server, alternating; bare = `ocpp` ChargePoint "
              f"echo over {args.bare}")
        before = await stored(app)
        gen = Generator(points)
        rows: list[tuple[int, str, dict[str, Any]]] = []
        gateway_total = 0
        for k in range(1, args.rounds + 1):
            for name, base in (("bare", bare_base), ("gateway", app_base)):
                r = await one_round(gen, base, args.warmup, args.seconds)
                rows.append((k, name, r))
                if name == "gateway":
                    gateway_total += r["total"]
                print(f"  round {k} {name:<8} {r['rate']:>8,.0f} MeterValues/s  p50 "
                      f"{r['p50'] * 1000:6.1f} ms  p99 {r['p99'] * 1000:6.1f} ms  "
                      f"server CPU {r['cpu_per_1000']:.3f} s/1000  errors {r['errors']}",
                      flush=True)
        profile, threads = None, {}
        if args.profile:
            profile = cProfile.Profile()
            cpu0 = thread_cpu()
            r = await one_round(gen, app_base, args.warmup, args.seconds, profile)
            cpu1 = thread_cpu()
            main_tid = os.getpid()
            threads = {"event loop": cpu1.get(main_tid, 0.0) - cpu0.get(main_tid, 0.0),
                       "other threads (SQLite, ocpp validation)": sum(
                           v - cpu0.get(k, 0.0) for k, v in cpu1.items() if k != main_tid)}
            gateway_total += r["total"]
            print(f"  profiled gateway round (not in the figures): {r['rate']:,.0f} "
                  f"MeterValues/s")
        after = await stored(app)
    finally:
        if gen is not None:
            await gen.close()
        await bare_close()
        await runner.cleanup()
        await fake.stop()

    print()
    print(f"{'round':<6} {'server':<8} {'MeterValues/s':>14} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU s/1000 msgs':>16} {'errors':>7}")
    for k, name, r in rows:
        print(f"{k:<6} {name:<8} {r['rate']:>14,.0f} {r['p50'] * 1000:>8.1f} "
              f"{r['p99'] * 1000:>8.1f} {r['cpu_per_1000']:>16.3f} {r['errors']:>7}")
    ratios = []
    for k in range(1, args.rounds + 1):
        b = next(r for kk, n, r in rows if kk == k and n == "bare")
        g = next(r for kk, n, r in rows if kk == k and n == "gateway")
        ratios.append(g["rate"] / b["rate"])
        print(f"round {k}: gateway/bare {ratios[-1]:.1%}; CPU per message "
              f"{g['cpu_per_1000'] / b['cpu_per_1000']:.1f}x the bare server's")
    bare = sum(r["rate"] for _, n, r in rows if n == "bare") / args.rounds
    gate = sum(r["rate"] for _, n, r in rows if n == "gateway") / args.rounds
    overall = gate / bare
    print(f"mean: bare {bare:,.0f}/s, gateway {gate:,.0f}/s, ratio {overall:.1%} "
          f"(target ≥ 30 %: {'met' if overall >= 0.30 else 'NOT met'})")
    samples = after["samples"] - before["samples"]
    events = after["meter_events"] - before["meter_events"]
    real = samples == gateway_total == events and after["rejected"] == 0 and not after["faults"]
    print(f"stored by the gateway: {samples:,} meter samples and {events:,} meter events for "
          f"{gateway_total:,} MeterValues answered; {after['rejected']} rejected events, "
          f"{after['faults']} faults ({'all real meters' if real else 'MISMATCH'})")
    if profile is not None:
        print_profile(profile, threads)
    if not real:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50, help="concurrent charge points")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each server")
    parser.add_argument("--bare", choices=("aiohttp", "websockets"), default="aiohttp",
                        help="the echo server's WebSocket library")
    parser.add_argument("--profile", action="store_true",
                        help="one more gateway round under cProfile, then its top functions")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds = 2.0, 0.5, 1
    print(f"OCPP 1.6J MeterValues, SQLite file DB, {machine()}")
    db = fresh_sqlite("ocpp")  # migrations run their own event loop: outside ours
    asyncio.run(main(args, db))
