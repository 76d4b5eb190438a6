"""From an Incoming to replies: one transaction per rider action, on every skin."""

from __future__ import annotations

import logging
import re

from bot.context import Context
from bot.handlers import (
    account,
    charging,
    disputes,
    family,
    menu,
    plans,
    ports,
    staff,
    wallet,
)
from bot.handlers.turn import Turn
from bot.i18n import tr
from bot.replies import Incoming, Reply
from core import prompts
from core.db import transaction
from core.errors import DomainError
from core.piles import PORT_CODE
from core.riders import rider_for

log = logging.getLogger("chargebot.handlers")
START_PAYLOAD = re.compile(r"^port_(P\d{4,}-\d{2})$", re.IGNORECASE)


async def handle(ctx: Context, inc: Incoming) -> tuple[list[Reply], str]:
    """Returns the replies and the rider's language (after the action)."""
    after: list = []
    try:
        async with transaction(ctx.sm) as session:
            rider = await rider_for(
                session, inc.platform, inc.user_id, chat_id=inc.chat_id,
                display_name=inc.display_name, language_hint=inc.language_hint,
                seen_at=ctx.clock(),
            )
            turn = Turn(ctx, session, rider, inc)
            replies = await dispatch(turn)
            after = turn.after_commit
            lang = rider.language
    except DomainError as exc:
        log.info("domain error %s for %s", exc.key, inc.platform)
        async with transaction(ctx.sm) as session:
            rider = await rider_for(session, inc.platform, inc.user_id, chat_id=inc.chat_id)
            lang = rider.language
        return [Reply(tr(lang, "Sorry, that didn't work. Please try again."))], lang
    for fn in after:
        fn()
    ctx.wake_outbox()
    return replies, lang


async def dispatch(turn: Turn) -> list[Reply]:
    inc = turn.inc
    if inc.location is not None:
        return await ports.nearest(turn, *inc.location)
    if inc.data is not None:
        return await on_button(turn, inc.data)
    if (inc.text or inc.photo) and (
            prompt := await prompts.pending(turn.session, turn.rider.id, turn.now)):  # type: ignore[arg-type]
        answered = await staff.answer_prompt(turn, prompt)
        if answered is not None:
            return answered
    text = (inc.text or "").strip()
    if text.startswith("/"):
        command, _, arg = text[1:].partition(" ")
        return await on_command(turn, command.split("@", 1)[0].lower(), arg.strip())
    if PORT_CODE.match(text.upper()):
        return await ports.port_card(turn, text.upper())
    return menu.unknown(turn)


async def on_command(turn: Turn, command: str, arg: str) -> list[Reply]:
    if command == "start":
        if m := START_PAYLOAD.match(arg):
            return await ports.port_card(turn, m.group(1).upper())
        if arg:
            return [ports.unknown_port(turn, arg.removeprefix("port_"))]
        return await menu.welcome(turn)
    if command == "status":
        return await charging.status(turn)
    if command == "stop":
        return await charging.stop(turn, None)
    if command == "wallet":
        return await wallet.show(turn)
    if command == "history":
        return await charging.history(turn)
    if command == "language":
        return menu.language_menu(turn)
    if command in ("nearby", "near"):
        return ports.ask_location(turn)
    if command == "pay":
        return await wallet.pay(turn)
    if command == "link":
        return await account.link(turn, arg)
    if command == "family":
        return await family.command(turn, arg)
    if command == "plans":
        return await plans.show(turn)
    if command == "dispute":
        return await disputes.open_(turn, arg)
    if command in ("orders", "workorders"):
        return await staff.orders(turn)
    if command == "promises":
        return await staff.promises(turn)
    if command == "help":
        return menu.help_(turn)
    if command == "menu":
        return await menu.welcome(turn)
    return menu.unknown(turn)


async def on_button(turn: Turn, data: str) -> list[Reply]:
    verb, _, arg = data.partition(":")
    if verb == "port":
        return await ports.port_card(turn, arg)
    if verb == "start":
        return await charging.start(turn, arg)
    if verb == "stop":
        return await charging.stop(turn, int(arg) if arg.isdigit() else None)
    if verb == "status":
        return await charging.status(turn)
    if verb == "near":
        return ports.ask_location(turn)
    if verb == "alt":
        return [await ports.alternatives(turn, arg)]
    if verb == "pile":
        return await ports.pile_card(turn, arg)
    if verb == "wallet":
        return await wallet.show(turn)
    if verb == "topup":
        amount, _, nonce = arg.partition(":")
        return await wallet.topup(turn, int(amount) if amount.isdigit() else 0, nonce)
    if verb == "pay":
        return await wallet.pay(turn)
    if verb == "topupvia":
        provider, _, amount = arg.partition(":")
        return await wallet.topup_via(turn, provider, int(amount) if amount.isdigit() else 0)
    if verb == "autotopup":
        return await wallet.auto_topup(turn, arg)
    if verb == "history":
        return await charging.history(turn)
    if verb == "lang":
        return await menu.choose_language(turn, arg) if arg else menu.language_menu(turn)
    if verb == "menu":
        return await menu.welcome(turn)
    if verb == "help":
        return menu.help_(turn)
    if verb == "family":
        return await family.button(turn, arg)
    if verb == "plan":
        return await plans.button(turn, arg)
    if verb == "dispute":
        return await disputes.open_(turn, arg)
    if verb == "wo":
        return await staff.button(turn, arg)
    if verb == "rate":
        return await staff.rate(turn, arg)
    return menu.unknown(turn)
