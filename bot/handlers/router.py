"""From an Incoming to replies: one transaction per rider action, on every skin."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

from bot.context import Context
from bot.handlers import (
    account,
    charging,
    disputes,
    engagement,
    family,
    feedback,
    groupbuy,
    menu,
    plans,
    ports,
    staff,
    support,
    surveys,
    wallet,
)
from bot.handlers.turn import Turn
from bot.i18n import tr
from bot.photo_fetch import intake
from bot.replies import Incoming, Reply
from core import groupbuy as groupbuy_core
from core import outbox, prompts
from core.db import row_id, transaction
from core.errors import DomainError
from core.photos import PhotoRejected, PhotoUnavailable
from core.piles import PORT_CODE
from core.riders import rider_for

log = logging.getLogger("chargebot.handlers")
START_PAYLOAD = re.compile(r"^port_(P\d{4,}-\d{2})$", re.IGNORECASE)


async def handle(ctx: Context, inc: Incoming) -> tuple[list[Reply], str]:
    """Returns the replies and the rider's language (after the action)."""
    after: list = []
    photo_problem = None
    if inc.photo:
        # Fetched before the transaction: a platform download (and WeChat's token, kept in the
        # database) must not run while this action holds SQLite's write lock.
        inc, photo_problem = await _stored_photo(ctx, inc)
    try:
        async with transaction(ctx.sm) as session:
            rider = await rider_for(
                # A message in the staff group must not move the person's own chat there.
                session, inc.platform, inc.user_id, chat_id=None if inc.group else inc.chat_id,
                display_name=inc.display_name, language_hint=inc.language_hint,
                seen_at=ctx.clock(),
            )
            turn = Turn(ctx, session, rider, inc, photo_problem=photo_problem)
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


async def _stored_photo(ctx: Context, inc: Incoming) -> tuple[Incoming, Exception | None]:
    """The rider's photo stored locally (Incoming.photo becomes its path), or why not."""
    try:
        stored = await intake(ctx, inc.platform, inc.photo or "", user_id=inc.user_id)
    except (PhotoRejected, PhotoUnavailable) as exc:
        log.info("photo from %s not taken: %s", inc.platform, exc)
        return replace(inc, photo=None), exc
    return replace(inc, photo=stored.path), None


async def dispatch(turn: Turn) -> list[Reply]:
    inc = turn.inc
    if inc.group == "staff":
        return await desk(turn)
    if inc.group:
        return await riders_group(turn)
    if inc.location is not None:
        return await ports.nearest(turn, *inc.location)
    if inc.data is not None:
        return await on_button(turn, inc.data)
    if (inc.text or inc.photo) and (
            prompt := await prompts.pending(turn.session, turn.rider.id, turn.now)):  # type: ignore[arg-type]
        for answer in (staff.answer_prompt, support.answer_prompt, feedback.answer_prompt,
                       surveys.answer_prompt):
            if (answered := await answer(turn, prompt)) is not None:
                return answered
    text = (inc.text or "").strip()
    if text.startswith("/"):
        command, _, arg = text[1:].partition(" ")
        return await on_command(turn, command.split("@", 1)[0].lower(), arg.strip())
    if PORT_CODE.match(text.upper()):
        return await ports.port_card(turn, text.upper())
    return await support.free_text(turn) or menu.unknown(turn)


async def riders_group(turn: Turn) -> list[Reply]:
    """A riders' group: group-buy cards and their Join buttons; everything else is the riders'
    own conversation. What a join costs (and the rider's balance) goes to their private chat."""
    inc = turn.inc
    if inc.data is not None:
        verb, _, arg = inc.data.partition(":")
        if verb != "gb":
            return []
        private = await groupbuy.button(turn, arg)
        await outbox.enqueue(turn.session, turn.rider.id, "replies",  # type: ignore[arg-type]
                             {"replies": [r.as_dict() for r in private]},
                             f"gb-private:{inc.platform}:{inc.nonce}", now=turn.now)
        deal = await groupbuy_core.find(turn.session, int(arg.rpartition(":")[2]))
        link = f"https://t.me/{turn.ctx.settings.telegram.bot_username}?start=gb_{deal.code}"
        return [Reply(tr(turn.lang, "{name}: the details are in your private chat with me. "
                                    "Nothing there? Open {link}", name=inc.display_name or "👋",
                         link=link))]
    text = (inc.text or "").strip()
    if text.startswith("/groupbuy"):
        return await groupbuy.command(turn, text.partition(" ")[2].strip())
    return []


