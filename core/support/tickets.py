"""Customer service: tickets from one-tap reports, questions and emergencies, answered by staff
in chat; the rider's messages join their open ticket until it is closed.

Staff see tickets at the desk: every customer-service agent in their own chat (any platform)
and, when configured, a Telegram staff group, reached through a desk identity. The rider never
learns who answered on which platform; answers reach them on theirs, through the outbox.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core import outbox
from core.billing import coupons
from core.charging.tables import Charge
from core.config import Settings
from core.db import saved_id
from core.faults import workorders
from core.notices.support import (
    ReportVerifiedNotice,
    TicketAnswerNotice,
    TicketClosedNotice,
    TicketIdleClosedNotice,
    TicketNotice,
)
from core.piles.tables import Pile, port_code
from core.riders import staff
from core.riders.identities import chat_rider
from core.riders.tables import Rider
from core.support import photos
from core.support.tables import Ticket, TicketMessage, TicketState

PROBLEMS = ("wont_start", "stopped", "damaged", "no_power", "dirty", "other")
# Problems that make the port unusable until a technician looks: a verified report opens a
# work order that takes it out of service.
OUT_OF_SERVICE = ("wont_start", "damaged", "no_power")
OPEN = (TicketState.open, TicketState.assigned)


class TicketClosed(Exception):
    """A reply to a ticket that is already closed."""


async def open_ticket(session: AsyncSession, rider: Rider, *, kind: str, now: datetime,
                      text: str = "", problem: str | None = None, pile_id: str | None = None,
                      port: int | None = None, charge_id: int | None = None,
                      photo: str | None = None) -> tuple[Ticket, bool]:
    """The rider's open ticket (an emergency raises its priority), or a new one: (ticket, new)."""
    rider_id = saved_id(rider)
    current = await open_for(session, rider_id)
    priority = "emergency" if kind == "emergency" else "normal"
    if current is not None:
        if priority == "emergency" and current.priority != "emergency":
            current.priority, current.kind, current.created_at = "emergency", "emergency", now
            current.escalated_at = None
        if problem and current.problem is None:
            current.problem, current.pile_id, current.port = problem, pile_id, port
            current.charge_id = current.charge_id or charge_id
        if text or photo:
            await add_message(session, current, "rider", rider_id, text, photo, now)
        return current, False
    ticket = Ticket(rider_id=rider_id, platform=rider.last_platform or "webchat", kind=kind,
                    priority=priority, problem=problem, pile_id=pile_id, port=port,
                    charge_id=charge_id, created_at=now, photo=photo)
    session.add(ticket)
    await session.flush()
    if text or photo:
        await add_message(session, ticket, "rider", rider_id, text, photo, now)
    return ticket, True


async def end_by_rider(session: AsyncSession, ticket_id: int, rider_id: int,
                       now: datetime) -> Ticket | None:
    """The rider leaves their own open conversation: closed, or None when it is not theirs,
    already closed, or an emergency (staff close those, after making sure all is safe)."""
    # One conditional update, as close() does: a staff close landing meanwhile wins cleanly.
    claimed = cast("CursorResult[Any]", await session.execute(
        update(Ticket).where(col(Ticket.id) == ticket_id, col(Ticket.rider_id) == rider_id,
                             col(Ticket.state).in_(OPEN), col(Ticket.priority) != "emergency")
        .values(state=TicketState.closed, closed_at=now, resolution="ended by the rider")
        .execution_options(synchronize_session=False)))
    if claimed.rowcount != 1:
        return None
    ticket = await session.get(Ticket, ticket_id, populate_existing=True)
    return ticket


async def close_idle(session: AsyncSession, now: datetime, idle_h: int) -> list[int]:
    """Close the conversations nobody wrote in for `idle_h` hours (not emergencies), each with
    a note to its rider; their ids."""
    if idle_h <= 0:
        return []
    horizon = now - timedelta(hours=idle_h)
    at = func.max(col(TicketMessage.created_at)).label("at")
    last = (select(col(TicketMessage.ticket_id), at)
            .group_by(col(TicketMessage.ticket_id)).subquery())
    stale = list((await session.execute(
        select(Ticket).outerjoin(last, last.c.ticket_id == col(Ticket.id)).where(
            col(Ticket.state).in_(OPEN), col(Ticket.priority) != "emergency",
            func.coalesce(last.c.at, col(Ticket.created_at)) < horizon)
        .order_by(col(Ticket.id)).limit(500))).scalars())
    for ticket in stale:
        ticket.state, ticket.closed_at = TicketState.closed, now
        ticket.resolution = f"closed after {idle_h} h without messages"
        await outbox.enqueue(session, ticket.rider_id,
                             TicketIdleClosedNotice(ticket_id=saved_id(ticket), hours=idle_h),
                             f"ticket_idle:{ticket.id}", now=now)
    await session.flush()
    return [saved_id(t) for t in stale]


async def open_for(session: AsyncSession, rider_id: int) -> Ticket | None:
    return (await session.execute(select(Ticket).where(
        col(Ticket.rider_id) == rider_id, col(Ticket.state).in_(OPEN)))).scalars().first()


