"""What every payment provider shows around a top-up: the amounts offered and the reply once
the money is in. Kept apart from the wallet card so providers (bot.payments.telegram_pay) can
use it without importing the card, which imports them."""

from __future__ import annotations

from bot.handlers.notices import payment_text
from bot.handlers.payloads import PayDue, Wallet
from bot.i18n import tr
from core.billing.wallet import yuan
from core.config import Settings
from core.notices.billing import PaymentNotice
from notifications.replies import Button, Reply


def topup_amounts(settings: Settings) -> list[int]:
    """The card's top-up amounts, with every bonus threshold so each advertised bonus has a
    button that reaches it."""
    thresholds = {r.min_fen for r in settings.billing.topup_bonuses if r.bonus_fen > 0}
    return sorted(set(settings.billing.sandbox_topups_fen) | thresholds)


def after_payment(lang: str, paid: int, remaining: int) -> str:
    text = ""
    if paid:
        text += "\n" + tr(lang, "Your unpaid bill is paid. You can charge again.")
    if remaining:
        text += "\n" + tr(lang, "Still due: {amount}", amount=yuan(remaining))
    return text


def credited_reply(lang: str, *, amount_fen: int, bonus_fen: int, balance_fen: int,
                   provider: str, paid: int, remaining: int) -> Reply:
    """What the rider sees right after a top-up went through (any provider)."""
    text = payment_text(lang, PaymentNotice(amount_fen=amount_fen, bonus_fen=bonus_fen,
                                            balance_fen=balance_fen, provider=provider))
    buttons = [[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]]
    if remaining:
        buttons = [[Button(tr(lang, "💳 Pay {amount}", amount=yuan(remaining)),
                           data=PayDue().pack()),
                    Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]]
    return Reply(text + after_payment(lang, paid, remaining), buttons=buttons)
