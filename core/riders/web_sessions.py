"""Who is behind a web-chat browser: identities the server issues, and staff who logged in.

A browser's web-chat identity is a random id the server gives it (in a signed cookie, see
`bot.skins.webchat_auth`); what a browser says about itself is never an
identity. New ids are counted
per client address (`webchat_clients`), so one address cannot make identities without end.

Staff act in the web chat only through a **session**: a random token (kept hashed) that a
one-time login link or a password turned into a row of `web_sessions`, ending at its expiry or
at logout. While it lasts, the browser speaks as the staff member's own rider, through the
web-chat identity `staff:<rider id>` (ids the server issues never hold a colon), so their
roles apply; their notices come to the web chat while they use it there, and go back to the
chat they logged in from (`platform`) once the session is over.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Index, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow
from core.riders.tables import Identity, Rider

LINK_TTL = timedelta(minutes=10)
NEW_IDENTITY_WINDOW = timedelta(hours=1)
STAFF_PREFIX = "staff:"


class WebchatClient(SQLModel, table=True):
    """One web-chat identity issued to a client address (the id itself is not kept here)."""

    __tablename__ = "webchat_clients"
    __table_args__ = (Index("ix_webchat_clients_address", "address", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class WebLoginLink(SQLModel, table=True):
    """A one-time login link a staff member asked for in their Telegram or WeChat chat."""

    __tablename__ = "web_login_links"

    token_hash: str = Field(primary_key=True, max_length=64)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    platform: str = Field(max_length=16)  # where it was asked for: the session's home chat
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class WebSession(SQLModel, table=True):
    """A staff member logged in to the web chat, until `expires_at` or logout (`ended_at`)."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_token", "token_hash", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    platform: str = Field(max_length=16)  # their own chat, where notices go once it is over
    via: str = Field(max_length=16)  # link | password
    address: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    ended_at: datetime | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def staff_identity(rider_id: int) -> str:
    return f"{STAFF_PREFIX}{rider_id}"


def staff_rider_of(external_id: str) -> int | None:
    """The rider a `staff:<id>` web-chat identity speaks for; None for any other identity."""
    if not external_id.startswith(STAFF_PREFIX):
        return None
    tail = external_id[len(STAFF_PREFIX):]
    return int(tail) if tail.isascii() and tail.isdigit() and len(tail) <= 10 else None


# --- new identities per address ---------------------------------------------------------------


async def identities_issued(session: AsyncSession, address: str, now: datetime) -> int:
    return int(await session.scalar(select(func.count()).select_from(WebchatClient).where(
        col(WebchatClient.address) == address,
        col(WebchatClient.created_at) > now - NEW_IDENTITY_WINDOW)) or 0)


async def issue_identity(session: AsyncSession, address: str, now: datetime, *,
                         per_hour: int) -> timedelta | None:
    """Count a new identity for `address`; None when done, else how long until the address
    may have another. Two workers at the same instant may both let one more through."""
    address = address[:64]
    if await identities_issued(session, address, now) >= per_hour:
        oldest = await session.scalar(select(func.min(col(WebchatClient.created_at))).where(
            col(WebchatClient.address) == address,
            col(WebchatClient.created_at) > now - NEW_IDENTITY_WINDOW))
        return (oldest + NEW_IDENTITY_WINDOW - now) if oldest else NEW_IDENTITY_WINDOW
    # Only the last hour counts: this address's older rows are history nobody reads.
    await session.execute(delete(WebchatClient).where(
        col(WebchatClient.address) == address,
        col(WebchatClient.created_at) <= now - NEW_IDENTITY_WINDOW))
    session.add(WebchatClient(address=address, created_at=now))
    await session.flush()
    return None


# --- login links ------------------------------------------------------------------------------


async def new_login_link(session: AsyncSession, rider_id: int, platform: str,
                         now: datetime) -> str:
    """The token of a login link for this staff member (only its hash is stored)."""
    token = new_token()
    session.add(WebLoginLink(token_hash=token_hash(token), rider_id=rider_id, platform=platform,
                             created_at=now, expires_at=now + LINK_TTL))
    await session.flush()
    return token


