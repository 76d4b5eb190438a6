"""AP3000 TCP gateway: memory per board connection, CPU share under the boards' report load, and
a charge record (0x03) to the rider's bill, vs a bare asyncio TCP server.

    .venv/bin/python bench/ap3000.py [--boards 10000] [--window 30] [--speed 1] [--charges 200]
                                     [--record-rate 20]
                                     (from the repo root; `make bench` runs it)

The real app (bot.app.create_app, `[piles.ap3000]` on 127.0.0.1, scheduler off, notifier on with
python-telegram-bot pointed at the local fake Bot API) on a fresh SQLite file under
/tmp/chargebot-bench, seeded in bulk with N AP3000 boards of 10 ports (protocol ap3000, wire_id =
device id); 30 % of them have port 1 in a started charge (a session ref = the board's order_no).

A load generator in a separate process (its memory and CPU are not the server's) connects all N
boards: a 0x20 register and then a first 0x21 status report each, waiting for each reply (the
first status gives a port_status for every port; later ones, with nothing changed, only a
heartbeat: the window measures that steady state). Then, for --window seconds, every board sends
a 0x21 every 60 s and every charging board a 0x06 progress every 30 s, spread evenly, both
periods divided by --speed. Measured on the server process from /proc: RSS before and after the
N connections (÷ N), and CPU seconds ÷ wall seconds over the window. The baseline runs the same
generator against a bare asyncio TCP server (own process, asyncio streams, no database) that
deframes, checks the checksum and answers every report.

Last, under the same report load, K riders' charges on 20 boards of 10 ports (the emulator
tests/support/ap3000_board.py, in the server's process) are started through the core: the 0x82
start reaches the board and is acknowledged, a 0x06 progress reports it charging, and once the
"charging" messages are out each board sends its 0x03 record (paced, 20 a second by default,
`--record-rate`); the clock runs from writing the record to the bill (🧾) reaching the fake Bot
API. Each charging load board's first progress is sent while connecting, so that the window
measures charges long under way (a charge's start confirmed once, then minutes of progress).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import struct
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import common  # noqa: F401  (puts the repo root on sys.path)
from common import NOW, app_with_fake_telegram, fresh_sqlite, machine, pct
from sqlalchemy import insert

from bot.context import CTX
from core.charging import sessions as charging
from core.charging.tables import Charge
from core.db import make_engine, make_sessionmaker, transaction
from core.piles.tables import Pile, Port, Site, port_code
from core.riders.identities import rider_for
from core.riders.tables import Rider
from tests.support.ap3000_board import STOP_FULL, Board, unix_now

PORTS = 10
CHARGING_SHARE = 0.3
STATUS_PERIOD_S = 60.0
PROGRESS_PERIOD_S = 30.0
CHARGE_BOARDS = 20
RECORDS_PER_S = 20.0
FD_SLACK = 512
LOAD_ID0 = 1_000_000  # load board i has device id LOAD_ID0 + i
CHARGE_ID0 = 2_000_000

_HEAD = struct.Struct("<HIHB")
_SUM = struct.Struct("<H")
REGISTER, STATUS, PROGRESS = 0x20, 0x21, 0x06
REGISTER_DATA = struct.pack("<BHBBBBHBB", 5, 100, PORTS, 0, 0, 0, 100, 0, 0)


def frame(device_id: int, msg_id: int, command: int, data: bytes) -> bytes:
    body = _HEAD.pack(7 + len(data), device_id, msg_id, command) + data
    return b"DNY" + body + _SUM.pack(sum(body) & 0xFFFF)


def status_data(charging: bool) -> bytes:
    statuses = bytes([1 if charging else 0] + [0] * (PORTS - 1))
    return struct.pack("<HB", 2200, PORTS) + statuses + bytes([25, 95])


def progress_data(order: str, seconds: int) -> bytes:
    energy = seconds * 240 // 36_000  # 240 W, in 0.01 kWh
    return struct.pack("<BBHHBHHHH16sHHHHBB", 0, 1, seconds & 0xFFFF, energy, 1, 2400, 2400,
                       2400, 2400, order.encode().ljust(16, b"\0"), 0, 2400, 2200, 1090, 95,
                       100)


def deframe(buf: bytearray) -> list[tuple[int, int, int, bytes]]:
    """Whole frames off the front of `buf` as (device id, msg_id, command, data); bad checksums
    dropped."""
    out = []
    while True:
        start = buf.find(b"DNY")
        if start < 0:
            del buf[:max(0, len(buf) - 2)]
            return out
        if start:
            del buf[:start]
        if len(buf) < 5:
            return out
        (length,) = _SUM.unpack_from(buf, 3)
        if not 7 <= length <= 256:
            del buf[:1]
            continue
        end = 5 + length
        if len(buf) < end + 2:
            return out
        if sum(memoryview(buf)[3:end]) & 0xFFFF == _SUM.unpack_from(buf, end)[0]:
            _, dev, msg_id, command = _HEAD.unpack_from(buf, 3)
            out.append((dev, msg_id, command, bytes(buf[12:end])))
        del buf[:end + 2]


# --- /proc ------------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(boards: int) -> int:
    """Each process holds one socket per board (the generator is a separate process): N + slack
    descriptors. Raise the soft limit to the hard one; scale N down if that is still too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and boards + FD_SLACK > soft:
        scaled = soft - FD_SLACK
        print(f"note: RLIMIT_NOFILE {soft} < {boards} boards + {FD_SLACK}: "
              f"scaled down to {scaled:,} boards")
        return scaled
    return boards


