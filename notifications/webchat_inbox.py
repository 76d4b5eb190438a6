"""Messages waiting for a web-chat browser to long-poll them (the web chat's 'push')."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow


class WebchatMessage(SQLModel, table=True):
    __tablename__ = "webchat_messages"
    __table_args__ = (Index("ix_webchat_messages_client", "client_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(max_length=64)
    reply: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


async def push(session: AsyncSession, client_id: str, replies: list[dict[str, Any]]) -> None:
    for reply in replies:
        session.add(WebchatMessage(client_id=client_id, reply=reply))


async def after(session: AsyncSession, client_id: str, seq: int) -> list[WebchatMessage]:
    rows = await session.execute(
        select(WebchatMessage)
        .where(col(WebchatMessage.client_id) == client_id, col(WebchatMessage.id) > seq)
        .order_by(col(WebchatMessage.id))
        .limit(50)
    )
    return list(rows.scalars())
