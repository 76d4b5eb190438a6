"""Pile events (DESIGN §3): validation, idempotent storage and their effect on ports and charges."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    String,
    Text,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel

from core import charging, commands, faults
from core.charging import Charge, MeterSample
from core.commands import PileCommand
from core.config import Settings
from core.db import insert_ignore, utcnow
from core.errors import InvalidEvent
from core.faults import PowerTrack
from core.piles import PORT_STATUSES, Pile, Port

MAX_BATCH = 500
# Pile clocks before 2000 were never set; and any two accepted times lie less than 2^31 s apart,
# so a duration computed from them always fits the 32-bit integer columns.
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TS_MAX = TS_MIN + timedelta(seconds=2**31 - 1)
# Bounds that keep every stored number inside a 32-bit column (energy × 3600 / 1 s included):
# far beyond any e-bike session (the per-session cap is ~2 kWh, the charge cap 8 h).
MAX_ENERGY_WH = 100_000
MAX_DURATION_S = 31 * 24 * 3600
MAX_INT32 = 2**31 - 1
_OUR_COMMAND_ID = re.compile(r"c[0-9]{1,10}")
FAULT_CODES = (
    "overload", "over_temperature", "over_voltage", "under_voltage", "leakage", "short_circuit",
    "relay_stuck", "relay_open", "meter_fault", "comm_loss", "power_loss", "smoke", "flooding",
    "door_open",
)


class PileEvent(SQLModel, table=True):
    __tablename__ = "pile_events"
    __table_args__ = (Index("uq_pile_events_pile_event", "pile_id", "event_id", unique=True),)

    id: int | None = SQLField(default=None, primary_key=True)
    pile_id: str = SQLField(max_length=32)
    event_id: str = SQLField(sa_column=Column(String(80), nullable=False))
    type: str = SQLField(max_length=24)
    ts: datetime
    payload: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime


class RejectedEvent(SQLModel, table=True):
    """An event a pile sent that we could not apply, kept for operators with the reason.

    The rest of its batch was applied (DESIGN §3): a pile that resends a refused batch forever
    would go dark and lose every bill behind it. A resend of the same bad event is stored once.
    """

    __tablename__ = "rejected_events"
    __table_args__ = (
        Index("uq_rejected_events_pile_digest", "pile_id", "digest", unique=True),
        Index("ix_rejected_events_received", "received_at"),
    )

    id: int | None = SQLField(default=None, primary_key=True)
    pile_id: str = SQLField(max_length=32, index=True)
    event_id: str | None = SQLField(default=None, max_length=81)
    position: int  # its index in the batch it came in
    field: str = SQLField(max_length=200)
    error: str = SQLField(max_length=500)
    # The event as received, re-serialised as ASCII JSON text: NaN and ±Infinity stay readable
    # (no JSON column takes them) and so do NUL and lone surrogates (escaped).
    raw: str = SQLField(sa_column=Column(Text, nullable=False))
    digest: str = SQLField(max_length=64)
    received_at: datetime = SQLField(default_factory=utcnow)


# --- the wire format ------------------------------------------------------------------------

EventId = Annotated[str, Field(min_length=1, max_length=80)]
PortNo = Annotated[int, Field(ge=1, le=99)]
SessionRef = Annotated[str, Field(min_length=1, max_length=40)]


# Readings are JSON numbers, whole or decimal (boards report 0.1 W, 0.01 kWh, 0.1 V; OCPP meter
# values are decimals): kept as floats at their resolution. Only money is integer fen.
Reading = Annotated[float, Field(allow_inf_nan=False)]


class _Event(BaseModel):
    # Unknown fields are kept in the stored payload, not refused: a newer firmware that adds a
    # field must not lose its riders' bills.
    model_config = ConfigDict(extra="allow", strict=False, allow_inf_nan=False)
    id: EventId
    ts: datetime


class Heartbeat(_Event):
    type: Literal["heartbeat"]
    signal_dbm: Annotated[Reading, Field(ge=-255, le=255)] | None = None
    temperature_c: Annotated[Reading, Field(ge=-60, le=400)] | None = None
    firmware: Annotated[str, Field(max_length=64)] | None = None


class PortStatus(_Event):
    type: Literal["port_status"]
    port: PortNo
    status: Literal[PORT_STATUSES]  # type: ignore[valid-type]


class Meter(_Event):
    type: Literal["meter"]
    port: PortNo
    session: SessionRef
    power_w: Annotated[Reading, Field(ge=0, le=100_000)]
    energy_wh: Annotated[Reading, Field(ge=0, le=MAX_ENERGY_WH)]
    voltage_v: Annotated[Reading, Field(ge=0, le=1000)] | None = None
    current_a: Annotated[Reading, Field(ge=0, le=1000)] | None = None
    temperature_c: Annotated[Reading, Field(ge=-60, le=400)] | None = None


class SessionStarted(_Event):
    type: Literal["session_started"]
    port: PortNo
    session: SessionRef


class SessionEnded(_Event):
    type: Literal["session_ended"]
    port: PortNo
    session: SessionRef
    reason: Literal[charging.END_REASONS]  # type: ignore[valid-type]
    energy_wh: Annotated[Reading, Field(ge=0, le=MAX_ENERGY_WH)]
    duration_s: Annotated[Reading, Field(ge=0, le=MAX_DURATION_S)]


class Fault(_Event):
    type: Literal["fault"]
    port: PortNo | None = None
    code: Annotated[str, Field(min_length=1, max_length=40)]
    detail: Annotated[str, Field(max_length=500)] | None = None


class FaultCleared(_Event):
    type: Literal["fault_cleared"]
    port: PortNo | None = None
    code: Annotated[str, Field(min_length=1, max_length=40)]


class CommandAck(_Event):
    type: Literal["command_ack"]
    command: Annotated[str, Field(min_length=1, max_length=40)]
    ok: bool
    error: Annotated[str, Field(max_length=200)] | None = None


AnyEvent = Annotated[
    Heartbeat | PortStatus | Meter | SessionStarted | SessionEnded | Fault | FaultCleared
    | CommandAck,
    Field(discriminator="type"),
]
_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
EVENT_TYPES = (
    "heartbeat", "port_status", "meter", "session_started", "session_ended", "fault",
    "fault_cleared", "command_ack",
)


def _unstorable(value: Any, where: str) -> tuple[str, str] | None:
    """(field, problem) where a value no database can hold hides, if anywhere: NUL and lone
    surrogates in text, NaN and ±Infinity among numbers (no JSON column takes them)."""
    if isinstance(value, str):
        if "\x00" in value:
            return where, "must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where, "must not contain unpaired surrogate characters"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, "must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            if (bad := _unstorable(k, f"{where}.{k!r}")
                    or _unstorable(v, f"{where}.{k}")) is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (bad := _unstorable(v, f"{where}[{i}]")) is not None:
                return bad
    return None


def decode_body(body: bytes) -> Any:
    """The request body as Python values. NaN, ±Infinity and numbers too large for a double
    (1e999) are not JSON, but boards send them: they decode here so that only the event that
    holds one is refused, not its whole batch. Raises ValueError/RecursionError when the body
    is not JSON at all."""
    return json.loads(body, parse_constant=float)


@dataclass
class Rejection:
    """One event of a batch that was not applied, and why (DESIGN §3 `rejected`)."""

    index: int
    id: str | None
    field: str
    error: str
    raw: Any

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "field": self.field, "error": self.error}


@dataclass
class Batch:
    events: list[Any]
    rejected: list[Rejection] = field(default_factory=list)


def _shown_id(raw: Any) -> str | None:
    ident = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(ident, str):
        return None
    # Echoed back and stored: a 10k-character id is cut (and marked), it is refused anyway.
    ident = ident if len(ident) <= 80 else ident[:80] + "…"
    return ident.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _check(raw: Any, where: str, suspicious: bool,
           ) -> tuple[Any, None] | tuple[None, tuple[str, str]]:
    """The parsed event, or the (field, problem) that refuses it."""
    if not isinstance(raw, dict):
        return None, (where, "must be an object")
    if raw.get("type") not in EVENT_TYPES:
        return None, (f"{where}.type", f"must be one of {', '.join(EVENT_TYPES)}")
    if suspicious and (bad := _unstorable(raw, where)) is not None:
        return None, bad
    try:
        event = _adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"][1:]] or ["?"]
        return None, (f"{where}.{'.'.join(loc)}", err["msg"])
    if event.ts.tzinfo is None:
        event.ts = event.ts.replace(tzinfo=UTC)
    if not TS_MIN <= event.ts <= TS_MAX:  # compared as instants, before any conversion
        return None, (f"{where}.ts", f"must lie between {TS_MIN:%Y} and {TS_MAX:%Y}")
    return event, None


def parse_batch(body: Any, raw_body: bytes | None = None) -> Batch:
    """Validate a request body: its good events, and each bad one with the field that is wrong
    (like `events[3].power_w`). Raises InvalidEvent only when the body itself is unusable.

    `raw_body`, when given, lets the walk for values no database holds (NUL, lone surrogates,
    NaN, ±Infinity) be skipped for the usual body that cannot contain them.
    """
    suspicious = raw_body is None or _SUSPICIOUS.search(raw_body) is not None
    if not isinstance(body, dict):
        raise InvalidEvent("body", "must be a JSON object")
    events = body.get("events")
    if not isinstance(events, list):
        raise InvalidEvent("events", "must be a list")
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidEvent("events", f"must hold 1 to {MAX_BATCH} events")
    batch = Batch(events=[])
    seen: set[str] = set()
    for i, raw in enumerate(events):
        event, bad = _check(raw, f"events[{i}]", suspicious)
        if bad is not None:
            batch.rejected.append(Rejection(i, _shown_id(raw), bad[0], bad[1][:500], raw))
            continue
        # The pile's own fields, stored verbatim: cheaper than dumping the model, and a plain
        # instance-dict entry costs nothing, where a pydantic private attribute costs ~20 µs.
        event.__dict__[_RAW] = raw
        if event.id in seen:
            continue  # the same event twice in one batch is still one event
        seen.add(event.id)
        batch.events.append(event)
    return batch


# JSON escapes NUL and surrogates; NaN, Infinity and huge exponents are the non-finite numbers.
_SUSPICIOUS = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|NaN|Infinity|[0-9][eE]\+?[0-9]{3}")
MAX_RAW_CHARS = 100_000


def rejected_rows(pile_id: str, rejected: Sequence[Rejection], now: datetime
                  ) -> list[dict[str, Any]]:
    rows = []
    for r in rejected:
        raw = json.dumps(r.raw, ensure_ascii=True, allow_nan=True, default=repr)
        if len(raw) > MAX_RAW_CHARS:
            raw = raw[:MAX_RAW_CHARS] + "…(cut)"
        rows.append({
            "pile_id": pile_id, "event_id": r.id, "position": r.index, "field": r.field[:200],
            "error": r.error[:500], "raw": raw,
            "digest": hashlib.sha256(raw.encode()).hexdigest(), "received_at": now,
        })
    return rows


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC)


def _stored(ts: datetime) -> datetime:
    """A time read back from the database: SQLite returns it naive, and it is UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


