"""What an operator watches across the workers, read in one go (`/metrics` formats it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import Charge
from core.db import aware
from core.faults.tables import ACTIVE, WorkOrder
from core.outbox import OutboxMessage, OutboxState
from core.piles.tables import PileEvent, RejectedEvent
from core.support.tables import Ticket, TicketState


@dataclass(frozen=True)
class Gauges:
    charges: dict[str, int]  # by state
    outbox: dict[str, int]  # by state
    outbox_lag_s: float  # how late the oldest due message is
    pile_events: int
    rejected_events: int  # each distinct bad event once, however often its pile resent it
    work_orders_open: int
    tickets_open: int


async def read(session: AsyncSession, now: datetime) -> Gauges:
    charges = {str(s): int(n) for s, n in await session.execute(
        select(col(Charge.state), func.count()).group_by(col(Charge.state)))}
    outbox = {str(s): int(n) for s, n in await session.execute(
        select(col(OutboxMessage.state), func.count()).group_by(col(OutboxMessage.state)))}
    oldest = await session.scalar(select(func.min(col(OutboxMessage.due_at))).where(
        col(OutboxMessage.state) == OutboxState.pending, col(OutboxMessage.due_at) <= now))
    # max(id), not count(*): the events table is the largest, and ids only grow.
    events = await session.scalar(select(func.max(col(PileEvent.id))))
    rejected = await session.scalar(select(func.count()).select_from(RejectedEvent))
    orders = await session.scalar(select(func.count()).select_from(WorkOrder).where(
        col(WorkOrder.state).in_(ACTIVE)))
    tickets = await session.scalar(select(func.count()).select_from(Ticket).where(
        col(Ticket.state).in_((TicketState.open, TicketState.assigned))))
    lag = max(0.0, (now - aware(oldest)).total_seconds()) if oldest is not None else 0.0
    return Gauges(charges=charges, outbox=outbox, outbox_lag_s=lag, pile_events=events or 0,
                  rejected_events=rejected or 0, work_orders_open=orders or 0,
                  tickets_open=tickets or 0)
