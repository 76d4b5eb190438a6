"""Messages that must reach a rider later, written in the same transaction as their cause."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import AutoString, Field, SQLModel

from core.db import insert_ignore, table_of, utcnow
from core.notices import Notice


class OutboxState(StrEnum):
    """pending → sent | dead"""

    pending = "pending"
    sent = "sent"
    dead = "dead"


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "due_at"),)

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    kind: str = Field(max_length=32)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # One message per cause: replays of the cause (a duplicated device event) add nothing.
    dedupe_key: str = Field(sa_column=Column(String(160), unique=True, nullable=False))
    state: OutboxState = Field(default=OutboxState.pending, sa_type=AutoString)  # text, as before
    attempts: int = 0
    due_at: datetime = Field(default_factory=utcnow)
    lease_until: datetime | None = None
    platform: str | None = None
    channel: str | None = None  # how it went out: e.g. wechat custom message or template
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    last_error: str | None = None


async def enqueue(
    session: AsyncSession, rider_id: int, notice: Notice, dedupe_key: str, *, now: datetime,
    due_at: datetime | None = None,
) -> None:
    """`now` is the service's clock (the notifier compares due_at with that clock, and tests
    move it); the kind is the notice's."""
    dialect = session.get_bind().dialect.name
    await session.execute(
        insert_ignore(dialect, table_of(OutboxMessage)).values(
            rider_id=rider_id, kind=notice.kind, payload=notice.to_payload(),
            dedupe_key=dedupe_key,
            state=OutboxState.pending, attempts=0, due_at=due_at or now, created_at=now,
        )
    )