# --- the load generator (a separate process) --------------------------------------------------

class BoardConn(asyncio.Protocol):
    __slots__ = ("transport", "buf", "pending", "waiter", "stats", "msg_id", "device_id")

    def __init__(self, device_id: int, stats: dict[str, Any]) -> None:
        self.device_id, self.stats = device_id, stats
        self.buf = bytearray()
        self.pending: dict[int, float] = {}
        self.waiter: asyncio.Future[None] | None = None
        self.msg_id = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        now = time.perf_counter()
        for _dev, msg_id, _command, _data in deframe(self.buf):
            sent = self.pending.pop(msg_id, None)
            if sent is not None:
                self.stats["replies"] += 1
                if self.stats["timing"]:
                    self.stats["latencies"].append(now - sent)
        if not self.pending and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["lost"] += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the server"))

    def send(self, command: int, data: bytes) -> None:
        self.msg_id = self.msg_id % 65535 + 1
        self.pending[self.msg_id] = time.perf_counter()
        self.stats["sent"] += 1
        assert self.transport is not None
        self.transport.write(frame(self.device_id, self.msg_id, command, data))

    async def call(self, command: int, data: bytes) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.send(command, data)
        await asyncio.wait_for(self.waiter, 60)
        self.waiter = None


async def generate(port: int, boards: int, charging: list[str | None], cmds: Any,
                   out: Any) -> None:
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {"sent": 0, "replies": 0, "lost": 0, "timing": False,
                             "latencies": []}
    conns: list[BoardConn] = []
    gate = asyncio.Semaphore(64)  # the listen backlog is 100

    async def connect(i: int) -> None:
        async with gate:
            _, proto = await loop.create_connection(
                lambda: BoardConn(LOAD_ID0 + i, stats), "127.0.0.1", port)
            await proto.call(REGISTER, REGISTER_DATA)
            await proto.call(STATUS, status_data(charging[i] is not None))
            if (order := charging[i]) is not None:
                # The charge's first progress (its start confirmed) belongs to the past: the
                # window measures charges long under way, as a fleet's minutes mostly are.
                await proto.call(PROGRESS, progress_data(order, 600))
            conns.append(proto)

    t0 = time.perf_counter()
    await asyncio.gather(*(connect(i) for i in range(boards)))
    out.put(("connected", time.perf_counter() - t0))
    speed = await loop.run_in_executor(None, cmds.get)
    by_index = sorted(conns, key=lambda c: c.device_id)
    chargers = [(c, charging[c.device_id - LOAD_ID0]) for c in by_index
                if charging[c.device_id - LOAD_ID0] is not None]
    status_every, progress_every = STATUS_PERIOD_S / speed, PROGRESS_PERIOD_S / speed
    stop = loop.create_future()
    loop.run_in_executor(None, cmds.get).add_done_callback(
        lambda _f: loop.call_soon_threadsafe(stop.set_result, None))
    stats["timing"] = True
    start, n_status, n_progress = time.perf_counter(), 0, 0
    while not stop.done():
        elapsed = time.perf_counter() - start
        for k in range(n_status, int(elapsed / status_every * len(by_index))):
            c = by_index[k % len(by_index)]
            c.send(STATUS, status_data(charging[c.device_id - LOAD_ID0] is not None))
        n_status = max(n_status, int(elapsed / status_every * len(by_index)))
        if chargers:
            upto = int(elapsed / progress_every * len(chargers))
            for k in range(n_progress, upto):
                c, order = chargers[k % len(chargers)]
                c.send(PROGRESS, progress_data(order or "", 600 + int(elapsed * speed)))
            n_progress = max(n_progress, upto)
        await asyncio.sleep(0.005)
    wall = time.perf_counter() - start
    await asyncio.sleep(0.5)  # the last replies
    lat = stats["latencies"]
    out.put(("done", {"sent": stats["sent"], "replies": stats["replies"], "lost": stats["lost"],
                      "wall": wall, "status": n_status, "progress": n_progress,
                      "p50": pct(lat, 50) if lat else 0.0, "p99": pct(lat, 99) if lat else 0.0}))
    await loop.run_in_executor(None, cmds.get)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.2)


