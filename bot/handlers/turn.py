"""One rider action being handled: the rider, their language and the open transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot.context import Context
from bot.handlers.routing import HelpLine
from core.db import saved_id
from core.riders.tables import Rider
from notifications.replies import Incoming


@dataclass
class Turn:
    ctx: Context
    session: AsyncSession
    rider: Rider
    inc: Incoming
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # A photo the rider sent that could not be taken (too large, not an image, unavailable);
    # Incoming.photo is then None and the handler that wanted it says why.
    photo_problem: Exception | None = None
    # The commands' /help lines, as the root router collected them (bot.handlers.routing).
    help: tuple[HelpLine, ...] = ()

    @property
    def lang(self) -> str:
        return self.rider.language

    @property
    def rider_id(self) -> int:
        """The rider's id: a turn's rider is always a saved row."""
        return saved_id(self.rider)

    @property
    def now(self) -> datetime:
        return self.ctx.clock()
