"""Linking a rider's WeChat and Telegram so wallet and history are shared."""

from __future__ import annotations

from bot.handlers.text import menu_buttons
from bot.handlers.turn import Turn
from bot.i18n import tr
from bot.replies import Reply
from core.accounts import create_link_code, redeem_link_code
from core.errors import LinkCodeInvalid, LinkRefused
from core.wallet import yuan


async def link(turn: Turn, code: str) -> list[Reply]:
    lang = turn.lang
    if not code:
        made = await create_link_code(turn.session, turn.rider.id, turn.now)  # type: ignore[arg-type]
        return [Reply(tr(lang, "Your link code is {code} (valid 10 minutes). In your other app "
                               "(Telegram or WeChat) send: /link {code}", code=made))]
    try:
        target = await redeem_link_code(turn.session, code, turn.rider, turn.now)
    except LinkCodeInvalid:
        return [Reply(tr(lang, "That code is wrong or has expired. Send /link in your other app "
                               "to get a new one."))]
    except LinkRefused as exc:
        reason = exc.params.get("reason")
        if reason == "busy":
            text = tr(lang, "Please finish your charge and pay any open bill here first.")
        elif reason == "same_platform":
            text = tr(lang, "That account already has an identity on this app.")
        else:
            text = tr(lang, "This code belongs to this same account.")
        return [Reply(text)]
    lang = target.language
    return [Reply(tr(lang, "✅ Linked. Wallet and history are now shared. Balance: {balance}",
                     balance=yuan(target.balance_fen)), buttons=menu_buttons(lang))]
