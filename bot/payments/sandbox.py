"""The demo's sandbox payment: a Payment that is paid the moment it is created, no real money.

It goes through the same `create_payment` → `confirm` path as the real providers, so the
ledger entries, the top-up bonus and the replay rules are the ones riders get in production.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from core.billing import payments
from core.billing.payments import Payment
from core.config import Settings


def out_trade_no_for(key: str) -> str:
    """The order number a sandbox key always maps to: the database's unique index on it is
    what makes two racing presses of the same button create one payment."""
    return "SB" + hashlib.sha256(f"sandbox:{key}".encode()).hexdigest()[:30].upper()


async def sandbox_topup(
    session: AsyncSession, rider_id: int, amount_fen: int, key: str, settings: Settings,
    now: datetime,
) -> tuple[Payment, bool]:
    """Top up `amount_fen` at once: (payment, True) the first time, (payment, False) when a
    payment for `key` already exists (nothing more is credited).

    `key` must be unique across riders (the wallet card uses "{rider}:{nonce}:{amount}").
    """
    out_trade_no = out_trade_no_for(key)
    existing = await payments.find(session, out_trade_no)
    if existing is not None:  # created and confirmed together, so it is already paid
        return existing, False
    payment = await payments.create_payment(session, rider_id, "sandbox", amount_fen, now=now)
    payment.out_trade_no = out_trade_no
    payment.details = {"key": key}
    await session.flush()
    return await payments.confirm(session, out_trade_no, amount_fen, f"sandbox-{key}", settings,
                                  now)
