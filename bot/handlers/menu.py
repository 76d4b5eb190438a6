"""Welcome, help and language: the first thing a rider sees."""

from __future__ import annotations

import re

from bot.handlers import engagement, groupbuy, ports
from bot.handlers.payloads import Help, Language, Menu, WebLogout, WorkOrderAction
from bot.handlers.routing import Router
from bot.handlers.text import menu_buttons
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.riders import staff, web_sessions
from core.riders.identities import set_language
from notifications.replies import Button, Reply

router = Router(__name__)
START_PAYLOAD = re.compile(r"^port_(P\d{4,}-\d{2})$", re.IGNORECASE)


@router.command("start")
async def start(turn: Turn, arg: str) -> list[Reply]:
    """`/start` and the deep links: `port_P0001-03` (a port's QR), `gb_CODE` (a group-buy)."""
    if m := START_PAYLOAD.match(arg):
        return await ports.port_card(turn, m.group(1).upper())
    if arg.startswith("gb_"):
        return await groupbuy.command(turn, arg[3:])
    if arg:
        return [ports.unknown_port(turn, arg.removeprefix("port_"))]
    return await welcome(turn)


@router.command("menu")
@router.button(Menu)
async def welcome(turn: Turn) -> list[Reply]:
    lang = turn.lang
    text = tr(
        lang,
        "Welcome to ChargeBot ⚡\nScan the QR code on a charging port to start, or share your "
        "location to find the nearest free port. You pay after charging; the bill arrives as "
        "soon as the charge ends.",
    )
    buttons = menu_buttons(lang)
    if usual := await engagement.usual_piles(turn):
        buttons = [usual, *buttons]
    if await staff.roles_of(turn.session, turn.rider_id):
        # Staff use the same bot: their work comes first.
        first = [Button(tr(lang, "🔧 Work orders"), data=WorkOrderAction("list").pack())]
        if web_sessions.staff_rider_of(turn.inc.user_id) is not None:
            first.append(Button(tr(lang, "🚪 Log out"), data=WebLogout().pack()))
        buttons = [first, *buttons]
    return [Reply(text, buttons=buttons, request_location=tr(lang, "📍 Share my location"))]


@router.command("help")
@router.button(Help)
async def help_(turn: Turn) -> list[Reply]:
    lang = turn.lang
    commands = " · ".join(tr(lang, h.msgid) for h in turn.help if not h.staff)
    text = "\n\n".join([
        tr(lang, "How it works:\n1. Plug in your charger.\n2. Scan the port's QR code (or type its "
                 "code, like P0001-03) and press Start.\n3. Stop any time with /stop, or it stops "
                 "by itself when the battery is full.\n4. The bill comes here, paid from your "
                 "wallet."),
        commands + "\n" + tr(lang, "A port is broken? Tap 🛠 Report a problem on its card. "
                                   "Smoke or fire: write it here, we answer at once."),
    ])
    if await staff.roles_of(turn.session, turn.rider_id):
        text += "\n\n" + tr(lang, "Staff: {commands}", commands=" · ".join(
            tr(lang, h.msgid) for h in turn.help if h.staff))
    return [Reply(text, buttons=menu_buttons(lang))]


@router.command("language", help=N_("/language — 中文/English"))
def language_menu(turn: Turn) -> list[Reply]:
    return [Reply(tr(turn.lang, "Choose your language:"),
                  buttons=[[Button("中文", data=Language("zh_CN").pack()),
                            Button("English", data=Language("en").pack())]])]


@router.button(Language)
async def language_button(turn: Turn, p: Language) -> list[Reply]:
    return await choose_language(turn, p.lang) if p.lang else language_menu(turn)


async def choose_language(turn: Turn, lang: str) -> list[Reply]:
    if lang not in ("zh_CN", "en"):
        return language_menu(turn)
    await set_language(turn.session, turn.rider, lang)
    return [Reply(tr(lang, "Language set to English."), buttons=menu_buttons(lang))]


def unknown(turn: Turn) -> list[Reply]:
    return [Reply(
        tr(turn.lang, "Sorry, I didn't get that. Scan a port's QR code, type a port code like "
                      "P0001-03, or pick an option below."),
        buttons=menu_buttons(turn.lang),
    )]
