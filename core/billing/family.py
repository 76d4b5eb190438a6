"""Family wallets: members charge from the owner's balance, within optional monthly limits."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Column, CursorResult, String, UniqueConstraint, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.charging.queries import due_charges
from core.charging.tables import OPEN_STATES, Charge
from core.db import aware, saved_id, utcnow
from core.errors import DomainError
from core.riders.tables import Rider


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


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def family_payer(session: AsyncSession, rider_id: int, amount_fen: int,
                       now: datetime) -> int | None:
    """The wallet that pays a member's bill: the owner's, while the member's monthly limit
    (0 = none) leaves room for `amount_fen`; None means the rider pays from their own wallet."""
    row = (await session.execute(
        select(FamilyMember, Family).join(Family, col(Family.id) == col(FamilyMember.family_id))
        .where(col(FamilyMember.rider_id) == rider_id))).first()
    if row is None:
        return None
    member, fam = row
    if member.monthly_limit_fen:
        spent = await session.scalar(
            select(func.coalesce(func.sum(col(Charge.paid_fen)), 0)).where(
                col(Charge.rider_id) == rider_id,
                col(Charge.payer_rider_id) == fam.owner_rider_id,
                col(Charge.settled_at) >= month_start(now)))
        if int(spent or 0) + amount_fen > member.monthly_limit_fen:
            return None
    return fam.owner_rider_id


# --- errors: each carries a message key the handlers turn into friendly text --------------------


class FamilyCodeInvalid(DomainError):
    """Unknown, used or expired invite code (or the family behind it can no longer take members)."""

    key = "error.family_code_invalid"


class FamilyOwnCode(DomainError):
    """The owner tried to join their own family."""

    key = "error.family_own_code"


class AlreadyInFamily(DomainError):
    """The rider is already a member of a family, or owns one with members."""

    key = "error.family_already_in"


class FamilyJoinBusy(DomainError):
    """The joiner has an open charge or a due bill: the family must not pay for what came before."""

    key = "error.family_join_busy"


class NotFamilyMember(DomainError):
    """The rider is not a member of this owner's family (or of any family, for `leave`)."""

    key = "error.family_not_member"


# --- operations ---------------------------------------------------------------------------------

INVITE_TTL = timedelta(hours=24)
CODE_DIGITS = 6


async def owned_family(session: AsyncSession, owner_id: int) -> Family | None:
    return (await session.execute(
        select(Family).where(col(Family.owner_rider_id) == owner_id))).scalars().first()


async def membership(session: AsyncSession, rider_id: int) -> tuple[FamilyMember, Family] | None:
    """The rider's family membership and the family, or None."""
    row = (await session.execute(
        select(FamilyMember, Family).join(Family, col(Family.id) == col(FamilyMember.family_id))
        .where(col(FamilyMember.rider_id) == rider_id))).first()
    return None if row is None else (row[0], row[1])


async def _member_count(session: AsyncSession, family_id: int) -> int:
    return int(await session.scalar(
        select(func.count()).select_from(FamilyMember)
        .where(col(FamilyMember.family_id) == family_id))
        or 0)


async def create_family(session: AsyncSession, owner_id: int, name: str = "") -> Family:
    """The owner's family, created on first use; calling it again returns the same family."""
    fam = await owned_family(session, owner_id)
    if fam is not None:
        return fam
    try:
        async with session.begin_nested():
            fam = Family(owner_rider_id=owner_id, name=name[:60])
            session.add(fam)
    except IntegrityError:  # the same owner, concurrently: theirs won, use it
        fam = await owned_family(session, owner_id)
        assert fam is not None
    return fam


async def invite(session: AsyncSession, owner_id: int, monthly_limit_fen: int,
                 now: datetime) -> str:
    """A one-time 6-digit code, valid 24 h, that adds one member with this monthly limit."""
    if monthly_limit_fen < 0:
        raise ValueError("monthly_limit_fen must be >= 0 (0 = no limit)")
    if await membership(session, owner_id) is not None:
        raise AlreadyInFamily(reason="member")  # one family per rider, as member or as payer
    fam = await create_family(session, owner_id)
    for _ in range(20):
        code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
        if await session.get(FamilyInvite, code) is not None:
            continue
        try:
            async with session.begin_nested():
                session.add(FamilyInvite(code=code, family_id=saved_id(fam),
                                         monthly_limit_fen=monthly_limit_fen,
                                         expires_at=now + INVITE_TTL))
        except IntegrityError:  # the same code drawn concurrently: draw again
            continue
        return code
    raise RuntimeError("no free family invite code")  # a million live codes: not a real case


