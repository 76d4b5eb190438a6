"""Family wallets: members charge from the owner's balance, within optional monthly limits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, String, UniqueConstraint, func, select
from sqlmodel import Field, SQLModel

from core.db import utcnow


class Family(SQLModel, table=True):
    __tablename__ = "families"

    id: int | None = Field(default=None, primary_key=True)
    owner_rider_id: int = Field(foreign_key="riders.id", unique=True)
    name: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class FamilyMember(SQLModel, table=True):
    __tablename__ = "family_members"
    __table_args__ = (UniqueConstraint("rider_id"),)  # a rider belongs to one family

    id: int | None = Field(default=None, primary_key=True)
    family_id: int = Field(foreign_key="families.id", index=True)
    rider_id: int = Field(foreign_key="riders.id")
    monthly_limit_fen: int = 0  # 0 = no limit
    joined_at: datetime = Field(default_factory=utcnow)


class FamilyInvite(SQLModel, table=True):
    __tablename__ = "family_invites"

    code: str = Field(sa_column=Column(String(12), primary_key=True))
    family_id: int = Field(foreign_key="families.id", index=True)
    monthly_limit_fen: int = 0
    expires_at: datetime
    used_by: int | None = None


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def family_payer(session: Any, rider_id: int, amount_fen: int, now: datetime) -> int | None:
    """The wallet that pays a member's bill: the owner's, while the member's monthly limit
    (0 = none) leaves room for `amount_fen`; None means the rider pays from their own wallet."""
    from core.charging import Charge  # charging imports billing; import here, not at the top

    row = (await session.execute(
        select(FamilyMember, Family).join(Family, Family.id == FamilyMember.family_id)
        .where(FamilyMember.rider_id == rider_id))).first()
    if row is None:
        return None
    member, fam = row
    if member.monthly_limit_fen:
        spent = await session.scalar(
            select(func.coalesce(func.sum(Charge.paid_fen), 0)).where(
                Charge.rider_id == rider_id, Charge.payer_rider_id == fam.owner_rider_id,
                Charge.settled_at >= month_start(now)))
        if int(spent or 0) + amount_fen > member.monthly_limit_fen:
            return None
    return fam.owner_rider_id
