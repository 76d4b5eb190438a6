"""From an Incoming to replies: one transaction per rider action, on every skin.

An action passes a chain of middlewares — the rider's photo fetched, domain errors rendered,
one transaction with the rider looked up — and then `dispatch`, which finds its handler on the
routers the handler modules declare (bot.handlers.routing): a button by its payload's prefix,
a command by its name, each in the chat's scope (the rider's own chat, the staff desk or a
riders' group).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

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
from bot.handlers.errors import error_text
from bot.handlers.routing import Router
from bot.handlers.turn import Turn
from core.db import transaction
from core.engagement import prompts
from core.errors import DomainError
from core.piles.tables import PORT_CODE
from core.riders.identities import rider_for
from core.riders.tables import DEFAULT_LANGUAGE
from core.support.photos import PhotoRejected, PhotoUnavailable
from notifications.replies import Incoming, Reply

log = logging.getLogger("chargebot.handlers")

ROOT = Router("root")
# In the order /help lists their commands: the everyday ones first.
ROOT.include(charging.router, wallet.router, menu.router, account.router, plans.router,
             family.router, disputes.router, feedback.router, engagement.router,
             groupbuy.router, ports.router, staff.router, support.router, surveys.router)
# Asked in turn while the rider owes us an answer (a note, a rating reason, a staff reply).
PROMPTS = (staff.answer_prompt, support.answer_prompt, feedback.answer_prompt,
           surveys.answer_prompt)


@dataclass
class Action:
    """One Incoming on its way through the middlewares."""

    ctx: Context
    inc: Incoming
    photo_problem: Exception | None = None
    turn: Turn | None = None
    lang: str = DEFAULT_LANGUAGE  # the rider's language after the action


Next = Callable[[Action], Awaitable[list[Reply]]]


async def handle(ctx: Context, inc: Incoming) -> tuple[list[Reply], str]:
    """Returns the replies and the rider's language (after the action)."""
    action = Action(ctx, inc)
    replies = await _run(action, MIDDLEWARES)
    return replies, action.lang


async def _run(action: Action, chain: tuple[Callable[[Action, Next], Awaitable[list[Reply]]], ...]
               ) -> list[Reply]:
    if not chain:
        assert action.turn is not None
        return await dispatch(action.turn)
    return await chain[0](action, lambda a: _run(a, chain[1:]))


async def stored_photo(action: Action, call_next: Next) -> list[Reply]:
    """The rider's photo stored locally (Incoming.photo becomes its path), or why not.
    Fetched before the transaction: a platform download (and WeChat's token, kept in the
    database) must not run while this action holds SQLite's write lock."""
    inc, intake = action.inc, action.ctx.photo_intake
    if inc.photo:
        try:
            if intake is None:
                raise PhotoUnavailable(inc.platform, "no photo intake in this app")
            stored = await intake(action.ctx, inc.platform, inc.photo, user_id=inc.user_id)
        except (PhotoRejected, PhotoUnavailable) as exc:
            log.info("photo from %s not taken: %s", inc.platform, exc)
            action.inc, action.photo_problem = replace(inc, photo=None), exc
        else:
            action.inc = replace(inc, photo=stored.path)
    return await call_next(action)


async def domain_errors(action: Action, call_next: Next) -> list[Reply]:
    """A DomainError no handler caught: the action is rolled back, the rider reads its text."""
    try:
        return await call_next(action)
    except DomainError as exc:
        inc = action.inc
        log.info("domain error %s for %s", exc.key, inc.platform)
        async with transaction(action.ctx.sm) as session:
            rider = await rider_for(session, inc.platform, inc.user_id, chat_id=inc.chat_id)
            action.lang = rider.language
        return [Reply(error_text(action.lang, exc))]


async def in_transaction(action: Action, call_next: Next) -> list[Reply]:
    """One transaction per action, the rider looked up (or created) by platform and id."""
    ctx, inc = action.ctx, action.inc
    async with transaction(ctx.sm) as session:
        rider = await rider_for(
            # A message in the staff group must not move the person's own chat there.
            session, inc.platform, inc.user_id, chat_id=None if inc.group else inc.chat_id,
            display_name=inc.display_name, language_hint=inc.language_hint,
            seen_at=ctx.clock(),
        )
        action.turn = Turn(ctx, session, rider, inc, photo_problem=action.photo_problem,
                           help=tuple(ROOT.help))
        replies = await call_next(action)
        action.lang = rider.language
    for fn in action.turn.after_commit:
        fn()
    ctx.wake_outbox()
    return replies


MIDDLEWARES = (stored_photo, domain_errors, in_transaction)


def scope_of(inc: Incoming) -> str:
    return "staff" if inc.group == "staff" else "riders" if inc.group else "private"


async def dispatch(turn: Turn) -> list[Reply]:
    inc = turn.inc
    scope = scope_of(inc)
    # In a group, whatever is not for us is people talking among themselves: no answer.
    unknown = menu.unknown(turn) if scope == "private" else []
    if inc.data is not None:
        replies = await ROOT.press(turn, scope, inc.data)
        return unknown if replies is None else replies
    if scope == "private":
        if inc.location is not None:
            return await ports.nearest(turn, *inc.location)
        if (inc.text or inc.photo) and (
                prompt := await prompts.pending(turn.session, turn.rider_id, turn.now)):
            for answer in PROMPTS:
                if (answered := await answer(turn, prompt)) is not None:
                    return answered
    text = (inc.text or "").strip()
    if text.startswith("/"):
        command, _, arg = text[1:].partition(" ")
        replies = await ROOT.run(turn, scope, command.split("@", 1)[0], arg.strip())
        return unknown if replies is None else replies
    if scope == "staff":
        return await support.desk_reply(turn, text)
    if scope == "private" and PORT_CODE.match(text.upper()):
        return await ports.port_card(turn, text.upper())
    if scope == "private":
        return await support.free_text(turn) or unknown
    return []
