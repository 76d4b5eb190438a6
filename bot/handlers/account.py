"""Linking a rider's WeChat and Telegram so wallet and history are shared."""

from __future__ import annotations

from bot.handlers.payloads import LinkAnswer
from bot.handlers.rendering import renders
from bot.handlers.routing import Router
from bot.handlers.text import menu_buttons
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.billing.wallet import yuan
from core.errors import LinkCodeInvalid, LinkRefused
from core.notices.riders import LinkDoneNotice, LinkRefusedNotice, LinkRequestNotice
from core.riders.accounts import (
    LinkPaused,
    LinkTooManyTries,
    answer_link,
    create_link_code,
    request_link,
)
from notifications.replies import Button, Reply

router = Router(__name__)


def platform_name(lang: str, platform: str) -> str:
    return {"telegram": "Telegram", "wechat": tr(lang, "WeChat"),
            "webchat": tr(lang, "web chat")}.get(platform, platform)


def refusal(lang: str, reason: str | None) -> str:
    if reason == "busy":
        return tr(lang, "Please finish your charge and pay any open bill here first.")
    if reason == "same_platform":
        return tr(lang, "That account already has an identity on this app.")
    if reason == "expired":
        return tr(lang, "This link request has expired (10 minutes). Nothing was linked.")
    if reason in ("confirmed", "refused", "answered"):
        return tr(lang, "This link request was already answered.")
    return tr(lang, "This code belongs to this same account.")


@router.command("link", help=N_("/link — share one wallet between WeChat and Telegram"))
async def link(turn: Turn, code: str) -> list[Reply]:
    lang = turn.lang
    if not code:
        made = await create_link_code(turn.session, turn.rider_id, turn.now)
        return [Reply(tr(lang, "Your link code is {code} (valid 10 minutes, once). In your other "
                               "app (Telegram or WeChat) send: /link {code}\nYou will be asked "
                               "here to confirm. Never give this code to anyone.", code=made))]
    try:
        await request_link(turn.session, code, turn.rider, turn.inc.platform, turn.inc.user_id,
                           turn.now)
    except LinkTooManyTries:
        return [Reply(tr(lang, "Too many wrong codes. Please try again in an hour."))]
    except LinkPaused:
        return [Reply(tr(lang, "Linking accounts is paused for a while. Please try again "
                               "later."))]
    except LinkCodeInvalid:
        return [Reply(tr(lang, "That code is wrong or has expired. Send /link in your other app "
                               "to get a new one."))]
    except LinkRefused as exc:
        return [Reply(refusal(lang, exc.params.get("reason")))]
    return [Reply(tr(lang, "🔗 Almost done: please confirm in the app where you got the code "
                           "(within 10 minutes). Nothing is linked until you do."))]


@router.button(LinkAnswer)
async def answer(turn: Turn, p: LinkAnswer) -> list[Reply]:
    """`lk:ok:ID` / `lk:no:ID`: the code's owner answers a link request in their own chat."""
    verb, attempt_id = p.verdict, p.attempt_id
    lang = turn.lang
    if verb not in ("ok", "no"):
        return [Reply(tr(lang, "That code is wrong or has expired. Send /link in your other app "
                               "to get a new one."))]
    try:
        owner = await answer_link(turn.session, attempt_id, turn.rider, verb == "ok", turn.now)
    except LinkCodeInvalid:
        return [Reply(tr(lang, "That code is wrong or has expired. Send /link in your other app "
                               "to get a new one."))]
    except LinkRefused as exc:
        return [Reply(refusal(lang, exc.params.get("reason")))]
    if verb == "no":
        return [Reply(tr(lang, "OK, nothing was linked. If you did not ask for this, someone "
                               "may have your code: never share it."))]
    return [Reply(tr(lang, "✅ Linked. Wallet and history are now shared. Balance: {balance}",
                     balance=yuan(owner.balance_fen)), buttons=menu_buttons(lang))]


@renders(LinkRequestNotice)
def request_notice(n: LinkRequestNotice, lang: str) -> list[Reply]:
    """The owner's question."""
    text = tr(lang, "🔗 Link the {platform} account “{name}” to this account? Wallet and history "
                    "would be shared. Confirm only if you just typed your own code there.",
              platform=platform_name(lang, n.platform), name=n.name or "—")
    aid = n.attempt_id
    return [Reply(text, buttons=[[
        Button(tr(lang, "✅ Confirm"), data=LinkAnswer("ok", aid).pack()),
        Button(tr(lang, "❌ Refuse"), data=LinkAnswer("no", aid).pack())]])]


@renders(LinkDoneNotice)
def done_notice(n: LinkDoneNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "✅ Linked. Wallet and history are now shared. Balance: {balance}",
                     balance=yuan(n.balance_fen)), buttons=menu_buttons(lang))]


@renders(LinkRefusedNotice)
def refused_notice(n: LinkRefusedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "The owner of that code did not confirm the link. Nothing was "
                           "linked."))]