async def _over_limit_run(session: AsyncSession, charge_id: int, ts: datetime,
                          limits: Any, run: int) -> tuple[str, datetime] | None:
    """(cause, since) when this reading and the `run - 1` before it all break one threshold."""
    rows = (await session.execute(
        select(SAMPLES.c.ts, SAMPLES.c.power_w, SAMPLES.c.current_a, SAMPLES.c.temperature_c)
        .where(SAMPLES.c.charge_id == charge_id, SAMPLES.c.ts <= ts)
        .order_by(SAMPLES.c.ts.desc()).limit(run))).all()
    if len(rows) < run:
        return None
    causes = {faults.over_limits(limits, p, a, t) for _, p, a, t in rows}
    if len(causes) != 1 or None in causes:
        return None
    return causes.pop(), _stored(rows[-1][0])  # type: ignore[return-value]


# --- applying a batch ------------------------------------------------------------------------


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    billed: list[int] = field(default_factory=list)
    notify: bool = False
    commands: list[dict[str, Any]] = field(default_factory=list)


SESSION_EVENTS = ("meter", "session_started", "session_ended")
_ENVELOPE = ("id", "type", "ts")
_RAW = "__chargebot_raw__"
EVENTS = PileEvent.__table__
REJECTED = RejectedEvent.__table__
PILES = Pile.__table__
SAMPLES = MeterSample.__table__
# One statement shape for every pile of a group: heartbeat fields only overwrite when given.
_TOUCH = (
    update(PILES)
    .where(PILES.c.id == bindparam("pid"))
    .values(
        online=True, last_seen_at=bindparam("seen"),
        firmware=func.coalesce(bindparam("fw", type_=String), PILES.c.firmware),
        signal_dbm=func.coalesce(bindparam("sig", type_=Float), PILES.c.signal_dbm),
        temperature_c=func.coalesce(bindparam("temp", type_=Float), PILES.c.temperature_c),
    )
)


