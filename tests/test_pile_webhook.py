"""The pile controller webhook (DESIGN §3) over real HTTP, on SQLite and PostgreSQL.

Every test drives the running app the way a pile does: signed JSON batches to
`POST /api/piles/events` and the command long poll `GET /api/piles/{id}/commands`, with a rider in
the web chat where a charge is needed. The database is then read directly to prove exact effects.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from core.charging import Charge, MeterSample
from core.commands import PileCommand
from core.events import EVENT_TYPES, PileEvent
from core.outbox import OutboxMessage
from core.pile_auth import sign, signed_headers
from core.wallet import LedgerEntry
from tests.conftest import PILE_SECRET, seed_city
from tests.journey import WebRider, button, wait_until

PILE = "P0001"
EVENTS_URL = "/api/piles/events"
# The pile's own clock for hand-driven charges: a fixed daytime moment (no off-peak in the
# standard tariff anyway), so every bill below is exact arithmetic.
T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai

_ids = itertools.count(1)


def ev(type_: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """One event as a pile would send it, with a fresh id."""
    return {"id": f"e{next(_ids)}", "type": type_, "ts": at.isoformat(), **fields}


def now_ts() -> datetime:
    return datetime.now(UTC)


class PileLink:
    """A pile's side of the HTTP contract: signs and sends batches, polls commands."""

    def __init__(self, server: Any, pile_id: str = PILE, secret: str = PILE_SECRET) -> None:
        self.server = server
        self.pile_id = pile_id
        self.secret = secret

    async def raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.server.http.post(self.server.url + EVENTS_URL, data=body,
                                         headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def send_body(self, body: bytes, *, at: float | None = None) -> tuple[int, Any]:
        headers = signed_headers(self.pile_id, self.secret, body,
                                 time.time() if at is None else at)
        return await self.raw(body, headers)

    async def send(self, body: Any) -> tuple[int, Any]:
        return await self.send_body(json.dumps(body).encode())

    async def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        status, data = await self.send({"events": events})
        assert status == 200, data
        return data

    async def poll(self, wait: float = 0, *, path_id: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = f"{self.server.url}/api/piles/{path_id or self.pile_id}/commands"
        hdrs = headers if headers is not None else signed_headers(
            self.pile_id, self.secret, b"", time.time())
        async with self.server.http.get(url, params={"wait": str(wait)}, headers=hdrs) as r:
            return r.status, await r.json()

    async def come_online(self, ports: int = 4) -> dict[str, Any]:
        at = now_ts()
        return await self.post(
            [ev("heartbeat", at, signal_dbm=-70)]
            + [ev("port_status", at, port=n, status="idle") for n in range(1, ports + 1)]
        )


async def rider_starts(server: Any, port: int, *, topup: int | None = 2000) -> WebRider:
    """A rider (in English, with money in the wallet) scans a port code and presses Start."""
    rider = WebRider(server.http, server.url)
    await rider.press("lang:en")
    if topup:
        wallet = await rider.press("wallet")
        await rider.press(button(wallet, f"topup:{topup}"))
    code = f"{PILE}-{port:02d}"
    card = await rider.say(f"/start port_{code}")
    assert code in card[0]["text"]
    started = await rider.press(button(card, f"start:{code}"))
    assert code in started[0]["text"] and button(started, "stop:")
    return rider


async def charge_on(server: Any, port: int) -> Charge:
    async with server.ctx.sm() as s:
        return (await s.execute(
            select(Charge).where(Charge.pile_id == PILE, Charge.port_number == port)
            .order_by(Charge.id.desc())
        )).scalars().first()


async def count(server: Any, model: Any, *where: Any) -> int:
    async with server.ctx.sm() as s:
        return await s.scalar(select(func.count()).select_from(model).where(*where))


async def snapshot(server: Any) -> dict[str, Any]:
    """Everything a pile event can touch, in a comparable form."""
    async with server.ctx.sm() as s:
        charges = (await s.execute(select(Charge).order_by(Charge.id))).scalars().all()
        ledger = (await s.execute(select(LedgerEntry).order_by(LedgerEntry.id))).scalars().all()
        outbox = (await s.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars()
        cmds = (await s.execute(select(PileCommand).order_by(PileCommand.id))).scalars().all()
        return {
            "pile_events": await s.scalar(select(func.count()).select_from(PileEvent)),
            "meter_samples": await s.scalar(select(func.count()).select_from(MeterSample)),
            "charges": [(c.id, c.state, c.amount_fen, c.paid_fen, c.band_w, c.energy_wh,
                         c.duration_s, c.started_at, c.ended_at, c.bill) for c in charges],
            "ledger": [(e.id, e.kind, e.amount_fen, e.balance_after_fen, e.charge_id)
                       for e in ledger],
            "outbox": [(m.id, m.kind, m.dedupe_key) for m in outbox],
            "commands": [(c.id, c.type, c.state) for c in cmds],
        }


async def take_start_command(link: PileLink) -> dict[str, Any]:
    status, data = await link.poll(0)
    assert status == 200, data
    starts = [c for c in data["commands"] if c["type"] == "start"]
    assert len(starts) == 1, data
    return starts[0]


def metered_session(port: int, session: str, *, start: datetime, minutes: int, power_w: float,
                    ) -> tuple[dict, list[dict], dict]:
    """session_started, a meter sample every 30 s at `power_w`, and session_ended."""
    started = ev("session_started", start, port=port, session=session)
    wh_per_30s = power_w / 120
    meters = [
        ev("meter", start + timedelta(seconds=30 * k), port=port, session=session,
           power_w=power_w, energy_wh=round(wh_per_30s * k))
        for k in range(1, minutes * 2)
    ]
    energy = round(power_w * minutes / 60)
    ended = ev("session_ended", start + timedelta(minutes=minutes), port=port, session=session,
               reason="full", energy_wh=energy, duration_s=minutes * 60)
    return started, meters, ended


# --- authentication and validation -------------------------------------------------------------


async def test_a_wrong_signature_is_refused_with_401(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    body = json.dumps({"events": [ev("heartbeat", now_ts())]}).encode()
    headers = signed_headers(PILE, "not-the-secret", body, time.time())
    assert (await link.raw(body, headers))[0] == 401
    # A valid signature over a different body does not cover this body.
    headers = signed_headers(PILE, PILE_SECRET, body + b" ", time.time())
    assert (await link.raw(body, headers))[0] == 401
    assert await count(server, PileEvent) == 0


async def test_a_stale_or_future_timestamp_is_refused_even_when_correctly_signed(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    body = json.dumps({"events": [ev("heartbeat", now_ts())]}).encode()
    now = time.time()
    for at in (now - 301 - 5, now + 301 + 5, now - 86400, 0):
        status, data = await link.send_body(body, at=at)
        assert status == 401, (at, data)
    # Inside the window, even near its edges, the same body is fine.
    for at in (now - 250, now + 250):
        status, _ = await link.send_body(json.dumps(
            {"events": [ev("heartbeat", now_ts())]}).encode(), at=at)
        assert status == 200
    assert await count(server, PileEvent) == 2


async def test_missing_auth_headers_are_refused_with_401(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    body = json.dumps({"events": [ev("heartbeat", now_ts())]}).encode()
    full = signed_headers(PILE, PILE_SECRET, body, time.time())
    for missing in ("X-Pile-Id", "X-Timestamp", "X-Signature"):
        headers = {k: v for k, v in full.items() if k != missing}
        status, data = await link.raw(body, headers)
        assert status == 401, (missing, data)
    assert (await link.raw(body, {"Content-Type": "application/json"}))[0] == 401
    # A non-numeric timestamp is as bad as none.
    assert (await link.raw(body, {**full, "X-Timestamp": "yesterday"}))[0] == 401
    assert await count(server, PileEvent) == 0


async def test_an_unknown_pile_gets_404(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server, pile_id="P9999", secret="whatever")
    status, data = await link.send({"events": [ev("heartbeat", now_ts())]})
    assert status == 404
    assert data["pile"] == "P9999"
    status, _ = await link.poll(0)
    assert status == 404


async def test_a_malformed_event_gets_400_naming_the_bad_field(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    now = now_ts()
    good = ev("heartbeat", now)
    cases: list[tuple[bytes, str]] = [
        (json.dumps({"events": [ev("meter", now, port=1, session="S1", power_w="lots",
                                   energy_wh=1)]}).encode(), "events[0].power_w"),
        (json.dumps({"events": [good, ev("teleport", now)]}).encode(), "events[1].type"),
        (json.dumps({"events": [good, {"id": "x", "ts": now.isoformat()}]}).encode(),
         "events[1].type"),
        (json.dumps({"events": []}).encode(), "events"),
        (json.dumps({"events": [ev("heartbeat", now) for _ in range(501)]}).encode(), "events"),
        (json.dumps({"events": "heartbeat"}).encode(), "events"),
        (json.dumps({"evts": [good]}).encode(), "events"),
        (b"this is not json", "body"),
        (b'{"events": [{"id": "\xff\xfe", "type": "heartbeat"}]}', "body"),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "body"),  # deeper than any parser recursion
        (b"", "body"),
        (json.dumps([good]).encode(), "body"),
        (json.dumps({"events": [ev("port_status", now, port=1, status="melting")]}).encode(),
         "events[0].status"),
        (json.dumps({"events": [ev("port_status", now, port=100, status="idle")]}).encode(),
         "events[0].port"),
        (json.dumps({"events": [good, good, {**ev("heartbeat", now), "ts": "soon"}]}).encode(),
         "events[2].ts"),
        (json.dumps({"events": [ev("session_ended", now, port=1, session="S1", reason="bored",
                                   energy_wh=1, duration_s=1)]}).encode(), "events[0].reason"),
        (json.dumps({"events": [ev("meter", now, port=1, session="S1", power_w=-1,
                                   energy_wh=1)]}).encode(), "events[0].power_w"),
        (json.dumps({"events": [7]}).encode(), "events[0]"),
    ]
    for body, field in cases:
        status, data = await link.send_body(body)
        assert status == 400, (body[:80], data)
        assert data["field"] == field, (body[:80], data)
    # 500 events is the limit, not over it.
    status, data = await link.send({"events": [ev("heartbeat", now) for _ in range(500)]})
    assert status == 200 and data["accepted"] == 500
    # A refused batch stored nothing: only the 500 accepted ones are there.
    assert await count(server, PileEvent) == 500


async def test_the_command_long_poll_checks_the_signature_and_the_path(server) -> None:  # type: ignore[no-untyped-def]
    specs = await seed_city(server.ctx, piles_n=2)
    link = PileLink(server)
    status, data = await link.poll(0)
    assert (status, data) == (200, {"commands": []})
    bad = signed_headers(PILE, "not-the-secret", b"", time.time())
    assert (await link.poll(0, headers=bad))[0] == 401
    stale = signed_headers(PILE, PILE_SECRET, b"", time.time() - 400)
    assert (await link.poll(0, headers=stale))[0] == 401
    unsigned = {"X-Pile-Id": PILE}
    assert (await link.poll(0, headers=unsigned))[0] == 401
    # Correctly signed as P0001, but asking for P0002's commands.
    other_id = specs[1][0]
    status, data = await link.poll(0, path_id=other_id)
    assert status == 401, data
    # And P0002 signing for itself may read its own queue.
    assert (await PileLink(server, other_id, specs[1][1]).poll(0))[0] == 200


# --- idempotency -------------------------------------------------------------------------------


async def test_same_batch_twice_changes_nothing_the_second_time(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    await rider_starts(server, port=2)
    cmd = await take_start_command(link)
    started, meters, ended = metered_session(2, cmd["session"], start=T0, minutes=20,
                                             power_w=300)
    batch = [ev("command_ack", T0, command=cmd["id"], ok=True), started, *meters, ended,
             ev("port_status", T0 + timedelta(minutes=20), port=2, status="idle")]

    first = await link.post(batch)
    assert (first["accepted"], first["duplicates"]) == (len(batch), 0)
    before = await snapshot(server)
    charge = await charge_on(server, 2)
    assert charge.state == "settled" and charge.amount_fen > 0
    assert any(kind == "bill" for _, kind, _ in before["outbox"])
    assert any(kind == "charge" for _, kind, *_ in before["ledger"])

    second = await link.post(batch)
    assert (second["accepted"], second["duplicates"]) == (0, len(batch))
    assert await snapshot(server) == before

    # Half of it again, mixed with one genuinely new event: only the new one is applied.
    again = await link.post(batch[: len(batch) // 2] + [ev("heartbeat", now_ts())])
    assert (again["accepted"], again["duplicates"]) == (1, len(batch) // 2)
    after = await snapshot(server)
    assert after["pile_events"] == before["pile_events"] + 1
    assert {k: v for k, v in after.items() if k != "pile_events"} == {
        k: v for k, v in before.items() if k != "pile_events"}


async def test_the_same_event_id_twice_in_one_batch_is_one_event(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    hb = ev("heartbeat", now_ts(), firmware="1.0")
    data = await link.post([hb, hb, {**hb, "firmware": "2.0"}])
    assert data["accepted"] == 1
    assert await count(server, PileEvent) == 1


# --- a bill comes from the pile's own record ---------------------------------------------------


async def test_late_and_repeated_events_after_the_end_do_not_change_the_bill(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    await rider_starts(server, port=2)
    cmd = await take_start_command(link)
    assert cmd["port"] == 2
    session = cmd["session"]
    started, meters, ended = metered_session(2, session, start=T0, minutes=45, power_w=300)

    await link.post([ev("command_ack", T0, command=cmd["id"], ok=True), started])
    await link.post(meters[:40])
    await link.post(meters[40:])
    await link.post([ended])

    charge = await charge_on(server, 2)
    # 300 W → the ≤400 W tier at 40 fen/h, 45 started minutes → 30 fen.
    assert (charge.state, charge.band_w, charge.energy_wh, charge.duration_s) == (
        "settled", 300, 225, 45 * 60)
    assert charge.amount_fen == 30
    before = await snapshot(server)
    bills = await count(server, OutboxMessage, OutboxMessage.kind == "bill")
    assert bills == 1

    # A late meter after the end, at a power that would put the charge in the 60 fen/h tier,
    # and one from inside the session that was held up in the network.
    late = [
        ev("meter", ended_at(ended) + timedelta(seconds=20), port=2, session=session,
           power_w=900, energy_wh=400),
        ev("meter", T0 + timedelta(minutes=10, seconds=15), port=2, session=session,
           power_w=900, energy_wh=60),
    ]
    assert (await link.post(late))["accepted"] == 2
    # The pile repeats its end report under a new id with other numbers, and under the old id.
    repeat_new = ev("session_ended", ended_at(ended) + timedelta(minutes=5), port=2,
                    session=session, reason="unplugged", energy_wh=900, duration_s=50 * 60)
    repeat_old = {**ended, "energy_wh": 999, "duration_s": 1}
    data = await link.post([repeat_new, repeat_old])
    assert (data["accepted"], data["duplicates"]) == (1, 1)

    after = await snapshot(server)
    assert after["charges"] == before["charges"]
    assert after["ledger"] == before["ledger"]
    assert after["outbox"] == before["outbox"]
    charge = await charge_on(server, 2)
    assert (charge.amount_fen, charge.band_w, charge.energy_wh) == (30, 300, 225)
    assert charge.end_reason == "full"
    assert await count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1
    assert await count(server, LedgerEntry, LedgerEntry.kind == "charge") == 1


def ended_at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


async def test_a_batch_in_any_order_gives_the_same_bill_as_the_ordered_batch(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    await rider_starts(server, port=2)
    cmd_a = await take_start_command(link)
    await rider_starts(server, port=3)
    cmd_b = await take_start_command(link)
    assert cmd_a["session"] != cmd_b["session"]

    # Same pile-clock story on both ports: 10 min at 150 W, 10 min at 350 W, 5 min at 150 W.
    def story(port: int, session: str) -> list[dict[str, Any]]:
        out = [ev("session_started", T0, port=port, session=session)]
        for k in range(1, 50):
            power = 350 if 20 <= k < 40 else 150
            out.append(ev("meter", T0 + timedelta(seconds=30 * k), port=port, session=session,
                          power_w=power, energy_wh=k * 2))
        out.append(ev("session_ended", T0 + timedelta(minutes=25), port=port, session=session,
                      reason="user", energy_wh=100, duration_s=25 * 60))
        return out

    ordered = story(2, cmd_a["session"])
    shuffled = story(3, cmd_b["session"])
    # session_ended first, then the meters backwards, session_started last.
    shuffled = [shuffled[-1], *reversed(shuffled[1:-1]), shuffled[0]]
    assert (await link.post(ordered))["accepted"] == len(ordered)
    assert (await link.post(shuffled))["accepted"] == len(shuffled)

    a, b = await charge_on(server, 2), await charge_on(server, 3)
    assert a.state == b.state == "settled"
    assert a.band_w == b.band_w == 350
    # 25 minutes in the ≤400 W tier at 40 fen/h → 16.67 → 17 fen.
    assert a.amount_fen == b.amount_fen == 17
    assert (a.energy_wh, a.duration_s) == (b.energy_wh, b.duration_s) == (100, 25 * 60)
    assert a.bill == b.bill
    assert a.started_at == b.started_at == T0
    assert await count(server, MeterSample, MeterSample.charge_id == a.id) == 49
    assert await count(server, MeterSample, MeterSample.charge_id == b.id) == 49


async def test_an_end_without_its_start_is_still_billed_from_the_reported_duration(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    await rider_starts(server, port=2)
    cmd = await take_start_command(link)
    # The pile acknowledges, but its session_started is lost for good.
    await link.post([ev("command_ack", T0, command=cmd["id"], ok=True),
                     ev("heartbeat", now_ts())])
    charge = await charge_on(server, 2)
    assert charge.state == "requested"

    end = T0 + timedelta(minutes=30)
    data = await link.post([ev("session_ended", end, port=2, session=cmd["session"],
                               reason="full", energy_wh=150, duration_s=30 * 60)])
    assert data["accepted"] == 1
    charge = await charge_on(server, 2)
    assert charge.state == "settled"
    assert charge.duration_s == 30 * 60
    assert charge.started_at == T0 and charge.ended_at == end
    # No samples: the band is energy over time, 150 Wh in 30 min = 300 W → 40 fen/h → 20 fen.
    assert (charge.band_w, charge.energy_wh, charge.amount_fen) == (300, 150, 20)
    assert await count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1
    assert await count(server, LedgerEntry, LedgerEntry.kind == "charge",
                       LedgerEntry.amount_fen == -20) == 1

    # The start report that finally turns up changes nothing.
    before = await snapshot(server)
    await link.post([ev("session_started", T0 + timedelta(minutes=2), port=2,
                        session=cmd["session"])])
    after = await snapshot(server)
    assert after["charges"] == before["charges"] and after["outbox"] == before["outbox"]


# --- commands ----------------------------------------------------------------------------------


async def test_the_start_command_rides_on_the_next_events_response(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    first = await link.come_online()
    assert first["commands"] == []
    await rider_starts(server, port=2)
    charge = await charge_on(server, 2)
    assert charge.state == "requested"

    data = await link.post([ev("heartbeat", now_ts())])
    settings_ = server.ctx.settings.piles
    assert data["commands"] == [{
        "id": f"c{charge_id_command(await commands_of(server))}", "type": "start", "port": 2,
        "session": charge.session_ref, "max_minutes": settings_.max_minutes,
        "max_energy_wh": settings_.max_energy_wh,
    }]
    # Handed out once: the next response and the poll carry nothing until a resend is due.
    assert (await link.post([ev("heartbeat", now_ts())]))["commands"] == []
    assert (await link.poll(0))[1]["commands"] == []
    assert [c[2] for c in await commands_of(server)] == ["sent"]


async def commands_of(server: Any) -> list[tuple[int, str, str]]:
    return (await snapshot(server))["commands"]


def charge_id_command(cmds: list[tuple[int, str, str]]) -> int:
    (cid, type_, _), = cmds
    assert type_ == "start"
    return cid


async def test_the_start_command_is_handed_out_by_the_long_poll(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    await rider_starts(server, port=3)
    charge = await charge_on(server, 3)
    status, data = await link.poll(0)
    assert status == 200
    (cmd,) = data["commands"]
    assert cmd["id"].startswith("c") and cmd["id"][1:].isdigit()
    assert (cmd["type"], cmd["port"], cmd["session"]) == ("start", 3, charge.session_ref)
    assert cmd["max_minutes"] == server.ctx.settings.piles.max_minutes
    assert (await link.poll(0))[1]["commands"] == []


async def test_a_waiting_long_poll_is_woken_by_a_start(server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    poll = asyncio.create_task(link.poll(10))
    await asyncio.sleep(0.3)
    assert not poll.done()
    t = time.monotonic()
    await rider_starts(server, port=4)
    status, data = await asyncio.wait_for(poll, 5)
    assert status == 200 and [c["port"] for c in data["commands"]] == [4]
    assert time.monotonic() - t < 5


async def test_a_refused_start_fails_the_charge_and_tells_the_rider_nothing_is_charged(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    rider = await rider_starts(server, port=2)
    cmd = await take_start_command(link)

    data = await link.post([ev("command_ack", now_ts(), command=cmd["id"], ok=False,
                               error="relay_stuck")])
    assert data["accepted"] == 1
    charge = await charge_on(server, 2)
    assert (charge.state, charge.failure, charge.amount_fen, charge.paid_fen) == (
        "failed", "rejected", 0, 0)
    async with server.ctx.sm() as s:
        command = await s.get(PileCommand, int(cmd["id"][1:]))
        assert (command.state, command.error) == ("failed", "relay_stuck")

    msg = await rider.wait_message("did not start", timeout=10)
    assert f"{PILE}-02" in msg["text"] and "nothing is charged" in msg["text"]

    # Whatever the pile reports for that session afterwards, nothing is charged.
    await link.post([ev("session_ended", T0 + timedelta(minutes=5), port=2,
                        session=cmd["session"], reason="fault", energy_wh=10, duration_s=300)])
    charge = await charge_on(server, 2)
    assert (charge.state, charge.amount_fen) == ("failed", 0)
    assert await count(server, LedgerEntry, LedgerEntry.kind == "charge") == 0
    assert await count(server, OutboxMessage, OutboxMessage.kind == "bill") == 0
    assert await count(server, OutboxMessage, OutboxMessage.kind == "start_failed") == 1
    # The port is free again for the next rider.
    await rider_starts(server, port=2)
    assert (await charge_on(server, 2)).state == "requested"


# --- never a 500 -------------------------------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
ANY_VALUE = JSON_VALUES | st.sampled_from(
    [1, 2, 99, 100, 0, -1, "S1", "S2", "c1", "c2", "2025-03-03T10:00:00+08:00", "idle", "full",
     "overload", True, 1e9, 10**20, -(10**20), "0001-01-01T00:00:00+01:00",
     "9999-12-31T23:59:59-01:00"])
EVENT_SHAPED = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=12) | ANY_VALUE,
     "type": st.sampled_from(EVENT_TYPES),
     "ts": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()) | ANY_VALUE},
    optional={k: ANY_VALUE for k in (
        "port", "session", "status", "power_w", "energy_wh", "voltage_v", "current_a",
        "temperature_c", "reason", "duration_s", "code", "detail", "command", "ok", "error",
        "signal_dbm", "firmware")},
)
BODIES = (
    st.fixed_dictionaries({"events": st.lists(EVENT_SHAPED, min_size=1, max_size=5)})
    | st.fixed_dictionaries({"events": JSON_VALUES})
    | JSON_VALUES
)


def draw_examples(strategy: Any, n: int) -> list[Any]:
    """Hypothesis generates the inputs up front; the async test then sends them over HTTP."""
    found: list[Any] = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


async def test_no_input_ever_gets_a_500(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    # Two real charges, so event-shaped noise can also reach sessions S1 and S2 and command c1.
    await rider_starts(server, port=1)
    await rider_starts(server, port=2)

    for body in draw_examples(BODIES, 150):
        raw = json.dumps(body).encode()
        status, data = await link.send_body(raw)
        assert status in (200, 400), (raw[:300], status, data)
        if status == 400:
            assert isinstance(data.get("field"), str), data

    for raw in draw_examples(st.binary(max_size=200), 40):
        status, data = await link.send_body(raw)
        assert status in (200, 400), (raw, status, data)
        now = str(int(time.time()))
        for headers in (
            {},
            {"X-Pile-Id": PILE},
            {"X-Pile-Id": PILE, "X-Timestamp": now, "X-Signature": raw.hex()},
            {"X-Pile-Id": "P9999", "X-Timestamp": now, "X-Signature": sign("x", now, raw)},
        ):
            status, data = await link.raw(raw, headers)
            assert status in (400, 401, 404), (raw, headers, status, data)

    # The app is still healthy afterwards.
    assert (await link.post([ev("heartbeat", now_ts())]))["accepted"] == 1
    await wait_until(lambda: True)
