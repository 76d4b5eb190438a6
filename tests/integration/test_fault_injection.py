"""Fault injection (ISSUE 8): kill -9 the workers mid-charge and mid-settlement, restart
PostgreSQL during a burst. Piles behave like field ones (a batch not answered 2xx is sent again),
and afterwards no charge is lost, none is billed twice, and every bill reaches the rider once.

PostgreSQL only: several workers need it, and the restart test runs a private cluster so the
shared server on 5432 (used by other tests and engineers) is never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.billing import wallet
from core.billing.wallet import LedgerEntry
from core.charging import sessions as charging
from core.charging.tables import Charge
from core.db import make_engine, make_sessionmaker, transaction
from core.migrate import upgrade
from core.outbox import OutboxMessage
from core.piles.auth import signed_headers
from core.piles.tables import PileEvent
from core.riders.identities import rider_for
from notifications.webchat_inbox import WebchatMessage
from tests.support.databases import PG_ADMIN, truncate_all
from tests.support.journey import WebRider, button, wait_until
from tests.support.served import ROOT, free_port
from tests.support.server import seed_city
from tests.support.settings import make_settings


def _pg_reachable() -> bool:
    parts = urlsplit(PG_ADMIN)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _pg_reachable(), reason=f"needs PostgreSQL at {PG_ADMIN}")

PG_BIN = Path("/usr/lib/postgresql")
TOPUP_FEN = 10_000
# A request to a worker that dies mid-answer fails fast (connection reset); this bounds the rare
# one that would hang instead, so the pile moves on to its next attempt.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


# --- a pile as deployed ones behave ----------------------------------------------------------


class FieldPile:
    """Signed batches, and a batch not answered with a 2xx is kept and sent again (DESIGN §3):
    our outage may delay a pile's events, never drop them."""

    def __init__(self, http: aiohttp.ClientSession, url: str, pile_id: str, secret: str) -> None:
        self.http, self.url, self.pile_id, self.secret = http, url, pile_id, secret
        self.seq = 0
        self.sent: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.refused = 0  # connection errors: nobody listening, or the worker died mid-request
        self.ended: list[dict] = []  # every session_ended sent, to replay at the end

    def event(self, type_: str, ts: datetime, **fields: Any) -> dict:
        self.seq += 1
        return {"id": f"{self.pile_id}-e{self.seq}", "type": type_, "ts": ts.isoformat(),
                **fields}

    async def deliver(self, events: list[dict], timeout: float = 45.0) -> dict:
        self.sent.update(e["id"] for e in events)
        self.ended += [e for e in events if e["type"] == "session_ended"]
        body = json.dumps({"events": events}).encode()
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Signed afresh each attempt: a stale timestamp would be refused (401).
                headers = signed_headers(self.pile_id, self.secret, body, time.time())
                async with self.http.post(f"{self.url}/api/piles/events", data=body,
                                          headers=headers, timeout=REQUEST_TIMEOUT) as r:
                    self.statuses[r.status] += 1
                    if 200 <= r.status < 300:
                        return await r.json()
                    assert r.status in (500, 502, 503, 504), await r.text()
            except (TimeoutError, aiohttp.ClientError):
                self.refused += 1
            assert time.monotonic() < deadline, f"{self.pile_id}: batch never acknowledged"
            await asyncio.sleep(0.05)

    async def commands(self, wait: float) -> list[dict]:
        deadline = time.monotonic() + 30
        while True:
            try:
                # A poll's signature is accepted once: a fresh nonce signed with the query.
                query = f"wait={wait:g}&nonce={uuid.uuid4().hex}"
                headers = signed_headers(self.pile_id, self.secret, query.encode(), time.time())
                async with self.http.get(f"{self.url}/api/piles/{self.pile_id}/commands?{query}",
                                         headers=headers, timeout=REQUEST_TIMEOUT) as r:
                    if r.status == 200:
                        return (await r.json())["commands"]
            except (TimeoutError, aiohttp.ClientError):
                pass
            assert time.monotonic() < deadline, f"{self.pile_id}: commands never answered"
            await asyncio.sleep(0.05)

    def bad_answers(self) -> dict[int, int]:
        return {s: n for s, n in self.statuses.items() if not 200 <= s < 300}