def _generator(port: int, boards: int, charging: list[str | None], cmds: Any, out: Any) -> None:
    asyncio.run(generate(port, boards, charging, cmds, out))


class Generator:
    def __init__(self, port: int, boards: int, charging: list[str | None]) -> None:
        ctx = mp.get_context("spawn")
        self.cmds, self.out = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_generator, daemon=True,
                                args=(port, boards, charging, self.cmds, self.out))
        self.proc.start()

    async def get(self) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self.out.get)

    async def connected(self) -> float:
        kind, value = await self.get()
        assert kind == "connected", kind
        return value

    async def load(self, speed: float) -> None:
        self.cmds.put(speed)

    async def stop(self) -> dict[str, Any]:
        self.cmds.put("stop")
        kind, value = await self.get()
        assert kind == "done", kind
        return value

    async def close(self) -> None:
        self.cmds.put("close")
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 30)


# --- the baseline: a bare asyncio TCP server (a separate process) ------------------------------

async def bare_serve(out: Any, done: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(4096):
                buf += data
                for dev, msg_id, command, _data in deframe(buf):
                    writer.write(frame(dev, msg_id, command, b"\x00"))
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    out.put(server.sockets[0].getsockname()[1])
    await asyncio.get_running_loop().run_in_executor(None, done.wait)
    server.close()


def _bare(out: Any, done: Any) -> None:
    asyncio.run(bare_serve(out, done))


# --- seeding and the measurements -------------------------------------------------------------

async def seed(url: str, boards: int) -> list[str | None]:
    """N load boards P100001.. and CHARGE_BOARDS charge boards P0001.., bulk-inserted; returns the
    load boards' order_no (None: not charging)."""
    sites = [{"id": f"S{i:03d}", "name": f"车棚{i}", "address": f"文三路{i}号", "lat": 30.27,
              "lon": 120.15, "kind": "community", "tariff": "standard"} for i in range(100)]
    piles, ports, charges = [], [], []
    orders: list[str | None] = []
    port_id = 0

    def pile(pid: str, device: int, site: str) -> None:
        nonlocal port_id
        piles.append({"id": pid, "site_id": site, "model": "ap3000-10", "secret": f"s-{pid}",
                      "ports": PORTS, "lat": 30.27, "lon": 120.15, "online": True,
                      "maintenance": False, "last_seen_at": NOW, "protocol": "ap3000",
                      "wire_id": str(device)})
        for n in range(1, PORTS + 1):
            port_id += 1
            ports.append({"id": port_id, "pile_id": pid, "number": n,
                          "code": port_code(pid, n), "status": "idle", "maintenance": False})

    for i in range(boards):
        pid, site = f"P{100_000 + i + 1}", f"S{i % 100:03d}"
        pile(pid, LOAD_ID0 + i, site)
        if (i * 7919) % 1000 < CHARGING_SHARE * 1000:  # spread evenly over the fleet
            ref = f"{pid}-s1"
            orders.append(ref)
            ports[-PORTS]["status"] = "charging"
            charges.append({"rider_id": 1, "port_id": port_id - PORTS + 1, "pile_id": pid,
                            "port_number": 1, "port_code": port_code(pid, 1), "site_id": site,
                            "tariff": {}, "requested_at": NOW - timedelta(minutes=10),
                            "amount_fen": 0, "paid_fen": 0, "session_ref": ref,
                            "started_at": NOW - timedelta(minutes=10), "state": "started"})
        else:
            orders.append(None)
    for j in range(CHARGE_BOARDS):
        pile(f"P{j + 1:04d}", CHARGE_ID0 + j, "S000")
    engine = make_engine(url)
    async with transaction(make_sessionmaker(engine)) as s:
        await s.execute(insert(Site.__table__), sites)
        await s.execute(insert(Rider.__table__), [{
            "id": 1, "display_name": "bench", "language": "zh_CN", "balance_fen": 0,
            "created_at": NOW}])
        for table, rows in ((Pile, piles), (Port, ports), (Charge, charges)):
            for k in range(0, len(rows), 20_000):
                await s.execute(insert(table.__table__), rows[k:k + 20_000])  # type: ignore[attr-defined]
    await engine.dispose()
    return orders


async def measure(pid: int, port: int, boards: int, orders: list[str | None], window: float,
                  speed: float, during: Any = None) -> dict[str, Any]:
    """Connect the N boards to `port`, then the report load for `window` s, on process `pid`.
    `during` (a coroutine function) runs after the window with the load still on."""
    await asyncio.sleep(0.5)
    rss0 = rss_kb(pid)
    gen = Generator(port, boards, orders)
    connect_s = await gen.connected()
    await asyncio.sleep(1.0)
    rss1 = rss_kb(pid)
    await gen.load(speed)
    await asyncio.sleep(1.0)  # the generator's first tick
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    await asyncio.sleep(window)
    cpu, wall = cpu_s(pid) - cpu0, time.perf_counter() - t0
    extra = await during() if during is not None else None
    load = await gen.stop()
    await gen.close()
    return {"rss0": rss0, "rss1": rss1, "per_conn_kb": (rss1 - rss0) / boards,
            "connect_s": connect_s, "cpu": cpu, "wall": wall, "share": cpu / wall,
            "load": load, "extra": extra}


async def charges_to_bills(app: Any, fake: Any, gw_port: int, k: int, rate: float
                           ) -> dict[str, Any]:
    """K charges started properly on CHARGE_BOARDS emulated boards; 0x03 record → bill."""
    ctx = app[CTX]
    settings = ctx.settings
    boards = [Board("127.0.0.1", gw_port, CHARGE_ID0 + j, ports=PORTS)
              for j in range(CHARGE_BOARDS)]
    for b in boards:
        await b.connect()
        await b.reply(REGISTER, await b.register())
        await b.reply(STATUS, await b.status())
    now = datetime.now(UTC)
    started: list[tuple[Board, int, str, int]] = []  # board, port, session, chat
    for i in range(k):
        j, prt = i % CHARGE_BOARDS, i // CHARGE_BOARDS % PORTS + 1
        chat = 70_000 + i
        async with transaction(ctx.sm) as s:
            rider = await rider_for(s, "telegram", str(chat), chat_id=str(chat))
            await s.flush()
            c = await charging.start_charge(s, rider, port_code(f"P{j + 1:04d}", prt),
                                            settings, now)
            started.append((boards[j], prt, c.session_ref, chat))  # type: ignore[arg-type]
        ctx.wake_pile(f"P{j + 1:04d}")
    seen0 = len(fake.calls)
    for b in boards:  # every 0x82 reached its board (the emulator acknowledges it at once)
        for _ in range(sum(1 for s in started if s[0] is b)):
            await b.start_stop(timeout=30)
    async def charging_now(b: Board, prt: int, ref: str) -> None:
        await b.reply(PROGRESS, await b.progress(prt, ref, seconds=1800, energy_wh=120,
                                                 power_w=240.0))

    await asyncio.gather(*(charging_now(b, prt, ref) for b, prt, ref, _ in started))
    deadline = time.perf_counter() + 60
    while sum(1 for c in fake.calls[seen0:] if c.method == "sendMessage") < k:
        if time.perf_counter() > deadline:
            raise AssertionError("the 'charging' messages did not all arrive")
        await asyncio.sleep(0.05)
    seen = len(fake.calls)
    sent_at: dict[int, float] = {}
    arrived: dict[int, float] = {}

    async def watch() -> None:
        pos = seen
        while len(arrived) < k:
            calls = fake.calls
            for call in calls[pos:]:
                if call.method == "sendMessage" and "🧾" in call.params.get("text", ""):
                    arrived.setdefault(int(call.params["chat_id"]), time.perf_counter())
            pos = len(calls)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    t0 = time.perf_counter()
    for i, (b, prt, ref, chat) in enumerate(started):
        await asyncio.sleep(max(0.0, i / rate - (time.perf_counter() - t0))
                            if i else 0.0)
        if i == 0:
            t0 = time.perf_counter()
        sent_at[chat] = time.perf_counter()
        await b.record(prt, ref, seconds=3600, energy_wh=240, peak_w=250.0,
                       stop_reason=STOP_FULL, ended_at=unix_now())
    await asyncio.wait_for(watcher, 120)
    for b in boards:
        await b.disconnect()
    lat = [arrived[c] - sent_at[c] for c in sent_at]
    return {"n": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat)}


