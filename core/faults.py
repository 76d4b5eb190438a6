"""Faults: what the pile reports and what we detect in its telemetry, and the response to each.

One active fault per place and cause (port 0: the whole pile): a repeated report counts as an
occurrence, not a new fault. A new fault answers on three levels in the caller's transaction,
with the outbox: the hit rider's charge is closed and billed only up to the fault (the bill
says what was refunded and offers the nearest free port), a work order reaches the site's
on-duty technician, and the port (or pile) is under repair until the order is resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, Index, String, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from core import charging, commands, workorders
from core.charging import Charge
from core.config import FaultModelSettings, FaultSettings, Settings
from core.db import aware, utcnow
from core.piles import Pile


@dataclass(frozen=True)
class Policy:
    severity: str  # critical | warning | info (DOMAIN.md: the operators' alert levels)
    stops: bool  # the charge on that port (or pile) cannot go on
    out_of_service: bool  # no new starts until a technician resolves it
    self_clearing: bool = False  # resolved when the pile says it is gone (grid, link)


POLICIES: dict[str, Policy] = {
    # reported by the pile (DOMAIN.md vocabulary)
    "overload": Policy("warning", True, True),
    "over_temperature": Policy("critical", True, True),
    "over_voltage": Policy("warning", True, False, self_clearing=True),
    "under_voltage": Policy("warning", True, False, self_clearing=True),
    "leakage": Policy("critical", True, True),
    "short_circuit": Policy("critical", True, True),
    "relay_stuck": Policy("critical", True, True),
    "relay_open": Policy("warning", True, True),
    "meter_fault": Policy("warning", False, True),
    "comm_loss": Policy("warning", True, False, self_clearing=True),
    "power_loss": Policy("warning", True, False, self_clearing=True),
    "smoke": Policy("critical", True, True),
    "flooding": Policy("critical", True, True),
    "door_open": Policy("info", False, False, self_clearing=True),
    # detected here from the event stream
    "over_current": Policy("critical", True, True),
    "interrupted": Policy("warning", True, True),
    "offline": Policy("warning", True, False, self_clearing=True),
    "meter_backwards": Policy("warning", False, True),
    "impossible_power": Policy("warning", False, True),
}
DETECTED = ("over_current", "interrupted", "offline", "meter_backwards", "impossible_power")


class Fault(SQLModel, table=True):
    __tablename__ = "faults"
    __table_args__ = (
        Index("uq_faults_active", "pile_id", "port", "cause", unique=True,
              sqlite_where=text("resolved_at IS NULL"),
              postgresql_where=text("resolved_at IS NULL")),
        Index("ix_faults_pile_opened", "pile_id", "opened_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pile_id: str = Field(foreign_key="piles.id")
    port: int = 0  # 0: the whole pile
    site_id: str = Field(max_length=32)
    cause: str = Field(max_length=40)
    source: str = Field(default="pile", max_length=8)  # pile | detected
    severity: str = Field(default="warning", max_length=8)
    detail: str = Field(default="", sa_column=Column(String(200), nullable=False, default=""))
    opened_at: datetime  # the pile's clock: when the condition began
    detected_at: datetime = Field(default_factory=utcnow)  # ours
    last_seen_at: datetime | None = None
    occurrences: int = 1
    cleared_at: datetime | None = None  # the pile says the condition is gone
    resolved_at: datetime | None = None  # closed (technician, or self-clearing)
    work_order_id: int | None = Field(default=None, foreign_key="work_orders.id", index=True)


@dataclass(frozen=True)
class Raised:
    fault: Fault
    new: bool


def policy(cause: str) -> Policy:
    return POLICIES.get(cause, Policy("warning", True, True))


async def _active(session: AsyncSession, pile_id: str, port: int, cause: str) -> Fault | None:
    return (await session.execute(select(Fault).where(
        Fault.pile_id == pile_id, Fault.port == port, Fault.cause == cause,
        Fault.resolved_at.is_(None)))).scalars().first()


async def record(
    session: AsyncSession, pile: Pile, port: int, cause: str, at: datetime, now: datetime,
    settings: Settings, *, source: str = "pile", detail: str = "",
) -> Raised:
    """Store the fault once per place and cause, and open (or join) its work order.

    Stopping the charges it hit is `stop_charges`, which the caller runs once the rest of the
    pile's batch is applied: the pile's own session_ended may be right behind the fault."""
    fault = await _active(session, pile.id, port, cause)
    if fault is not None:
        fault.occurrences += 1
        fault.last_seen_at = max(fault.last_seen_at or at, at)
        fault.cleared_at = None
        if at < fault.opened_at:  # a late copy of an earlier report
            fault.opened_at = at
        return Raised(fault, False)
    pol = policy(cause)
    fault = Fault(pile_id=pile.id, port=port, site_id=pile.site_id, cause=cause, source=source,
                  severity=pol.severity, detail=detail[:200], opened_at=at, detected_at=now,
                  last_seen_at=at)
    try:
        async with session.begin_nested():
            session.add(fault)
            await session.flush()
    except IntegrityError:
        # A concurrent batch raised it first: that one is the fault.
        existing = await _active(session, pile.id, port, cause)
        assert existing is not None
        return Raised(existing, False)
    if pol.severity != "info":
        order, _ = await workorders.open_order(
            session, pile=pile, port=port, causes=[cause], severity=pol.severity,
            out_of_service=pol.out_of_service, now=now, settings=settings)
        fault.work_order_id = order.id
    return Raised(fault, True)


def hit_at(fault: Fault, began: datetime) -> datetime | None:
    """When this fault hit a charge that began at `began`, or None if it did not. One row stands
    for a place and cause until it is resolved, so a fault still open from before the charge
    hit it only if the pile reported it again since (when last seen): a late report about the
    previous charge, or an old row nobody has closed yet, must not end this one."""
    opened, began = aware(fault.opened_at), aware(began)
    if opened >= began:
        return opened
    seen = aware(fault.last_seen_at or fault.opened_at)
    return seen if seen >= began else None


async def stop_charges(session: AsyncSession, fault: Fault, settings: Settings,
                       now: datetime) -> list[int]:
    """Close the charges the fault hit, billed up to it; link their riders to the work order.

    A charge the pile already ended because of the fault is only linked. Returns the charge ids
    this call ended."""
    stops = policy(fault.cause).stops
    where = [Charge.pile_id == fault.pile_id]
    if fault.port:
        where.append(Charge.port_number == fault.port)
    recent = fault.opened_at - timedelta(minutes=2)
    rows = await session.execute(select(Charge).where(
        *where, or_(Charge.state.in_(charging.OPEN_STATES),
                    (Charge.ended_at >= recent) & Charge.end_reason.in_(("fault", "power_loss")))))
    ended = []
    for charge in rows.scalars():
        if charge.state in charging.OPEN_STATES:
            if not stops:
                continue  # e.g. a meter fault: the charge goes on, the metering promise holds
            if charge.state == "requested" and charge.last_meter_at is None:
                continue  # never ran: the start times out and costs nothing
            if (at := hit_at(fault, charge.started_at or charge.requested_at)) is None:
                continue  # about an earlier charge on this port, delivered late
            if await charging.end_on_fault(session, charge, at, settings, now):
                ended.append(charge.id)  # type: ignore[arg-type]
            await commands.queue(session, charge.pile_id, "stop", charge.port_number,
                                 charge_id=charge.id, session=charge.session_ref, now=now)
        if fault.work_order_id is not None:
            await workorders.link_rider(session, fault.work_order_id, charge.rider_id, "hit",
                                        charge.id)
    return ended


async def clear(session: AsyncSession, pile_id: str, port: int, cause: str, at: datetime,
                now: datetime) -> Fault | None:
    """The pile says the condition is gone. Self-clearing faults close (and their order, if
    nobody is on the way yet); the others wait for the technician's verdict."""
    fault = await _active(session, pile_id, port, cause)
    if fault is None or at < fault.opened_at:
        return None
    fault.cleared_at = at
    if policy(cause).self_clearing:
        fault.resolved_at = now
        await _close_order_if_clear(session, fault.work_order_id, now)
    return fault