def _meter(pile: FieldPile, port: int, ref: str, ts: datetime, k: int) -> dict:
    # Steady 250 W and a counter that only grows: nothing here may look like a fault.
    return pile.event("meter", ts, port=port, session=ref, power_w=250.0, energy_wh=2 * k)


def _ended(pile: FieldPile, port: int, ref: str, start: datetime, end: datetime, k: int) -> dict:
    return pile.event("session_ended", end, port=port, session=ref, reason="user",
                      duration_s=int((end - start).total_seconds()), energy_wh=2 * k + 2)


# --- the service as separate processes -------------------------------------------------------


def _service_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEBOT_")}
    return env | {
        "CHARGEBOT_DATABASE__URL": db_url, "CHARGEBOT_LOG": "WARNING",
        "CHARGEBOT_SERVER__WEBCHAT": "true",
        "CHARGEBOT_SCHEDULER__LEADER_RETRY_S": "0.2",
        "CHARGEBOT_NOTIFICATIONS__POLL_S": "0.1",
        # A delivery cut short by a kill comes back after the lease: short, so that a second
        # delivery (the bug this file looks for) would show within the test.
        "CHARGEBOT_NOTIFICATIONS__LEASE_S": "2",
    }


class Service:
    """`chargebot serve --workers N` in its own process group, so every process it spawned
    can be killed by its id even when the test fails half-way."""

    def __init__(self, db_url: str, port: int, log: Path, workers: int = 2) -> None:
        self.db_url, self.port, self.log, self.workers = db_url, port, log, workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(Path(ROOT) / ".venv/bin/python"), "-m", "bot.cli", "serve",
                 "--workers", str(self.workers), "--port", str(self.port)],
                cwd=ROOT, env=_service_env(self.db_url), stdout=out, stderr=out,
                start_new_session=True)

        async def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                async with http.get(f"{self.url}/healthz", timeout=REQUEST_TIMEOUT) as r:
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError):
                return False

        await wait_until(answers, timeout=180, step=0.1)  # start-up warms up first

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        # The spawned workers, not multiprocessing's resource tracker beside them.
        return [int(c) for c in children
                if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]

    async def kill_workers(self) -> None:
        """kill -9 every worker: no shutdown hook runs, open transactions die with them."""
        assert self.proc is not None
        pids = self.worker_pids()
        assert len(pids) == self.workers
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        # The parent only joins its workers: once they are gone it returns.
        await wait_until(lambda: self.proc is not None and self.proc.poll() is not None,
                         timeout=30)
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@asynccontextmanager
async def services(db_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """Starts services on one port; all of them are killed however the test ends."""
    port = free_port()
    started: list[Service] = []

    async def start(http: aiohttp.ClientSession, workers: int = 2) -> Service:
        svc = Service(db_url, port, tmp_path / f"serve-{len(started)}.log", workers)
        started.append(svc)
        await svc.start(http)
        return svc

    try:
        yield start
    finally:
        for svc in started:
            svc.stop()


# --- the database as the test sees it --------------------------------------------------------


@dataclass
class Db:
    sm: async_sessionmaker[AsyncSession]

    async def scalar(self, stmt: Any) -> Any:
        async with self.sm() as s:
            return await s.scalar(stmt)

    async def settled(self) -> int:
        return await self.scalar(select(func.count()).select_from(Charge)
                                 .where(Charge.state == "settled"))

    async def bills_sent(self) -> int:
        return await self.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.kind == "bill", OutboxMessage.state == "sent"))


@asynccontextmanager
async def database(db_url: str) -> AsyncIterator[Db]:
    engine = make_engine(db_url)
    try:
        yield Db(make_sessionmaker(engine))
    finally:
        await engine.dispose()


