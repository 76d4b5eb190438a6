"""Outbox messages rendered for the rider at delivery time, in the rider's language."""

from __future__ import annotations

from typing import Any

from bot.handlers.text import bill_text, tariff_sentence
from bot.i18n import tr
from bot.replies import Button, Reply
from core.wallet import yuan


def provider_name(lang: str, provider: str) -> str:
    if provider == "telegram":
        return tr(lang, "Telegram Payments")
    if provider == "wechatpay":
        return tr(lang, "WeChat Pay")
    if provider == "sandbox":
        return tr(lang, "sandbox payment")
    return provider


def payment_text(lang: str, payload: dict[str, Any]) -> str:
    """Payload {amount_fen, bonus_fen, balance_fen, provider}: what a credited payment says."""
    lines = [tr(lang, "✅ Topped up {amount} via {provider}.", amount=yuan(payload["amount_fen"]),
                provider=provider_name(lang, payload.get("provider") or ""))]
    if payload.get("bonus_fen"):
        lines.append(tr(lang, "🎁 Top-up bonus: +{bonus}", bonus=yuan(payload["bonus_fen"])))
    lines.append(tr(lang, "👛 Balance: {balance}", balance=yuan(payload["balance_fen"])))
    return "\n".join(lines)


def render(kind: str, payload: dict[str, Any], lang: str) -> list[Reply]:
    if kind == "bill":
        buttons = []
        if not payload["paid"] and payload["bill"]["amount_fen"] > 0:
            buttons = [[Button(tr(lang, "💳 Pay now"), data="pay"),
                        Button(tr(lang, "👛 Wallet"), data="wallet")]]
        return [Reply(bill_text(lang, payload), buttons=buttons)]
    if kind == "charge_started":
        return [Reply(
            tr(lang, "⚡ Charging started at port {port}.", port=payload["port"]) + "\n"
            + tariff_sentence(lang, payload["tariff"]),
            buttons=[[Button(tr(lang, "⚡ Status"), data="status"),
                      Button(tr(lang, "⏹ Stop"), data=f"stop:{payload['charge_id']}")]],
        )]
    if kind == "start_failed":
        return [Reply(
            tr(lang, "❌ Port {port} did not start, so nothing is charged. Please try another "
                     "port.", port=payload["port"]),
            buttons=[[Button(tr(lang, "📍 Nearest free ports"), data="near")]],
        )]
    if kind == "payment":  # money from a payment provider reached the wallet
        return [Reply(payment_text(lang, payload),
                      buttons=[[Button(tr(lang, "👛 Wallet"), data="wallet")]])]
    if kind == "auto_topup":  # 自动续费 topped the wallet up
        return [Reply(
            tr(lang, "🔁 Auto top-up: {amount} added to your wallet. Balance: {balance}",
               amount=yuan(payload["amount_fen"]), balance=yuan(payload["balance_fen"])),
            buttons=[[Button(tr(lang, "👛 Wallet"), data="wallet")]],
        )]
    if kind == "dispute_escalated":
        return [Reply(tr(lang, "⏰ Your bill question (case {id}) was not answered in time. It is "
                               "now with a supervisor, who will contact you.",
                         id=payload["dispute_id"]))]
    if kind == "replies":  # a skin's replies that missed its synchronous answer window
        return [Reply.from_dict(d) for d in payload["replies"]]
    if kind == "text":
        return [Reply(payload["text"])]
    raise ValueError(f"unknown outbox kind {kind!r}")