CHARGES = Charge.__table__
# charging.on_meter as one statement for many charges: a meter proves the charge runs, and only
# a newer reading replaces the one on the row.
_METER = (
    update(CHARGES)
    .where(
        CHARGES.c.id == bindparam("cid"),
        # Not IN (…): expanding parameters cannot be used with executemany.
        (CHARGES.c.state == "requested") | (CHARGES.c.state == "started"),
        (CHARGES.c.last_meter_at.is_(None)) | (CHARGES.c.last_meter_at <= bindparam("ts")),
    )
    .values(state="started", last_meter_at=bindparam("ts"), last_power_w=bindparam("p"),
            last_energy_wh=bindparam("e"), power_dropped_at=bindparam("d"),
            power_dropped_seen_at=bindparam("ds"))
)


def _row(pile_id: str, e: Any, now: datetime) -> dict[str, Any]:
    return {
        "pile_id": pile_id, "event_id": e.id, "type": e.type, "ts": _utc(e.ts),
        "payload": (
            {k: v for k, v in raw.items() if k not in _ENVELOPE}
            if (raw := e.__dict__.get(_RAW)) is not None
            else e.model_dump(mode="json", exclude=set(_ENVELOPE))
        ),
        "received_at": now,
    }


async def ingest_group(
    session: AsyncSession, batches: Sequence[tuple[str, Batch]], settings: Settings,
    now: datetime, *, touch: Callable[[str], bool] = lambda _pile: True,
) -> list[BatchResult]:
    """Store new events once (by pile + id) and apply them in each pile's own time order.

    Several piles' requests share one transaction (group commit), so statements are per group:
    one insert for every event, one lookup for every charge the events name, one update for
    every pile that needs one. `touch(pile)` says whether the pile's last-seen time is due for
    a write (a worker skips rewriting it for a pile seen moments ago).
    """
    dialect = session.bind.dialect.name  # type: ignore[union-attr]
    items = [(pile_id, b.events) for pile_id, b in batches]
    # Bad events are kept in the same commit as the good ones: what is acknowledged is stored.
    bad = [row for pile_id, b in batches for row in rejected_rows(pile_id, b.rejected, now)]
    if bad:
        await session.execute(insert_ignore(dialect, REJECTED), bad)
    rows = [_row(pile_id, e, now) for pile_id, events in items for e in events]
    new: set[tuple[str, str]] = set()
    if rows:
        stored = await session.execute(
            insert_ignore(dialect, EVENTS).returning(EVENTS.c.pile_id, EVENTS.c.event_id), rows
        )
        new = {(p, i) for p, i in stored}
    results: list[BatchResult] = []
    fresh_by_item: list[list[Any]] = []
    for pile_id, events in items:
        fresh = []
        for e in events:
            # The same event in two requests of one group is new for the first only.
            if (pile_id, e.id) in new:
                new.discard((pile_id, e.id))
                fresh.append(e)
        fresh.sort(key=lambda e: e.ts)
        fresh_by_item.append(fresh)
        results.append(BatchResult(accepted=len(fresh), duplicates=len(events) - len(fresh)))
    for (_, b), result in zip(batches, results, strict=True):
        result.rejected = [r.as_dict() for r in b.rejected]

    pile_ids = sorted({pile_id for pile_id, _ in items})
    beats: dict[str, Any] = {}
    for (pile_id, _), fresh in zip(items, fresh_by_item, strict=True):
        for e in fresh:
            if e.type == "heartbeat" and (pile_id not in beats or e.ts >= beats[pile_id].ts):
                beats[pile_id] = e
    touches = [
        {"pid": p, "seen": now, "fw": getattr(beats.get(p), "firmware", None),
         "sig": getattr(beats.get(p), "signal_dbm", None),
         "temp": getattr(beats.get(p), "temperature_c", None)}
        for p in pile_ids if p in beats or touch(p)
    ]
    if touches:
        await session.execute(_TOUCH, touches)

    refs = {(pile_id, e.session) for (pile_id, _), fresh in zip(items, fresh_by_item, strict=True)
            for e in fresh if e.type in SESSION_EVENTS}
    # Charges are read as plain rows; only those whose state changes become ORM objects.
    charge_ids: dict[tuple[str, str], int] = {}
    # Each running charge's last reading, to tell a sudden drop or a counter running back.
    tracks: dict[int, PowerTrack] = {}
    if refs:
        c = CHARGES.c
        found = await session.execute(
            select(c.pile_id, c.session_ref, c.id, c.state, c.last_meter_at, c.last_power_w,
                   c.last_energy_wh, c.power_dropped_at, c.power_dropped_seen_at)
            .where(tuple_(c.pile_id, c.session_ref).in_(sorted(refs)))
        )
        for p, r, i, state, *track in found:
            charge_ids[(p, r)] = i
            if state in charging.OPEN_STATES:
                tracks[i] = PowerTrack(*(_stored(v) if isinstance(v, datetime) else v
                                         for v in track))
    loaded: dict[int, Charge] = {}

    async def charge_for(pile_id: str, ref: str) -> Charge | None:
        cid = charge_ids.get((pile_id, ref))
        if cid is None:
            return None
        if cid not in loaded:
            loaded[cid] = await session.get(Charge, cid)  # type: ignore[assignment]
        return loaded[cid]

    status_piles = sorted({pile_id for (pile_id, _), fresh in zip(items, fresh_by_item,
                                                                 strict=True)
                           for e in fresh if e.type == "port_status"})
    ports: dict[tuple[str, int], Port] = {}
    if status_piles:
        found_ports = await session.execute(select(Port).where(Port.pile_id.in_(status_piles)))
        ports = {(p.pile_id, p.number): p for p in found_ports.scalars()}
    samples: list[dict[str, Any]] = []
    latest: dict[int, tuple[datetime, float, int]] = {}
    fcfg = settings.faults
    lowest = faults.lowest_limits(fcfg)
    detected: dict[tuple[str, int, str], tuple[datetime, int]] = {}  # place → (since, item)
    suspects: list[tuple[int, str, int, int, datetime]] = []  # item, pile, port, charge, ts
    raised: list[tuple[int, faults.Fault]] = []  # item index → fault to answer

    async def pile_row(pile_id: str) -> Pile:
        pile = await session.get(Pile, pile_id)
        assert pile is not None  # the request was signed with this pile's secret
        return pile

    for n, ((pile_id, _), fresh, result) in enumerate(zip(items, fresh_by_item, results,
                                                           strict=True)):
        for e in fresh:
            ts = _utc(e.ts)
            if e.type == "port_status":
                port = ports.get((pile_id, e.port))
                # Status is the pile's latest word; an older report arriving late is history.
                if port is not None and (port.status_at is None or ts >= port.status_at):
                    port.status = e.status
                    port.status_at = ts
            elif e.type == "meter":
                cid = charge_ids.get((pile_id, e.session))
                if cid is not None:
                    samples.append({"charge_id": cid, "ts": ts, "power_w": e.power_w,
                                    "energy_wh": e.energy_wh, "current_a": e.current_a,
                                    "temperature_c": e.temperature_c})
                    # Only the newest reading per charge is kept on the charge row.
                    if (last := latest.get(cid)) is None or ts >= last[0]:
                        latest[cid] = (ts, e.power_w, e.energy_wh)
                    track = tracks.get(cid)
                    if track is not None and (track.ts is None or ts > track.ts):
                        cause = track.step(ts, e.power_w, e.energy_wh, fcfg, now)
                        if cause is not None:
                            since = track.dropped_at if cause == "interrupted" else ts
                            detected.setdefault((pile_id, e.port, cause), (since or ts, n))
                    if faults.over_limits(lowest, e.power_w, e.current_a, e.temperature_c):
                        suspects.append((n, pile_id, e.port, cid, ts))
            elif e.type == "session_started":
                charge = await charge_for(pile_id, e.session)
                if charge is not None:
                    await charging.on_started(session, charge, ts)
                    result.notify = True
            elif e.type == "session_ended":
                charge = await charge_for(pile_id, e.session)
                if charge is not None:
                    if (last := latest.pop(charge.id, None)) is not None:  # type: ignore[arg-type]
                        charging.on_meter(charge, *last)
                    if samples:
                        # Billing reads samples from the table: store the group's ones first.
                        await session.execute(insert(SAMPLES), samples)
                        samples = []
                    if await charging.on_ended(
                        session, charge, ts, e.reason, e.energy_wh, e.duration_s, settings, now
                    ):
                        result.billed.append(charge.id)  # type: ignore[arg-type]
                        result.notify = True
            elif e.type == "command_ack":
                cmd = None
                # Only ids of our own shape can be ours; others (e.g. c99999999999) would
                # overflow the id column, and non-ASCII digits would not parse.
                if _OUR_COMMAND_ID.fullmatch(e.command) and int(e.command[1:]) <= MAX_INT32:
                    cmd = await commands.acknowledge(session, pile_id, e.command, e.ok, e.error,
                                                     now)
                if cmd is not None and not e.ok and cmd.type == "start" and cmd.charge_id:
                    charge = await session.get(Charge, cmd.charge_id)
                    if charge is not None:
                        await charging.on_start_rejected(session, charge, e.error)
                        result.notify = True
            elif e.type == "fault":
                # Recorded in time order, so a session_ended(fault) right behind it is billed
                # only up to it; the charges it hit are answered once the batch is applied.
                r = await faults.record(session, await pile_row(pile_id), e.port or 0,
                                        e.code[:40], ts, now, settings, detail=e.detail or "")
                raised.append((n, r.fault))
                result.notify = result.notify or r.new
            elif e.type == "fault_cleared":
                await faults.clear(session, pile_id, e.port or 0, e.code[:40], ts, now)
            # heartbeat: applied above, once per pile.
    meters = []
    for cid, (ts, power, energy) in latest.items():
        track = tracks.get(cid)
        dropped = (track.dropped_at, track.dropped_seen_at) if track else (None, None)
        if cid in loaded:
            charging.on_meter(loaded[cid], ts, power, energy)
            if loaded[cid].state == "started" and track is not None:
                loaded[cid].power_dropped_at, loaded[cid].power_dropped_seen_at = dropped
        else:
            meters.append({"cid": cid, "ts": ts, "p": power, "e": energy, "d": dropped[0],
                           "ds": dropped[1]})
    if meters:
        await session.execute(_METER, meters)
    if samples:
        await session.execute(insert(SAMPLES), samples)

    for n, pile_id, port, cid, ts in suspects:
        pile = await pile_row(pile_id)
        if cause := await _over_limit_run(session, cid, ts, fcfg.model(pile.model),
                                          fcfg.debounce_samples):
            detected.setdefault((pile_id, port, cause[0]), (cause[1], n))
    for (pile_id, port, cause), (since, n) in sorted(detected.items(), key=lambda kv: kv[1]):
        r = await faults.record(session, await pile_row(pile_id), port, cause, since, now,
                                settings, source="detected")
        raised.append((n, r.fault))
        results[n].notify = results[n].notify or r.new
    for n, fault in raised:
        ended = await faults.stop_charges(session, fault, settings, now)
        results[n].billed.extend(ended)
        results[n].notify = results[n].notify or bool(ended)

    pending = set((await session.execute(
        select(PileCommand.pile_id).distinct().where(
            PileCommand.pile_id.in_(pile_ids), PileCommand.state.in_(("queued", "sent")))
    )).scalars())
    handed: dict[str, list[dict[str, Any]]] = {}
    for pile_id in sorted(pending):
        handed[pile_id] = await commands.take(
            session, pile_id, now, resend_s=settings.piles.command_resend_s,
            ttl_s=settings.piles.command_ttl_s)
    for (pile_id, _), result in zip(items, results, strict=True):
        # A pile with two requests in one group gets its commands in the first answer.
        result.commands = handed.pop(pile_id, [])
    return results
