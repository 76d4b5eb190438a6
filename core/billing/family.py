"""Family wallets: members charge from the owner's balance, within optional monthly limits."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String, UniqueConstraint
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
