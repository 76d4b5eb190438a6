"""Pile events (DESIGN §3): a batch validated event by event, stored once (by pile + event id)
and applied in each pile's own time order (`core.piles.appliers`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, String, bindparam, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import OPEN_STATES, Charge
from core.config import Settings
from core.db import insert_ignore, table_of
from core.errors import InvalidEvent
from core.faults.detection import PowerTrack, lowest_limits
from core.piles import appliers, commands
from core.piles.appliers import Group, stored_time
from core.piles.tables import Pile, PileCommand, PileEvent, Port, RejectedEvent
from core.piles.wire import MAX_BATCH, RAW, BatchResult, check


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
        checked = check(raw, f"events[{i}]", suspicious)
        if checked[1] is not None:
            where, problem = checked[1]
            batch.rejected.append(Rejection(i, _shown_id(raw), where, problem[:500], raw))
            continue
        event = checked[0]
        event.__dict__[RAW] = raw
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


SESSION_EVENTS = ("meter", "session_started", "session_ended")
_ENVELOPE = ("id", "type", "ts")
EVENTS = table_of(PileEvent)
REJECTED = table_of(RejectedEvent)
PILES = table_of(Pile)
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


def _row(pile_id: str, e: Any, now: datetime) -> dict[str, Any]:
    return {
        "pile_id": pile_id, "event_id": e.id, "type": e.type, "ts": e.ts.astimezone(UTC),
        "payload": (
            {k: v for k, v in raw.items() if k not in _ENVELOPE}
            if (raw := e.__dict__.get(RAW)) is not None
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
    items = [(pile_id, b.events) for pile_id, b in batches]
    fresh_by_item, results = await _store(session, batches, now)
    pile_ids = sorted({pile_id for pile_id, _ in items})
    await _touch_piles(session, items, fresh_by_item, pile_ids, now, touch)
    g = await _load_group(session, items, fresh_by_item, settings, now)
    for n, ((pile_id, _), fresh, result) in enumerate(zip(items, fresh_by_item, results,
                                                           strict=True)):
        for e in fresh:
            await appliers.APPLIERS[e.type](g, n, pile_id, e, result)
    await appliers.finish(g, results)

    pending = set((await session.execute(
        select(col(PileCommand.pile_id)).distinct().where(
            col(PileCommand.pile_id).in_(pile_ids), col(PileCommand.state).in_(commands.PENDING))
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


async def _store(session: AsyncSession, batches: Sequence[tuple[str, Batch]], now: datetime,
                 ) -> tuple[list[list[Any]], list[BatchResult]]:
    """Insert the group's events once; per request, its new events in pile-time order."""
    dialect = session.get_bind().dialect.name
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
    return fresh_by_item, results


async def _touch_piles(session: AsyncSession, items: list[tuple[str, list[Any]]],
                       fresh_by_item: list[list[Any]], pile_ids: list[str], now: datetime,
                       touch: Callable[[str], bool]) -> None:
    """One UPDATE for the group: the piles that sent a heartbeat or are due a last-seen write."""
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


async def mark_seen(session: AsyncSession,
                    heard: dict[str, tuple[datetime, float | None, float | None]]) -> None:
    """Piles heard from with nothing to store (a TCP board's unchanged status report): each
    one's last-seen time, signal (dBm) and temperature (°C), in one statement for them all."""
    if heard:
        await session.execute(_TOUCH, [
            {"pid": pile_id, "seen": seen, "fw": None, "sig": sig, "temp": temp}
            for pile_id, (seen, sig, temp) in heard.items()])


async def _load_group(session: AsyncSession, items: list[tuple[str, list[Any]]],
                      fresh_by_item: list[list[Any]], settings: Settings, now: datetime) -> Group:
    """One lookup for every charge the events name and one for the ports whose status moves."""
    pairs = [(pile_id, e) for (pile_id, _), fresh in zip(items, fresh_by_item, strict=True)
             for e in fresh]
    refs = {(pile_id, e.session) for pile_id, e in pairs if e.type in SESSION_EVENTS}
    # Charges are read as plain rows; only those whose state changes become ORM objects.
    charge_ids: dict[tuple[str, str], int] = {}
    # Each running charge's last reading, to tell a sudden drop or a counter running back.
    tracks: dict[int, PowerTrack] = {}
    if refs:
        c = table_of(Charge).c
        found = await session.execute(
            select(c.pile_id, c.session_ref, c.id, c.state, c.last_meter_at, c.last_power_w,
                   c.last_energy_wh, c.power_dropped_at, c.power_dropped_seen_at)
            .where(tuple_(c.pile_id, c.session_ref).in_(sorted(refs)))
        )
        for p, r, i, state, meter_at, power_w, energy_wh, dropped_at, dropped_seen_at in found:
            charge_ids[(p, r)] = i
            if state in OPEN_STATES:
                tracks[i] = PowerTrack(_stored(meter_at), power_w, energy_wh, _stored(dropped_at),
                                       _stored(dropped_seen_at))
    status_piles = sorted({pile_id for pile_id, e in pairs if e.type == "port_status"})
    ports: dict[tuple[str, int], Port] = {}
    if status_piles:
        found_ports = await session.execute(
            select(Port).where(col(Port.pile_id).in_(status_piles)))
        ports = {(p.pile_id, p.number): p for p in found_ports.scalars()}
    return Group(session=session, settings=settings, now=now, charge_ids=charge_ids,
                 tracks=tracks, ports=ports, lowest=lowest_limits(settings.faults))


def _stored(ts: datetime | None) -> datetime | None:
    return None if ts is None else stored_time(ts)
