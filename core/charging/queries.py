"""Reads over the charge tables that services of other packages share (family, accounts)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.charging.tables import OPEN_STATES, Charge, MeterSample
from core.db import aware


async def due_charges(session: AsyncSession, rider_id: int) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(Charge.rider_id == rider_id, Charge.state == "ended")
        .order_by(Charge.id)
    )
    return [c for c in rows.scalars() if c.amount_fen > c.paid_fen]


async def owed_fen(session: AsyncSession, rider_id: int) -> int:
    """What the rider's due bills still ask, in fen."""
    return sum(c.amount_fen - c.paid_fen for c in await due_charges(session, rider_id))


async def open_charges(session: AsyncSession, rider_id: int) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(Charge.rider_id == rider_id, Charge.state.in_(OPEN_STATES))
        .order_by(Charge.id)
    )
    return list(rows.scalars())


async def open_charge_on_port(session: AsyncSession, port_id: int) -> Charge | None:
    return (
        await session.execute(
            select(Charge).where(Charge.port_id == port_id, Charge.state.in_(OPEN_STATES))
        )
    ).scalars().first()


async def meter_samples(
    session: AsyncSession, charge_id: int, until: datetime | None,
) -> list[tuple[datetime, float]]:
    stmt = select(MeterSample.ts, MeterSample.power_w).where(MeterSample.charge_id == charge_id)
    if until is not None:
        stmt = stmt.where(MeterSample.ts <= until)
    rows = await session.execute(stmt.order_by(MeterSample.ts))
    return [(aware(ts), p) for ts, p in rows]
