"""Reads over the charge tables that services of other packages share (family, accounts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import OPEN_STATES, Charge, ChargeState, MeterSample
from core.db import aware

# Closed and billed, whether paid yet or not.
BILLED_STATES = (ChargeState.ended, ChargeState.settled, ChargeState.refunded)


async def due_charges(session: AsyncSession, rider_id: int) -> list[Charge]:
    rows = await session.execute(
        select(Charge)
        .where(col(Charge.rider_id) == rider_id, col(Charge.state) == ChargeState.ended)
        .order_by(col(Charge.id))
    )
    return [c for c in rows.scalars() if c.amount_fen > c.paid_fen]


async def owed_fen(session: AsyncSession, rider_id: int) -> int:
    """What the rider's due bills still ask, in fen."""
    return sum(c.amount_fen - c.paid_fen for c in await due_charges(session, rider_id))


async def open_charges(session: AsyncSession, rider_id: int) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(col(Charge.rider_id) == rider_id, col(Charge.state).in_(OPEN_STATES))
        .order_by(col(Charge.id))
    )
    return list(rows.scalars())


async def open_charge_on_port(session: AsyncSession, port_id: int) -> Charge | None:
    return (
        await session.execute(
            select(Charge).where(col(Charge.port_id) == port_id,
                                 col(Charge.state).in_(OPEN_STATES))
        )
    ).scalars().first()


async def meter_samples(
    session: AsyncSession, charge_id: int, until: datetime | None,
) -> list[tuple[datetime, float]]:
    stmt = select(col(MeterSample.ts), col(MeterSample.power_w)).where(
        col(MeterSample.charge_id) == charge_id)
    if until is not None:
        stmt = stmt.where(col(MeterSample.ts) <= until)
    rows = await session.execute(stmt.order_by(col(MeterSample.ts)))
    return [(aware(ts), p) for ts, p in rows]


async def usual_piles(session: AsyncSession, rider_id: int, since: datetime,
                      n: int) -> list[str]:
    """The piles the rider charged at most since `since`, most used first."""
    rows = await session.execute(
        select(col(Charge.pile_id), func.count()).where(
            col(Charge.rider_id) == rider_id,
            col(Charge.state).in_((ChargeState.ended, ChargeState.settled)),
            col(Charge.ended_at) >= since)
        .group_by(col(Charge.pile_id)).order_by(func.count().desc(), col(Charge.pile_id))
        .limit(n))
    return [pile for pile, _count in rows]


async def last_port(session: AsyncSession, rider_id: int) -> int | None:
    """The port of the rider's latest charge: a courier's usual port."""
    return await session.scalar(
        select(col(Charge.port_id)).where(col(Charge.rider_id) == rider_id)
        .order_by(col(Charge.id).desc()).limit(1))


@dataclass(frozen=True)
class MonthSpend:
    """A rider's charges that ended in one calendar month of the service's zone."""

    month: str  # YYYY-MM
    charges: int
    energy_wh: float
    billed_fen: int  # what the bills asked, after plans, coupons and automatic refunds
    refunded_fen: int  # given back on those charges: automatic refunds and upheld disputes
    due_fen: int  # of billed_fen, not paid yet


async def month_spend(session: AsyncSession, rider_id: int, now: datetime, tz: str,
                      months_back: int = 0) -> MonthSpend:
    """What the rider's charging cost in the month of `now` (or `months_back` before it)."""
    local = now.astimezone(ZoneInfo(tz))
    index = local.year * 12 + local.month - 1 - months_back
    start = datetime(index // 12, index % 12 + 1, 1, tzinfo=local.tzinfo)
    end = datetime((index + 1) // 12, (index + 1) % 12 + 1, 1, tzinfo=local.tzinfo)
    count, energy, billed, paid, refunded = (await session.execute(
        select(func.count(), func.coalesce(func.sum(col(Charge.energy_wh)), 0),
               func.coalesce(func.sum(col(Charge.amount_fen)), 0),
               func.coalesce(func.sum(col(Charge.paid_fen)), 0),
               func.coalesce(func.sum(col(Charge.refunded_fen)), 0))
        .where(col(Charge.rider_id) == rider_id, col(Charge.state).in_(BILLED_STATES),
               col(Charge.ended_at) >= start, col(Charge.ended_at) < end))).one()
    return MonthSpend(month=f"{start:%Y-%m}", charges=int(count), energy_wh=float(energy or 0),
                      billed_fen=int(billed), refunded_fen=int(refunded),
                      due_fen=int(billed) - int(paid))
