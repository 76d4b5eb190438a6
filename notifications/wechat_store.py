"""WeChat state shared by every worker: the access token, seen deliveries, numbered options."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, String
from sqlmodel import Field, SQLModel

from core.db import utcnow


class WechatToken(SQLModel, table=True):
    """One row per app: every worker reads it; one at a time refreshes it."""

    __tablename__ = "wechat_tokens"

    appid: str = Field(primary_key=True, max_length=64)
    access_token: str | None = Field(default=None, sa_column=Column(String(512)))
    expires_at: datetime | None = None
    refreshing_until: datetime | None = None


class WechatInbound(SQLModel, table=True):
    """Deliveries already taken: WeChat retries a message it got no answer to."""

    __tablename__ = "wechat_inbound"

    key: str = Field(primary_key=True, max_length=160)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ChatOptions(SQLModel, table=True):
    """Where a platform has no inline buttons, the last numbered options shown to a rider."""

    __tablename__ = "chat_options"

    identity_id: int = Field(primary_key=True, foreign_key="identities.id")
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)
