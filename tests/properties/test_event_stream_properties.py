"""Issue 8: deliver every pile event twice, out of order and late — no charge is lost, none is
billed twice, and every bill and refund reaches its rider exactly once.

A hypothesis state machine plays a pile with a few ports and a few web-chat riders. Riders start
charges through the real chat flow; the pile picks the start up from its command poll and then
*generates* its stream (session_started, meters, port_status, heartbeats, session_ended, a fault
that ends a charge). Generation and delivery are separate rules, so the same stream reaches the
app over signed HTTP in adversarial ways: in order, reordered (later events first), duplicated
(alone or inside a later batch, or twice in one batch), in two overlapping requests at once (one
group commit), or late — after a long silence in which the offline sweep closed the pile's
charges. Time is a HandClock; the sweeps and the notifier run only when a rule says so.

One server (and one database) serves all examples of a test: each example gets its own pile and
riders, so the checks look only at those.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from bot.app import NOTIFIER
from bot.piles.ingest import WRITER
from bot.scheduler import sweep_faults, sweep_offline, sweep_requests
from core.billing import wallet
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.db import transaction
from core.outbox import OutboxMessage
from core.piles import fleet as piles
from core.riders.tables import Identity
from tests.support.journey import HandClock, PileClient, WebRider, button
from tests.support.server import Running, start_server
from tests.support.settings import make_settings

PORTS = 4
RIDERS = 3
OFFLINE_AFTER_S = 180
# A minute tariff with a minimum fee: bills depend only on the pile's timestamps (not on which
# meter samples happened to arrive first), and a fault refunds at least the minimum fee, so a
# double or missing refund shows in the ledger.
TARIFFS = {"minute": {"mode": "time", "fen_per_hour": 60, "unit_minutes": 1,
                      "free_minutes": 0, "min_fee_fen": 30}}
FUNDS_FEN = 1_000_000  # every bill can be paid: a charge left unpaid is then a lost charge


def cause(chat_id: str, kind: str, payload: dict[str, Any]) -> str:
    return json.dumps([chat_id, kind, payload], sort_keys=True, default=str)


class RecordingSender:
    def __init__(self, inner: Any, seen: Counter[str]) -> None:
        self.inner, self.seen = inner, seen

    async def send(self, identity: Identity, replies: list[Any], **kw: Any) -> str:
        channel: str = await self.inner.send(identity, replies, **kw)
        self.seen[cause(identity.chat_id or "", kw["kind"], kw["payload"])] += 1
        return channel


class Harness:
    """What outlives one example: the loop, the server, the clock and the delivery record."""

    def __init__(self, db_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = HandClock()
        self.settings = make_settings(
            db_url, scheduler={"enabled": False},
            piles={"offline_after_s": OFFLINE_AFTER_S},
            billing={"tariffs": TARIFFS, "default_tariff": "minute"})
        self.piles = itertools.count(1)
        # (chat, kind, payload) of every message each time the web chat sender took it
        self.deliveries: Counter[str] = Counter()
        self._server = start_server(self.settings, clock=self.clock, notifier=False)
        self.server: Running = self.run(self._server.__aenter__())
        # The writer skips rewriting last_seen_at for a pile seen in the last 5 s of wall time;
        # with a hand clock that would make "offline" depend on how fast the test runs.
        self.server.app[WRITER]._due = lambda _pile: True  # type: ignore[method-assign]
        # Count at the platform's door what reached the rider, whatever the notifier does inside.
        senders = self.server.app[NOTIFIER].senders
        senders["webchat"] = RecordingSender(senders["webchat"], self.deliveries)
        self.run(self._seed_site())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _seed_site(self) -> None:
        async with transaction(self.server.ctx.sm) as s:
            await piles.add_site(s, "T01", "测试小区车棚", 30.278, 120.114, tariff="minute")

    def close(self) -> None:
        try:
            self.run(self._server.__aexit__(None, None, None))
        finally:
            self.loop.close()


@dataclass
class Session:
    """One charge as the pile sees it."""

    charge_id: int
    ref: str
    port: int
    rider: int
    start: datetime
    energy_wh: int = 0
    end: datetime | None = None
    reason: str | None = None
    fault_at: datetime | None = None
    end_event: str | None = None  # id of its session_ended
    swept: bool = False  # closed by a sweep before the pile's own end or fault arrived
    event_ids: list[str] = field(default_factory=list)


class EventStream(RuleBasedStateMachine):
    harness: Harness  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        h = self.harness
        self.ctx = h.server.ctx
        self.pile_id = f"P{1000 + next(h.piles)}"  # the chat only knows codes like P0001-01
        self.pile = PileClient(h.server.http, h.server.url, self.pile_id, f"s-{self.pile_id}")
        self.events: list[dict[str, Any]] = []  # the pile's stream, in generation order
        self.sent: set[str] = set()
        self.first_sent: dict[str, int] = {}  # event id → number of the request that first had it
        self.requests = itertools.count(1)
        self.sessions: list[Session] = []
        self.busy: dict[int, Session] = {}  # port → its running session, pile side
        self.riders: list[WebRider] = []
        self.rider_ids: list[int] = []
        h.run(self._setup())

    async def _setup(self) -> None:
        async with transaction(self.ctx.sm) as s:
            await piles.add_pile(s, "T01", self.pile_id, PORTS, secret=f"s-{self.pile_id}")
        for _ in range(RIDERS):
            rider = WebRider(self.harness.server.http, self.harness.server.url)
            await rider.press("lang:en")
            async with transaction(self.ctx.sm) as s:
                rid = (await s.execute(select(Identity.rider_id).where(
                    Identity.platform == "webchat",
                    Identity.external_id == rider.client_id))).scalar_one()
                await wallet.post(s, rid, "topup", FUNDS_FEN, f"seed:{rider.client_id}")
            self.riders.append(rider)
            self.rider_ids.append(rid)

    # --- the pile's own stream -----------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.harness.clock.now

    def _emit(self, type_: str, of: Session | None = None, **fields: Any) -> str:
        e = self.pile.event(type_, self.now, **fields)
        self.events.append(e)
        if of is not None:
            of.event_ids.append(e["id"])
        return str(e["id"])

    def _running(self, which: int) -> Session | None:
        running = sorted(self.busy.values(), key=lambda s: s.port)
        return running[which % len(running)] if running else None

    @initialize(rider=st.integers(0, RIDERS - 1), port=st.integers(1, PORTS))
    def first_start(self, rider: int, port: int) -> None:
        self.start(rider, port)  # every example has a charge to lose

    @rule(rider=st.integers(0, RIDERS - 1), port=st.integers(1, PORTS))
    def start(self, rider: int, port: int) -> None:
        if port in self.busy:
            return  # the pile would refuse; the server's view is tested by its own answer
        self.harness.run(self._start(rider, port))

    async def _start(self, rider: int, port: int) -> None:
        # A pile heartbeats all the time; without one the app rightly refuses starts.
        beat = self._emit("heartbeat")
        await self._post([e for e in self.events if e["id"] == beat])
        code = f"{self.pile_id}-{port:02d}"
        card = await self.riders[rider].say(f"/start port_{code}")
        try:
            data = button(card, "start:")
        except AssertionError:
            return  # busy, under repair or a bill due: no charge, nothing to check
        await self.riders[rider].press(data)
        starts = [c for c in await self.pile.commands()
                  if c["type"] == "start" and c["port"] == port]
        if not starts:
            return
        cmd = starts[-1]
        async with self.ctx.sm() as s:
            cid = (await s.execute(select(Charge.id).where(
                Charge.pile_id == self.pile_id, Charge.session_ref == cmd["session"]))
            ).scalar_one()
        session = Session(cid, cmd["session"], port, rider, self.now)
        self.sessions.append(session)
        self.busy[port] = session
        self._emit("command_ack", command=cmd["id"], ok=True)
        self._emit("session_started", session, port=port, session=session.ref)
        self._emit("port_status", port=port, status="charging")

    @rule(which=st.integers(0, 7), power=st.sampled_from([180.0, 250.0, 390.0]),
          seconds=st.sampled_from([30, 60]))
    def meter(self, which: int, power: float, seconds: int) -> None:
        s = self._running(which)
        if s is None:
            return
        self.harness.clock.advance(seconds=seconds)  # a pile reports every half minute or so
        s.energy_wh += int(power * seconds / 3600)
        self._emit("meter", s, port=s.port, session=s.ref, power_w=power,
                   energy_wh=s.energy_wh)

    @rule(seconds=st.sampled_from([20, 60, 150]))
    def time_passes(self, seconds: int) -> None:
        self.harness.clock.advance(seconds=seconds)

    @rule()
    def heartbeat(self) -> None:
        self._emit("heartbeat")

    def _close(self, s: Session, reason: str) -> None:
        s.end, s.reason = self.now, reason
        s.end_event = self._emit(
            "session_ended", s, port=s.port, session=s.ref, reason=reason,
            energy_wh=s.energy_wh, duration_s=int((self.now - s.start).total_seconds()))
        self._emit("port_status", port=s.port, status="idle")
        del self.busy[s.port]

    @rule(which=st.integers(0, 7), reason=st.sampled_from(["user", "full", "unplugged"]))
    def end(self, which: int, reason: str) -> None:
        if (s := self._running(which)) is not None:
            self._close(s, reason)

    @rule(which=st.integers(0, 7))
    def fault(self, which: int) -> None:
        """The pile reports a fault and ends the charge because of it at the same instant: the
        bill must not depend on which of the two reaches the app first."""
        if (s := self._running(which)) is None:
            return
        s.fault_at = self.now
        self._emit("fault", s, port=s.port, code="overload")
        self._close(s, "fault")

    # --- delivery --------------------------------------------------------------------------------

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        n = next(self.requests)
        await self.pile.post(batch)
        for e in batch:
            self.first_sent.setdefault(e["id"], n)
        self.sent.update(e["id"] for e in batch)

    def _unsent(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["id"] not in self.sent]

    @staticmethod
    def _pick(pool: list[dict[str, Any]], picks: list[int]) -> list[dict[str, Any]]:
        return [pool[i % len(pool)] for i in picks] if pool else []

    @rule(n=st.integers(1, 6))
    def deliver_in_order(self, n: int) -> None:
        if batch := self._unsent()[:n]:
            self.harness.run(self._post(batch))

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4), echo=st.booleans())
    def deliver_reordered(self, picks: list[int], echo: bool) -> None:
        """Later events first; with `echo`, an already delivered event rides along again."""
        pool = self._unsent()
        batch = sorted(self._pick(pool, picks), key=lambda e: -self.events.index(e))
        if echo and self.sent:
            batch += self._pick([e for e in self.events if e["id"] in self.sent], picks[:1])
        if batch:
            self.harness.run(self._post(batch))

    @rule(kind=st.sampled_from(["meter", "fault", "session_ended", "heartbeat"]))
    def deliver_one_kind(self, kind: str) -> None:
        """Telemetry on its own channel (or its own retry queue) overtakes the rest."""
        if batch := [e for e in self._unsent() if e["type"] == kind]:
            self.harness.run(self._post(batch))

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4))
    def deliver_again(self, picks: list[int]) -> None:
        """The pile never saw our answer and sends delivered events again."""
        pool = [e for e in self.events if e["id"] in self.sent]
        if batch := self._pick(pool, picks):
            self.harness.run(self._post(batch))

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4))
    def deliver_twice_at_once(self, picks: list[int]) -> None:
        """A retry racing its original: two requests with the same events in one group."""
        pool = self._unsent() or self.events
        if batch := self._pick(pool, picks):
            self.harness.run(self._post_twice(batch))

    async def _post_twice(self, batch: list[dict[str, Any]]) -> None:
        await asyncio.gather(self._post(batch), self._post(batch[::-1]))

    @rule()
    def pile_goes_silent(self) -> None:
        """No word from the pile past the offline limit: the sweep closes its running charges
        from their last reading. Whatever the pile sends afterwards arrives late."""
        self.harness.clock.advance(seconds=OFFLINE_AFTER_S + 30)
        self.harness.run(self._sweep())

    @rule()
    def sweeps(self) -> None:
        self.harness.run(self._sweep())

    async def _sweep(self) -> None:
        await sweep_offline(self.ctx)
        await sweep_requests(self.ctx)
        await sweep_faults(self.ctx)
        async with self.ctx.sm() as s:
            closed = set((await s.execute(select(Charge.id).where(
                Charge.pile_id == self.pile_id, Charge.ended_at.is_not(None)))).scalars())
        for sess in self.sessions:
            if sess.charge_id in closed and not any(
                    i in self.sent and self._type(i) in ("session_ended", "fault")
                    for i in sess.event_ids):
                sess.swept = True

    @rule()
    def notify(self) -> None:
        self.harness.run(self._notify())

    async def _notify(self) -> None:
        notifier = self.harness.server.app[NOTIFIER]
        while await notifier.run_once():
            pass

    # --- what must hold --------------------------------------------------------------------------

    @invariant()
    def money_and_messages_add_up(self) -> None:
        self.harness.run(self._check(final=False))

    async def _check(self, *, final: bool) -> None:
        async with self.ctx.sm() as s:
            charges = {c.id: c for c in (await s.execute(
                select(Charge).where(Charge.pile_id == self.pile_id))).scalars()}
            entries = list((await s.execute(select(LedgerEntry).where(
                LedgerEntry.rider_id.in_(self.rider_ids)))).scalars())
            messages = list((await s.execute(select(OutboxMessage).where(
                OutboxMessage.rider_id.in_(self.rider_ids)))).scalars())
            for rid in self.rider_ids:
                balance = await wallet.balance(s, rid)
                assert balance == await wallet.ledger_sum(s, rid), f"rider {rid}: ledger ≠ wallet"
                assert balance >= 0
            n_charges = await s.scalar(select(func.count()).select_from(Charge).where(
                Charge.rider_id.in_(self.rider_ids)))
        # The app made no charge the pile did not start (every start is in the model).
        assert n_charges == len(self.sessions) == len(charges)

        by_charge: dict[int, Counter[str]] = {cid: Counter() for cid in charges}
        money: dict[int, int] = dict.fromkeys(charges, 0)
        for e in entries:
            if e.charge_id is not None and e.kind in ("charge", "refund", "coupon"):
                by_charge[e.charge_id][e.kind] += 1
                money[e.charge_id] += e.amount_fen
        bills = Counter(m.payload.get("charge_id") for m in messages if m.kind == "bill")
        keys = Counter(m.dedupe_key for m in messages)
        assert all(n == 1 for n in keys.values()), keys

        for sess in self.sessions:
            c = charges[sess.charge_id]
            where = f"charge {c.id} ({sess.reason or 'running'}, state {c.state})"
            # No charge billed twice: one debit, at most one automatic refund.
            assert by_charge[c.id]["charge"] <= 1, where
            assert by_charge[c.id]["refund"] <= 1, where
            assert bills[c.id] <= 1, where
            closed = sess.end_event is not None and sess.end_event in self.sent
            if closed or final:
                # No charge lost: the pile's session_ended reached us (or, at the end, all of
                # its stream did), so it is billed and, with funds in the wallet, paid.
                assert c.state == "settled", f"{where}: the pile ended it but it is not paid"
            if c.state in ("ended", "settled"):
                assert c.bill is not None, where
                assert bills[c.id] == 1, f"{where}: billed without a bill message"
                # The ledger moved exactly what the bill says the rider paid.
                assert money[c.id] == -c.paid_fen, f"{where}: ledger {money[c.id]} ≠ {c.paid_fen}"
                assert c.paid_fen == c.amount_fen, where
                assert c.refunded_fen == (c.bill or {}).get("refund_fen", 0), where
                if c.refunded_fen and c.amount_fen:
                    # (refunded in full, nothing is owed and no money moves at all)
                    assert by_charge[c.id]["refund"] == 1, f"{where}: refund not in the ledger"
                self._matches_pile_record(sess, c, where)
            else:
                assert by_charge[c.id].total() == 0 and bills[c.id] == 0, where
        # Delivered exactly once, whatever the notifier passes saw.
        chats = {rid: r.client_id for rid, r in zip(self.rider_ids, self.riders, strict=True)}
        for m in messages:
            count = self.harness.deliveries[cause(chats[m.rider_id], m.kind, m.payload)]
            assert count <= 1, f"{m.dedupe_key} delivered {count} times"
            due = m.due_at.replace(tzinfo=UTC) if m.due_at.tzinfo is None else m.due_at
            if final and due <= self.now:  # a survey prompt waits for its hour: not due yet
                assert m.state == "sent" and count == 1, (m.dedupe_key, m.state, count)

    def _type(self, event_id: str) -> str:
        return next(str(e["type"]) for e in self.events if e["id"] == event_id)

    def _matches_pile_record(self, sess: Session, c: Charge, where: str) -> None:
        """A bill comes from the pile's record, not from when (or how often) it arrived."""
        bill = c.bill or {}
        if sess.swept or sess.end is None:
            return  # closed by the sweep at the last sign of life: the pile's end came late
        if self._fault_overtook_start(sess):
            return  # known: billed from the first meter sample (test_..._before_its_start)
        assert c.duration_s == int((sess.end - sess.start).total_seconds()), (
            f"{where}: duration {c.duration_s} s, the pile says {sess.end - sess.start}")
        if sess.fault_at is not None:
            assert bill.get("fault_at") == sess.fault_at.isoformat(), (
                f"{where}: fault at {bill.get('fault_at')}, the pile says {sess.fault_at}")

    def _fault_overtook_start(self, sess: Session) -> bool:
        """The fault closed the charge on its own before session_started told us its start."""
        ids = {self._type(i): i for i in sess.event_ids}
        if "fault" not in ids or ids["fault"] not in self.first_sent:
            return False
        fault = self.first_sent[ids["fault"]]
        return all(self.first_sent.get(ids[kind], fault + 1) > fault
                   for kind in ("session_started", "session_ended"))

    def teardown(self) -> None:
        try:
            self.harness.run(self._finish())
        finally:
            self.harness.deliveries.clear()

    async def _finish(self) -> None:
        """The pile ends what still runs and, at last, everything reaches the app."""
        for s in list(self.busy.values()):
            self._close(s, "user")
        if self._unsent():
            await self._post(self._unsent())
        await self._sweep()
        await self._notify()
        await self._check(final=True)
        if not currently_in_test_context():
            return  # a pinned sequence, not a hypothesis example
        # What the example exercised (pytest --hypothesis-show-statistics).
        async with self.ctx.sm() as s:
            for c in (await s.execute(select(Charge).where(
                    Charge.pile_id == self.pile_id))).scalars():
                event(f"charge ended: {c.end_reason}, refund: {bool(c.refunded_fen)}")
        event(f"charges closed by a sweep first: {sum(s.swept for s in self.sessions)}")


