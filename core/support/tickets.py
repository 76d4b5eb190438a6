"""Customer service: tickets from one-tap reports, questions and emergencies, answered by staff
in chat; the rider's messages join their open ticket until it is closed.

Staff see tickets at the desk: every customer-service agent in their own chat (any platform)
and, when configured, a Telegram staff group, reached through a desk identity. The rider never
learns who answered on which platform; answers reach them on theirs, through the outbox.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import outbox
from core.billing import coupons
from core.charging.tables import Charge
from core.config import Settings
from core.faults import workorders
from core.notices.support import (
    ReportVerifiedNotice,
    SosReportsNotice,
    TicketAnswerNotice,
    TicketClosedNotice,
    TicketEscalatedNotice,
    TicketNotice,
)
from core.outbox import OutboxMessage
from core.piles.tables import Pile, port_code
from core.riders import staff
from core.riders.identities import chat_rider
from core.riders.tables import Rider
from core.support import photos
from core.support.tables import Ticket, TicketMessage

PROBLEMS = ("wont_start", "stopped", "damaged", "no_power", "dirty", "other")
# Problems that make the port unusable until a technician looks: a verified report opens a
# work order that takes it out of service.
OUT_OF_SERVICE = ("wont_start", "damaged", "no_power")
OPEN = ("open", "assigned")
EMERGENCY_WORDS = re.compile(
    r"冒烟|起火|着火|失火|火灾|烧焦|焦味|冒火|火花|漏电|触电|电到|爆炸|"
    r"\b(smoke|smoking|fire|burning|sparks?|electric shock|shocked|explod\w*)\b",
    re.IGNORECASE,
)
# Ten riders smelling the same smoke are one incident: within this window after a page, more
# emergencies about the same site (or, naming no site, about no site) page nobody again.
PAGE_WINDOW = timedelta(minutes=10)
# The count of those reports reaches the desk in one follow-up, a minute after the first repeat
# (a burst arrives within seconds; a minute gathers it without leaving staff uninformed).
REPORTS_DELAY = timedelta(minutes=1)


class TicketClosed(Exception):
    """A reply to a ticket that is already closed."""


def is_emergency(text: str) -> bool:
    return bool(EMERGENCY_WORDS.search(text or ""))


async def open_ticket(session: AsyncSession, rider: Rider, *, kind: str, now: datetime,
                      text: str = "", problem: str | None = None, pile_id: str | None = None,
                      port: int | None = None, charge_id: int | None = None,
                      photo: str | None = None) -> tuple[Ticket, bool]:
    """The rider's open ticket (an emergency raises its priority), or a new one: (ticket, new)."""
    current = await open_for(session, rider.id)  # type: ignore[arg-type]
    priority = "emergency" if kind == "emergency" else "normal"
    if current is not None:
        if priority == "emergency" and current.priority != "emergency":
            current.priority, current.kind, current.created_at = "emergency", "emergency", now
            current.escalated_at = None
        if problem and current.problem is None:
            current.problem, current.pile_id, current.port = problem, pile_id, port
            current.charge_id = current.charge_id or charge_id
        if text or photo:
            await add_message(session, current, "rider", rider.id, text, photo, now)  # type: ignore[arg-type]
        return current, False
    ticket = Ticket(rider_id=rider.id, platform=rider.last_platform or "webchat", kind=kind,  # type: ignore[arg-type]
                    priority=priority, problem=problem, pile_id=pile_id, port=port,
                    charge_id=charge_id, created_at=now, photo=photo)
    session.add(ticket)
    await session.flush()
    if text or photo:
        await add_message(session, ticket, "rider", rider.id, text, photo, now)  # type: ignore[arg-type]
    return ticket, True


async def open_for(session: AsyncSession, rider_id: int) -> Ticket | None:
    return (await session.execute(select(Ticket).where(
        Ticket.rider_id == rider_id, Ticket.state.in_(OPEN)))).scalars().first()


