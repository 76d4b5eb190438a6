"""Outbox messages rendered for the rider at delivery time, in the rider's language."""

from __future__ import annotations

from typing import Any

from bot.handlers.text import bill_text, tariff_sentence
from bot.i18n import tr
from bot.replies import Button, Reply


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
    if kind == "replies":  # a skin's replies that missed its synchronous answer window
        return [Reply.from_dict(d) for d in payload["replies"]]
    if kind == "text":
        return [Reply(payload["text"])]
    raise ValueError(f"unknown outbox kind {kind!r}")
