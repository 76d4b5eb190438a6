"""Which faults are active and which one hit a charge: reads that billing and disputes share."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.db import aware
from core.faults.tables import Fault


async def find_active(session: AsyncSession, pile_id: str, port: int, cause: str) -> Fault | None:
    return (await session.execute(select(Fault).where(
        col(Fault.pile_id) == pile_id, col(Fault.port) == port, col(Fault.cause) == cause,
        col(Fault.resolved_at).is_(None)))).scalars().first()


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


async def active(session: AsyncSession, pile_id: str) -> list[Fault]:
    rows = await session.execute(select(Fault).where(
        col(Fault.pile_id) == pile_id, col(Fault.resolved_at).is_(None))
        .order_by(col(Fault.opened_at)))
    return list(rows.scalars())


async def first_during(session: AsyncSession, pile_id: str, port: int, start: datetime,
                       end: datetime) -> Fault | None:
    """The earliest fault on this port (or the whole pile) that overlapped [start, end]."""
    return (await session.execute(
        select(Fault).where(
            col(Fault.pile_id) == pile_id, col(Fault.port).in_((0, port)),
            col(Fault.opened_at) <= end,
            or_(col(Fault.resolved_at).is_(None), col(Fault.resolved_at) >= start),
            or_(col(Fault.cleared_at).is_(None), col(Fault.cleared_at) >= start),
            # A pile that reported this charge's start was talking: an offline fault opened at
            # its last sign of life up to that start (the start's own heartbeat included) is
            # stale (the back-online sweep has not closed it yet), not its cause.
            or_(col(Fault.cause) != "offline", col(Fault.opened_at) > start),
            # Any other fault from before the charge counts only if reported again since.
            or_(col(Fault.opened_at) >= start, col(Fault.last_seen_at) >= start),
        ).order_by(col(Fault.opened_at)).limit(1))).scalars().first()