async def has_messages(session: AsyncSession, ticket_id: int) -> bool:
    return (await session.execute(select(col(TicketMessage.id)).where(
        col(TicketMessage.ticket_id) == ticket_id).limit(1))).first() is not None


async def question_and_answer(session: AsyncSession, ticket_id: int) -> tuple[str, str]:
    """The rider's first words on the ticket and the last staff answer ('' where missing)."""
    msgs = list((await session.execute(select(TicketMessage).where(
        col(TicketMessage.ticket_id) == ticket_id).order_by(col(TicketMessage.id))
    )).scalars())
    asked = next((m.text for m in msgs if m.author == "rider" and m.text), "")
    answer = next((m.text for m in reversed(msgs) if m.author == "staff" and m.text), "")
    return asked, answer


async def add_message(session: AsyncSession, ticket: Ticket, author: str, author_id: int,
                      text_: str, photo: str | None, now: datetime) -> TicketMessage:
    if ticket.state not in OPEN:
        raise TicketClosed(ticket.id)
    msg = TicketMessage(ticket_id=saved_id(ticket), author=author, author_id=author_id,
                        text=text_[:2000], photo=photo, created_at=now)
    session.add(msg)
    if photo and ticket.photo is None:
        ticket.photo = photo
    await session.flush()
    return msg


# --- the desk ---------------------------------------------------------------------------------


async def desk_riders(session: AsyncSession, settings: Settings, now: datetime,
                      site_id: str | None, *, emergency: bool = False) -> list[int]:
    """Who sees a ticket: on-duty agents (all agents if nobody is on duty), the desk group, and
    for an emergency also the site's on-duty technicians."""
    tz = settings.server.timezone
    agents = [r for r in await staff.with_role(session, "agent")]
    on = [r for r in agents if staff.on_duty(r.hours, now, tz)] or agents
    ids = [r.rider_id for r in on]
    if emergency and site_id:
        ids += [t.rider_id for t in await staff.for_site(session, site_id, "technician")
                if staff.on_duty(t.hours, now, tz)]
    if (desk := await desk_rider(session, settings)) is not None:
        ids.append(desk)
    return list(dict.fromkeys(ids))


async def desk_rider(session: AsyncSession, settings: Settings) -> int | None:
    """The Telegram staff group as an outbox recipient."""
    chat = settings.support.telegram_staff_chat
    if not chat:
        return None
    return await chat_rider(session, "telegram", chat, "staff desk",
                            settings.support.desk_language)


async def post_to_desk(session: AsyncSession, ticket: Ticket, settings: Settings,
                       now: datetime, *, message: TicketMessage | None = None,
                       tag: str = "new") -> None:
    """One message per ticket at the desk, one per later rider message (`message`), and one
    when a ticket turns into an emergency (`tag="sos"`)."""
    rider = await session.get(Rider, ticket.rider_id)
    last = None
    if ticket.charge_id is None:
        last = (await session.execute(select(Charge).where(
            col(Charge.rider_id) == ticket.rider_id).order_by(col(Charge.id).desc()).limit(1)
        )).scalars().first()
    site = None
    if ticket.pile_id:
        pile = await session.get(Pile, ticket.pile_id)
        site = pile.site_id if pile else None
    body = message
    if body is None:
        body = (await session.execute(select(TicketMessage).where(
            col(TicketMessage.ticket_id) == ticket.id).order_by(col(TicketMessage.id).desc())
            .limit(1)
        )).scalars().first()
    notice = TicketNotice(
        ticket_id=ticket.id, ticket_kind=ticket.kind, priority=ticket.priority,
        problem=ticket.problem, rider=rider.display_name if rider else "",
        rider_id=ticket.rider_id, platform=ticket.platform,
        where=port_code(ticket.pile_id, ticket.port) if ticket.pile_id and ticket.port
        else ticket.pile_id, charge_id=ticket.charge_id or (last.id if last else None),
        last_charge=(last.port_code if last else None),
        text=body.text if body else "", photo=bool(body and body.photo),
        photo_url=(photos.signed_url(settings, body.photo, now.timestamp())
                   if body and body.photo else None),
        update=message is not None,
    )
    key = f"desk:{ticket.id}:{message.id if message else tag}"
    for rid in await desk_riders(session, settings, now, site,
                                 emergency=ticket.priority == "emergency"):
        await outbox.enqueue(session, rid, notice, f"{key}:{rid}", now=now)


# --- staff actions ----------------------------------------------------------------------------


async def may_answer(session: AsyncSession, rider_id: int) -> bool:
    return await staff.has_role(session, rider_id, "agent", "supervisor", "technician")


async def _ticket_for_staff(session: AsyncSession, ticket_id: int, staff_id: int) -> Ticket:
    if not await may_answer(session, staff_id):
        raise staff.NotStaff(staff_id)
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        raise LookupError(ticket_id)
    return ticket


