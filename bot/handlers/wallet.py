"""Wallet: balance, sandbox top-up and paying a due bill."""

from __future__ import annotations

import secrets

from bot.handlers.turn import Turn
from bot.i18n import tr
from bot.replies import Button, Reply
from core import charging, wallet
from core.wallet import yuan


def _topup_buttons(turn: Turn) -> list[list[Button]]:
    # A fresh nonce per card: pressing the same button twice tops up once.
    nonce = secrets.token_hex(4)
    return [[Button(tr(turn.lang, "+{amount}", amount=yuan(a)), data=f"topup:{a}:{nonce}")
             for a in turn.ctx.settings.billing.sandbox_topups_fen]]


async def show(turn: Turn) -> list[Reply]:
    lang = turn.lang
    bal = await wallet.balance(turn.session, turn.rider.id)  # type: ignore[arg-type]
    due = await charging.due_charges(turn.session, turn.rider.id)  # type: ignore[arg-type]
    lines = [tr(lang, "👛 Balance: {balance}", balance=yuan(bal))]
    buttons = _topup_buttons(turn)
    if due:
        owed = sum(c.amount_fen - c.paid_fen for c in due)
        lines.append(tr(lang, "Unpaid bills: {amount}", amount=yuan(owed)))
        buttons.append([Button(tr(lang, "💳 Pay {amount}", amount=yuan(owed)), data="pay")])
    lines.append(tr(lang, "Top up (sandbox payment, no real money):"))
    return [Reply("\n".join(lines), buttons=buttons)]


async def topup(turn: Turn, amount: int, nonce: str) -> list[Reply]:
    lang = turn.lang
    if amount not in turn.ctx.settings.billing.sandbox_topups_fen or not nonce:
        return await show(turn)
    rider_id = turn.rider.id
    assert rider_id is not None
    await wallet.post(turn.session, rider_id, "topup", amount, f"topup:{rider_id}:{nonce}:{amount}",
                      memo="sandbox")
    paid, remaining = await charging.pay_due(turn.session, rider_id, turn.now)
    bal = await wallet.balance(turn.session, rider_id)
    text = tr(lang, "✅ Topped up {amount}. Balance: {balance}", amount=yuan(amount),
              balance=yuan(bal))
    if paid:
        text += "\n" + tr(lang, "Your unpaid bill is paid. You can charge again.")
    if remaining:
        text += "\n" + tr(lang, "Still due: {amount}", amount=yuan(remaining))
    return [Reply(text)]


async def pay(turn: Turn) -> list[Reply]:
    lang = turn.lang
    rider_id = turn.rider.id
    assert rider_id is not None
    paid, remaining = await charging.pay_due(turn.session, rider_id, turn.now)
    bal = await wallet.balance(turn.session, rider_id)
    if remaining:
        return [Reply(
            tr(lang, "Your balance {balance} is not enough for {amount}. Top up first:",
               balance=yuan(bal), amount=yuan(remaining)),
            buttons=_topup_buttons(turn),
        )]
    if paid:
        return [Reply(tr(lang, "✅ Paid. Balance: {balance}. You can charge again.",
                         balance=yuan(bal)))]
    return [Reply(tr(lang, "Nothing to pay. Balance: {balance}", balance=yuan(bal)))]