async def _start_charges(db: Db, piles_n: int, ports: int, db_url: str
                         ) -> list[tuple[str, int, str, int, str]]:
    """One web chat rider per port with money in the wallet, each with a requested charge;
    returns (pile, port, session ref, charge id, client id)."""
    settings = make_settings(db_url)
    out = []
    now = datetime.now(UTC)
    async with transaction(db.sm) as s:
        for p in range(1, piles_n + 1):
            for n in range(1, ports + 1):
                client = uuid.uuid4().hex
                rider = await rider_for(s, "webchat", client, chat_id=client)
                await s.flush()
                await wallet.post(s, rider.id, "topup", TOPUP_FEN, f"seed:{client}")  # type: ignore[arg-type]
                charge = await charging.start_charge(s, rider, f"P{p:04d}-{n:02d}", settings,
                                                     now)
                out.append((f"P{p:04d}", n, charge.session_ref, charge.id, client))
    return out  # type: ignore[return-value]


async def _assert_each_charge_settled_and_billed_once(db: Db, charges: list[int]) -> None:
    async with db.sm() as s:
        states = dict((await s.execute(select(Charge.id, Charge.state))).all())
        debits = Counter((await s.execute(select(LedgerEntry.charge_id).where(
            LedgerEntry.kind == "charge"))).scalars())
        bills = Counter((await s.execute(select(OutboxMessage.dedupe_key).where(
            OutboxMessage.kind == "bill"))).scalars())
        riders = (await s.execute(select(Charge.rider_id))).scalars().all()
        for rider in riders:
            # Every fen the wallet holds is explained by the ledger, and nothing went negative.
            bal, total = await wallet.balance(s, rider), await wallet.ledger_sum(s, rider)
            assert bal == total >= 0, (rider, bal, total)
    assert set(states) == set(charges)
    assert {c: states[c] for c in charges} == dict.fromkeys(charges, "settled")
    assert debits == Counter(charges), "a charge debited more than once, or not at all"
    assert bills == Counter(f"bill:{c}" for c in charges)


async def _assert_bills_delivered_once(db: Db, clients: dict[int, str]) -> None:
    """What each rider's web chat shows: one bill per charge, however often delivery began."""
    await wait_until(lambda: _all_bills_sent(db, len(clients)), timeout=30)
    async with db.sm() as s:
        rows = (await s.execute(select(WebchatMessage.client_id, WebchatMessage.reply))).all()
    shown: Counter[tuple[str, int]] = Counter()
    for client, reply in rows:
        data = {b.get("data", "") for row in reply.get("buttons", []) for b in row}
        for cid in clients:
            if f"rv:{cid}" in data:  # the "rate this site" button rides on the bill only
                shown[(client, cid)] += 1
    twice = {cid for (_, cid), n in shown.items() if n != 1}
    async with db.sm() as s:
        attempts = dict((await s.execute(select(OutboxMessage.dedupe_key, OutboxMessage.attempts)
                                         .where(OutboxMessage.kind == "bill"))).all())
    assert shown == Counter({(client, cid): 1 for cid, client in clients.items()}), (
        f"bills shown other than once: {sorted(twice)}; delivery attempts: "
        f"{ {k: n for k, n in attempts.items() if n > 1} }")


async def _all_bills_sent(db: Db, n: int) -> bool:
    return await db.bills_sent() == n


async def _assert_every_event_stored_once(db: Db, piles: list[FieldPile]) -> None:
    async with db.sm() as s:
        rows = (await s.execute(select(PileEvent.pile_id, PileEvent.event_id))).all()
    stored = Counter((p, e) for p, e in rows)
    sent = Counter((p.pile_id, e) for p in piles for e in p.sent)
    assert stored == sent


@pytest.fixture
def fresh_pg(pg_database: str) -> str:
    truncate_all(pg_database)
    return pg_database


async def _seed(db: Db, piles_n: int, ports: int) -> list[tuple[str, str, int]]:
    return await seed_city(SimpleNamespace(sm=db.sm), piles_n=piles_n, ports=ports)  # type: ignore[arg-type]


