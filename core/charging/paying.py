"""Paying a bill that ended: from the family wallet or the rider's, auto top-up first (post-pay)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core import outbox
from core.billing import family, payments, wallet
from core.charging.queries import due_charges, owed_fen
from core.charging.tables import Charge, ChargeState
from core.config import Settings
from core.errors import InsufficientBalance
from core.notices.billing import AutoTopUpNotice
from core.riders.tables import Rider


async def settle(
    session: AsyncSession, charge: Charge, now: datetime, settings: Settings | None = None,
) -> bool:
    """Pay an ended charge if its payer can; otherwise it stays due.

    The payer is the rider's family wallet while the member's monthly limit allows, else the
    rider. The gross charge is one ledger entry; the automatic refund and each coupon are their
    own entries, all in one savepoint so a wallet that cannot pay moves nothing.
    """
    if charge.state != ChargeState.ended:
        return charge.state == ChargeState.settled
    owed = charge.amount_fen - charge.paid_fen
    if owed > 0:
        b = charge.bill or {}
        gross = int(b.get("gross_fen", charge.amount_fen)) - int(b.get("plan_fen", 0))
        payer = await family.family_payer(session, charge.rider_id, owed, now) or charge.rider_id
        if not await _debit(session, charge, payer, gross, b):
            if payer != charge.rider_id:
                payer = charge.rider_id
                if await _debit(session, charge, payer, gross, b):
                    return _settled(charge, payer, now)
            if settings is None or not await auto_topup(session, charge.rider_id, owed,
                                                       settings, now, f"c{charge.id}"):
                return False
            if not await _debit(session, charge, charge.rider_id, gross, b):
                return False
            payer = charge.rider_id
        return _settled(charge, payer, now)
    return _settled(charge, charge.payer_rider_id or charge.rider_id, now)


def _settled(charge: Charge, payer: int, now: datetime) -> bool:
    charge.paid_fen = charge.amount_fen
    charge.payer_rider_id = payer
    charge.state = ChargeState.settled
    charge.settled_at = now
    return True


async def _debit(session: AsyncSession, charge: Charge, payer: int, gross: int,
                 b: dict[str, Any]) -> bool:
    if not b.get("refund_fen") and not b.get("coupon_fen"):
        # A single conditional debit is all-or-nothing by itself: no savepoint needed.
        if gross <= 0:
            return True
        try:
            await wallet.post(session, payer, "charge", -gross, f"charge:{charge.id}",
                              charge_id=charge.id, memo=charge.port_code)
        except InsufficientBalance:
            return False
        return True
    try:
        async with session.begin_nested():
            if b.get("refund_fen"):
                await wallet.post(session, payer, "refund", int(b["refund_fen"]),
                                  f"refund:{charge.id}:auto", charge_id=charge.id,
                                  memo=f"port fault at {charge.port_code}")
            if b.get("coupon_fen"):
                await wallet.post(session, payer, "coupon", int(b["coupon_fen"]),
                                  f"coupon:{charge.id}", charge_id=charge.id,
                                  memo=",".join(str(i) for i in b.get("coupon_ids", [])))
            if gross > 0:
                await wallet.post(session, payer, "charge", -gross, f"charge:{charge.id}",
                                  charge_id=charge.id, memo=charge.port_code)
    except InsufficientBalance:
        return False
    return True


def auto_topup_available(settings: Settings) -> bool:
    """Whether a provider here can take money with nobody present. Only the demo's sandbox can:
    Telegram Payments needs the rider at an invoice, and WeChat Pay's 委托代扣 (papay) contract
    is not built, so production offers no auto top-up rather than one that never pays."""
    return "sandbox" in settings.payments.providers


AUTO_TOPUP_BELOW_FEN = 500  # 自动续费 kicks in when the balance falls below ¥5


def set_auto_topup(rider: Rider, amount_fen: int, settings: Settings) -> bool:
    """Auto top-up off (0), or on at one of the offered amounts where a provider can take money
    with nobody present; False, changing nothing, for anything else."""
    if amount_fen == 0:
        rider.auto_topup_fen = rider.auto_topup_below_fen = 0
        return True
    if (amount_fen not in settings.billing.auto_topup_choices_fen
            or not auto_topup_available(settings)):
        return False
    rider.auto_topup_fen, rider.auto_topup_below_fen = amount_fen, AUTO_TOPUP_BELOW_FEN
    return True


async def auto_topup(session: AsyncSession, rider_id: int, needed_fen: int, settings: Settings,
                     now: datetime, key: str) -> bool:
    """自动续费: a rider who opted in is topped up by their chosen amount (or what the bill
    needs, if more) before a bill would stay due."""
    rider = await session.get(Rider, rider_id)
    if rider is None or rider.auto_topup_fen <= 0 or not auto_topup_available(settings):
        return False
    short = needed_fen - rider.balance_fen
    amount = max(rider.auto_topup_fen, short)
    payment = await payments.find(session, f"AUTO-{rider_id}-{key}")
    if payment is None:
        payment = payments.Payment(
            rider_id=rider_id, provider="sandbox", out_trade_no=f"AUTO-{rider_id}-{key}",
            amount_fen=amount, purpose="auto_topup", created_at=now)
        session.add(payment)
        await session.flush()
    _, first = await payments.confirm(session, payment.out_trade_no, payment.amount_fen,
                                      f"sandbox-auto-{key}", settings, now)
    if first:
        await outbox.enqueue(session, rider_id,
                             AutoTopUpNotice(amount_fen=payment.amount_fen,
                                             balance_fen=await wallet.balance(session, rider_id)),
                             f"auto_topup:{payment.out_trade_no}", now=now)
    return True


async def pay_due(session: AsyncSession, rider_id: int, now: datetime,
                  settings: Settings | None = None) -> tuple[int, int]:
    """Pay what the wallet can of the rider's due bills, oldest first: (paid count, still due)."""
    paid = 0
    for charge in await due_charges(session, rider_id):
        if await settle(session, charge, now, settings):
            paid += 1
    return paid, await owed_fen(session, rider_id)
