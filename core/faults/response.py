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

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.sessions import end_on_fault
from core.charging.tables import OPEN_STATES, Charge, ChargeState
from core.config import Settings
from core.db import saved_id
from core.faults import workorders
from core.faults.detection import policy
from core.faults.lookup import find_active, hit_at
from core.faults.tables import Fault, WorkOrder, WorkOrderState
from core.piles import commands
from core.piles.tables import Pile


@dataclass(frozen=True)
class Raised:
    fault: Fault
    new: bool


async def record(
    session: AsyncSession, pile: Pile, port: int, cause: str, at: datetime, now: datetime,
    settings: Settings, *, source: str = "pile", detail: str = "",
) -> Raised:
    """Store the fault once per place and cause, and open (or join) its work order.

    Stopping the charges it hit is `stop_charges`, which the caller runs once the rest of the
    pile's batch is applied: the pile's own session_ended may be right behind the fault."""
    fault = await find_active(session, pile.id, port, cause)
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
        existing = await find_active(session, pile.id, port, cause)
        assert existing is not None
        return Raised(existing, False)
    if pol.severity != "info":
        order, _ = await workorders.open_order(
            session, pile=pile, port=port, causes=[cause], severity=pol.severity,
            out_of_service=pol.out_of_service, now=now, settings=settings)
        fault.work_order_id = order.id
    return Raised(fault, True)


async def stop_charges(session: AsyncSession, fault: Fault, settings: Settings,
                       now: datetime) -> list[int]:
    """Close the charges the fault hit, billed up to it; link their riders to the work order.

    A charge the pile already ended because of the fault is only linked. Returns the charge ids
    this call ended."""
    stops = policy(fault.cause).stops
    where = [col(Charge.pile_id) == fault.pile_id]
    if fault.port:
        where.append(col(Charge.port_number) == fault.port)
    recent = fault.opened_at - timedelta(minutes=2)
    rows = await session.execute(select(Charge).where(
        *where, or_(col(Charge.state).in_(OPEN_STATES),
                    (col(Charge.ended_at) >= recent)
                    & col(Charge.end_reason).in_(("fault", "power_loss")))))
    ended = []
    for charge in rows.scalars():
        if charge.state in OPEN_STATES:
            if not stops:
                continue  # e.g. a meter fault: the charge goes on, the metering promise holds
            if charge.state == ChargeState.requested and charge.last_meter_at is None:
                continue  # never ran: the start times out and costs nothing
            if (at := hit_at(fault, charge.started_at or charge.requested_at)) is None:
                continue  # about an earlier charge on this port, delivered late
            if await end_on_fault(session, charge, at, settings, now):
                ended.append(saved_id(charge))
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
    fault = await find_active(session, pile_id, port, cause)
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
    order = await session.get(WorkOrder, order_id)
    if order is None or order.state not in (WorkOrderState.open, WorkOrderState.acknowledged):
        return
    others = (await session.execute(select(col(Fault.id)).where(
        col(Fault.work_order_id) == order_id, col(Fault.resolved_at).is_(None)))).first()
    if others is None:
        await workorders.close_cleared(session, order, now)


# --- detection over time (the scheduler's sweeps) ---------------------------------------------


async def sweep_interrupted(session: AsyncSession, now: datetime,
                            settings: Settings) -> list[int]:
    """Charges whose power dropped to nothing `interrupt_grace_s` ago (our clock) with no
    session_ended since: the pile did not stop them, so the charge was interrupted."""
    grace = timedelta(seconds=settings.faults.interrupt_grace_s)
    rows = await session.execute(select(Charge).where(
        col(Charge.state) == ChargeState.started, col(Charge.power_dropped_seen_at) <= now - grace))
    ended: list[int] = []
    for charge in list(rows.scalars()):
        if charge.state != ChargeState.started or charge.power_dropped_at is None:
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
        running = (await session.execute(select(col(Charge.id)).where(
            col(Charge.pile_id) == pile_id, col(Charge.state) == ChargeState.started,
        ).limit(1))).first()
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
        select(Fault, col(Pile.last_seen_at)).join(Pile, col(Pile.id) == col(Fault.pile_id))
        .where(col(Fault.cause) == "offline", col(Fault.resolved_at).is_(None),
               col(Pile.online).is_(True)))
    n = 0
    for fault, seen in list(rows):
        at = seen or now
        await clear(session, fault.pile_id, 0, "offline",
                    at if at.tzinfo else at.replace(tzinfo=now.tzinfo), now)
        n += 1
    return n


# --- detection from telemetry (pure) ----------------------------------------------------------
