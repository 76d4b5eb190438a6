"""Family wallet: invite, join, limits, spending, removal (being written)."""

from __future__ import annotations

from bot.handlers import menu
from bot.handlers.turn import Turn
from bot.replies import Reply


async def command(turn: Turn, arg: str) -> list[Reply]:
    return menu.unknown(turn)


async def button(turn: Turn, arg: str) -> list[Reply]:
    return menu.unknown(turn)
