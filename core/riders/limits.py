"""Per-rider limits on expensive actions, counted from the rows the actions leave behind (so
every worker sees the same count, with no counter of its own to keep in step)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import Charge
from core.support.tables import TicketMessage

WINDOW = timedelta(minutes=10)


async def starts_allowed(session: AsyncSession, rider_id: int, now: datetime,
                         per_window: int) -> bool:
    """Start presses: each leaves a charge row (requested, failed or running)."""
    n = await session.scalar(select(func.count()).select_from(Charge).where(
        col(Charge.rider_id) == rider_id, col(Charge.requested_at) >= now - WINDOW))
    return (n or 0) < per_window


async def reports_allowed(session: AsyncSession, rider_id: int, now: datetime,
                          per_window: int) -> bool:
    """Reports and ticket messages: each leaves a ticket message row."""
    n = await session.scalar(select(func.count()).select_from(TicketMessage).where(
        col(TicketMessage.author_id) == rider_id, col(TicketMessage.author) == "rider",
        col(TicketMessage.created_at) >= now - WINDOW))
    return (n or 0) < per_window
