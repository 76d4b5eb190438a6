"""One rider across platforms: a one-time code joins a WeChat and a Telegram identity.

The code is the only secret between two chats, so it is long, single use and short-lived; every
try is a row (`link_attempts`), so the limits hold across workers and restarts; and nothing moves
until the code's owner says yes in their own chat. Whoever types the code is the one who asks:
a guessed code reaches its owner as a question they can refuse, never as a merge.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Index, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import AutoString, Field, SQLModel, col

from core import outbox
from core.billing import wallet
from core.charging.queries import due_charges
from core.charging.tables import OPEN_STATES, Charge
from core.db import saved_id, utcnow
from core.errors import DomainError, LinkCodeInvalid, LinkRefused
from core.notices.riders import LinkDoneNotice, LinkRefusedNotice, LinkRequestNotice
from core.outbox import OutboxMessage
from core.riders.tables import Identity, LinkCode, Rider

CODE_TTL = timedelta(minutes=10)
# The owner has as long to answer as the code lived: an unanswered request lapses.
ANSWER_TTL = timedelta(minutes=10)
# Crockford base32 without I, L, O, U: nothing a rider can misread or mistype as another symbol.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 10  # 32**10 ≈ 10**15 codes against at most a few hundred guesses an hour
# What riders misread is read the way they meant it (Crockford's decoding rules).
ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
# Failed tries, counted over the last hour from `link_attempts` rows. Module constants, not
# settings: these are security floors, not knobs (core/config.py belongs to the config owner).
TRIES_WINDOW = timedelta(hours=1)
FAILED_TRIES_PER_IDENTITY = 5
FAILED_TRIES_GLOBAL = 200


class LinkTooManyTries(DomainError):
    """This identity used up its failed tries for the hour: the code is not even looked at."""

    key = "error.link_too_many_tries"


class LinkPaused(DomainError):
    """Too many failed codes across everyone this hour: somebody is guessing, entry pauses."""

    key = "error.link_paused"


class LinkState(StrEnum):
    """pending → confirmed | refused | expired (an ok try; a failed one has no state)"""

    pending = "pending"
    confirmed = "confirmed"
    refused = "refused"
    expired = "expired"


class LinkAttempt(SQLModel, table=True):
    """One code typed into /link. `ok` tries become requests the code's owner answers."""

    __tablename__ = "link_attempts"
    __table_args__ = (
        Index("ix_link_attempts_identity", "platform", "external_id", "at"),
        Index("ix_link_attempts_ok_at", "ok", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=16)
    external_id: str = Field(max_length=128)
    rider_id: int = Field(foreign_key="riders.id")  # who asks (their identities would move)
    at: datetime = Field(default_factory=utcnow)
    ok: bool = False
    code: str | None = Field(default=None, max_length=12)
    owner_id: int | None = Field(default=None, foreign_key="riders.id")
    # pending → confirmed | refused | expired; None for a failed try
    state: LinkState | None = Field(default=None, sa_type=AutoString(16))
    decided_at: datetime | None = None


@dataclass
class LinkRequest:
    """A valid code was entered: its owner was asked (attempt `id`)."""

    id: int
    owner_id: int


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def shown(code: str) -> str:
    """`K7QF-XM3P-2A`: groups of four are easy to read aloud and to copy by eye."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


def normalized(typed: str) -> str:
    """What the rider typed, as stored: case, dashes and spaces do not matter."""
    return "".join(c for c in typed.upper() if c not in "- \t").translate(ALIASES)


async def create_link_code(session: AsyncSession, rider_id: int, now: datetime) -> str:
    """A new code for the rider, as shown to them (grouped)."""
    for _ in range(10):
        code = new_code()
        if await session.get(LinkCode, code) is None:
            session.add(LinkCode(code=code, rider_id=rider_id, expires_at=now + CODE_TTL))
            await session.flush()
            return shown(code)
    raise RuntimeError("no free link code")  # 10 collisions in 32**10: not a real case


async def _failures(session: AsyncSession, since: datetime,
                    *where: ColumnElement[bool]) -> int:
    return int(await session.scalar(select(func.count()).select_from(LinkAttempt).where(
        col(LinkAttempt.ok).is_(False), col(LinkAttempt.at) > since, *where)) or 0)


async def request_link(session: AsyncSession, typed: str, rider: Rider, platform: str,
                       external_id: str, now: datetime) -> LinkRequest:
    """The rider typed a code: once the limits allow a look, a valid code becomes a question to
    its owner (through the outbox) and is spent; nothing of either rider moves yet."""
    since = now - TRIES_WINDOW
    if await _failures(session, since, col(LinkAttempt.platform) == platform,
                       col(LinkAttempt.external_id) == external_id) >= FAILED_TRIES_PER_IDENTITY:
        raise LinkTooManyTries()
    if await _failures(session, since) >= FAILED_TRIES_GLOBAL:
        raise LinkPaused()
    rider_id = saved_id(rider)
    code = normalized(typed)
    link = await session.get(LinkCode, code) if len(code) == CODE_LENGTH else None
    if link is None or link.used_at is not None or link.expires_at < now:
        session.add(LinkAttempt(platform=platform, external_id=external_id,
                                rider_id=rider_id, at=now))
        await session.flush()
        raise LinkCodeInvalid()
    if link.rider_id == rider_id:
        raise LinkRefused(reason="same")
    await _check_mergeable(session, rider_id, link.rider_id)
    link.used_at = now
    attempt = LinkAttempt(platform=platform, external_id=external_id, rider_id=rider_id,
                          at=now, ok=True, code=code, owner_id=link.rider_id,
                          state=LinkState.pending)
    session.add(attempt)
    await session.flush()
    await outbox.enqueue(session, link.rider_id,
                         LinkRequestNotice(attempt_id=attempt.id, platform=platform,
                                           name=rider.display_name or ""),
                         f"link_request:{attempt.id}", now=now)
    return LinkRequest(saved_id(attempt), link.rider_id)


async def _check_mergeable(session: AsyncSession, asker_id: int, owner_id: int) -> None:
    """Linking must not lose anything: two identities on one app, or the asker's open charge or
    due bill (their ledger would be split across two riders)."""
    mine = list((await session.execute(
        select(Identity).where(col(Identity.rider_id) == asker_id))).scalars())
    if not mine:
        raise LinkCodeInvalid()  # the asker was linked elsewhere meanwhile
    theirs = {i.platform for i in (await session.execute(
        select(Identity).where(col(Identity.rider_id) == owner_id))).scalars()}
    if any(i.platform in theirs for i in mine):
        raise LinkRefused(reason="same_platform")
    open_here = await session.scalar(select(col(Charge.id)).where(
        col(Charge.rider_id) == asker_id, col(Charge.state).in_(OPEN_STATES)).limit(1))
    if open_here is not None or await due_charges(session, asker_id):
        raise LinkRefused(reason="busy")


async def answer_link(session: AsyncSession, attempt_id: int, owner: Rider, confirm: bool,
                      now: datetime) -> Rider:
    """The code's owner answers in their own chat. Confirm moves the asker's identities,
    charges, notices and balance to the owner; Refuse (or a late answer) moves nothing. Returns
    the rider who holds the wallet afterwards (the owner). Anyone else's answer is ignored."""
    attempt = await session.get(LinkAttempt, attempt_id)
    if attempt is None or attempt.owner_id != owner.id or not attempt.ok:
        raise LinkCodeInvalid()
    if attempt.state != LinkState.pending:
        raise LinkRefused(reason=attempt.state or "answered")
    # Claimed by a conditional write: two taps (or two workers) decide once.
    expired = attempt.at + ANSWER_TTL < now
    state = (LinkState.expired if expired else LinkState.confirmed if confirm
             else LinkState.refused)
    claimed = cast("CursorResult[Any]", await session.execute(
        update(LinkAttempt).where(col(LinkAttempt.id) == attempt_id,
                                  col(LinkAttempt.state) == LinkState.pending)
        .values(state=state, decided_at=now).execution_options(synchronize_session=False)))
    if claimed.rowcount != 1:
        raise LinkRefused(reason="answered")
    await session.refresh(attempt)
    if expired:
        raise LinkRefused(reason="expired")
    asker = await session.get(Rider, attempt.rider_id)
    if asker is None:
        raise LinkCodeInvalid()
    if not confirm:
        await outbox.enqueue(session, saved_id(asker), LinkRefusedNotice(),
                             f"link_refused:{attempt_id}", now=now)
        return owner
    owner_id = saved_id(owner)
    await _check_mergeable(session, saved_id(asker), owner_id)
    await _merge(session, asker, owner, attempt.code or str(attempt_id))
    balance = await wallet.balance(session, owner_id)
    await outbox.enqueue(session, owner_id, LinkDoneNotice(balance_fen=balance),
                         f"link_done:{attempt_id}", now=now)
    return owner


async def _merge(session: AsyncSession, asker: Rider, owner: Rider, code: str) -> None:
    asker_id, owner_id = saved_id(asker), saved_id(owner)
    balance = await wallet.balance(session, asker_id)
    if balance:
        await wallet.post(session, asker_id, "adjustment", -balance, f"link:{code}:out",
                          memo=f"moved to rider {owner_id}")
        await wallet.post(session, owner_id, "adjustment", balance, f"link:{code}:in",
                          memo=f"moved from rider {asker_id}")
    for table in (Identity, Charge, OutboxMessage):
        await session.execute(update(table).where(col(table.rider_id) == asker_id)
                              .values(rider_id=owner_id))
    # "Linked" goes to the app the asker is waiting in; the owner has their answer already.
    owner.last_platform = asker.last_platform
