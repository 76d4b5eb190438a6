"""Billing disputes: answered within 24 h, evident cases refunded at once."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from core.db import utcnow


class Dispute(SQLModel, table=True):
    __tablename__ = "disputes"

    id: int | None = Field(default=None, primary_key=True)
    charge_id: int = Field(foreign_key="charges.id", index=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    reason: str = ""
    state: str = "open"  # open → resolved | escalated → resolved
    due_at: datetime
    resolution: str | None = None
    refund_fen: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    resolved_at: datetime | None = None