async def start_app(url: str) -> tuple[Any, Any, Any, int]:
    from bot.piles.ap3000 import AP3000

    def tune(settings: Any) -> None:
        settings.scheduler.enabled = False
        settings.piles.ap3000 = type(settings.piles.ap3000)(enabled=True, port=0,
                                                            host="127.0.0.1")

    app, runner, _base, fake = await app_with_fake_telegram(url, tune)
    return app, runner, fake, app[AP3000].port


def rates(boards: int, chargers: int, speed: float) -> str:
    s, p = boards / (STATUS_PERIOD_S / speed), chargers / (PROGRESS_PERIOD_S / speed)
    return (f"{s:,.0f} status/s + {p:,.0f} progress/s = {s + p:,.0f} frames/s "
            f"(0x21 every {STATUS_PERIOD_S / speed:g} s per board, 0x06 every "
            f"{PROGRESS_PERIOD_S / speed:g} s per charging board)")


def report(name: str, r: dict[str, Any]) -> None:
    ld = r["load"]
    print(f"  {name:<8} connect {r['connect_s']:.1f} s; RSS {r['rss0'] / 1024:.0f} → "
          f"{r['rss1'] / 1024:.0f} MB = {r['per_conn_kb']:.1f} kB/connection; CPU "
          f"{r['cpu']:.2f} s / {r['wall']:.1f} s = {r['share']:.1%} of a core; sent "
          f"{ld['status']:,} status + {ld['progress']:,} progress in {ld['wall']:.1f} s, "
          f"{ld['replies']:,}/{ld['sent']:,} answered (incl. connect), "
          f"reply p50 {ld['p50'] * 1000:.1f} ms p99 {ld['p99'] * 1000:.1f} ms, "
          f"{ld['lost']} connections lost")


