"""Payments into the wallet: one row per attempt, credited once whatever the provider repeats."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import JSON, Column, CursorResult, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import AutoString, Field, SQLModel, col

from core.billing import wallet
from core.config import Settings
from core.db import utcnow
from core.engagement import vouchers

OFFER_TTL = timedelta(hours=24)

PROVIDERS = ("sandbox", "telegram", "wechatpay")


class PaymentState(StrEnum):
    """created → paid | failed | closed"""

    created = "created"
    paid = "paid"
    failed = "failed"
    closed = "closed"


class Payment(SQLModel, table=True):
    __tablename__ = "payments"

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    provider: str = Field(max_length=16)
    # Our idempotency key, sent to the provider as its order number (out_trade_no, payload).
    out_trade_no: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    amount_fen: int
    bonus_fen: int = 0
    purpose: str = "topup"  # topup | auto_topup
    state: PaymentState = Field(default=PaymentState.created, sa_type=AutoString)  # text
    provider_txn_id: str | None = Field(default=None, sa_column=Column(String(128), unique=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    paid_at: datetime | None = None


def bonus_for(settings: Settings, amount_fen: int) -> int:
    """The best top-up bonus rule the amount reaches (e.g. pay ¥100 get ¥20)."""
    rules = sorted(settings.billing.topup_bonuses, key=lambda r: r.min_fen, reverse=True)
    return next((r.bonus_fen for r in rules if amount_fen >= r.min_fen), 0)


async def create_payment(
    session: AsyncSession, rider_id: int, provider: str, amount_fen: int, *,
    purpose: str = "topup", now: datetime,
) -> Payment:
    if provider not in PROVIDERS:
        raise ValueError(provider)
    if amount_fen <= 0:
        raise ValueError("amount must be positive")
    payment = Payment(
        rider_id=rider_id, provider=provider, amount_fen=amount_fen, purpose=purpose,
        out_trade_no=f"CB{now:%Y%m%d}{secrets.token_hex(8).upper()}", created_at=now,
    )
    session.add(payment)
    await session.flush()
    return payment


def could_be_ours(out_trade_no: str) -> bool:
    """Our order numbers are short printable ASCII; anything else is unknown without asking
    the database (PostgreSQL refuses a NUL in a query, every driver a lone surrogate)."""
    return len(out_trade_no) <= 64 and out_trade_no.isascii() and out_trade_no.isprintable()


async def find(session: AsyncSession, out_trade_no: str) -> Payment | None:
    return (await session.execute(
        select(Payment).where(col(Payment.out_trade_no) == out_trade_no))).scalars().first()


class PaymentMismatch(Exception):
    """The provider confirmed an amount other than the one we asked for."""


async def confirm(
    session: AsyncSession, out_trade_no: str, amount_fen: int, provider_txn_id: str,
    settings: Settings, now: datetime,
) -> tuple[Payment, bool]:
    """Credit a paid order once: (payment, True) the first time, (payment, False) on a replay.

    The money and any bonus are ledger entries keyed by the order number, so even two
    notifications racing each other credit once.
    """
    payment = await find(session, out_trade_no)
    if payment is None:
        raise KeyError(out_trade_no)
    if payment.state == PaymentState.paid:
        return payment, False
    if amount_fen != payment.amount_fen:
        raise PaymentMismatch(f"{out_trade_no}: asked {payment.amount_fen}, paid {amount_fen}")
    payment.state = PaymentState.paid
    payment.paid_at = now
    payment.provider_txn_id = provider_txn_id[:128]
    await wallet.post(session, payment.rider_id, "topup", payment.amount_fen,
                      f"pay:{out_trade_no}", memo=payment.provider)
    bonus = bonus_for(settings, payment.amount_fen)
    if bonus:
        payment.bonus_fen = bonus
        await wallet.post(session, payment.rider_id, "bonus", bonus, f"bonus:{out_trade_no}",
                          memo=f"top-up bonus for {payment.amount_fen}")
    if payment.purpose == "topup":
        # Partner offers for top-ups ("≥ ¥50 at a community site → a property-service voucher").
        await vouchers.on_topup(session, payment.rider_id, payment.amount_fen,
                                await vouchers.home_site_kind(session, payment.rider_id), now,
                                topup_ref=out_trade_no)
    return payment, True


class TopupOffer(SQLModel, table=True):
    """A top-up card shown to one rider: its buttons carry `nonce`, and one of them is paid once.

    The server issues the nonce and keeps it, so a client cannot mint its own (each new nonce
    used to be a new payment) and a card pressed twice, or from two devices, pays once.
    """

    __tablename__ = "topup_offers"

    nonce: str = Field(sa_column=Column(String(16), primary_key=True))
    rider_id: int = Field(foreign_key="riders.id", index=True)
    issued_at: datetime = Field(default_factory=utcnow)
    used_at: datetime | None = None
    amount_fen: int | None = None


async def issue_offer(session: AsyncSession, rider_id: int, now: datetime) -> str:
    nonce = secrets.token_hex(6)  # 48 bits, guessable by nobody: it is checked against the row
    session.add(TopupOffer(nonce=nonce, rider_id=rider_id, issued_at=now))
    await session.flush()
    return nonce


async def take_offer(session: AsyncSession, rider_id: int, nonce: str, amount_fen: int,
                     now: datetime) -> str:
    """Use the rider's offer for `amount_fen`: "ok" once; then "used"; "unknown" for a nonce
    that is not this rider's or has expired (a fresh card is needed)."""
    if not (nonce.isascii() and nonce.isalnum() and len(nonce) <= 16):
        return "unknown"
    took = await session.execute(
        update(TopupOffer)
        .where(col(TopupOffer.nonce) == nonce, col(TopupOffer.rider_id) == rider_id,
               col(TopupOffer.used_at).is_(None), col(TopupOffer.issued_at) > now - OFFER_TTL)
        .values(used_at=now, amount_fen=amount_fen))
    if cast(CursorResult[Any], took).rowcount:
        return "ok"
    offer = await session.get(TopupOffer, nonce)
    if offer is not None and offer.rider_id == rider_id and offer.used_at is not None:
        return "used"
    return "unknown"