def test_any_delivery_of_the_event_stream_bills_each_charge_once(db_url: str) -> None:
    harness = Harness(db_url)
    try:
        EventStream.harness = harness
        # CI replays the same examples every run (derandomize); explore further by hand with
        # CHARGEBOT_STREAM_EXAMPLES=200 — that is how the pinned cases below were found.
        run_state_machine_as_test(EventStream, settings=settings(
            max_examples=int(os.environ.get("CHARGEBOT_STREAM_EXAMPLES", "25")),
            derandomize="CHARGEBOT_STREAM_EXAMPLES" not in os.environ, database=None,
            stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        harness.close()


# --- what the machine found, pinned as plain sequences -------------------------------------------


def _replay(db_url: str, steps: Any) -> None:
    harness = Harness(db_url)
    try:
        EventStream.harness = harness
        machine = EventStream()
        steps(machine)
        machine.money_and_messages_add_up()
        machine.teardown()
    finally:
        harness.close()


def test_an_offline_fault_from_before_a_charge_does_not_refund_it(db_url: str) -> None:
    """The pile was silent, came back, and a new charge on it ends in a port fault before the
    back-online sweep ran: the refund is from the port's fault, not from the charge's start."""
    def steps(m: EventStream) -> None:
        m.start(0, 1)
        m.meter(0, 250.0, 60)
        m.deliver_in_order(10)
        m.pile_goes_silent()  # charge 1 closed by the offline sweep
        m.end(0, "user")
        m.start(1, 2)  # its heartbeat brings the pile back; no sweep has run since
        for _ in range(5):
            m.meter(0, 250.0, 60)
        m.fault(0)
        m.deliver_in_order(30)
    _replay(db_url, steps)


def test_a_meter_that_overtakes_its_session_start_does_not_lose_the_start(db_url: str) -> None:
    """A meter arrives before session_started and marks the charge running; the start, arriving
    next, still sets the start time (and tells the rider), so a fault right after bills the
    30 s that ran, not zero."""
    def steps(m: EventStream) -> None:
        m.start(0, 1)
        m.heartbeat()
        m.meter(0, 180.0, 30)
        m.deliver_one_kind("meter")
        m.fault(0)
        m.deliver_in_order(5)
    _replay(db_url, steps)


def test_silence_right_at_a_charges_start_is_not_its_fault(db_url: str) -> None:
    """The pile's last sign of life is the heartbeat of a new charge's start; it goes silent
    (the sweep opens an offline fault at that instant), comes back and reports the charge
    ending on an overload. The bill names the overload's time, not the silence's."""
    def steps(m: EventStream) -> None:
        m.start(0, 2)
        m.meter(0, 180.0, 30)
        m.deliver_in_order(10)
        m.time_passes(20)
        m.start(0, 1)
        m.pile_goes_silent()
        m.meter(0, 250.0, 60)
        m.meter(0, 250.0, 60)
        m.fault(0)
        m.deliver_in_order(40)
    _replay(db_url, steps)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "a fault that arrives before session_started closes the charge from its first meter "
    "sample; the pile's start, arriving later, cannot change the bill (DESIGN §3 says it "
    "should)"))
def test_a_fault_that_overtakes_its_session_start_bills_from_the_pile_start(db_url: str) -> None:
    def steps(m: EventStream) -> None:
        m.start(0, 1)
        m.meter(0, 250.0, 60)
        m.meter(0, 250.0, 60)
        m.fault(0)
        m.deliver_one_kind("meter")
        m.deliver_one_kind("fault")
        m._fault_overtook_start = lambda _s: False  # type: ignore[method-assign]
    _replay(db_url, steps)
