"""WeChat Pay orders: the Payment row and the order placed for a top-up, and crediting it once paid.

A ``payments`` row per attempt; its ``out_trade_no`` is the idempotency key sent to WeChat Pay,
and `credit` confirms it once (with the top-up bonus it reaches) whatever WeChat Pay repeats.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from bot.context import Context
from bot.payments.wechatpay.client import WechatPayClient, WechatPayError, client_for
from core import outbox
from core.billing import wallet
from core.billing.payments import Payment, PaymentState, confirm, create_payment, find
from core.charging.paying import pay_due
from core.db import transaction
from core.notices.billing import PaymentNotice


class OrderClosed(Exception):  # noqa: N818 - reads as what it is
    """The order is paid already, or WeChat Pay refused it: there is nothing to pay here."""

    def __init__(self, payment: Payment) -> None:
        super().__init__(f"order {payment.out_trade_no} is {payment.state}")
        self.payment = payment


async def open_payment(ctx: Context, rider_id: int, amount_fen: int, details: dict[str, Any],
                       out_trade_no: str | None = None) -> Payment:
    """The Payment row for a top-up: a new one, or, for a fixed ``out_trade_no`` (a pay link's),
    the one already made for it: a reloaded page or two racing ones share a row."""
    try:
        async with transaction(ctx.sm) as session:
            if out_trade_no is not None and (found := await find(session, out_trade_no)):
                return found
            payment = await create_payment(session, rider_id, "wechatpay", amount_fen,
                                           now=ctx.clock())
            if out_trade_no is not None:
                payment.out_trade_no = out_trade_no
            payment.details = details
            await session.flush()
            return payment
    except IntegrityError:
        if out_trade_no is None:
            raise
    async with ctx.sm() as session:  # the racing request's row, committed before ours
        found = await find(session, out_trade_no)
    if found is None:
        raise RuntimeError(f"order {out_trade_no} neither made nor found")
    return found


async def _note(ctx: Context, out_trade_no: str, *, failed: bool = False,
                **details: Any) -> None:
    async with transaction(ctx.sm) as session:
        payment = (await session.execute(
            select(Payment).where(col(Payment.out_trade_no) == out_trade_no))).scalars().first()
        if payment is None:
            return
        payment.details = {**payment.details, **details}
        if failed and payment.state == PaymentState.created:
            payment.state = PaymentState.failed


async def _place(ctx: Context, out_trade_no: str, call: Any) -> Any:
    try:
        return await call
    except WechatPayError as exc:
        # A clear refusal ends the order; after a timeout or a 5xx it may exist at WeChat, so
        # it stays open (a notification for it still credits the rider either way).
        await _note(ctx, out_trade_no, failed=400 <= exc.status < 500,
                    error={"status": exc.status, "code": exc.code, "message": exc.message[:200]})
        raise


def _client(ctx: Context, client: WechatPayClient | None) -> WechatPayClient:
    client = client or client_for(ctx)
    if client is None:
        raise WechatPayError(0, "NOT_CONFIGURED", "wechatpay is not enabled")
    return client


async def jsapi_order(ctx: Context, payment: Payment, openid: str, *,
                      description: str | None = None, client: WechatPayClient | None = None
                      ) -> str:
    """The order's prepay_id: the one WeChat Pay gave before, else a new JSAPI order for it.

    Placing the same out_trade_no again with the same fields is how WeChat Pay wants a lost
    answer retried (it answers with the same prepay_id). Raises OrderClosed when the order is
    paid or was refused, WechatPayError when WeChat Pay refuses now."""
    client = _client(ctx, client)
    if payment.state != PaymentState.created:
        raise OrderClosed(payment)
    if isinstance(prepay_id := payment.details.get("prepay_id"), str) and prepay_id:
        return prepay_id
    result = await _place(ctx, payment.out_trade_no, client.create_jsapi(
        payment.out_trade_no, payment.amount_fen, openid, description))
    await _note(ctx, payment.out_trade_no, prepay_id=result["prepay_id"])
    return str(result["prepay_id"])


async def native_order(ctx: Context, payment: Payment, *, description: str | None = None,
                       client: WechatPayClient | None = None) -> str:
    """The order's code_url (for a QR code), placed once as jsapi_order places its order."""
    client = _client(ctx, client)
    if payment.state != PaymentState.created:
        raise OrderClosed(payment)
    if isinstance(code_url := payment.details.get("code_url"), str) and code_url:
        return code_url
    code_url = await _place(ctx, payment.out_trade_no, client.create_native(
        payment.out_trade_no, payment.amount_fen, description))
    await _note(ctx, payment.out_trade_no, code_url=code_url)
    return str(code_url)


async def start_topup(
    ctx: Context, rider_id: int, openid: str, amount_fen: int, *,
    description: str | None = None, client: WechatPayClient | None = None,
) -> dict[str, Any]:
    """A JSAPI top-up: the Payment row, the order at WeChat Pay, and the page's pay params.

    Returns ``{"out_trade_no", "amount_fen", "prepay_id", "pay_params"}``; the wallet is
    credited later, by the notification. Raises WechatPayError when WeChat Pay refuses.
    """
    client = _client(ctx, client)
    payment = await open_payment(ctx, rider_id, amount_fen,
                                 {"trade_type": "JSAPI", "openid": openid})
    prepay_id = await jsapi_order(ctx, payment, openid, description=description, client=client)
    return {"out_trade_no": payment.out_trade_no, "amount_fen": amount_fen,
            "prepay_id": prepay_id, "pay_params": client.pay_params(prepay_id)}


async def start_native_topup(
    ctx: Context, rider_id: int, amount_fen: int, *,
    description: str | None = None, client: WechatPayClient | None = None,
) -> dict[str, Any]:
    """A Native (QR code) top-up: ``{"out_trade_no", "amount_fen", "code_url"}``."""
    client = _client(ctx, client)
    payment = await open_payment(ctx, rider_id, amount_fen, {"trade_type": "NATIVE"})
    code_url = await native_order(ctx, payment, description=description, client=client)
    return {"out_trade_no": payment.out_trade_no, "amount_fen": amount_fen, "code_url": code_url}


class NotWechatPay(Exception):  # noqa: N818 - reads as what it is
    """The order exists, but another provider's: a WeChat Pay notification cannot credit it."""

    def __init__(self, out_trade_no: str) -> None:
        super().__init__(f"order {out_trade_no} is not a WeChat Pay order")


async def credit(ctx: Context, txn: dict[str, Any], out_trade_no: str, total: int) -> bool:
    """Confirm the order, pay due bills and queue the rider's message; True the first time."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        # Lock the order row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)
        # so a second notification racing this one waits and then sees it paid.
        payment = (await session.execute(
            select(Payment).where(col(Payment.out_trade_no) == out_trade_no).with_for_update()
        )).scalars().first()
        if payment is None:
            raise KeyError(out_trade_no)
        if payment.provider != "wechatpay":
            raise NotWechatPay(out_trade_no)
        payment, first = await confirm(session, out_trade_no, total,
                                       str(txn.get("transaction_id") or ""), ctx.settings, now)
        if not first:
            return False
        amount = txn.get("amount") or {}
        payer = txn.get("payer")
        payment.details = {
            **payment.details,
            "transaction_id": txn.get("transaction_id"),
            # Only recorded, never relied on: a payer that is no object must not undo the credit.
            "openid": payer.get("openid") if isinstance(payer, dict) else None,
            "payer_total": amount.get("payer_total"),
            "trade_type": txn.get("trade_type") or payment.details.get("trade_type"),
            "success_time": txn.get("success_time"),
            "bank_type": txn.get("bank_type"),
        }
        rider_id = payment.rider_id
        bills_paid, still_due = await pay_due(session, rider_id, now)
        balance = await wallet.balance(session, rider_id)
        await outbox.enqueue(session, rider_id, PaymentNotice(
            amount_fen=payment.amount_fen, bonus_fen=payment.bonus_fen,
            balance_fen=balance, provider="wechatpay",
            out_trade_no=out_trade_no, bills_paid=bills_paid, still_due_fen=still_due,
        ), f"payment:{out_trade_no}", now=now)
    ctx.wake_outbox()
    return True