async def _fleet_online(db: Db, http: aiohttp.ClientSession, url: str, piles_n: int,
                        ports: int) -> tuple[dict[str, FieldPile], datetime]:
    """A seeded fleet whose piles said hello at t0, half an hour ago (room for the charges)."""
    specs = await _seed(db, piles_n, ports)
    fleet = {pid: FieldPile(http, url, pid, secret) for pid, secret, _ in specs}
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    await asyncio.gather(*(p.deliver([p.event("heartbeat", t0)]) for p in fleet.values()))
    return fleet, t0


# --- the tests -------------------------------------------------------------------------------


async def test_a_charge_survives_kill_9_of_every_worker_and_is_billed_once(
    fresh_pg: str, tmp_path: Path,
) -> None:
    """A rider starts in the web chat; both workers are killed while the pile meters; a new
    worker takes the pile's re-sent meters and its end: one bill, paid once, shown once."""
    async with database(fresh_pg) as db, aiohttp.ClientSession() as http, \
            services(fresh_pg, tmp_path) as start:
        (pile_id, secret, _), = await _seed(db, 1, 2)
        first = await start(http)
        pile = FieldPile(http, first.url, pile_id, secret)
        t0 = datetime.now(UTC) - timedelta(minutes=20)
        await pile.deliver([pile.event("heartbeat", t0)])

        rider = WebRider(http, first.url)
        card = await rider.say("/start port_P0001-01")
        async with transaction(db.sm) as s:
            me = await rider_for(s, "webchat", rider.client_id)
            await wallet.post(s, me.id, "topup", TOPUP_FEN, "seed:webrider")  # type: ignore[arg-type]
        await rider.press(button(card, "start:P0001-01"))
        cmd = next(c for c in await pile.commands(wait=5) if c["type"] == "start")
        ref = cmd["session"]
        await pile.deliver([pile.event("command_ack", t0, command=cmd["id"], ok=True),
                            pile.event("session_started", t0, port=1, session=ref)])
        await rider.wait_message("P0001-01")  # "charging started", through the notifier

        # The pile keeps metering while every worker dies under it, then a new one starts.
        metered = 0

        async def meter_stream(stop: asyncio.Event) -> None:
            nonlocal metered
            while not stop.is_set():
                metered += 1
                ts = t0 + timedelta(seconds=5 * metered)
                await pile.deliver([_meter(pile, 1, ref, ts, metered)])

        stop = asyncio.Event()
        streaming = asyncio.create_task(meter_stream(stop))
        try:
            await wait_until(lambda: metered >= 10)
            await first.kill_workers()
            assert not streaming.done()
            second = await start(http, workers=1)
            pile.url = rider.url = second.url  # the same port: the piles see one address
            before = metered
            await wait_until(lambda: metered >= before + 10, timeout=30)
        finally:
            stop.set()
            await streaming
        await pile.deliver([_ended(pile, 1, ref, t0, t0 + timedelta(minutes=20), metered)])

        async with db.sm() as s:
            charge = (await s.execute(select(Charge))).scalars().one()
        await _assert_each_charge_settled_and_billed_once(db, [charge.id])  # type: ignore[list-item]
        assert charge.bill and charge.amount_fen > 0
        assert charge.duration_s == 20 * 60  # the pile's own record, not arrival times
        await _assert_bills_delivered_once(db, {charge.id: rider.client_id})  # type: ignore[dict-item]
        await _assert_every_event_stored_once(db, [pile])
        async with db.sm() as s:
            started = await s.scalar(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.dedupe_key == f"started:{charge.id}",
                OutboxMessage.state == "sent"))
        assert started == 1
        assert pile.refused > 0, "the kill never reached the pile: nothing was tested"


