"""Applying a group's new pile events: one function per event type (`APPLIERS`), then what
the whole group settles at its end (meter rows, detected faults, the charges faults stopped)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.charging import sessions as charging
from core.charging.tables import Charge, ChargeState, MeterSample
from core.config import Settings
from core.config_sections import FaultModelSettings
from core.db import saved_id, table_of
from core.faults import response as faults
from core.faults.detection import PowerTrack, over_limits
from core.faults.tables import Fault
from core.piles import commands
from core.piles.tables import Pile, Port
from core.piles.wire import MAX_INT32, OUR_COMMAND_ID, BatchResult

SAMPLES = table_of(MeterSample)
CHARGES = table_of(Charge)
# charging.on_meter as one statement for many charges: a meter proves the charge runs, and only
# a newer reading replaces the one on the row.
_METER = (
    update(CHARGES)
    .where(
        CHARGES.c.id == bindparam("cid"),
        # Not IN (…): expanding parameters cannot be used with executemany.
        (CHARGES.c.state == ChargeState.requested) | (CHARGES.c.state == ChargeState.started),
        (CHARGES.c.last_meter_at.is_(None)) | (CHARGES.c.last_meter_at <= bindparam("ts")),
    )
    .values(state=ChargeState.started, last_meter_at=bindparam("ts"), last_power_w=bindparam("p"),
            last_energy_wh=bindparam("e"), power_dropped_at=bindparam("d"),
            power_dropped_seen_at=bindparam("ds"))
)


def stored_time(ts: datetime) -> datetime:
    """A time read back from the database: SQLite returns it naive, and it is UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass
class Group:
    """What the requests of one group commit share while their events are applied."""

    session: AsyncSession
    settings: Settings
    now: datetime
    charge_ids: dict[tuple[str, str], int]  # (pile, session ref) → charge id
    tracks: dict[int, PowerTrack]  # running charges' last readings
    ports: dict[tuple[str, int], Port]  # ports of piles that reported a status
    lowest: FaultModelSettings  # a reading under every model's limits needs no pile lookup
    loaded: dict[int, Charge] = field(default_factory=dict)  # charges whose state changes
    samples: list[dict[str, Any]] = field(default_factory=list)  # meter rows not yet inserted
    latest: dict[int, tuple[datetime, float, float]] = field(default_factory=dict)
    detected: dict[tuple[str, int, str], tuple[datetime, int]] = field(
        default_factory=dict)  # (pile, port, cause) → (since, request index)
    suspects: list[tuple[int, str, int, int, datetime]] = field(
        default_factory=list)  # request, pile, port, charge, ts: readings over some limit
    raised: list[tuple[int, Fault]] = field(default_factory=list)  # request → fault to answer

    async def charge_for(self, pile_id: str, ref: str) -> Charge | None:
        cid = self.charge_ids.get((pile_id, ref))
        if cid is None:
            return None
        if cid not in self.loaded:
            charge = await self.session.get(Charge, cid)
            if charge is None:
                return None
            self.loaded[cid] = charge
        return self.loaded[cid]

    async def pile(self, pile_id: str) -> Pile:
        pile = await self.session.get(Pile, pile_id)
        assert pile is not None  # the request was signed with this pile's secret
        return pile

    async def flush_samples(self) -> None:
        if self.samples:
            await self.session.execute(insert(SAMPLES), self.samples)
            self.samples = []


Applier = Callable[[Group, int, str, Any, BatchResult], Awaitable[None]]