TICKET_REF = re.compile(r"#(\d+)")


async def desk(turn: Turn) -> list[Reply]:
    """The Telegram staff group: ticket buttons, and replies to a ticket's post as answers."""
    inc = turn.inc
    if inc.data is not None:
        verb, _, arg = inc.data.partition(":")
        return await support.staff_button(turn, arg) if verb == "tk" else []
    text = (inc.text or "").strip()
    if text.startswith("/tickets"):
        return await support.tickets(turn)
    if inc.reply_to and text and (m := TICKET_REF.search(inc.reply_to)):
        return await support.staff_answer(turn, int(m.group(1)), text)
    return []  # staff talking among themselves


async def on_command(turn: Turn, command: str, arg: str) -> list[Reply]:
    if command == "start":
        if m := START_PAYLOAD.match(arg):
            return await ports.port_card(turn, m.group(1).upper())
        if arg.startswith("gb_"):
            return await groupbuy.command(turn, arg[3:])
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
    if command == "tickets":
        return await support.tickets(turn)
    if command == "suggest":
        return await feedback.suggest(turn, arg)
    if command == "suggestions":
        return await feedback.suggestion_list(turn)
    if command == "faq":
        return await feedback.faq_menu(turn)
    if command == "vote":
        return await feedback.vote_menu(turn)
    if command == "groupbuy":
        return await groupbuy.command(turn, arg)
    if command == "vouchers":
        return await groupbuy.vouchers_list(turn)
    if command == "offpeak":
        return await engagement.offpeak(turn)
    if command in ("myyear", "year"):
        return await engagement.my_year(turn)
    if command in ("orders", "workorders"):
        return await staff.orders(turn)
    if command == "promises":
        return await staff.promises(turn)
    if command == "help":
        return await menu.help_(turn)
    if command == "weblogin":
        return await staff.web_login(turn)
    if command == "logout":
        return await staff.web_logout(turn)
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
        return await charging.stop(turn, row_id(arg))
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
        return await wallet.topup(turn, row_id(amount) or 0, nonce)
    if verb == "pay":
        return await wallet.pay(turn)
    if verb == "topupvia":
        provider, _, amount = arg.partition(":")
        return await wallet.topup_via(turn, provider, row_id(amount) or 0)
    if verb == "autotopup":
        return await wallet.auto_topup(turn, arg)
    if verb == "history":
        return await charging.history(turn)
    if verb == "lang":
        return await menu.choose_language(turn, arg) if arg else menu.language_menu(turn)
    if verb == "menu":
        return await menu.welcome(turn)
    if verb == "help":
        return await menu.help_(turn)
    if verb == "family":
        return await family.button(turn, arg)
    if verb == "plan":
        return await plans.button(turn, arg)
    if verb == "dispute":
        return await disputes.open_(turn, arg)
    if verb == "wo":
        return await staff.button(turn, arg)
    if verb == "rep":
        return await support.report_menu(turn, arg)
    if verb == "rp":
        target, _, problem = arg.rpartition(":")
        return await support.report(turn, target, problem)
    if verb == "rskip":
        return await support.skip_photo(turn, row_id(arg) or 0)
    if verb == "tk":
        return await support.staff_button(turn, arg)
    if verb == "trate":
        return await support.rate(turn, arg)
    if verb == "ask":
        return await support.ask_person(turn)
    if verb == "rv":
        return await feedback.review_start(turn, arg)
    if verb == "rvs":
        return await feedback.review_stars(turn, arg)
    if verb == "rvt":
        return await feedback.review_tag(turn, arg)
    if verb == "rvd":
        return await feedback.review_done(turn)
    if verb == "sg":
        return await feedback.decide(turn, arg)
    if verb == "faq":
        return await feedback.faq_menu(turn, arg)
    if verb == "vote":
        return await feedback.vote(turn, arg)
    if verb == "gb":
        return await groupbuy.button(turn, arg)
    if verb == "nps":
        return await surveys.button(turn, arg)
    if verb == "myyear":
        return await engagement.my_year(turn)
    if verb == "tool":
        return await engagement.tools(turn, arg)
    if verb == "locker":
        return await engagement.locker(turn, arg)
    if verb == "sos":
        return await support.emergency(turn, charge_id=row_id(arg))
    if verb == "rate":
        return await staff.rate(turn, arg)
    if verb == "lk":
        return await account.answer(turn, arg)
    if verb == "weblogout":
        return await staff.web_logout(turn)
    return menu.unknown(turn)
