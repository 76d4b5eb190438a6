"""Riders' Telegram groups: the monthly best-pile vote as a native poll, and its answers."""

from __future__ import annotations

import logging

from telegram import Update

from bot.context import Context
from bot.i18n import tr
from bot.skins.clients import telegram_bot
from core.db import saved_id, transaction
from core.riders.identities import rider_for
from core.support import votes

log = logging.getLogger("chargebot.groups")


async def post_polls(ctx: Context, month: str) -> int:
    """One non-anonymous poll per configured rider group (votes must be one per rider)."""
    groups = ctx.settings.support.rider_groups
    if not groups or ctx.settings.telegram.token is None:
        return 0
    async with ctx.reader()() as session:
        sites = await votes.candidates(session)
    if len(sites) < 2:
        return 0
    lang = ctx.settings.support.desk_language
    posted = 0
    async with telegram_bot(ctx) as bot:
        for chat in groups:
            msg = await bot.send_poll(
                chat, tr(lang, "🏆 Best place to charge in {month}?", month=month),
                [s.name[:100] for s in sites], is_anonymous=False)
            if msg.poll is None:
                raise RuntimeError("Telegram's answer to send_poll carries no poll")
            async with transaction(ctx.sm) as session:
                session.add(votes.VotePoll(month=month, chat_id=str(chat), poll_id=msg.poll.id,
                                           sites=[s.id for s in sites], created_at=ctx.clock()))
            posted += 1
    return posted


async def on_poll_answer(ctx: Context, update: Update) -> bool:
    """A rider's answer in a group poll counts as their vote; True if it was a poll answer."""
    answer = update.poll_answer
    if answer is None or answer.user is None:
        return answer is not None
    async with transaction(ctx.sm) as session:
        rider = await rider_for(session, "telegram", str(answer.user.id),
                                display_name=answer.user.first_name or "")
        await votes.poll_answer(session, answer.poll_id, saved_id(rider),
                                list(answer.option_ids), ctx.clock())
    return True