async def take(session: AsyncSession, ticket_id: int, staff_id: int, now: datetime) -> Ticket:
    ticket = await _ticket_for_staff(session, ticket_id, staff_id)
    if ticket.state == TicketState.closed:
        raise TicketClosed(ticket_id)
    if ticket.state == TicketState.open:
        ticket.state, ticket.assignee_id, ticket.taken_at = TicketState.assigned, staff_id, now
    return ticket


async def answer(session: AsyncSession, ticket_id: int, staff_id: int, text_: str,
                 now: datetime) -> Ticket:
    """A staff answer: stored on the ticket and sent to the rider on the rider's platform."""
    ticket = await _ticket_for_staff(session, ticket_id, staff_id)
    if ticket.state == TicketState.closed:
        raise TicketClosed(ticket_id)
    if ticket.state == TicketState.open:
        ticket.state, ticket.assignee_id, ticket.taken_at = TicketState.assigned, staff_id, now
    msg = await add_message(session, ticket, "staff", staff_id, text_, None, now)
    await outbox.enqueue(session, ticket.rider_id,
                         TicketAnswerNotice(ticket_id=ticket.id, text=text_[:2000]),
                         f"ticket_answer:{msg.id}", now=now)
    return ticket


async def close(session: AsyncSession, ticket_id: int, staff_id: int, resolution: str,
                now: datetime) -> Ticket:
    ticket = await _ticket_for_staff(session, ticket_id, staff_id)
    if ticket.state == TicketState.closed:
        raise TicketClosed(ticket_id)
    claimed = cast("CursorResult[Any]", await session.execute(
        update(Ticket).where(col(Ticket.id) == ticket_id, col(Ticket.state).in_(OPEN))
        .values(state=TicketState.closed, closed_at=now, resolution=resolution[:500],
                assignee_id=ticket.assignee_id or staff_id)
        .execution_options(synchronize_session=False)))
    if claimed.rowcount != 1:
        raise TicketClosed(ticket_id)
    await session.refresh(ticket)
    await outbox.enqueue(session, ticket.rider_id,
                         TicketClosedNotice(ticket_id=ticket.id, resolution=resolution[:500]),
                         f"ticket_closed:{ticket.id}", now=now)
    return ticket


async def verify(session: AsyncSession, ticket_id: int, staff_id: int, now: datetime,
                 settings: Settings) -> tuple[Ticket, int]:
    """A report staff confirm: the rider earns a coupon (more with a photo and when it reveals a
    new problem), and a work order opens if none is open at that port. Returns (ticket, fen)."""
    ticket = await _ticket_for_staff(session, ticket_id, staff_id)
    if ticket.kind != "report" or not ticket.pile_id:
        raise LookupError(ticket_id)
    if ticket.verified_at is not None:
        return ticket, 0
    ticket.verified_at = now
    pile = await session.get(Pile, ticket.pile_id)
    s = settings.support
    reward = s.report_reward_fen + (s.photo_bonus_fen if ticket.photo else 0)
    if pile is not None:
        place = ticket.port or 0
        existing = (await session.execute(select(workorders.WorkOrder).where(
            col(workorders.WorkOrder.pile_id) == pile.id, col(workorders.WorkOrder.port) == place,
            col(workorders.WorkOrder.state).in_(workorders.ACTIVE)))).scalars().first()
        if existing is None:
            reward += s.new_problem_bonus_fen
        order, _ = await workorders.open_order(
            session, pile=pile, port=place, causes=[f"reported_{ticket.problem or 'other'}"],
            severity="warning", out_of_service=(ticket.problem in OUT_OF_SERVICE),
            now=now, settings=settings)
        ticket.work_order_id = order.id
        await workorders.link_rider(session, saved_id(order), ticket.rider_id, "reported",
                                    ticket.charge_id)
        if ticket.photo and order.photo is None:
            order.photo = ticket.photo
    coupon = await coupons.issue(session, ticket.rider_id, amount_fen=reward,
                                 reason=f"verified report #{ticket.id}",
                                 cause=f"report:{ticket.id}", now=now)
    ticket.coupon_id = coupon.id
    await outbox.enqueue(session, ticket.rider_id,
                         ReportVerifiedNotice(ticket_id=ticket.id, amount_fen=reward,
                                              where=port_code(ticket.pile_id, ticket.port)
                                              if ticket.port else ticket.pile_id),
                         f"report_verified:{ticket.id}", now=now)
    return ticket, reward


async def rate(session: AsyncSession, ticket_id: int, rider_id: int, stars: int) -> bool:
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None or ticket.rider_id != rider_id or ticket.state != TicketState.closed:
        return False
    if not 1 <= stars <= 5:
        return False
    ticket.rating = stars
    return True


async def queue(session: AsyncSession, limit: int = 20) -> list[Ticket]:
    """Open tickets, emergencies first, oldest first."""
    rows = await session.execute(
        select(Ticket).where(col(Ticket.state).in_(OPEN))
        .order_by(col(Ticket.priority) != "emergency", col(Ticket.created_at), col(Ticket.id))
        .limit(limit))
    return list(rows.scalars())
