"""The emergency lane: smoke, fire or a shock reported in chat pages the desk at once, one page
per incident however many riders report it, and supervisors when nobody takes it in time."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core import outbox
from core.config import Settings
from core.db import saved_id
from core.notices.support import SosReportsNotice, TicketEscalatedNotice
from core.outbox import OutboxMessage, OutboxState
from core.piles.tables import Pile, port_code
from core.riders import staff
from core.riders.tables import Rider
from core.support.tables import Ticket, TicketState
from core.support.tickets import OPEN, desk_riders, open_for, open_ticket, post_to_desk

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


def is_emergency(text: str) -> bool:
    return bool(EMERGENCY_WORDS.search(text or ""))


async def report_emergency(session: AsyncSession, rider: Rider, settings: Settings,
                           now: datetime, *, text: str = "", pile_id: str | None = None,
                           port: int | None = None, charge_id: int | None = None) -> Ticket:
    """The rider's ticket, raised to an emergency. The first emergency about a site pages staff
    at once; repeats within PAGE_WINDOW keep their own ticket but page nobody, and the paged
    ticket's follow-up says how many reports came in."""
    before = await open_for(session, saved_id(rider))
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
        col(Ticket.priority) == "emergency", col(Ticket.page_of).is_(None),
        col(Ticket.state).in_(OPEN), col(Ticket.created_at) >= now - PAGE_WINDOW,
        col(Ticket.id) != ticket.id)
    if site is not None:
        q = q.where(col(Ticket.pile_id).in_(select(col(Pile.id)).where(col(Pile.site_id) == site)))
    elif ticket.pile_id is not None:  # a pile we do not know: its own group
        q = q.where(col(Ticket.pile_id) == ticket.pile_id)
    else:
        q = q.where(col(Ticket.pile_id).is_(None))
    return (await session.execute(q.order_by(col(Ticket.created_at).desc()).limit(1))
            ).scalars().first()


async def _count_reports(session: AsyncSession, first: Ticket, site: str | None,
                         settings: Settings, now: datetime) -> None:
    """One pending follow-up per desk member carries the running count; once it has gone out,
    the next repeat starts another, so a long flood is one message a minute at most."""
    n = 1 + int(await session.scalar(select(func.count()).select_from(Ticket).where(
        col(Ticket.page_of) == first.id)) or 0)
    where = (port_code(first.pile_id, first.port) if first.pile_id and first.port
             else first.pile_id)
    notice = SosReportsNotice(ticket_id=first.id, count=n, where=where,
                              minutes=int(PAGE_WINDOW.total_seconds() // 60))
    prefix = f"sos_reports:{first.id}:"
    updated = cast("CursorResult[Any]", await session.execute(
        update(OutboxMessage).where(
            col(OutboxMessage.dedupe_key).startswith(prefix, autoescape=True),
            col(OutboxMessage.state) == OutboxState.pending,
            # A leased row is being sent right now: start a new one rather than race it.
            or_(col(OutboxMessage.lease_until).is_(None), col(OutboxMessage.lease_until) < now))
        .values(payload=notice.to_payload()).execution_options(synchronize_session=False)))
    if updated.rowcount:
        return
    for rid in await desk_riders(session, settings, now, site, emergency=True):
        await outbox.enqueue(session, rid, notice, f"{prefix}{n}:{rid}",
                             due_at=now + REPORTS_DELAY, now=now)


async def escalate_emergencies(session: AsyncSession, now: datetime, settings: Settings
                               ) -> list[int]:
    """Emergency tickets nobody took within `emergency_take_s`: page the supervisors, once
    (claimed by a conditional update, like the work-order promise)."""
    due = now - timedelta(seconds=settings.support.emergency_take_s)
    ids = [i for (i,) in await session.execute(select(col(Ticket.id)).where(
        col(Ticket.priority) == "emergency", col(Ticket.state) == TicketState.open,
        col(Ticket.created_at) <= due,
        # A repeat of a paged emergency escalates with that one, not once more per rider.
        col(Ticket.escalated_at).is_(None), col(Ticket.page_of).is_(None)))]
    done: list[int] = []
    for ticket_id in ids:
        claimed = cast("CursorResult[Any]", await session.execute(
            update(Ticket).where(col(Ticket.id) == ticket_id, col(Ticket.state) == TicketState.open,
                                 col(Ticket.escalated_at).is_(None))
            .values(escalated_at=now).execution_options(synchronize_session=False)))
        if claimed.rowcount != 1:
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
        done.append(saved_id(ticket))
    return done