async def add_message(session: AsyncSession, ticket: Ticket, author: str, author_id: int,
                      text_: str, photo: str | None, now: datetime) -> TicketMessage:
    if ticket.state not in OPEN:
        raise TicketClosed(ticket.id)
    msg = TicketMessage(ticket_id=ticket.id, author=author, author_id=author_id,  # type: ignore[arg-type]
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
            Charge.rider_id == ticket.rider_id).order_by(Charge.id.desc()).limit(1)
        )).scalars().first()
    site = None
    if ticket.pile_id:
        pile = await session.get(Pile, ticket.pile_id)
        site = pile.site_id if pile else None
    body = message
    if body is None:
        body = (await session.execute(select(TicketMessage).where(
            TicketMessage.ticket_id == ticket.id).order_by(TicketMessage.id.desc()).limit(1)
        )).scalars().first()
    notice = TicketNotice(
        ticket_id=ticket.id, ticket_kind=ticket.kind, priority=ticket.priority,  # type: ignore[arg-type]
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
    if ticket.state == "closed":
        raise TicketClosed(ticket_id)
    if ticket.state == "open":
        ticket.state, ticket.assignee_id, ticket.taken_at = "assigned", staff_id, now
    return ticket


async def answer(session: AsyncSession, ticket_id: int, staff_id: int, text_: str,
                 now: datetime) -> Ticket:
    """A staff answer: stored on the ticket and sent to the rider on the rider's platform."""
    ticket = await _ticket_for_staff(session, ticket_id, staff_id)
    if ticket.state == "closed":
        raise TicketClosed(ticket_id)
    if ticket.state == "open":
        ticket.state, ticket.assignee_id, ticket.taken_at = "assigned", staff_id, now
    msg = await add_message(session, ticket, "staff", staff_id, text_, None, now)
    await outbox.enqueue(session, ticket.rider_id,
                         TicketAnswerNotice(ticket_id=ticket.id, text=text_[:2000]),  # type: ignore[arg-type]
                         f"ticket_answer:{msg.id}", now=now)
    return ticket


async def close(session: AsyncSession, ticket_id: int, staff_id: int, resolution: str,
                now: datetime) -> Ticket:
    ticket = await _ticket_for_staff(session, ticket_id, staff_id)
    if ticket.state == "closed":
        raise TicketClosed(ticket_id)
    claimed = await session.execute(
        update(Ticket).where(Ticket.id == ticket_id, Ticket.state.in_(OPEN))
        .values(state="closed", closed_at=now, resolution=resolution[:500],
                assignee_id=ticket.assignee_id or staff_id)
        .execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise TicketClosed(ticket_id)
    await session.refresh(ticket)
    await outbox.enqueue(session, ticket.rider_id,
                         TicketClosedNotice(ticket_id=ticket.id, resolution=resolution[:500]),  # type: ignore[arg-type]
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
            workorders.WorkOrder.pile_id == pile.id, workorders.WorkOrder.port == place,
            workorders.WorkOrder.state.in_(workorders.ACTIVE)))).scalars().first()
        if existing is None:
            reward += s.new_problem_bonus_fen
        order, _ = await workorders.open_order(
            session, pile=pile, port=place, causes=[f"reported_{ticket.problem or 'other'}"],
            severity="warning", out_of_service=(ticket.problem in OUT_OF_SERVICE),
            now=now, settings=settings)
        ticket.work_order_id = order.id
        await workorders.link_rider(session, order.id, ticket.rider_id, "reported",  # type: ignore[arg-type]
                                    ticket.charge_id)
        if ticket.photo and order.photo is None:
            order.photo = ticket.photo
    coupon = await coupons.issue(session, ticket.rider_id, amount_fen=reward,
                                 reason=f"verified report #{ticket.id}",
                                 cause=f"report:{ticket.id}", now=now)
    ticket.coupon_id = coupon.id
    await outbox.enqueue(session, ticket.rider_id,
                         ReportVerifiedNotice(ticket_id=ticket.id, amount_fen=reward,  # type: ignore[arg-type]
                                              where=port_code(ticket.pile_id, ticket.port)
                                              if ticket.port else ticket.pile_id),
                         f"report_verified:{ticket.id}", now=now)
    return ticket, reward


async def rate(session: AsyncSession, ticket_id: int, rider_id: int, stars: int) -> bool:
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None or ticket.rider_id != rider_id or ticket.state != "closed":
        return False
    if not 1 <= stars <= 5:
        return False
    ticket.rating = stars
    return True


async def queue(session: AsyncSession, limit: int = 20) -> list[Ticket]:
    """Open tickets, emergencies first, oldest first."""
    rows = await session.execute(
        select(Ticket).where(Ticket.state.in_(OPEN))
        .order_by(Ticket.priority != "emergency", Ticket.created_at, Ticket.id).limit(limit))
    return list(rows.scalars())


# --- the emergency lane -----------------------------------------------------------------------


async def report_emergency(session: AsyncSession, rider: Rider, settings: Settings,
                           now: datetime, *, text: str = "", pile_id: str | None = None,
                           port: int | None = None, charge_id: int | None = None) -> Ticket:
    """The rider's ticket, raised to an emergency. The first emergency about a site pages staff
    at once; repeats within PAGE_WINDOW keep their own ticket but page nobody, and the paged
    ticket's follow-up says how many reports came in."""
    before = await open_for(session, rider.id)  # type: ignore[arg-type]
    already = before is not None and before.priority == "emergency"
    ticket, new = await open_ticket(session, rider, kind="emergency", now=now, text=text,
                                    pile_id=pile_id, port=port, charge_id=charge_id)
    if already:
        if ticket.page_of is None:  # the same rider again: their page says it once more
            await post_to_desk(session, ticket, settings, now, tag="sos")
        return ticket
    site = await _site_of(session, ticket.pile_id)
    first = await _paged_recently(session, ticket, site, now)
    if first is None:
        await post_to_desk(session, ticket, settings, now, tag="new" if new else "sos")
        return ticket
    ticket.page_of = first.id
    await session.flush()
    await _count_reports(session, first, site, settings, now)
    return ticket


