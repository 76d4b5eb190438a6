"""The wallet is a ledger in fen; the rider's balance is the sum of its entries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, String, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow
from core.errors import InsufficientBalance
from core.riders.tables import Rider

ENTRY_KINDS = (
    "topup", "bonus", "charge", "refund", "coupon", "red_packet", "compensation", "adjustment",
    "groupbuy_hold", "groupbuy_topup", "groupbuy_refund",
)


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entries"

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    kind: str = Field(max_length=16)
    amount_fen: int  # positive credits the rider, negative debits
    balance_after_fen: int
    idempotency_key: str = Field(sa_column=Column(String(128), unique=True, nullable=False))
    charge_id: int | None = Field(default=None, index=True)
    memo: str = ""
    created_at: datetime = Field(default_factory=utcnow)


def yuan(fen: int) -> str:
    """Riders read money as ¥12.34; arithmetic never leaves integer fen."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}¥{fen // 100}.{fen % 100:02d}"


async def find_entry(session: AsyncSession, key: str) -> LedgerEntry | None:
    return (
        await session.execute(select(LedgerEntry).where(col(LedgerEntry.idempotency_key) == key))
    ).scalars().first()


async def post(
    session: AsyncSession, rider_id: int, kind: str, amount_fen: int, key: str, *,
    charge_id: int | None = None, memo: str = "", allow_negative: bool = False,
) -> LedgerEntry:
    """Move money with an idempotency key: a replay returns the first entry and moves nothing.

    Debits are a conditional UPDATE checked by rowcount, so two concurrent debits can never
    take the balance below zero on either database.
    """
    if kind not in ENTRY_KINDS:
        raise ValueError(kind)
    if (found := await find_entry(session, key)) is not None:
        return found
    stmt = update(Rider).where(col(Rider.id) == rider_id)
    if amount_fen < 0 and not allow_negative:
        stmt = stmt.where(col(Rider.balance_fen) >= -amount_fen)
    result = await session.execute(
        stmt.values(balance_fen=col(Rider.balance_fen) + amount_fen)
        .returning(col(Rider.balance_fen))
    )
    row = result.first()
    if row is None:
        raise InsufficientBalance(amount=amount_fen)
    entry = LedgerEntry(
        rider_id=rider_id, kind=kind, amount_fen=amount_fen, balance_after_fen=row[0],
        idempotency_key=key, charge_id=charge_id, memo=memo[:200],
    )
    # A race on the same key fails the unique constraint and the whole transaction with it,
    # so the balance change above is rolled back too.
    session.add(entry)
    await session.flush()
    return entry


async def balance(session: AsyncSession, rider_id: int) -> int:
    value = await session.scalar(select(col(Rider.balance_fen)).where(col(Rider.id) == rider_id))
    return int(value or 0)


async def ledger_sum(session: AsyncSession, rider_id: int) -> int:
    value = await session.scalar(
        select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0)).where(
            col(LedgerEntry.rider_id) == rider_id
        )
    )
    return int(value or 0)


async def history(session: AsyncSession, rider_id: int, limit: int = 10) -> list[LedgerEntry]:
    return list(
        (
            await session.execute(
                select(LedgerEntry)
                .where(col(LedgerEntry.rider_id) == rider_id)
                .order_by(col(LedgerEntry.id).desc())
                .limit(limit)
            )
        ).scalars()
    )