async def main(url: str, boards: int, window: float, speed: float, k: int, rate: float
               ) -> None:
    t_seed = time.perf_counter()
    orders = await seed(url, boards)
    chargers = sum(o is not None for o in orders)
    print(f"seeded {boards:,} AP3000 boards × {PORTS} ports ({chargers:,} charging) + "
          f"{CHARGE_BOARDS} charge boards in {time.perf_counter() - t_seed:.1f} s")
    print(f"load: {rates(boards, chargers, speed)}, window {window:g} s")

    ctx = mp.get_context("spawn")
    bare_port_q, bare_done = ctx.Queue(), ctx.Event()
    bare = ctx.Process(target=_bare, args=(bare_port_q, bare_done), daemon=True)
    bare.start()
    bare_port = await asyncio.get_running_loop().run_in_executor(None, bare_port_q.get)
    base = await measure(bare.pid, bare_port, boards, orders, window, speed)  # type: ignore[arg-type]
    bare_done.set()
    bare.join(10)

    app, runner, fake, gw_port = await start_app(url)
    try:
        # warm the gateway's paths (and the emulator's) before the "before" RSS
        warm = Board("127.0.0.1", gw_port, CHARGE_ID0 + CHARGE_BOARDS - 1, ports=PORTS)
        await warm.connect()
        await warm.reply(REGISTER, await warm.register())
        await warm.reply(STATUS, await warm.status())
        await warm.disconnect()
        gw = await measure(os.getpid(), gw_port, boards, orders, window, speed,
                           during=lambda: charges_to_bills(app, fake, gw_port, k, rate))
    finally:
        await runner.cleanup()
        await fake.stop()

    print("results (server process only; the generator is a separate process):")
    report("bare", base)
    report("gateway", gw)
    print(f"memory per connection: gateway {gw['per_conn_kb']:.1f} kB, bare "
          f"{base['per_conn_kb']:.1f} kB, ratio {gw['per_conn_kb'] / base['per_conn_kb']:.1f}x "
          f"(target < 50 kB: {'met' if gw['per_conn_kb'] < 50 else 'NOT met'})")
    print(f"CPU share at {rates(boards, chargers, speed).split(' (')[0]}: gateway "
          f"{gw['share']:.1%}, bare {base['share']:.1%}, ratio "
          f"{gw['share'] / max(base['share'], 1e-9):.1f}x")
    b = gw["extra"]
    print(f"0x03 charge record → bill at the Bot API, {b['n']} charges at {rate:g}/s "
          f"under the load above: p50 {b['p50'] * 1000:.0f} ms, p99 {b['p99'] * 1000:.0f} ms, "
          f"max {b['max'] * 1000:.0f} ms (target p99 < 1000 ms: "
          f"{'met' if b['p99'] < 1 else 'NOT met'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=30.0, help="CPU window, seconds")
    parser.add_argument("--speed", type=float, default=1.0, help="compress the report periods")
    parser.add_argument("--charges", type=int, default=200)
    parser.add_argument("--record-rate", type=float, default=RECORDS_PER_S,
                        help="0x03 records per second in the charge phase")
    args = parser.parse_args()
    print(f"AP3000 gateway, SQLite file DB, {machine()}")
    n = raise_fd_limit(args.boards)
    db = fresh_sqlite("ap3000")
    asyncio.run(main(db, n, args.window, args.speed, args.charges, args.record_rate))