async def login_link(session: AsyncSession, token: str, now: datetime) -> WebLoginLink | None:
    """The link behind `token` while it can still be used (unused, unexpired)."""
    if not token or len(token) > 128:
        return None
    link = await session.get(WebLoginLink, token_hash(token))
    if link is None or link.used_at is not None or link.expires_at <= now:
        return None
    return link


async def use_login_link(session: AsyncSession, token: str, now: datetime) -> WebLoginLink | None:
    """Spend the link: the one caller whose update took it gets it, everyone else None."""
    link = await login_link(session, token, now)
    if link is None:
        return None
    took = cast("CursorResult[Any]", await session.execute(update(WebLoginLink).where(
        col(WebLoginLink.token_hash) == link.token_hash, col(WebLoginLink.used_at).is_(None))
        .values(used_at=now)))
    return link if took.rowcount == 1 else None


# --- sessions ---------------------------------------------------------------------------------


async def start(session: AsyncSession, rider_id: int, platform: str, via: str, now: datetime,
                *, hours: float, address: str = "") -> str:
    """A new staff session; returns its token (for the cookie). The web-chat identity the
    session speaks through is made on first use."""
    token = new_token()
    session.add(WebSession(token_hash=token_hash(token), rider_id=rider_id, platform=platform,
                           via=via, address=address[:64], created_at=now,
                           expires_at=now + timedelta(hours=hours)))
    external = staff_identity(rider_id)
    found = await session.scalar(select(col(Identity.id)).where(
        col(Identity.platform) == "webchat", col(Identity.external_id) == external))
    if found is None:
        session.add(Identity(rider_id=rider_id, platform="webchat", external_id=external,
                             chat_id=external))
    # Logged in here: this is where they are looking, so their notices come here too.
    if (rider := await session.get(Rider, rider_id)) is not None:
        rider.last_platform = "webchat"
    await session.flush()
    return token


def live(row: WebSession | None, now: datetime) -> bool:
    return row is not None and row.ended_at is None and row.expires_at > now


async def find(session: AsyncSession, token: str, now: datetime) -> WebSession | None:
    """The live session of a token; None when unknown, logged out or expired."""
    if not token or len(token) > 128:
        return None
    row = await session.scalar(select(WebSession).where(
        col(WebSession.token_hash) == token_hash(token)))
    return row if live(row, now) else None


async def end(session: AsyncSession, token: str, now: datetime) -> WebSession | None:
    """Log out: the session stops working at once, wherever its cookie was copied."""
    row = await find(session, token, now)
    if row is None:
        return None
    row.ended_at = now
    await session.flush()
    await send_home(session, row.rider_id, now)
    return row


async def end_all(session: AsyncSession, rider_id: int, now: datetime) -> int:
    """Every live session of a staff member (from their own chat, or a new password)."""
    took = cast("CursorResult[Any]", await session.execute(update(WebSession).where(
        col(WebSession.rider_id) == rider_id, col(WebSession.ended_at).is_(None),
        col(WebSession.expires_at) > now).values(ended_at=now)))
    await send_home(session, rider_id, now)
    return int(took.rowcount or 0)


async def any_live(session: AsyncSession, rider_id: int, now: datetime) -> bool:
    return (await session.execute(select(col(WebSession.id)).where(
        col(WebSession.rider_id) == rider_id, col(WebSession.ended_at).is_(None),
        col(WebSession.expires_at) > now).limit(1))).first() is not None


async def send_home(session: AsyncSession, rider_id: int, now: datetime) -> bool:
    """No session of this staff member is live: their notices go back to their own chat.
    True when that moved them (the caller should deliver again), False when they were
    elsewhere already or still have a live session."""
    if await any_live(session, rider_id, now):
        return False
    rider = await session.get(Rider, rider_id)
    if rider is None or rider.last_platform != "webchat":
        return False
    home = await session.scalar(select(col(WebSession.platform)).where(
        col(WebSession.rider_id) == rider_id).order_by(col(WebSession.id).desc()).limit(1))
    if home is None:
        return False
    rider.last_platform = home
    return True
