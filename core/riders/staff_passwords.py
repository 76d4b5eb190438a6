"""Staff passwords for the web chat: argon2id hashes, and wrong guesses counted and limited.

A password is set by an operator (`chargebot staff passwd`) for a staff member named by their
chat account, `telegram:<user id>` or `wechat:<openid>`, which is also what they type to log in.
Hashing costs ~0.1 s of CPU on purpose: it runs in a thread, never on the event loop.
Wrong guesses are rows of `login_failures`, counted per account and per client address over 15
minutes, so the limit holds across workers; past it the password is not even checked.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, Index, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow
from core.riders import staff
from core.riders.tables import Identity

PLATFORMS = ("telegram", "wechat")  # where staff have an account of their own
MIN_LENGTH = 10
FAILURE_WINDOW = timedelta(minutes=15)
FAILURES_ALLOWED = 5  # per account and per client address, within the window
_hasher = PasswordHasher()


@functools.cache
def _dummy() -> str:
    """Checked against when the account has no password, so an unknown account costs the same
    time. Made on first use: hashing at import would slow every start-up."""
    return _hasher.hash("not a password anyone has")


class StaffPassword(SQLModel, table=True):
    __tablename__ = "staff_passwords"

    rider_id: int = Field(primary_key=True, foreign_key="riders.id")
    hash: str = Field(max_length=256)
    set_at: datetime = Field(default_factory=utcnow)


class LoginFailure(SQLModel, table=True):
    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_account", "account", "at"),
                      Index("ix_login_failures_address", "address", "at"))

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=160)
    address: str = Field(max_length=64)
    at: datetime = Field(default_factory=utcnow)


class PasswordTooShort(ValueError):
    pass


class TooManyFailures(Exception):
    """Wrong passwords for this account or from this address: wait before trying again."""


def parse_account(account: str) -> tuple[str, str] | None:
    """`telegram:123456789` → ("telegram", "123456789"); None when it is not one."""
    platform, sep, user = account.strip().partition(":")
    if not sep or platform.lower() not in PLATFORMS or not user.strip() or len(user) > 128:
        return None
    return platform.lower(), user.strip()


async def staff_rider(session: AsyncSession, platform: str, user: str) -> int | None:
    """The rider of a chat account, when they have a staff role."""
    rider_id = await session.scalar(select(col(Identity.rider_id)).where(
        col(Identity.platform) == platform, col(Identity.external_id) == user))
    if rider_id is None or not await staff.roles_of(session, rider_id):
        return None
    return int(rider_id)


async def set_password(session: AsyncSession, rider_id: int, password: str,
                       now: datetime) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordTooShort(f"a password needs at least {MIN_LENGTH} characters")
    hashed = await asyncio.to_thread(_hasher.hash, password)
    row = await session.get(StaffPassword, rider_id)
    if row is None:
        session.add(StaffPassword(rider_id=rider_id, hash=hashed, set_at=now))
    else:
        row.hash, row.set_at = hashed, now
    await session.flush()


async def _failures(session: AsyncSession, now: datetime, *where: ColumnElement[bool]) -> int:
    return int(await session.scalar(select(func.count()).select_from(LoginFailure).where(
        col(LoginFailure.at) > now - FAILURE_WINDOW, *where)) or 0)


async def check(session: AsyncSession, account: str, password: str, address: str,
                now: datetime) -> tuple[int, str] | None:
    """(rider id, platform) when the password is right for a staff account; None when the
    account or the password is wrong (counted); TooManyFailures past the limit."""
    key, address = account.strip().lower()[:160], address[:64]
    if (await _failures(session, now, col(LoginFailure.account) == key) >= FAILURES_ALLOWED
            or await _failures(session, now, col(LoginFailure.address) == address)
            >= FAILURES_ALLOWED):
        raise TooManyFailures()
    parsed = parse_account(account)
    rider_id = await staff_rider(session, *parsed) if parsed else None
    row = await session.get(StaffPassword, rider_id) if rider_id is not None else None
    ok = await asyncio.to_thread(_verify, row.hash if row else None, password)
    if not ok or row is None or parsed is None or rider_id is None:
        session.add(LoginFailure(account=key, address=address, at=now))
        await session.flush()
        return None
    if _hasher.check_needs_rehash(row.hash):
        row.hash = await asyncio.to_thread(_hasher.hash, password)
    return rider_id, parsed[0]


def _verify(hashed: str | None, password: str) -> bool:
    try:
        return _hasher.verify(hashed or _dummy(), password)
    except (VerificationError, InvalidHashError):
        return False