async def _close_order_if_clear(session: AsyncSession, order_id: int | None,
                                now: datetime) -> None:
    if order_id is None:
        return
    order = await session.get(workorders.WorkOrder, order_id)
    if order is None or order.state not in ("open", "acknowledged"):
        return
    others = (await session.execute(select(Fault.id).where(
        Fault.work_order_id == order_id, Fault.resolved_at.is_(None)))).first()
    if others is None:
        await workorders.close_cleared(session, order, now)


async def resolve_for_order(session: AsyncSession, order_id: int, now: datetime) -> None:
    rows = await session.execute(select(Fault).where(
        Fault.work_order_id == order_id, Fault.resolved_at.is_(None)))
    for fault in rows.scalars():
        fault.resolved_at = now


async def active(session: AsyncSession, pile_id: str) -> list[Fault]:
    rows = await session.execute(select(Fault).where(
        Fault.pile_id == pile_id, Fault.resolved_at.is_(None)).order_by(Fault.opened_at))
    return list(rows.scalars())


async def first_during(session: AsyncSession, pile_id: str, port: int, start: datetime,
                       end: datetime) -> Fault | None:
    """The earliest fault on this port (or the whole pile) that overlapped [start, end]."""
    return (await session.execute(
        select(Fault).where(
            Fault.pile_id == pile_id, Fault.port.in_((0, port)), Fault.opened_at <= end,
            or_(Fault.resolved_at.is_(None), Fault.resolved_at >= start),
            or_(Fault.cleared_at.is_(None), Fault.cleared_at >= start),
            # A pile that reported this charge's start was talking: an offline fault opened at
            # its last sign of life up to that start (the start's own heartbeat included) is
            # stale (the back-online sweep has not closed it yet), not its cause.
            or_(Fault.cause != "offline", Fault.opened_at > start),
            # Any other fault from before the charge counts only if reported again since.
            or_(Fault.opened_at >= start, Fault.last_seen_at >= start),
        ).order_by(Fault.opened_at).limit(1))).scalars().first()


