"""Monthly plans (包月): prepaid minutes at a lower unit price, used up by charges first."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.billing import wallet
from core.config import Settings
from core.db import saved_id, utcnow
from core.errors import DomainError


class UnknownPlan(DomainError):
    key = "error.unknown_plan"


class RiderPlan(SQLModel, table=True):
    __tablename__ = "rider_plans"

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    plan: str = Field(max_length=32)
    minutes_total: int
    minutes_used: int = 0
    price_fen: int
    starts_at: datetime
    ends_at: datetime
    port_id: int | None = Field(default=None, foreign_key="ports.id")  # dedicated port
    created_at: datetime = Field(default_factory=utcnow)


async def active(session: AsyncSession, rider_id: int, now: datetime) -> list[RiderPlan]:
    rows = await session.execute(
        select(RiderPlan).where(col(RiderPlan.rider_id) == rider_id,
                                col(RiderPlan.starts_at) <= now, col(RiderPlan.ends_at) > now)
        .order_by(col(RiderPlan.ends_at)))
    return [p for p in rows.scalars() if p.minutes_used < p.minutes_total]


async def buy(
    session: AsyncSession, rider_id: int, name: str, settings: Settings, now: datetime,
    key: str, *, port_id: int | None = None,
) -> RiderPlan:
    """Pay a plan from the wallet (a ledger `charge` entry keyed by `key`) and start it."""
    spec = settings.billing.plans.get(name)
    if spec is None:
        raise UnknownPlan(plan=name)
    entry = await wallet.post(session, rider_id, "charge", -spec.price_fen, f"plan:{key}",
                              memo=f"plan {name}")
    existing = (await session.execute(select(RiderPlan).where(
        col(RiderPlan.rider_id) == rider_id, col(RiderPlan.created_at) == entry.created_at,
        col(RiderPlan.plan) == name))).scalars().first()
    if existing is not None:
        return existing
    plan = RiderPlan(
        rider_id=rider_id, plan=name, minutes_total=spec.minutes, price_fen=spec.price_fen,
        starts_at=now, ends_at=now + timedelta(days=spec.days),
        port_id=port_id if spec.dedicated_port else None, created_at=entry.created_at,
    )
    session.add(plan)
    await session.flush()
    return plan


async def cover(session: AsyncSession, rider_id: int, billable_minutes: int,
                now: datetime) -> tuple[int, list[int]]:
    """Take up to `billable_minutes` from the rider's plans: (minutes covered, plan ids)."""
    left = billable_minutes
    used: list[int] = []
    for plan in await active(session, rider_id, now):
        if left <= 0:
            break
        take = min(left, plan.minutes_total - plan.minutes_used)
        plan.minutes_used += take
        left -= take
        used.append(saved_id(plan))
    return billable_minutes - left, used


async def reserved_for(session: AsyncSession, port_id: int, now: datetime) -> int | None:
    """The courier a port is held for by an active plan, if any."""
    return await session.scalar(
        select(col(RiderPlan.rider_id)).where(col(RiderPlan.port_id) == port_id,
                                              col(RiderPlan.starts_at) <= now,
                                              col(RiderPlan.ends_at) > now)
        .limit(1))