async def _site_of(session: AsyncSession, pile_id: str | None) -> str | None:
    pile = await session.get(Pile, pile_id) if pile_id else None
    return pile.site_id if pile else None


async def _paged_recently(session: AsyncSession, ticket: Ticket, site: str | None,
                          now: datetime) -> Ticket | None:
    """The open emergency about the same site that paged staff within PAGE_WINDOW. A closed one
    does not count: staff called it over, so a new alarm is news."""
    q = select(Ticket).where(
        Ticket.priority == "emergency", Ticket.page_of.is_(None),  # type: ignore[union-attr]
        Ticket.state.in_(OPEN), Ticket.created_at >= now - PAGE_WINDOW,  # type: ignore[attr-defined]
        Ticket.id != ticket.id)
    if site is not None:
        q = q.where(Ticket.pile_id.in_(select(Pile.id).where(Pile.site_id == site)))  # type: ignore[union-attr]
    elif ticket.pile_id is not None:  # a pile we do not know: its own group
        q = q.where(Ticket.pile_id == ticket.pile_id)
    else:
        q = q.where(Ticket.pile_id.is_(None))  # type: ignore[union-attr]
    return (await session.execute(q.order_by(Ticket.created_at.desc()).limit(1))  # type: ignore[attr-defined]
            ).scalars().first()


async def _count_reports(session: AsyncSession, first: Ticket, site: str | None,
                         settings: Settings, now: datetime) -> None:
    """One pending follow-up per desk member carries the running count; once it has gone out,
    the next repeat starts another, so a long flood is one message a minute at most."""
    n = 1 + int(await session.scalar(select(func.count()).select_from(Ticket).where(
        Ticket.page_of == first.id)) or 0)
    where = (port_code(first.pile_id, first.port) if first.pile_id and first.port
             else first.pile_id)
    notice = SosReportsNotice(ticket_id=first.id, count=n, where=where,  # type: ignore[arg-type]
                              minutes=int(PAGE_WINDOW.total_seconds() // 60))
    prefix = f"sos_reports:{first.id}:"
    updated = await session.execute(
        update(OutboxMessage).where(
            OutboxMessage.dedupe_key.startswith(prefix, autoescape=True),  # type: ignore[attr-defined]
            OutboxMessage.state == "pending",
            # A leased row is being sent right now: start a new one rather than race it.
            or_(OutboxMessage.lease_until.is_(None), OutboxMessage.lease_until < now))  # type: ignore[union-attr,operator]
        .values(payload=notice.to_payload()).execution_options(synchronize_session=False))
    if updated.rowcount:  # type: ignore[attr-defined]
        return
    for rid in await desk_riders(session, settings, now, site, emergency=True):
        await outbox.enqueue(session, rid, notice, f"{prefix}{n}:{rid}",
                             due_at=now + REPORTS_DELAY, now=now)


async def escalate_emergencies(session: AsyncSession, now: datetime, settings: Settings
                               ) -> list[int]:
    """Emergency tickets nobody took within `emergency_take_s`: page the supervisors, once
    (claimed by a conditional update, like the work-order promise)."""
    due = now - timedelta(seconds=settings.support.emergency_take_s)
    ids = [i for (i,) in await session.execute(select(Ticket.id).where(
        Ticket.priority == "emergency", Ticket.state == "open", Ticket.created_at <= due,
        # A repeat of a paged emergency escalates with that one, not once more per rider.
        Ticket.escalated_at.is_(None), Ticket.page_of.is_(None)))]
    done = []
    for ticket_id in ids:
        claimed = await session.execute(
            update(Ticket).where(Ticket.id == ticket_id, Ticket.state == "open",
                                 Ticket.escalated_at.is_(None))
            .values(escalated_at=now).execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        site = None
        if ticket.pile_id and (pile := await session.get(Pile, ticket.pile_id)):
            site = pile.site_id
        sups = (await staff.for_site(session, site, "supervisor") if site
                else await staff.with_role(session, "supervisor"))
        for sup in {s.rider_id for s in sups}:
            await outbox.enqueue(session, sup,
                                 TicketEscalatedNotice(ticket_id=ticket_id,
                                                       seconds=settings.support.emergency_take_s),
                                 f"ticket_escalated:{ticket_id}:{sup}", now=now)
        done.append(ticket_id)
    return done