async def join(session: AsyncSession, code: str, rider_id: int, now: datetime) -> FamilyMember:
    """Use an invite: from now on the owner's wallet pays the rider's charges within the limit."""
    code = code.strip()
    if len(code) != CODE_DIGITS or not code.isascii() or not code.isdigit():
        raise FamilyCodeInvalid()
    inv = await session.get(FamilyInvite, code)
    if inv is None or inv.used_by is not None or aware(inv.expires_at) < aware(now):
        raise FamilyCodeInvalid()
    fam = await session.get(Family, inv.family_id)
    if fam is None:
        raise FamilyCodeInvalid()
    if fam.owner_rider_id == rider_id:
        raise FamilyOwnCode()
    if await membership(session, fam.owner_rider_id) is not None:
        raise FamilyCodeInvalid()  # the owner has since joined another family as a member
    if await membership(session, rider_id) is not None:
        raise AlreadyInFamily(reason="member")
    mine = await owned_family(session, rider_id)
    if mine is not None and await _member_count(session, saved_id(mine)) > 0:
        raise AlreadyInFamily(reason="owner")
    open_charge = await session.scalar(select(col(Charge.id)).where(
        col(Charge.rider_id) == rider_id, col(Charge.state).in_(OPEN_STATES)).limit(1))
    if open_charge is not None or await due_charges(session, rider_id):
        raise FamilyJoinBusy()
    member = FamilyMember(family_id=saved_id(fam), rider_id=rider_id,
                          monthly_limit_fen=inv.monthly_limit_fen, joined_at=now)
    try:
        async with session.begin_nested():
            # Claim the code with a conditional UPDATE: of two concurrent joins, one wins.
            claimed = await session.execute(
                update(FamilyInvite).where(col(FamilyInvite.code) == code,
                                           col(FamilyInvite.used_by).is_(None))
                .values(used_by=rider_id))
            if cast(CursorResult[Any], claimed).rowcount != 1:
                raise FamilyCodeInvalid()
            session.add(member)
            await session.flush()
    except IntegrityError as exc:  # joined another family concurrently (one family per rider)
        raise AlreadyInFamily(reason="member") from exc
    return member


async def _member_of(session: AsyncSession, owner_id: int, member_rider_id: int) -> FamilyMember:
    member = (await session.execute(
        select(FamilyMember).join(Family, col(Family.id) == col(FamilyMember.family_id))
        .where(col(Family.owner_rider_id) == owner_id,
               col(FamilyMember.rider_id) == member_rider_id)
    )).scalars().first()
    if member is None:
        raise NotFamilyMember()
    return member


async def set_limit(session: AsyncSession, owner_id: int, member_rider_id: int,
                    limit: int) -> FamilyMember:
    """The member's monthly limit in fen (0 = none); applies to settlements from now on."""
    if limit < 0:
        raise ValueError("limit must be >= 0 (0 = no limit)")
    member = await _member_of(session, owner_id, member_rider_id)
    member.monthly_limit_fen = limit
    await session.flush()
    return member


async def remove(session: AsyncSession, owner_id: int, member_rider_id: int) -> None:
    """The owner removes a member. Charges already paid stay paid; every settlement from now on
    (including a charge running right now) is paid from the member's own wallet."""
    member = await _member_of(session, owner_id, member_rider_id)
    await session.delete(member)
    await session.flush()


async def leave(session: AsyncSession, rider_id: int) -> None:
    """The member leaves; like `remove`, it takes effect for future settlements."""
    found = await membership(session, rider_id)
    if found is None:
        raise NotFamilyMember()
    await session.delete(found[0])
    await session.flush()


async def spent_this_month(session: AsyncSession, rider_ids: list[int], owner_id: int,
                           now: datetime) -> dict[int, int]:
    """What the owner's wallet paid for each member since the month began (as `family_payer`
    counts it against the limit)."""
    if not rider_ids:
        return {}
    rows = await session.execute(
        select(col(Charge.rider_id), func.coalesce(func.sum(col(Charge.paid_fen)), 0))
        .where(col(Charge.rider_id).in_(rider_ids), col(Charge.payer_rider_id) == owner_id,
               col(Charge.settled_at) >= month_start(now))
        .group_by(col(Charge.rider_id)))
    spent = dict.fromkeys(rider_ids, 0)
    for rid, total in rows:
        spent[rid] = int(total or 0)
    return spent


async def spending(session: AsyncSession, owner_id: int,
                   now: datetime) -> list[tuple[int, str, int, int]]:
    """The owner's members in joining order: (rider id, display name, spent this month in fen,
    monthly limit in fen, 0 = none)."""
    rows = (await session.execute(
        select(col(FamilyMember.rider_id), col(Rider.display_name),
               col(FamilyMember.monthly_limit_fen))
        .join(Family, col(Family.id) == col(FamilyMember.family_id))
        .join(Rider, col(Rider.id) == col(FamilyMember.rider_id))
        .where(col(Family.owner_rider_id) == owner_id)
        .order_by(col(FamilyMember.joined_at), col(FamilyMember.id)))).all()
    spent = await spent_this_month(session, [r[0] for r in rows], owner_id, now)
    return [(rid, name or "", spent[rid], limit) for rid, name, limit in rows]