async def _heartbeat(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    """Applied before the others, once per pile (core.piles.events: one UPDATE per group)."""


async def _port_status(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    ts = e.ts.astimezone(UTC)
    port = g.ports.get((pile_id, e.port))
    # Status is the pile's latest word; an older report arriving late is history.
    if port is not None and (port.status_at is None or ts >= port.status_at):
        port.status = e.status
        port.status_at = ts


async def _meter(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    ts = e.ts.astimezone(UTC)
    cid = g.charge_ids.get((pile_id, e.session))
    if cid is None:
        return
    g.samples.append({"charge_id": cid, "ts": ts, "power_w": e.power_w,
                      "energy_wh": e.energy_wh, "current_a": e.current_a,
                      "temperature_c": e.temperature_c})
    # Only the newest reading per charge is kept on the charge row.
    if (last := g.latest.get(cid)) is None or ts >= last[0]:
        g.latest[cid] = (ts, e.power_w, e.energy_wh)
    track = g.tracks.get(cid)
    if track is not None and (track.ts is None or ts > track.ts):
        cause = track.step(ts, e.power_w, e.energy_wh, g.settings.faults, g.now)
        if cause is not None:
            since = track.dropped_at if cause == "interrupted" else ts
            g.detected.setdefault((pile_id, e.port, cause), (since or ts, n))
    if over_limits(g.lowest, e.power_w, e.current_a, e.temperature_c):
        g.suspects.append((n, pile_id, e.port, cid, ts))


async def _session_started(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    charge = await g.charge_for(pile_id, e.session)
    if charge is not None:
        await charging.on_started(g.session, charge, e.ts.astimezone(UTC), g.now)
        result.notify = True


async def _session_ended(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    charge = await g.charge_for(pile_id, e.session)
    if charge is None:
        return
    if (last := g.latest.pop(saved_id(charge), None)) is not None:
        charging.on_meter(charge, *last)
    # Billing reads samples from the table: store the group's ones first.
    await g.flush_samples()
    if await charging.on_ended(g.session, charge, e.ts.astimezone(UTC), e.reason, e.energy_wh,
                               e.duration_s, g.settings, g.now):
        result.billed.append(saved_id(charge))
        result.notify = True


async def _command_ack(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    cmd = None
    # Only ids of our own shape can be ours; others (e.g. c99999999999) would overflow the id
    # column, and non-ASCII digits would not parse.
    if OUR_COMMAND_ID.fullmatch(e.command) and int(e.command[1:]) <= MAX_INT32:
        cmd = await commands.acknowledge(g.session, pile_id, e.command, e.ok, e.error, g.now)
    if cmd is not None and not e.ok and cmd.type == "start" and cmd.charge_id:
        charge = await g.session.get(Charge, cmd.charge_id)
        if charge is not None:
            await charging.on_start_rejected(g.session, charge, e.error, g.now)
            result.notify = True


async def _fault(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    # Recorded in time order, so a session_ended(fault) right behind it is billed only up to
    # it; the charges it hit are answered once the batch is applied (`finish`).
    r = await faults.record(g.session, await g.pile(pile_id), e.port or 0, e.code[:40],
                            e.ts.astimezone(UTC), g.now, g.settings, detail=e.detail or "")
    g.raised.append((n, r.fault))
    result.notify = result.notify or r.new


async def _fault_cleared(g: Group, n: int, pile_id: str, e: Any, result: BatchResult) -> None:
    await faults.clear(g.session, pile_id, e.port or 0, e.code[:40], e.ts.astimezone(UTC), g.now)


APPLIERS: dict[str, Applier] = {
    "heartbeat": _heartbeat,
    "port_status": _port_status,
    "meter": _meter,
    "session_started": _session_started,
    "session_ended": _session_ended,
    "command_ack": _command_ack,
    "fault": _fault,
    "fault_cleared": _fault_cleared,
}


async def finish(g: Group, results: list[BatchResult]) -> None:
    """What the group settles after its events: the newest reading on each charge row, the
    meter rows, faults detected from the readings, and the charges every new fault stopped."""
    meters = []
    for cid, (ts, power, energy) in g.latest.items():
        track = g.tracks.get(cid)
        dropped = (track.dropped_at, track.dropped_seen_at) if track else (None, None)
        if cid in g.loaded:
            charging.on_meter(g.loaded[cid], ts, power, energy)
            if g.loaded[cid].state == ChargeState.started and track is not None:
                g.loaded[cid].power_dropped_at, g.loaded[cid].power_dropped_seen_at = dropped
        else:
            meters.append({"cid": cid, "ts": ts, "p": power, "e": energy, "d": dropped[0],
                           "ds": dropped[1]})
    if meters:
        await g.session.execute(_METER, meters)
    await g.flush_samples()

    fcfg = g.settings.faults
    for n, pile_id, port, cid, ts in g.suspects:
        pile = await g.pile(pile_id)
        if run := await _over_limit_run(g.session, cid, ts, fcfg.model(pile.model),
                                        fcfg.debounce_samples):
            g.detected.setdefault((pile_id, port, run[0]), (run[1], n))
    for (pile_id, port, cause), (since, n) in sorted(g.detected.items(), key=lambda kv: kv[1]):
        r = await faults.record(g.session, await g.pile(pile_id), port, cause, since, g.now,
                                g.settings, source="detected")
        g.raised.append((n, r.fault))
        results[n].notify = results[n].notify or r.new
    for n, fault in g.raised:
        ended = await faults.stop_charges(g.session, fault, g.settings, g.now)
        results[n].billed.extend(ended)
        results[n].notify = results[n].notify or bool(ended)


async def _over_limit_run(session: AsyncSession, charge_id: int, ts: datetime,
                          limits: Any, run: int) -> tuple[str, datetime] | None:
    """(cause, since) when this reading and the `run - 1` before it all break one threshold."""
    rows = (await session.execute(
        select(SAMPLES.c.ts, SAMPLES.c.power_w, SAMPLES.c.current_a, SAMPLES.c.temperature_c)
        .where(SAMPLES.c.charge_id == charge_id, SAMPLES.c.ts <= ts)
        .order_by(SAMPLES.c.ts.desc()).limit(run))).all()
    if len(rows) < run:
        return None
    causes = {over_limits(limits, p, a, t) for _, p, a, t in rows}
    if len(causes) != 1:
        return None
    cause = causes.pop()
    if cause is None:
        return None
    return cause, stored_time(rows[-1][0])
