"""What a rider's next message answers, when a flow asked for free text (a technician's note)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel


class ChatPrompt(SQLModel, table=True):
    __tablename__ = "chat_prompts"

    rider_id: int = Field(primary_key=True, foreign_key="riders.id")
    kind: str = Field(max_length=24)
    ref: int = 0
    expires_at: datetime


async def ask(session: AsyncSession, rider_id: int, kind: str, ref: int, now: datetime,
              minutes: int = 30) -> None:
    """One open question per rider: a new one replaces the old."""
    row = await session.get(ChatPrompt, rider_id)
    if row is None:
        row = ChatPrompt(rider_id=rider_id, kind=kind, ref=ref, expires_at=now)
        session.add(row)
    row.kind, row.ref, row.expires_at = kind, ref, now + timedelta(minutes=minutes)
    await session.flush()


async def pending(session: AsyncSession, rider_id: int, now: datetime) -> ChatPrompt | None:
    row = await session.get(ChatPrompt, rider_id)
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(
        tzinfo=now.tzinfo)
    return row if expires > now else None


async def done(session: AsyncSession, rider_id: int) -> None:
    row = await session.get(ChatPrompt, rider_id)
    if row is not None:
        await session.delete(row)
