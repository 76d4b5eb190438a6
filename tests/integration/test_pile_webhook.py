"""The pile controller webhook (DESIGN §3) over real HTTP, on SQLite and PostgreSQL.

Every test drives the running app the way a pile does: signed JSON batches to
`POST /api/piles/events` and the command long poll `GET /api/piles/{id}/commands`, with a rider in
the web chat where a charge is needed. The database is then read directly to prove exact effects.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import strategies as st
from sqlalchemy import func, select

from core.billing.wallet import LedgerEntry
from core.charging.tables import END_REASONS, Charge, MeterSample
from core.outbox import OutboxMessage
from core.piles.auth import sign, signed_headers
from core.piles.tables import PORT_STATUSES, Pile, PileCommand, PileEvent, RejectedEvent
from core.piles.wire import EVENT_TYPES, FAULT_CODES
from tests.support.fuzzing import draw_examples
from tests.support.pile_events import REQUIRED
from tests.support.piles import (
    PILE,
    PileLink,
    ev,
    now_ts,
    rider_starts,
    take_start_command,
)
from tests.support.server import Running, seed_city
from tests.support.settings import PILE_SECRET

# The pile's own clock for hand-driven charges: a fixed daytime moment (no off-peak in the
# standard tariff anyway), so every bill below is exact arithmetic.
T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai

_ids = itertools.count(1)


async def charge_on(server: Running, port: int) -> Charge:
    async with server.ctx.sm() as s:
        return (await s.execute(
            select(Charge).where(Charge.pile_id == PILE, Charge.port_number == port)
            .order_by(Charge.id.desc())
        )).scalars().first()


async def count(server: Running, model: Any, *where: Any) -> int:
    async with server.ctx.sm() as s:
        return await s.scalar(select(func.count()).select_from(model).where(*where))


async def snapshot(server: Running) -> dict[str, Any]:
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


def tier_bill(server: Running, band_w: int, minutes: int) -> int:
    """An independent reading of the standard power_tier tariff for whole minutes."""
    tariff = server.ctx.settings.billing.tariffs["standard"]
    rate = next(t.fen_per_hour for t in sorted(tariff.tiers, key=lambda t: t.up_to_w)
                if band_w <= t.up_to_w)
    billable = max(0, minutes - tariff.free_minutes)
    return math.floor(Fraction(rate, 60) * billable + Fraction(1, 2))


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


async def test_a_wrong_signature_is_refused_with_401(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    body = json.dumps({"events": [ev("heartbeat", now_ts())]}).encode()
    headers = signed_headers(PILE, "not-the-secret", body, time.time())
    assert (await link.raw(body, headers))[0] == 401
    # A valid signature over a different body does not cover this body.
    headers = signed_headers(PILE, PILE_SECRET, body + b" ", time.time())
    assert (await link.raw(body, headers))[0] == 401
    assert await count(server, PileEvent) == 0


async def test_a_stale_or_future_timestamp_is_refused_even_when_correctly_signed(
    server: Running,
) -> None:
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


async def test_missing_auth_headers_are_refused_with_401(server: Running) -> None:
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


async def test_an_unknown_pile_gets_401_like_a_bad_signature(server: Running) -> None:
    await seed_city(server.ctx)
    stranger = PileLink(server, pile_id="P9999", secret="whatever")
    forger = PileLink(server, secret="not-the-secret")
    status, data = await stranger.send({"events": [ev("heartbeat", now_ts())]})
    forged = await forger.send({"events": [ev("heartbeat", now_ts())]})
    # Nothing tells a pile id that exists from one that does not.
    assert (status, data) == forged and status == 401
    assert (await stranger.poll(0)) == (await forger.poll(0))
    assert (await stranger.poll(0))[0] == 401


async def test_an_unusable_body_gets_400_naming_the_part(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    now = now_ts()
    good = ev("heartbeat", now)
    cases: list[tuple[bytes, str]] = [
        (json.dumps({"events": []}).encode(), "events"),
        (json.dumps({"events": [ev("heartbeat", now) for _ in range(501)]}).encode(), "events"),
        (json.dumps({"events": "heartbeat"}).encode(), "events"),
        (json.dumps({"evts": [good]}).encode(), "events"),
        (b"this is not json", "body"),
        (b'{"events": [{"id": "\xff\xfe", "type": "heartbeat"}]}', "body"),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "body"),  # deeper than any parser recursion
        (b"", "body"),
        (json.dumps([good]).encode(), "body"),
    ]
    for body, field in cases:
        status, data = await link.send_body(body)
        assert status == 400, (body[:80], data)
        assert data["field"] == field, (body[:80], data)
    # 500 events is the limit, not over it.
    status, data = await link.send({"events": [ev("heartbeat", now) for _ in range(500)]})
    assert status == 200 and data["accepted"] == 500
    # A refused body stored nothing: only the 500 accepted events are there.
    assert await count(server, PileEvent) == 500
    assert await count(server, RejectedEvent) == 0


async def test_a_bad_event_is_listed_and_kept_while_its_batch_is_applied(
        server: Running) -> None:
    """DESIGN §3: one bad event never costs the others (a pile resending a refused batch forever
    would go dark and lose every bill behind it)."""
    await seed_city(server.ctx)
    link = PileLink(server)
    now = now_ts()
    bad: list[tuple[Any, str]] = [
        (ev("meter", now, port=1, session="S1", power_w="lots", energy_wh=1),
         "power_w"),
        (ev("teleport", now), "type"),
        ({"id": "x", "ts": now.isoformat()}, "type"),
        (ev("port_status", now, port=1, status="melting"), "status"),
        (ev("port_status", now, port=100, status="idle"), "port"),
        (ev("port_status", now, port=2.5, status="idle"), "port"),  # ports are whole
        ({**ev("heartbeat", now), "ts": "soon"}, "ts"),
        (ev("session_ended", now, port=1, session="S1", reason="bored", energy_wh=1,
            duration_s=1), "reason"),
        (ev("meter", now, port=1, session="S1", power_w=-1, energy_wh=1), "power_w"),
        (ev("meter", now, port=1, session="S1", power_w=10, energy_wh={"wh": 1}), "energy_wh"),
        (ev("heartbeat", now, temperature_c=1e308), "temperature_c"),
        ({**ev("heartbeat", now), "id": "i" * 10_000}, "id"),
        (7, ""),
    ]
    events: list[Any] = []
    for i, (event, _) in enumerate(bad):
        events += [ev("port_status", now, port=1 + i % 4, status="idle"), event]
    events.append(ev("heartbeat", now, temperature_c=31.5, signal_dbm=-71.5))
    status, data = await link.send({"events": events})
    assert status == 200, data
    assert data["accepted"] == len(bad) + 1
    assert [r["index"] for r in data["rejected"]] == [2 * i + 1 for i in range(len(bad))]
    for r, (event, name) in zip(data["rejected"], bad, strict=True):
        assert r["field"] == f"events[{r['index']}]" + (f".{name}" if name else ""), r
        assert r["error"], r
        shown = event.get("id") if isinstance(event, dict) else None
        assert r["id"] == (shown if shown is None or len(shown) <= 80 else shown[:80] + "…")
    assert await count(server, PileEvent) == len(bad) + 1
    async with server.ctx.sm() as s:
        kept = (await s.execute(select(RejectedEvent).order_by(RejectedEvent.position))).scalars()
        kept = list(kept)
        pile = await s.get(Pile, PILE)
    assert [k.position for k in kept] == [r["index"] for r in data["rejected"]]
    assert all(k.pile_id == PILE for k in kept)
    assert [k.field for k in kept] == [r["field"] for r in data["rejected"]]
    assert json.loads(kept[0].raw)["power_w"] == "lots"
    # Readings are kept at the pile's resolution.
    assert (pile.temperature_c, pile.signal_dbm) == (31.5, -71.5)

    # The pile resends the same batch: nothing is applied twice, nothing is stored twice.
    again = (await link.send({"events": events}))[1]
    assert (again["accepted"], again["duplicates"]) == (0, len(bad) + 1)
    assert again["rejected"] == data["rejected"]
    assert await count(server, RejectedEvent) == len(bad)
    async with server.http.get(server.url + "/metrics") as r:
        assert f"chargebot_pile_events_rejected_total {len(bad)}\n" in await r.text()

    # NaN, ±Infinity and 1e999 are not JSON, but one of them costs only its own event.
    odd = (b'{"events": [{"id": "n1", "type": "heartbeat", "ts": "%s", "temperature_c": NaN},'
           b' {"id": "n2", "type": "heartbeat", "ts": "%s", "x": -Infinity},'
           b' {"id": "n3", "type": "meter", "ts": "%s", "port": 1, "session": "S1",'
           b' "power_w": 1e999, "energy_wh": 1},'
           b' {"id": "n4", "type": "heartbeat", "ts": "%s"}]}') % ((now.isoformat().encode(),) * 4)
    status, data = await link.send_body(odd)
    assert status == 200, data
    assert data["accepted"] == 1
    assert [(r["id"], r["field"]) for r in data["rejected"]] == [
        ("n1", "events[0].temperature_c"), ("n2", "events[1].x"), ("n3", "events[2].power_w")]
    async with server.ctx.sm() as s:
        raws = (await s.execute(select(RejectedEvent.raw).where(
            RejectedEvent.event_id.in_(("n1", "n2"))).order_by(RejectedEvent.event_id))).scalars()
        assert [json.loads(r).get("temperature_c", json.loads(r).get("x")) for r in raws] == [
            pytest.approx(math.nan, nan_ok=True), -math.inf]


async def test_the_command_long_poll_checks_the_signature_and_the_path(server: Running) -> None:
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


async def test_same_batch_twice_changes_nothing_the_second_time(server: Running) -> None:
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


async def test_the_same_batch_sent_twice_at_once_is_applied_once(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    await rider_starts(server, port=3)
    cmd = await take_start_command(link)
    started, meters, ended = metered_session(3, cmd["session"], start=T0, minutes=15,
                                             power_w=180)
    batch = [started, *meters, ended]

    # A pile that timed out and retried while its first request was still being applied.
    first, second = await asyncio.gather(link.post(batch), link.post(batch))
    assert sorted([first["accepted"], second["accepted"]]) == [0, len(batch)]
    assert first["duplicates"] + second["duplicates"] == len(batch)

    charge = await charge_on(server, 3)
    assert (charge.state, charge.amount_fen) == ("settled", tier_bill(server, 180, 15))
    assert await count(server, PileEvent, PileEvent.type != "heartbeat",
                       PileEvent.type != "port_status") == len(batch)
    assert await count(server, MeterSample) == len(meters)
    assert await count(server, LedgerEntry, LedgerEntry.kind == "charge") == 1
    assert await count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1


async def test_the_same_event_id_twice_in_one_batch_is_one_event(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    hb = ev("heartbeat", now_ts(), firmware="1.0")
    data = await link.post([hb, hb, {**hb, "firmware": "2.0"}])
    assert data["accepted"] == 1
    assert await count(server, PileEvent) == 1


# --- a bill comes from the pile's own record ---------------------------------------------------


async def test_late_and_repeated_events_after_the_end_do_not_change_the_bill(
    server: Running,
) -> None:
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
    # 300 W → the ≤400 W tier, 45 started minutes.
    assert (charge.state, charge.band_w, charge.energy_wh, charge.duration_s) == (
        "settled", 300, 225, 45 * 60)
    fen = tier_bill(server, 300, 45)
    assert charge.amount_fen == fen > 0
    # What the late 900 W readings below would cost if they were let in.
    assert tier_bill(server, 900, 45) > fen
    before = await snapshot(server)
    bills = await count(server, OutboxMessage, OutboxMessage.kind == "bill")
    assert bills == 1

    # A late meter after the end, at a power that would put the charge in the dearest tier,
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
    assert (charge.amount_fen, charge.band_w, charge.energy_wh) == (fen, 300, 225)
    assert charge.end_reason == "full"
    assert await count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1
    assert await count(server, LedgerEntry, LedgerEntry.kind == "charge") == 1


def ended_at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


async def test_a_batch_in_any_order_gives_the_same_bill_as_the_ordered_batch(
    server: Running,
) -> None:
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
    # The peak minute (350 W) picks the ≤400 W tier for all 25 minutes.
    assert a.amount_fen == b.amount_fen == tier_bill(server, 350, 25) > 0
    assert (a.energy_wh, a.duration_s) == (b.energy_wh, b.duration_s) == (100, 25 * 60)
    assert a.bill == b.bill
    assert a.started_at == b.started_at == T0
    assert await count(server, MeterSample, MeterSample.charge_id == a.id) == 49
    assert await count(server, MeterSample, MeterSample.charge_id == b.id) == 49


async def test_an_end_without_its_start_is_still_billed_from_the_reported_duration(
    server: Running,
) -> None:
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
    # No samples: the band is energy over time, 150 Wh in 30 min = 300 W.
    fen = tier_bill(server, 300, 30)
    assert (charge.band_w, charge.energy_wh, charge.amount_fen) == (300, 150, fen)
    assert fen > 0
    assert await count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1
    assert await count(server, LedgerEntry, LedgerEntry.kind == "charge",
                       LedgerEntry.amount_fen == -fen) == 1

    # The start report that finally turns up changes nothing.
    before = await snapshot(server)
    await link.post([ev("session_started", T0 + timedelta(minutes=2), port=2,
                        session=cmd["session"])])
    after = await snapshot(server)
    assert after["charges"] == before["charges"] and after["outbox"] == before["outbox"]


# --- commands ----------------------------------------------------------------------------------


async def test_the_start_command_rides_on_the_next_events_response(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    first = await link.come_online()
    assert first["commands"] == []
    await rider_starts(server, port=2)
    charge = await charge_on(server, 2)
    assert charge.state == "requested"

    async with server.ctx.sm() as s:
        (queued,) = (await s.execute(select(PileCommand))).scalars().all()
    assert (queued.type, queued.state, queued.charge_id) == ("start", "queued", charge.id)

    data = await link.post([ev("heartbeat", now_ts())])
    limits = server.ctx.settings.piles
    assert data["commands"] == [{
        "id": f"c{queued.id}", "type": "start", "port": 2, "session": charge.session_ref,
        "max_minutes": limits.max_minutes, "max_energy_wh": limits.max_energy_wh,
    }]
    # Handed out once: the next response and the poll carry nothing until a resend is due.
    assert (await link.post([ev("heartbeat", now_ts())]))["commands"] == []
    assert (await link.poll(0))[1]["commands"] == []
    assert (await snapshot(server))["commands"] == [(queued.id, "start", "sent")]


async def test_the_start_command_is_handed_out_by_the_long_poll(server: Running) -> None:
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


async def test_a_waiting_long_poll_is_woken_by_a_start(server: Running) -> None:
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


async def test_a_refused_start_fails_the_charge_and_tells_the_rider_nothing_is_charged(
    server: Running,
) -> None:
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
# Values a pile could plausibly send, including edges: real session refs and command ids of the
# two charges the test opens, port numbers around the valid range, times across the clock.
SHARP_VALUES = st.sampled_from(
    [0, 1, 2, 99, 100, -1, "S1", "S2", "c1", "c2", "2025-03-03T10:00:00+08:00", "idle", "full",
     "overload", True, 1e9, 10**20, -(10**20), 2**31, "0001-01-01T00:00:00+01:00",
     "9999-12-31T23:59:59-01:00", "", "\x00", "²"])
ANY_VALUE = JSON_VALUES | SHARP_VALUES


def plausible(strategy: Any) -> Any:
    """Mostly a well-typed value (so events get past validation), 1 in 20 anything at all."""
    return st.integers(0, 19).flatmap(lambda n: ANY_VALUE if n == 7 else strategy)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1,
               max_size=8)


# Mostly around the hand-driven charges' hours, sometimes anywhere a pile clock might be.
PILE_TIMES = (
    st.integers(-3 * 3600, 3 * 3600).map(lambda s: T0 + timedelta(seconds=s))
    | st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2080, 1, 1),
                   timezones=st.timezones() | st.just(UTC))
)
FIELDS = {
    "port": plausible(st.integers(0, 100)),
    "session": plausible(st.sampled_from(["S1", "S2", "S3"]) | TEXT),
    "status": plausible(st.sampled_from(PORT_STATUSES)),
    "power_w": plausible(st.floats(-10, 2e5, allow_nan=False) | st.integers(0, 2000)),
    "energy_wh": plausible(st.integers(-1, 2 * 10**5)),
    "voltage_v": plausible(st.floats(allow_nan=False, allow_infinity=False)),
    "current_a": plausible(st.floats(allow_nan=False, allow_infinity=False)),
    "temperature_c": plausible(st.floats(-50, 150)),
    "reason": plausible(st.sampled_from(END_REASONS)),
    "duration_s": plausible(st.integers(-1, 10**8)),
    "code": plausible(st.sampled_from(FAULT_CODES) | TEXT),
    "detail": plausible(TEXT),
    "command": plausible(st.sampled_from(["c1", "c2", "c3"]) | TEXT),
    "ok": plausible(st.booleans()),
    "error": plausible(TEXT),
    "signal_dbm": plausible(st.integers(-300, 300)),
    "firmware": plausible(TEXT),
    "note": ANY_VALUE,
}


def event_shaped(type_: str) -> Any:
    """An event of a real type: its required fields present (plausible values), others maybe."""
    return st.fixed_dictionaries(
        {"id": plausible(TEXT.map(lambda t: f"{t}#{next(_ids)}")),  # unique, so mostly new
         "type": st.just(type_),
         "ts": plausible(PILE_TIMES.map(lambda d: d.isoformat())),
         **{k: FIELDS[k] for k in REQUIRED[type_]}},
        optional={k: v for k, v in FIELDS.items() if k not in REQUIRED[type_]},
    )


EVENT_SHAPED = st.sampled_from(EVENT_TYPES).flatmap(event_shaped)
BODIES = st.integers(0, 5).flatmap(lambda n: [
    JSON_VALUES,
    st.fixed_dictionaries({"events": JSON_VALUES}),
][n] if n < 2 else st.fixed_dictionaries({"events": st.lists(EVENT_SHAPED, min_size=1,
                                                                max_size=3)}))


def _one(**fields: Any) -> bytes:
    return json.dumps({"events": [{"id": f"x{next(_ids)}", "ts": "2025-03-03T10:00:00+08:00",
                                   **fields}]}).encode()


# Inputs a parser or a database column is known to choke on; each must be a 200 or a 400.
SHARP_EDGES = [
    _one(type="heartbeat", signal_dbm=10**20),
    _one(type="heartbeat", signal_dbm=-(2**40)),
    _one(type="heartbeat", temperature_c=float("nan")),
    _one(type="heartbeat", temperature_c=float("inf")),
    _one(type="heartbeat", voltage_v=float("nan")),
    _one(type="heartbeat", firmware="v1\x00"),
    _one(type="heartbeat", extra={"deep": float("-inf")}),
    _one(type="heartbeat", note="\x00"),
    json.dumps({"events": [{"id": "nul\x00", "type": "heartbeat",
                            "ts": "2025-03-03T10:00:00Z"}]}).encode(),
    b'{"events": [{"id": "sur\\ud800", "type": "heartbeat", "ts": "2025-03-03T10:00:00Z"}]}',
    b'{"events": [{"id": "ok", "type": "heartbeat", "ts": "2025-03-03T10:00:00Z", '
    b'"x": "\\udfff"}]}',
    _one(type="heartbeat", ts="0001-01-01T00:00:00+01:00"),
    _one(type="heartbeat", ts="9999-12-31T23:59:59-01:00"),
    _one(type="heartbeat", ts=-(10**11)),
    _one(type="port_status", port=1, status="idle", ts="0001-01-01T00:00:00+00:30"),
    _one(type="meter", port=1, session="S1", power_w=100, energy_wh=10**20),
    _one(type="meter", port=1, session="S1", power_w=100, energy_wh=2**31),
    _one(type="session_started", port=1, session="S1", ts="0001-01-01T00:00:00Z"),
    _one(type="session_ended", port=1, session="S1", reason="full", energy_wh=10**20,
         duration_s=10**20),
    _one(type="session_ended", port=2, session="S2", reason="full", energy_wh=5,
         duration_s=10**15),
    # The longest duration accepted, on a charge whose start never arrived, at the earliest time.
    _one(type="session_ended", port=2, session="S2", reason="full", energy_wh=100_000,
         duration_s=31 * 24 * 3600, ts="2000-01-01T00:00:00Z"),
    _one(type="command_ack", command="c" + "9" * 30, ok=False),
    _one(type="command_ack", command="c99999999999999999999", ok=True),
    _one(type="fault", code="overload", detail="\x00"),
    _one(type="heartbeat", **{"\x00": 1}),
    _one(type="heartbeat", extra={"\udfff": 1}),
    _one(type="command_ack", command="c\u00b2", ok=True),  # '²'.isdigit() but int('²') fails
    _one(type="command_ack", command="c\u0663", ok=False),  # Arabic-Indic three
    _one(type="heartbeat", ts="1999-12-31T23:59:59Z"),
    _one(type="heartbeat", ts=0),
    _one(type="session_started", port=1, session="S1", ts="2000-01-01T00:00:00Z"),
    _one(type="session_ended", port=1, session="S1", reason="full", energy_wh=100_000,
         duration_s=1, ts="2068-01-19T03:14:07Z"),
    b'{"events": [{"id": "n1", "type": "heartbeat", "ts": "2025-03-03T10:00:00Z", '
    b'"temperature_c": 1e999}]}',
    b'{"events": [{"id": "n2", "type": "heartbeat", "ts": "2025-03-03T10:00:00Z", '
    b'"temperature_c": NaN}]}',
    b'{"events": [{"id": "n3", "type": "heartbeat", "ts": "2025-03-03T10:00:00Z", '
    b'"x": [-Infinity]}]}',
]


async def test_no_input_ever_gets_a_500(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    # Two real charges, so event-shaped noise can also reach sessions S1 and S2 and command c1.
    await rider_starts(server, port=1)
    await rider_starts(server, port=2)

    refused = []
    for i, raw in enumerate(SHARP_EDGES):
        status, _ = await link.send_body(raw)
        if status not in (200, 400):
            refused.append((i, raw[:120], status))
    assert not refused, refused

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

    # The app is still healthy afterwards, and the riders' charges are still tracked.
    assert (await link.post([ev("heartbeat", now_ts())]))["accepted"] == 1
    assert await count(server, Charge) == 2


async def test_an_ack_for_a_command_id_no_database_can_hold_is_taken_and_ignored(
    server: Running,
) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    acks = [ev("command_ack", now_ts(), command=ref, ok=True)
            for ref in ("c99999999999999999999", "c²", "c-1", "x1")]
    data = await link.post(acks)
    assert data["accepted"] == len(acks)
    async with server.ctx.sm() as s:
        assert await s.scalar(select(func.count()).select_from(PileCommand)) == 0