# --- detection over time (the scheduler's sweeps) ---------------------------------------------


async def sweep_interrupted(session: AsyncSession, now: datetime,
                            settings: Settings) -> list[int]:
    """Charges whose power dropped to nothing `interrupt_grace_s` ago (our clock) with no
    session_ended since: the pile did not stop them, so the charge was interrupted."""
    grace = timedelta(seconds=settings.faults.interrupt_grace_s)
    rows = await session.execute(select(Charge).where(
        Charge.state == "started", Charge.power_dropped_seen_at <= now - grace))
    ended: list[int] = []
    for charge in list(rows.scalars()):
        if charge.state != "started" or charge.power_dropped_at is None:
            continue  # closed meanwhile by another fault on its pile
        pile = await session.get(Pile, charge.pile_id)
        assert pile is not None
        at = charge.power_dropped_at
        r = await record(session, pile, charge.port_number, "interrupted",
                         at if at.tzinfo else at.replace(tzinfo=now.tzinfo), now, settings,
                         source="detected")
        ended += await stop_charges(session, r.fault, settings, now)
    return ended


async def on_offline(session: AsyncSession, pile_ids: list[str], now: datetime,
                     settings: Settings) -> list[int]:
    """A pile gone silent mid-charge: its charges close from their last reading (some piles
    force-stop on network loss; none can report), and a technician looks at it."""
    ended: list[int] = []
    for pile_id in pile_ids:
        running = (await session.execute(select(Charge.id).where(
            Charge.pile_id == pile_id, Charge.state == "started").limit(1))).first()
        if running is None:
            continue
        pile = await session.get(Pile, pile_id)
        assert pile is not None
        seen = pile.last_seen_at or now
        r = await record(session, pile, 0, "offline",
                         seen if seen.tzinfo else seen.replace(tzinfo=now.tzinfo), now,
                         settings, source="detected")
        ended += await stop_charges(session, r.fault, settings, now)
    return ended


async def sweep_back_online(session: AsyncSession, now: datetime) -> int:
    """Offline faults of piles that are talking again close by themselves."""
    rows = await session.execute(
        select(Fault, Pile.last_seen_at).join(Pile, Pile.id == Fault.pile_id).where(
            Fault.cause == "offline", Fault.resolved_at.is_(None), Pile.online.is_(True)))
    n = 0
    for fault, seen in list(rows):
        at = seen or now
        await clear(session, fault.pile_id, 0, "offline",
                    at if at.tzinfo else at.replace(tzinfo=now.tzinfo), now)
        n += 1
    return n


# --- detection from telemetry (pure) ----------------------------------------------------------


def over_limits(m: FaultModelSettings, power_w: float, current_a: float | None,
                temperature_c: float | None) -> str | None:
    """Which threshold of the pile's model this one reading breaks, worst first."""
    if temperature_c is not None and temperature_c > m.max_temperature_c:
        return "over_temperature"
    if current_a is not None and current_a > m.max_current_a:
        return "over_current"
    if power_w > m.max_power_w:
        return "impossible_power"
    return None


def lowest_limits(cfg: FaultSettings) -> FaultModelSettings:
    """The strictest threshold of any model: a reading under all of them needs no pile lookup."""
    models = list(cfg.models.values()) or [FaultModelSettings()]
    return FaultModelSettings(
        max_temperature_c=min(m.max_temperature_c for m in models),
        max_current_a=min(m.max_current_a for m in models),
        max_power_w=min(m.max_power_w for m in models),
    )


@dataclass
class PowerTrack:
    """Per charge: the last reading and when power suddenly fell to nothing (if it has)."""

    ts: datetime | None
    power_w: float | None
    energy_wh: float | None
    dropped_at: datetime | None  # the pile's clock
    dropped_seen_at: datetime | None  # ours

    def step(self, ts: datetime, power_w: float, energy_wh: float, cfg: FaultSettings,
             now: datetime) -> str | None:
        """Take a newer reading; returns a detected cause: interrupted or meter_backwards."""
        found = None
        if self.energy_wh is not None and energy_wh < self.energy_wh:
            found = "meter_backwards"  # a cumulative counter never runs back
        if power_w <= cfg.zero_w:
            if self.dropped_at is None:
                if self.power_w is not None and self.power_w >= cfg.drop_from_w:
                    self.dropped_at, self.dropped_seen_at = ts, now
            elif (ts - self.dropped_at).total_seconds() >= cfg.interrupt_grace_s:
                found = found or "interrupted"
        else:
            # Power is back (or it is a float/taper reading): no interruption.
            self.dropped_at = self.dropped_seen_at = None
        self.ts, self.power_w, self.energy_wh = ts, power_w, energy_wh
        return found


__all__ = ["DETECTED", "Fault", "POLICIES", "PowerTrack", "Raised", "clear", "first_during",
           "hit_at", "over_limits", "record", "stop_charges"]