async def test_kill_9_during_a_burst_of_settlements_settles_each_charge_once(
    fresh_pg: str, tmp_path: Path,
) -> None:
    """48 charges end in a burst from 6 piles; the workers are killed with part of them settled
    and requests in flight; the piles re-send what was not acknowledged (and later everything
    again): each charge is settled, debited and shown to its rider exactly once."""
    piles_n, ports = 6, 8
    async with database(fresh_pg) as db, aiohttp.ClientSession() as http, \
            services(fresh_pg, tmp_path) as start:
        first = await start(http)
        fleet, t0 = await _fleet_online(db, http, first.url, piles_n, ports)
        charges = await _start_charges(db, piles_n, ports, fresh_pg)
        by_pile: dict[str, list[tuple[int, str]]] = {}
        for pid, port, ref, _, _ in charges:
            by_pile.setdefault(pid, []).append((port, ref))
        await asyncio.gather(*(fleet[pid].deliver(
            [e for port, ref in sessions for e in (
                fleet[pid].event("session_started", t0, port=port, session=ref),
                _meter(fleet[pid], port, ref, t0 + timedelta(minutes=1), 1))])
            for pid, sessions in by_pile.items()))

        killed = asyncio.Event()

        async def end_all(pile: FieldPile, sessions: list[tuple[int, str]]) -> None:
            for i, (port, ref) in enumerate(sessions):
                if i == len(sessions) // 2:
                    # Half a pile's charges at most end before the kill, so the kill always
                    # lands in the middle of the burst, however fast this machine is.
                    await killed.wait()
                end = t0 + timedelta(minutes=10 + port)
                await pile.deliver([_ended(pile, port, ref, t0, end, 1)])

        burst = [asyncio.create_task(end_all(fleet[pid], s)) for pid, s in by_pile.items()]
        try:
            total = len(charges)
            await wait_until(lambda: _at_least(db.settled, total // 4))
            await first.kill_workers()
            assert await db.settled() < total
            # The piles carry on into the outage: nobody answers, so they keep their batches.
            killed.set()
            await wait_until(lambda: sum(p.refused for p in fleet.values()) >= len(fleet))
            second = await start(http)
            assert second.url == first.url  # the same port: the piles see one address
            await asyncio.gather(*burst)
        finally:
            killed.set()
            for t in burst:
                t.cancel()
            await asyncio.gather(*burst, return_exceptions=True)

        # A pile that never heard our answer sends the same end again: it changes nothing.
        replays = await asyncio.gather(*(p.deliver(list(p.ended)) for p in fleet.values()))
        assert all(r["accepted"] == 0 for r in replays)

        ids = [cid for *_, cid, _ in charges]
        await _assert_each_charge_settled_and_billed_once(db, ids)
        await _assert_bills_delivered_once(db, {cid: client for *_, cid, client in charges})
        await _assert_every_event_stored_once(db, list(fleet.values()))


async def _at_least(count: Any, n: int) -> bool:
    return await count() >= n


# --- a private PostgreSQL cluster ------------------------------------------------------------


def _pg_bin() -> Path | None:
    versions = sorted(PG_BIN.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                      if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


def _as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True,
                   timeout=120)


@contextmanager
def private_cluster() -> Iterator[tuple[str, Any]]:
    """A throwaway PostgreSQL: (admin URL, .stop() / .start()). Restarting the shared server on 5432
    would break other people's tests; this one only this test uses."""
    bindir = _pg_bin()
    if bindir is None or shutil.which("runuser") is None:
        pytest.skip("no initdb under /usr/lib/postgresql (or no runuser) to run a private cluster")
    if os.geteuid() != 0:
        pytest.skip("a private cluster is started as the postgres user, which needs root")
    try:
        import pwd

        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user to own a private cluster")
    # Not pytest's tmp_path: its parents are private to root and postgres must reach the dir.
    root = Path(tempfile.mkdtemp(prefix="chargebot-pg-"))
    os.chown(root, pw.pw_uid, pw.pw_gid)
    data, port = root / "data", free_port()
    ctl = str(bindir / "pg_ctl")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = False
    try:
        _as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                     "--no-sync")
        _as_postgres(ctl, "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start")
        started = True

        def stop() -> None:
            # -m immediate: the server dies as in a crash and recovers from its WAL on start.
            _as_postgres(ctl, "-D", str(data), "-m", "immediate", "-w", "stop")

        def start() -> None:
            _as_postgres(ctl, "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w",
                         "start")

        yield f"postgresql://postgres@127.0.0.1:{port}", SimpleNamespace(stop=stop, start=start)
    finally:
        if started:
            subprocess.run(["runuser", "-u", "postgres", "--", ctl, "-D", str(data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


async def test_postgres_restart_mid_burst_loses_no_event_and_bills_once(tmp_path: Path) -> None:
    """The app answers 503 while PostgreSQL is down, recovers by itself once it is back, and
    the piles' re-sent batches leave every event stored once and every charge billed once."""
    piles_n, ports = 4, 6
    with private_cluster() as (admin, server):
        import asyncpg

        conn = await asyncpg.connect(f"{admin}/postgres")
        try:
            await conn.execute("CREATE DATABASE chargebot")
        finally:
            await conn.close()
        url = admin.replace("postgresql://", "postgresql+asyncpg://") + "/chargebot"
        await asyncio.to_thread(upgrade, url)
        async with database(url) as db, aiohttp.ClientSession() as http, \
                services(url, tmp_path) as start:
            svc = await start(http)
            fleet, t0 = await _fleet_online(db, http, svc.url, piles_n, ports)
            charges = await _start_charges(db, piles_n, ports, url)
            clients = {cid: client for *_, cid, client in charges}
            by_pile: dict[str, list[tuple[int, str]]] = {}
            for pid, port, ref, _, _ in charges:
                by_pile.setdefault(pid, []).append((port, ref))

            down = asyncio.Event()
            inbox_answers: Counter[int] = Counter()

            async def charge_and_end(pile: FieldPile, sessions: list[tuple[int, str]]) -> None:
                await pile.deliver([pile.event("session_started", t0, port=port, session=ref)
                                    for port, ref in sessions])
                for k in range(1, 6):  # a meter a minute for every port, one batch each
                    await pile.deliver([_meter(pile, port, ref, t0 + timedelta(minutes=k), k)
                                        for port, ref in sessions])
                for i, (port, ref) in enumerate(sessions):
                    if i == len(sessions) // 2:
                        await down.wait()  # the outage lands mid-burst on any machine
                    await pile.deliver([_ended(pile, port, ref, t0,
                                               t0 + timedelta(minutes=10 + port), 5)])

            # Browsers with the identities the server gave them, before the outage.
            pages = [await WebRider(http, svc.url).connect() for _ in range(4)]

            async def riders_watch_inbox(stop: asyncio.Event) -> None:
                # The web page long-polls its inbox the whole time, outage included.
                while not stop.is_set():
                    for page in pages:
                        try:
                            async with http.get(f"{svc.url}/webchat/api/messages",
                                                params={"wait": "0"}, headers=page.headers,
                                                timeout=REQUEST_TIMEOUT) as r:
                                inbox_answers[r.status] += 1
                                if r.status == 503:
                                    assert r.headers.get("Retry-After"), "503 without Retry-After"
                        except (TimeoutError, aiohttp.ClientError):
                            inbox_answers[-1] += 1
                    await asyncio.sleep(0.02)

            stop_watch = asyncio.Event()
            watcher = asyncio.create_task(riders_watch_inbox(stop_watch))
            burst = [asyncio.create_task(charge_and_end(fleet[pid], s))
                     for pid, s in by_pile.items()]
            try:
                await wait_until(lambda: _at_least(db.settled, len(charges) // 4), timeout=30)
                await asyncio.to_thread(server.stop)
                down.set()
                # Down long enough that every pile and the web page met the outage.
                await wait_until(lambda: inbox_answers[503] > 0 and all(
                    p.bad_answers() for p in fleet.values()), timeout=30)
                await asyncio.to_thread(server.start)
                await asyncio.gather(*burst)
            finally:
                down.set()
                stop_watch.set()
                for t in burst:
                    t.cancel()
                await asyncio.gather(*burst, watcher, return_exceptions=True)

            # The outage is answered as one (retry later), never as a crash.
            bad = Counter[int]()
            for p in fleet.values():
                bad.update(p.bad_answers())
            assert set(bad) == {503}, f"piles were answered {dict(bad)} during the outage"
            assert 500 not in inbox_answers, f"the web chat answered {dict(inbox_answers)}"

            ids = list(clients)
            await _assert_each_charge_settled_and_billed_once(db, ids)
            await _assert_bills_delivered_once(db, clients)
            await _assert_every_event_stored_once(db, list(fleet.values()))
