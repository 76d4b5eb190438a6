"""Riders, their chat identities and link codes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from core.db import utcnow

PLATFORMS = ("telegram", "wechat", "webchat")


LANGUAGES = ("zh_CN", "en")


DEFAULT_LANGUAGE = "zh_CN"


class Rider(SQLModel, table=True):
    __tablename__ = "riders"

    id: int | None = Field(default=None, primary_key=True)
    display_name: str = ""
    language: str = DEFAULT_LANGUAGE
    # Cached sum of the ledger; only ever changed in the same statement batch as an entry.
    balance_fen: int = 0
    last_platform: str | None = None
    # 自动续费: top up `auto_topup_fen` when the balance falls below `auto_topup_below_fen`.
    auto_topup_fen: int = 0
    auto_topup_below_fen: int = 0
    offpeak_reminders: bool = False  # opted in to "charge after 22:00, it's cheaper"
    created_at: datetime = Field(default_factory=utcnow)


class Identity(SQLModel, table=True):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("platform", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    platform: str = Field(max_length=16)
    external_id: str = Field(max_length=128)
    chat_id: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    # When the rider last wrote to us here: WeChat allows free-form replies for 48 h after it.
    last_inbound_at: datetime | None = None


class LinkCode(SQLModel, table=True):
    """A one-time code that joins a rider's identities on two platforms into one rider."""

    __tablename__ = "link_codes"

    code: str = Field(primary_key=True, max_length=12)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    expires_at: datetime
    used_at: datetime | None = None
