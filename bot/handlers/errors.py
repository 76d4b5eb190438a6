"""What a rider reads when a domain error reaches the router: one line per `DomainError.key`.

Handlers that can say more (nearby alternatives, top-up buttons) still catch the error
themselves; everything else lands here, after the action's transaction was rolled back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.handlers.account import refusal
from bot.i18n import tr
from core.billing.wallet import yuan
from core.errors import DomainError

Params = dict[str, Any]

TEXTS: dict[str, Callable[[str, Params], str]] = {
    "error.generic": lambda lang, p: tr(lang, "Sorry, that didn't work. Please try again."),
    "error.unknown_port": lambda lang, p: tr(
        lang, "I can't find port {code}. Check the code printed under the QR (like P0001-03), "
              "or share your location to find a free port.", code=str(p.get("code", ""))[:20]),
    "error.unknown_pile": lambda lang, p: tr(
        lang, "I can't find pile {pile}. Share your location to find a free port.",
        pile=str(p.get("pile", ""))[:20]),
    "error.port_busy": lambda lang, p: tr(
        lang, "Sorry, port {code} was just taken by another rider.", code=p.get("code", "")),
    "error.port_unavailable": lambda lang, p: tr(
        lang, "Port {code} can't be used right now.", code=p.get("code", "")),
    "error.bill_due": lambda lang, p: tr(
        lang, "You have an unpaid bill of {amount}. Please pay it before starting a new charge.",
        amount=yuan(p.get("amount", 0))),
    "error.balance_too_low": lambda lang, p: tr(
        lang, "You pay after charging, but a start needs at least {floor} in your wallet (you "
              "have {balance}). Top up, then start again.",
        floor=yuan(p.get("floor", 0)), balance=yuan(p.get("balance", 0))),
    "error.too_many_open_charges": lambda lang, p: tr(
        lang, "You already have {n} charges running, the most at once. Stop one to start "
              "another.", n=p.get("limit", "")),
    "error.insufficient_balance": lambda lang, p: tr(
        lang, "Your balance is not enough for {price}. Top up first.",
        price=yuan(p.get("amount", 0))),
    "error.no_open_charge": lambda lang, p: tr(lang, "You have no charge running."),
    "error.invalid_event": lambda lang, p: tr(
        lang, "The charging pile sent a reading we could not use. Please try again."),
    "error.link_code_invalid": lambda lang, p: tr(
        lang, "That code is wrong or has expired. Send /link in your other app to get a new "
              "one."),
    "error.link_refused": lambda lang, p: refusal(lang, p.get("reason")),
}


def error_text(lang: str, exc: DomainError) -> str:
    render = TEXTS.get(exc.key, TEXTS["error.generic"])
    return render(lang, exc.params)
