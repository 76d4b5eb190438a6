"""Telegram Payments: one invoice per top-up, checked at pre-checkout, credited once on success.

The flow (https://core.telegram.org/bots/payments):

1. The rider taps `topupvia:telegram:{amount}` on the wallet card: we create a Payment (provider
   "telegram") and send an invoice whose payload is the Payment's out_trade_no. Amounts are in
   the currency's smallest unit, i.e. fen for CNY, the same integers as our ledger.
2. When the rider pays, Telegram asks first (`pre_checkout_query`, to be answered within 10 s):
   we say yes only for a known, unpaid telegram Payment of that rider with the same amount and
   currency.
3. Telegram then sends a `successful_payment` service message: `confirm` credits the order once
   (plus any top-up bonus), due bills are paid from it, and the rider sees the new balance.
   A repeated update credits nothing and says nothing.

The amounts offered and the reply once credited are the wallet conversation's (bot.handlers),
which sits above the providers: the app hands them in (`setup`), so this module never imports
a handler.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from telegram import Bot, LabeledPrice, Message, PreCheckoutQuery
from telegram.error import TelegramError

from bot.context import Context
from bot.i18n import tr
from core.billing import payments, wallet
from core.billing.payments import PaymentMismatch, PaymentState
from core.billing.wallet import yuan
from core.charging import paying as charging
from core.config import Settings
from core.db import transaction
from core.riders.identities import language_from_hint, rider_for
from core.riders.tables import Identity, Rider
from notifications.replies import Button, Incoming, Reply

log = logging.getLogger("chargebot.payments.telegram")
TOPUP_PREFIX = "topupvia:telegram:"


@dataclass(frozen=True)
class TopupFace:
    """What the chat says around a top-up, passed in by the app (bot.app)."""

    amounts: Callable[[Settings], list[int]]  # the wallet card's top-up amounts
    credited: Callable[..., Reply]  # (lang, *, amount_fen, bonus_fen, balance_fen, provider,
    #                                  paid, remaining): the reply once the money is in


# By id: Context is an unhashable dataclass. The entry goes when its Context does.
_FACES: dict[int, TopupFace] = {}


def setup(ctx: Context, face: TopupFace) -> None:
    key = id(ctx)
    if key not in _FACES:
        weakref.finalize(ctx, _FACES.pop, key, None)
    _FACES[key] = face


def _face(ctx: Context) -> TopupFace:
    face = _FACES.get(id(ctx))
    if face is None:
        raise RuntimeError("telegram_pay.setup has not run for this Context")
    return face


def available(settings: Settings) -> bool:
    """Telegram invoices need the provider switched on, its token and the bot itself."""
    p = settings.payments
    return ("telegram" in p.providers and p.telegram_provider_token is not None
            and settings.telegram.token is not None)


def topup_amount(data: str) -> int | None:
    """The amount of a `topupvia:telegram:{amount}` button, None for any other data."""
    if not data.startswith(TOPUP_PREFIX):
        return None
    amount = data[len(TOPUP_PREFIX):]
    return int(amount) if amount.isdigit() else 0


def _wallet_button(lang: str) -> list[list[Button]]:
    return [[Button(tr(lang, "👛 Wallet"), data="wallet")]]


async def send_topup_invoice(ctx: Context, bot: Bot, inc: Incoming, amount_fen: int
                             ) -> list[Reply]:
    """Create the Payment and send its invoice; returns replies only when that failed."""
    settings = ctx.settings
    face = _face(ctx)
    async with transaction(ctx.sm) as session:
        rider = await rider_for(
            session, "telegram", inc.user_id, chat_id=inc.chat_id,
            display_name=inc.display_name, language_hint=inc.language_hint, seen_at=ctx.clock(),
        )
        lang = rider.language
        if not available(settings) or amount_fen not in face.amounts(settings):
            return [Reply(tr(lang, "That top-up is not available. Please pick one on the wallet "
                                   "card."), buttons=_wallet_button(lang))]
        assert rider.id is not None
        payment = await payments.create_payment(session, rider.id, "telegram", amount_fen,
                                                now=ctx.clock())
        payment.details = {"chat_id": inc.chat_id}
        out_trade_no = payment.out_trade_no
    # Committed before the invoice goes out: the pre-checkout query must find the Payment.
    bonus = payments.bonus_for(settings, amount_fen)
    description = tr(lang, "Adds {amount} to your charging wallet.", amount=yuan(amount_fen))
    if bonus:
        description += " " + tr(lang, "Includes a top-up bonus of {bonus}.", bonus=yuan(bonus))
    token = settings.payments.telegram_provider_token
    assert token is not None
    try:
        await bot.send_invoice(
            inc.chat_id,
            title=tr(lang, "Wallet top-up {amount}", amount=yuan(amount_fen))[:32],
            description=description[:255],
            payload=out_trade_no,
            provider_token=token.get_secret_value(),
            currency=settings.payments.currency,
            prices=[LabeledPrice(tr(lang, "Wallet top-up"), amount_fen)],
        )
    except TelegramError as exc:
        # E.g. an amount under Telegram's minimum for the currency, or a bad provider token.
        log.warning("sendInvoice failed for %s: %s", out_trade_no, exc)
        async with transaction(ctx.sm) as session:
            if (p := await payments.find(session, out_trade_no)) is not None \
                    and p.state == PaymentState.created:
                p.state = PaymentState.failed
                p.details = {**p.details, "error": str(exc)[:200]}
        return [Reply(tr(lang, "Sorry, Telegram could not create the invoice. Please try "
                               "another amount or try again later."),
                      buttons=_wallet_button(lang))]
    return []


async def _telegram_rider(session: AsyncSession, user_id: int) -> Rider | None:
    return (await session.execute(
        select(Rider).join(Identity, col(Identity.rider_id) == col(Rider.id))
        .where(col(Identity.platform) == "telegram", col(Identity.external_id) == str(user_id))
    )).scalars().first()


async def check_pre_checkout(ctx: Context, query: PreCheckoutQuery) -> str | None:
    """None when the payment may go ahead, else the (translated) reason it may not."""
    settings = ctx.settings
    async with ctx.reader()() as session:
        rider = await _telegram_rider(session, query.from_user.id)
        lang = rider.language if rider is not None else language_from_hint(
            query.from_user.language_code)
        payment = await payments.find(session, query.invoice_payload)
        if (payment is None or payment.provider != "telegram" or rider is None
                or payment.rider_id != rider.id):
            return tr(lang, "We can't find this top-up. Please open the wallet and start a new "
                            "one.")
        if payment.state == PaymentState.paid:
            return tr(lang, "This top-up is already paid. Your wallet has the money.")
        if payment.state != PaymentState.created or not available(settings):
            return tr(lang, "This top-up can no longer be paid. Please open the wallet and start "
                            "a new one.")
        if (query.total_amount != payment.amount_fen
                or query.currency != settings.payments.currency):
            return tr(lang, "The amount doesn't match this top-up. Please open the wallet and "
                            "start a new one.")
    return None


async def answer_pre_checkout(ctx: Context, query: PreCheckoutQuery) -> None:
    """Telegram waits at most 10 s for this answer, then fails the payment itself."""
    try:
        error = await check_pre_checkout(ctx, query)
    except Exception:
        log.exception("pre-checkout check failed for %s", query.invoice_payload)
        error = tr(language_from_hint(query.from_user.language_code),
                   "Sorry, something went wrong on our side. Please try again.")
    if error is not None:
        log.info("pre-checkout refused for %s: %s", query.invoice_payload, error)
    try:
        if error is None:
            await query.answer(ok=True)
        else:
            await query.answer(ok=False, error_message=error)
    except TelegramError:
        log.warning("answerPreCheckoutQuery failed for %s", query.invoice_payload,
                    exc_info=True)


async def on_successful_payment(ctx: Context, message: Message) -> list[Reply]:
    """Credit a paid invoice once, pay due bills from it and say the new balance."""
    # Two deliveries of the same update may race: the loser hits a unique key and rolls back
    # whole, and its second pass sees the order already paid.
    for attempt in range(2):
        try:
            return await _credit(ctx, message)
        except IntegrityError:
            if attempt:
                raise
    return []


async def _credit(ctx: Context, message: Message) -> list[Reply]:
    sp = message.successful_payment
    user = message.from_user
    assert sp is not None and user is not None
    settings, now = ctx.settings, ctx.clock()
    credited_reply = _face(ctx).credited
    async with transaction(ctx.sm) as session:
        rider = await rider_for(
            session, "telegram", str(user.id), chat_id=str(message.chat_id),
            display_name=user.first_name or "", language_hint=user.language_code, seen_at=now,
        )
        lang = rider.language
        ref = sp.telegram_payment_charge_id
        try:
            if sp.currency != settings.payments.currency:
                raise PaymentMismatch(f"{sp.invoice_payload}: currency {sp.currency}")
            if not payments.could_be_ours(sp.invoice_payload):
                # Telegram echoes our own payload; retrying one that cannot be ours never helps.
                raise KeyError(sp.invoice_payload)
            payment, credited = await payments.confirm(
                session, sp.invoice_payload, sp.total_amount, ref, settings, now)
        except (KeyError, PaymentMismatch) as exc:
            # Telegram has taken the money: keep every id so support can reconcile by hand.
            log.error("unmatched telegram payment %s (%s %s, charge %s / %s): %r",
                      sp.invoice_payload, sp.total_amount, sp.currency, ref,
                      sp.provider_payment_charge_id, exc)
            if payments.could_be_ours(sp.invoice_payload) and (
                    p := await payments.find(session, sp.invoice_payload)) is not None:
                p.details = {**p.details, "mismatch": {
                    "total_amount": sp.total_amount, "currency": sp.currency,
                    "telegram_payment_charge_id": ref,
                    "provider_payment_charge_id": sp.provider_payment_charge_id}}
            return [Reply(tr(lang, "We received your payment but could not match it to a "
                                   "top-up. Support will sort it out; your reference: {ref}",
                             ref=ref))]
        if not credited:
            log.info("telegram payment %s replayed: nothing more credited", sp.invoice_payload)
            return []
        payment.details = {**payment.details,
                           "provider_payment_charge_id": sp.provider_payment_charge_id}
        paid, remaining = await charging.pay_due(session, payment.rider_id, now)
        balance = await wallet.balance(session, payment.rider_id)
        return [credited_reply(lang, amount_fen=payment.amount_fen, bonus_fen=payment.bonus_fen,
                               balance_fen=balance, provider="telegram", paid=paid,
                               remaining=remaining)]
