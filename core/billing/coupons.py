"""Coupons: issued with a reason, expire, and the best one is applied when a bill is settled."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import Column, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow


class Coupon(SQLModel, table=True):
    __tablename__ = "coupons"

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    code: str = Field(sa_column=Column(String(24), unique=True, nullable=False))
    amount_fen: int = 0  # fixed amount off…
    percent_off: int = 0  # …or a share of the bill
    min_spend_fen: int = 0
    stackable: bool = False
    reason: str = ""
    # An idempotency key for the cause (a breach, a verified report): one coupon per cause.
    cause: str | None = Field(default=None, sa_column=Column(String(120), unique=True))
    expires_at: datetime
    used_at: datetime | None = None
    charge_id: int | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)


async def issue(
    session: AsyncSession, rider_id: int, *, amount_fen: int = 0, percent_off: int = 0,
    days: int = 30, min_spend_fen: int = 0, stackable: bool = False, reason: str = "",
    cause: str | None = None, now: datetime,
) -> Coupon:
    if (amount_fen <= 0) == (percent_off <= 0) or not 0 <= percent_off <= 100:
        raise ValueError("a coupon is either an amount or a percentage")
    if cause is not None:
        found = (await session.execute(select(Coupon).where(col(Coupon.cause) == cause))).scalars()
        if (existing := found.first()) is not None:
            return existing
    coupon = Coupon(
        rider_id=rider_id, code=secrets.token_hex(5).upper(), amount_fen=amount_fen,
        percent_off=percent_off, min_spend_fen=min_spend_fen, stackable=stackable,
        reason=reason[:120], cause=cause, expires_at=now + timedelta(days=days), created_at=now,
    )
    session.add(coupon)
    await session.flush()
    return coupon


def discount(coupon: Coupon, amount_fen: int) -> int:
    if amount_fen < coupon.min_spend_fen:
        return 0
    off = coupon.amount_fen or (amount_fen * coupon.percent_off + 50) // 100
    return min(off, amount_fen)


async def usable(session: AsyncSession, rider_id: int, now: datetime) -> list[Coupon]:
    rows = await session.execute(
        select(Coupon).where(col(Coupon.rider_id) == rider_id, col(Coupon.used_at).is_(None),
                             col(Coupon.expires_at) > now)
        .order_by(col(Coupon.expires_at), col(Coupon.id)))
    return list(rows.scalars())


def choose(coupons: list[Coupon], amount_fen: int) -> list[Coupon]:
    """The best single coupon, plus stackable ones while the bill is not covered."""
    ranked = sorted(coupons, key=lambda c: (-discount(c, amount_fen), c.expires_at))
    chosen: list[Coupon] = []
    left = amount_fen
    for c in ranked:
        off = discount(c, left)
        if off <= 0:
            continue
        if chosen and not (c.stackable and all(x.stackable for x in chosen)):
            continue
        chosen.append(c)
        left -= off
        if left <= 0:
            break
    return chosen
