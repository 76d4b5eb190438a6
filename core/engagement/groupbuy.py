"""Group-buys: N riders each pay a discounted price into a hold; a full group gets the top-up.

The money is three ledger entries per member, each with its own idempotency key:
`groupbuy_hold` (−price, when joining), then either `groupbuy_topup` (+top-up, the deal filled)
or `groupbuy_refund` (+price, the deal expired). A filled deal nets each member the discount; an
expired one nets zero. The deal's `joined` counter is raised by a conditional UPDATE, so on both
databases exactly one join completes a deal and no join lands after it filled or expired.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Column, CursorResult, Index, String, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import AutoString, Field, SQLModel, col

from core import outbox
from core.billing import wallet
from core.db import saved_id, utcnow
from core.errors import DomainError, InsufficientBalance
from core.notices.engagement import GroupBuyExpiredNotice, GroupBuyFilledNotice


class DealState(StrEnum):
    """open → filled (the last seat taken, everyone topped up) or expired (holds refunded)."""

    open = "open"
    filled = "filled"
    expired = "expired"


DEAL_STATES = (DealState.open, DealState.filled, DealState.expired)
# No 0/O, 1/I: codes are read aloud and typed on phones (WeChat riders join by code).
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CODE_LENGTH = 6

HOLD, TOPUP, REFUND = "groupbuy_hold", "groupbuy_topup", "groupbuy_refund"
FILLED_NOTICE, EXPIRED_NOTICE = GroupBuyFilledNotice.kind, GroupBuyExpiredNotice.kind


@dataclass(frozen=True)
class DealTerms:
    """What a deal offers: `size` riders each pay `price_fen` and get `topup_fen`."""

    size: int = 3
    topup_fen: int = 5000
    percent_off: int = 10
    hours: int = 24

    @property
    def price_fen(self) -> int:
        return self.topup_fen - (self.topup_fen * self.percent_off + 50) // 100

    def check(self) -> None:
        if not 2 <= self.size <= 50:
            raise ValueError("a group has 2 to 50 riders")
        if not 1 <= self.percent_off <= 50:
            raise ValueError("the discount is 1 to 50 percent")
        if self.topup_fen <= 0 or not 1 <= self.hours <= 24 * 7:
            raise ValueError("a deal needs a positive top-up and lasts 1 hour to 7 days")


class GroupDeal(SQLModel, table=True):
    __tablename__ = "group_deals"
    __table_args__ = (
        Index("ix_group_deals_state_expires", "state", "expires_at"),
        Index("ix_group_deals_chat", "platform", "chat_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(sa_column=Column(String(12), unique=True, nullable=False))
    # The chat the deal was posted in (a Telegram rider group); None for a share-code-only deal.
    platform: str | None = Field(default=None, max_length=16)
    chat_id: str | None = Field(default=None, max_length=128)
    creator_rider_id: int = Field(foreign_key="riders.id", index=True)
    size: int
    topup_fen: int
    price_fen: int
    percent_off: int
    joined: int = 0  # raised only by the conditional UPDATE in `join`
    state: DealState = Field(default=DealState.open, sa_type=AutoString(8))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    filled_at: datetime | None = None
    expired_at: datetime | None = None


class GroupDealMember(SQLModel, table=True):
    __tablename__ = "group_deal_members"
    __table_args__ = (UniqueConstraint("deal_id", "rider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    deal_id: int = Field(foreign_key="group_deals.id", index=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    joined_at: datetime = Field(default_factory=utcnow)


class UnknownDeal(DomainError):
    key = "error.groupbuy_unknown"


class AlreadyJoined(DomainError):
    key = "error.groupbuy_already_joined"


class DealClosed(DomainError):
    """The deal filled, expired or has no seat left; `state` says which."""

    key = "error.groupbuy_closed"

    def __init__(self, deal: GroupDeal, state: DealState) -> None:
        super().__init__(deal_id=deal.id, state=state)
        self.deal = deal
        self.state = state  # filled | expired


class NotEnoughForDeal(DomainError):
    key = "error.groupbuy_short"

    def __init__(self, deal: GroupDeal, balance_fen: int) -> None:
        super().__init__(price_fen=deal.price_fen, balance_fen=balance_fen)
        self.deal = deal
        self.balance_fen = balance_fen
        self.short_fen = deal.price_fen - balance_fen


@dataclass(frozen=True)
class Joined:
    deal: GroupDeal
    member: GroupDealMember
    filled: bool  # this join completed the deal (and everyone was topped up)


def _key(deal_id: int, rider_id: int, what: str) -> str:
    return f"gb:{deal_id}:{rider_id}:{what}"


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


async def open_deal_in_chat(session: AsyncSession, platform: str, chat_id: str,
                            now: datetime) -> GroupDeal | None:
    return (await session.execute(
        select(GroupDeal).where(col(GroupDeal.platform) == platform,
                                col(GroupDeal.chat_id) == chat_id,
                                col(GroupDeal.state) == DealState.open,
                                col(GroupDeal.expires_at) > now)
        .order_by(col(GroupDeal.id).desc()))).scalars().first()


async def create(
    session: AsyncSession, creator_rider_id: int, now: datetime, terms: DealTerms | None = None,
    *, platform: str | None = None, chat_id: str | None = None,
) -> GroupDeal:
    """A new open deal; in a chat that already has an open deal, that deal (one card per chat)."""
    terms = terms or DealTerms()
    terms.check()
    if platform and chat_id and (
            found := await open_deal_in_chat(session, platform, chat_id, now)) is not None:
        return found
    for _ in range(5):
        deal = GroupDeal(
            code=new_code(), platform=platform, chat_id=chat_id,
            creator_rider_id=creator_rider_id, size=terms.size, topup_fen=terms.topup_fen,
            price_fen=terms.price_fen, percent_off=terms.percent_off, created_at=now,
            expires_at=now + timedelta(hours=terms.hours),
        )
        try:
            async with session.begin_nested():
                session.add(deal)
        except IntegrityError:  # ~1e9 codes: a clash is rare, and only the code is retried
            continue
        return deal
    raise RuntimeError("could not draw a free group-buy code")


async def find(session: AsyncSession, ref: int | str) -> GroupDeal:
    """A deal by id (buttons) or by share code (typed). A typed ref is always a code: one
    code in 4,096 is all digits ("234567"), and it must not be taken for an id."""
    if isinstance(ref, int):
        deal = await session.get(GroupDeal, ref)
    else:
        deal = (await session.execute(
            select(GroupDeal).where(col(GroupDeal.code) == normalise_code(ref))
        )).scalars().first()
    if deal is None:
        raise UnknownDeal(ref=str(ref))
    return deal


def closed_state(deal: GroupDeal, now: datetime) -> DealState | None:
    """Why nobody can join any more (filled | expired), or None while it is open."""
    if deal.state != DealState.open:
        return deal.state
    if deal.expires_at <= now:
        return DealState.expired
    if deal.joined >= deal.size:
        return DealState.filled
    return None


async def join(session: AsyncSession, deal_ref: int | str, rider_id: int,
               now: datetime) -> Joined:
    """Pay the deal's price into a hold; the N-th join fills the deal and tops everyone up.

    Everything happens in one savepoint, so a refusal (already in, closed, wallet short) moves
    no money and leaves no membership behind.
    """
    deal = await find(session, deal_ref)
    deal_id = saved_id(deal)
    if (await member(session, deal_id, rider_id)) is not None:
        raise AlreadyJoined(deal_id=deal_id)
    if (state := closed_state(deal, now)) is not None:
        raise DealClosed(deal, state)
    try:
        async with session.begin_nested():
            m = GroupDealMember(deal_id=deal_id, rider_id=rider_id, joined_at=now)
            session.add(m)
            await session.flush()
            # The seat is taken in the database: concurrent joins queue on this row, and the
            # one that reaches `size` is the only one that sees joined == size.
            seat = (await session.execute(
                update(GroupDeal)
                .where(col(GroupDeal.id) == deal_id, col(GroupDeal.state) == DealState.open,
                       col(GroupDeal.joined) < col(GroupDeal.size),
                       col(GroupDeal.expires_at) > now)
                .values(joined=col(GroupDeal.joined) + 1)
                .returning(col(GroupDeal.joined))
                .execution_options(synchronize_session=False))).scalar()
            if seat is None:
                raise _Closed
            await wallet.post(session, rider_id, HOLD, -deal.price_fen,
                              _key(deal_id, rider_id, "hold"), memo=f"group-buy {deal.code}")
            filled = seat >= deal.size and await _fill(session, deal, now)
    except IntegrityError:
        # The same rider pressed Join twice at once: the unique (deal, rider) decided.
        raise AlreadyJoined(deal_id=deal_id) from None
    except _Closed:
        await session.refresh(deal)
        raise DealClosed(deal, closed_state(deal, now) or DealState.filled) from None
    except InsufficientBalance:
        raise NotEnoughForDeal(deal, await wallet.balance(session, rider_id)) from None
    await session.refresh(deal)
    return Joined(deal, m, filled)


class _Closed(Exception):
    pass


async def _fill(session: AsyncSession, deal: GroupDeal, now: datetime) -> bool:
    deal_id = saved_id(deal)
    # An UPDATE's result is a CursorResult (SQLAlchemy's stubs say only Result): it has rowcount.
    claimed = cast(CursorResult[Any], await session.execute(
        update(GroupDeal).where(col(GroupDeal.id) == deal_id,
                                col(GroupDeal.state) == DealState.open)
        .values(state=DealState.filled, filled_at=now)
        .execution_options(synchronize_session=False)))
    if claimed.rowcount != 1:
        return False
    for rider_id in await member_ids(session, deal_id):
        entry = await wallet.post(session, rider_id, TOPUP, deal.topup_fen,
                                  _key(deal_id, rider_id, "topup"), memo=f"group-buy {deal.code}")
        await outbox.enqueue(session, rider_id,
                             GroupBuyFilledNotice(**notice_payload(deal),
                                                  balance_fen=entry.balance_after_fen),
                             _key(deal_id, rider_id, "filled"), now=now)
    return True


async def expire(session: AsyncSession, now: datetime) -> list[int]:
    """The scheduler's sweep: deals past their time without a full group give every hold back.

    Safe to run any number of times and alongside joins: each deal is claimed by a conditional
    UPDATE and every refund has its own key. Returns the ids of the deals it expired.
    """
    due = [i for i in (await session.execute(
        select(col(GroupDeal.id)).where(col(GroupDeal.state) == DealState.open,
                                        col(GroupDeal.expires_at) <= now)
        .order_by(col(GroupDeal.id)))).scalars() if i is not None]  # a stored row has its id
    done: list[int] = []
    for deal_id in due:
        claimed = cast(CursorResult[Any], await session.execute(
            update(GroupDeal).where(col(GroupDeal.id) == deal_id,
                                    col(GroupDeal.state) == DealState.open,
                                    col(GroupDeal.expires_at) <= now)
            .values(state=DealState.expired, expired_at=now)
            .execution_options(synchronize_session=False)))
        if claimed.rowcount != 1:
            continue
        deal = await session.get(GroupDeal, deal_id, populate_existing=True)
        assert deal is not None
        for rider_id in await member_ids(session, deal_id):
            hold = await wallet.find_entry(session, _key(deal_id, rider_id, "hold"))
            if hold is None:
                continue
            entry = await wallet.post(session, rider_id, REFUND, -hold.amount_fen,
                                      _key(deal_id, rider_id, "refund"),
                                      memo=f"group-buy {deal.code} expired")
            await outbox.enqueue(session, rider_id,
                                 GroupBuyExpiredNotice(**notice_payload(deal),
                                                       balance_fen=entry.balance_after_fen),
                                 _key(deal_id, rider_id, "expired"), now=now)
        done.append(deal_id)
    return done


async def member(session: AsyncSession, deal_id: int, rider_id: int) -> GroupDealMember | None:
    return (await session.execute(
        select(GroupDealMember).where(col(GroupDealMember.deal_id) == deal_id,
                                      col(GroupDealMember.rider_id) == rider_id)
    )).scalars().first()


async def member_ids(session: AsyncSession, deal_id: int) -> list[int]:
    return list((await session.execute(
        select(col(GroupDealMember.rider_id)).where(col(GroupDealMember.deal_id) == deal_id)
        .order_by(col(GroupDealMember.id)))).scalars())


def notice_payload(deal: GroupDeal) -> dict[str, Any]:
    return {"deal_id": deal.id, "code": deal.code, "size": deal.size,
            "topup_fen": deal.topup_fen, "price_fen": deal.price_fen,
            "percent_off": deal.percent_off}


def card_payload(deal: GroupDeal) -> dict[str, Any]:
    """What a deal card shows (kept JSON-ready so a group post can be re-rendered later)."""
    return {**notice_payload(deal), "joined": deal.joined, "state": deal.state,
            "expires_at": deal.expires_at.isoformat()}
