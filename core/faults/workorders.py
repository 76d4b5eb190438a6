"""Work orders: a technician's job at a pile, from a fault or a prediction, and its promise.

open → acknowledged → arrived → resolved (or closed when the pile clears a self-clearing fault).
An order that takes its port (port 0: the whole pile) out of service sets the `maintenance` flag
search already honours, and clears it when the last such order there is resolved.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core import outbox
from core.billing import coupons
from core.config import Settings
from core.db import saved_id
from core.faults.tables import (
    ACTIVE,
    Fault,
    TechnicianRating,
    WorkOrder,
    WorkOrderRider,
    WorkOrderState,
)
from core.notices.faults import (
    PromiseCouponNotice,
    RepairDoneNotice,
    WorkOrderClearedNotice,
    WorkOrderEscalatedNotice,
    WorkOrderNotice,
)
from core.piles.tables import Pile, Port, Site
from core.riders import staff


class NotAllowed(Exception):
    """The rider may not act on this order (not staff, or another site's)."""


# --- opening ----------------------------------------------------------------------------------


async def _active(session: AsyncSession, pile_id: str, port: int, kind: str) -> WorkOrder | None:
    return (await session.execute(select(WorkOrder).where(
        col(WorkOrder.pile_id) == pile_id, col(WorkOrder.port) == port,
        col(WorkOrder.kind) == kind, col(WorkOrder.state).in_(ACTIVE),
    ))).scalars().first()


async def open_counts(session: AsyncSession, site_id: str) -> dict[int, int]:
    """Open orders per technician who could take one at this site."""
    techs = [r.rider_id for r in await staff.for_site(session, site_id, "technician")]
    if not techs:
        return {}
    rows = await session.execute(
        select(col(WorkOrder.technician_id), func.count()).where(
            col(WorkOrder.state).in_(ACTIVE), col(WorkOrder.technician_id).in_(techs))
        .group_by(col(WorkOrder.technician_id)))
    return {tid: n for tid, n in rows if tid is not None}  # the filter keeps out None


async def open_order(
    session: AsyncSession, *, pile: Pile, port: int, causes: list[str], severity: str,
    out_of_service: bool, now: datetime, settings: Settings, kind: str = "repair",
    planned_for: datetime | None = None, predicted_failure_at: datetime | None = None,
) -> tuple[WorkOrder, bool]:
    """The active order for this place (created, assigned and sent if new): (order, created)."""
    order = await _active(session, pile.id, port, kind)
    created = False
    if order is None:
        order = WorkOrder(
            kind=kind, pile_id=pile.id, port=port, site_id=pile.site_id, severity=severity,
            causes=",".join(causes), out_of_service=out_of_service, created_at=now,
            ack_due_at=(now + timedelta(minutes=settings.service_promises.ack_minutes)
                        if kind == "repair" else None),
            planned_for=planned_for, predicted_failure_at=predicted_failure_at,
        )
        try:
            async with session.begin_nested():
                session.add(order)
                await session.flush()
            created = True
        except IntegrityError:
            # Another worker opened it a moment ago: join that one.
            order = await _active(session, pile.id, port, kind)
            assert order is not None
    if not created:
        merged = [c for c in order.causes.split(",") if c] + [
            c for c in causes if c not in order.causes.split(",")]
        order.causes = ",".join(merged)
        if severity == "critical":
            order.severity = "critical"
        if out_of_service and not order.out_of_service:
            order.out_of_service = True
    if order.out_of_service:
        await _set_maintenance(session, pile, port, True)
    if created:
        order.technician_id = await staff.pick_technician(
            session, pile.site_id, now, settings.server.timezone,
            await open_counts(session, pile.site_id))
        await notify_technician(session, order, pile, settings.server.timezone, now)
    return order, created


async def _set_maintenance(session: AsyncSession, pile: Pile, port: int, on: bool) -> None:
    if port == 0:
        pile.maintenance = on
        return
    await session.execute(update(Port).where(col(Port.pile_id) == pile.id,
                                             col(Port.number) == port)
                          .values(maintenance=on))


async def card(session: AsyncSession, order: WorkOrder, pile: Pile | None = None,
               tz: str = "Asia/Shanghai") -> WorkOrderNotice:
    """Everything a technician's message shows, fixed when the order is sent."""
    pile = pile or await session.get(Pile, order.pile_id)
    site = await session.get(Site, order.site_id)
    return WorkOrderNotice(
        order_id=saved_id(order), order_kind=order.kind, where=order.where, pile=order.pile_id,
        port=order.port, causes=order.causes, severity=order.severity,
        site=site.name if site else order.site_id, address=site.address if site else "",
        lat=pile.lat if pile else 0.0, lon=pile.lon if pile else 0.0,
        planned_for=order.planned_for, ack_due_at=order.ack_due_at,
        tz=tz,  # times are shown in the site's zone, whatever the reader's device says
    )


async def notify_technician(session: AsyncSession, order: WorkOrder, pile: Pile,
                            tz: str, now: datetime) -> None:
    if order.technician_id is None:
        return
    await outbox.enqueue(session, order.technician_id, await card(session, order, pile, tz),
                         f"work_order:{order.id}:{order.technician_id}", now=now)


async def link_rider(session: AsyncSession, order_id: int, rider_id: int, relation: str,
                     charge_id: int | None = None) -> None:
    found = (await session.execute(select(WorkOrderRider).where(
        col(WorkOrderRider.work_order_id) == order_id, col(WorkOrderRider.rider_id) == rider_id,
    ))).scalars().first()
    if found is None:
        try:
            async with session.begin_nested():
                session.add(WorkOrderRider(work_order_id=order_id, rider_id=rider_id,
                                           relation=relation, charge_id=charge_id))
                await session.flush()
        except IntegrityError:
            pass  # linked by a concurrent event: once is enough


# --- a technician's buttons -------------------------------------------------------------------


async def may_act(session: AsyncSession, order: WorkOrder, rider_id: int) -> bool:
    """The assigned technician, any technician or supervisor of the site (or of all sites)."""
    if order.technician_id == rider_id:
        return True
    return any(r.site_id in (order.site_id, staff.ALL_SITES)
               for r in await staff.roles_of(session, rider_id))


async def _for_action(session: AsyncSession, order_id: int, rider_id: int) -> WorkOrder:
    order = await session.get(WorkOrder, order_id)
    if order is None or not await may_act(session, order, rider_id):
        raise NotAllowed(order_id)
    return order


async def acknowledge(session: AsyncSession, order_id: int, rider_id: int,
                      now: datetime) -> WorkOrder:
    order = await _for_action(session, order_id, rider_id)
    if order.state == WorkOrderState.open:
        order.state, order.acknowledged_at = WorkOrderState.acknowledged, now
        order.technician_id = order.technician_id or rider_id
    return order


async def arrive(session: AsyncSession, order_id: int, rider_id: int, now: datetime) -> WorkOrder:
    order = await _for_action(session, order_id, rider_id)
    if order.state in (WorkOrderState.open, WorkOrderState.acknowledged):
        order.acknowledged_at = order.acknowledged_at or now
        order.state, order.arrived_at = WorkOrderState.arrived, now
        order.technician_id = order.technician_id or rider_id
    return order


async def resolve(session: AsyncSession, order_id: int, rider_id: int, note: str,
                  photo: str | None, now: datetime) -> tuple[WorkOrder, bool]:
    """Close the order with the technician's note: port back in service, riders asked to rate.
    Returns (order, whether this call closed it)."""
    order = await _for_action(session, order_id, rider_id)
    if order.state not in ACTIVE:
        return order, False
    order.technician_id = order.technician_id or rider_id
    await _close(session, order, WorkOrderState.resolved, now, note=note[:500], photo=photo,
                 by=rider_id)
    return order, True


async def close_cleared(session: AsyncSession, order: WorkOrder, now: datetime) -> None:
    """The pile reports the condition gone before anyone arrived: no visit needed."""
    await _close(session, order, WorkOrderState.cleared, now, note="cleared by the pile")
    if order.technician_id is not None:
        await outbox.enqueue(session, order.technician_id,
                             WorkOrderClearedNotice(order_id=saved_id(order), where=order.where),
                             f"work_order_cleared:{order.id}", now=now)


async def _close(session: AsyncSession, order: WorkOrder, state: WorkOrderState, now: datetime,
                 *, note: str, photo: str | None = None, by: int | None = None) -> None:
    order.state, order.resolved_at, order.note, order.resolved_by = state, now, note, by
    if photo:
        order.photo = photo
    await resolve_for_order(session, saved_id(order), now)
    if order.out_of_service:
        still = (await session.execute(select(col(WorkOrder.id)).where(
            col(WorkOrder.pile_id) == order.pile_id, col(WorkOrder.port) == order.port,
            col(WorkOrder.state).in_(ACTIVE), col(WorkOrder.out_of_service).is_(True),
            col(WorkOrder.id) != order.id))).first()
        pile = await session.get(Pile, order.pile_id)
        if still is None and pile is not None:
            await _set_maintenance(session, pile, order.port, False)
    if state != WorkOrderState.resolved:
        return
    name = await staff.display_name(session, order.technician_id) if order.technician_id else ""
    riders = await session.execute(select(col(WorkOrderRider.rider_id)).where(
        col(WorkOrderRider.work_order_id) == order.id))
    for (rider_id,) in riders:
        await outbox.enqueue(session, rider_id,
                             RepairDoneNotice(order_id=saved_id(order), where=order.where,
                                              technician=name),
                             f"repair_done:{order.id}:{rider_id}", now=now)


# --- the 30-minute promise --------------------------------------------------------------------


async def overdue(session: AsyncSession, now: datetime) -> list[int]:
    rows = await session.execute(select(col(WorkOrder.id)).where(
        col(WorkOrder.state) == WorkOrderState.open, col(WorkOrder.ack_due_at) < now,
        col(WorkOrder.escalated_at).is_(None)))
    return [i for (i,) in rows if i is not None]  # a stored row always has its id


async def escalate(session: AsyncSession, order_id: int, now: datetime,
                   settings: Settings) -> bool:
    """Claim the breach (a conditional update: one worker wins however many run the check),
    then tell the supervisors and give each hit or reporting rider one coupon."""
    # An UPDATE's result is a CursorResult (SQLAlchemy's stubs say only Result): it has rowcount.
    claimed = cast(CursorResult[Any], await session.execute(
        update(WorkOrder).where(col(WorkOrder.id) == order_id,
                                col(WorkOrder.state) == WorkOrderState.open,
                                col(WorkOrder.escalated_at).is_(None))
        .values(escalated_at=now).execution_options(synchronize_session=False)))
    if claimed.rowcount != 1:
        return False
    order = await session.get(WorkOrder, order_id)
    assert order is not None
    await session.refresh(order)
    p = settings.service_promises
    riders = [r for (r,) in await session.execute(select(col(WorkOrderRider.rider_id)).where(
        col(WorkOrderRider.work_order_id) == order_id).order_by(col(WorkOrderRider.id)))]
    for rider_id in riders:
        coupon = await coupons.issue(
            session, rider_id, amount_fen=p.breach_coupon_fen, days=p.coupon_days,
            reason=f"service promise: work order {order_id}",
            cause=f"promise:{order_id}:{rider_id}", now=now)
        await outbox.enqueue(session, rider_id,
                             PromiseCouponNotice(order_id=order_id, where=order.where,
                                                 amount_fen=coupon.amount_fen,
                                                 minutes=p.ack_minutes),
                             f"promise_coupon:{order_id}:{rider_id}", now=now)
    order_card = await card(session, order, tz=settings.server.timezone)
    info = WorkOrderEscalatedNotice(
        **order_card.model_dump(), coupons=len(riders), minutes=p.ack_minutes,
        technician=(await staff.display_name(session, order.technician_id)
                    if order.technician_id else ""))
    for sup in await staff.for_site(session, order.site_id, "supervisor"):
        await outbox.enqueue(session, sup.rider_id, info, f"escalated:{order_id}:{sup.rider_id}",
                             now=now)
    return True


# --- what staff and riders see ----------------------------------------------------------------


async def active_for(session: AsyncSession, rider_id: int) -> list[WorkOrder]:
    """A technician's own open orders, plus the unassigned and other orders at sites they serve
    (supervisors see every order at theirs)."""
    roles = await staff.roles_of(session, rider_id)
    sites = {r.site_id for r in roles}
    stmt = select(WorkOrder).where(col(WorkOrder.state).in_(ACTIVE))
    if staff.ALL_SITES not in sites:
        stmt = stmt.where((col(WorkOrder.technician_id) == rider_id)
                          | col(WorkOrder.site_id).in_(sites))
    rows = await session.execute(stmt.order_by(col(WorkOrder.created_at), col(WorkOrder.id)))
    mine = [o for o in rows.scalars()]
    # Own orders first, then by age.
    return sorted(mine, key=lambda o: (o.technician_id != rider_id, o.created_at, o.id))


async def rate(session: AsyncSession, order_id: int, rider_id: int, stars: int,
               now: datetime) -> bool:
    """One rating per rider and order, from riders the order was about; False if not allowed."""
    order = await session.get(WorkOrder, order_id)
    if order is None or order.state != WorkOrderState.resolved or order.technician_id is None:
        return False
    linked = (await session.execute(select(col(WorkOrderRider.id)).where(
        col(WorkOrderRider.work_order_id) == order_id,
        col(WorkOrderRider.rider_id) == rider_id))).first()
    if linked is None or not 1 <= stars <= 5:
        return False
    row = (await session.execute(select(TechnicianRating).where(
        col(TechnicianRating.work_order_id) == order_id,
        col(TechnicianRating.rider_id) == rider_id))).scalars().first()
    if row is None:
        try:
            async with session.begin_nested():
                session.add(TechnicianRating(work_order_id=order_id, rider_id=rider_id,
                                             technician_id=order.technician_id, stars=stars,
                                             created_at=now))
                await session.flush()
        except IntegrityError:
            return True
    else:
        row.stars = stars  # a rider may change their mind
    return True


async def technician_rating(session: AsyncSession, technician_id: int) -> tuple[float | None, int]:
    avg, n = (await session.execute(
        select(func.avg(col(TechnicianRating.stars)), func.count()).where(
            col(TechnicianRating.technician_id) == technician_id))).one()
    return (float(avg) if avg is not None else None), int(n)


async def last_service(session: AsyncSession, pile_id: str) -> WorkOrder | None:
    return (await session.execute(
        select(WorkOrder).where(col(WorkOrder.pile_id) == pile_id,
                                col(WorkOrder.state) == WorkOrderState.resolved)
        .order_by(col(WorkOrder.resolved_at).desc()).limit(1))).scalars().first()


async def next_planned(session: AsyncSession, pile_id: str) -> datetime | None:
    return (await session.execute(
        select(func.min(col(WorkOrder.planned_for))).where(
            col(WorkOrder.pile_id) == pile_id, col(WorkOrder.kind) == "preventive",
            col(WorkOrder.state).in_(ACTIVE)))).scalar()


async def calendar(session: AsyncSession, pile: Pile, settings: Settings,
                   now: datetime) -> dict[str, Any]:
    """A pile's maintenance calendar for its port cards: last service, who, next planned."""
    last = await last_service(session, pile.id)
    planned = await next_planned(session, pile.id)
    routine_from = last.resolved_at if last and last.resolved_at else None
    routine = (routine_from + timedelta(days=settings.maintenance.interval_days)
               if routine_from else None)
    nxt = min((d for d in (planned, routine) if d is not None), default=None)
    techs = await staff.for_site(session, pile.site_id, "technician")
    tech_id = (last.technician_id if last and last.technician_id
               else techs[0].rider_id if techs else None)
    avg, n = await technician_rating(session, tech_id) if tech_id else (None, 0)
    return {
        "last": last.resolved_at if last else None,
        "next": max(nxt, now) if nxt else None,
        "technician": await staff.display_name(session, tech_id) if tech_id else "",
        "rating": avg, "ratings": n,
    }


__all__ = ["ACTIVE", "NotAllowed", "TechnicianRating", "WorkOrder", "WorkOrderRider",
           "acknowledge", "arrive", "calendar", "escalate", "open_order", "overdue", "rate",
           "resolve"]


async def resolve_for_order(session: AsyncSession, order_id: int, now: datetime) -> None:
    rows = await session.execute(select(Fault).where(
        col(Fault.work_order_id) == order_id, col(Fault.resolved_at).is_(None)))
    for fault in rows.scalars():
        fault.resolved_at = now
