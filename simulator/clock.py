"""Virtual time for a simulated fleet.

Events carry *virtual* timestamps because the server bills from `session_ended.ts −
session_started.ts`: a demo compressed 3600x must still bill a 6-hour charge as 6 hours.
Signatures, by contrast, always use real wall-clock seconds (the server rejects > 300 s skew).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime


class VirtualClock:
    """virtual = wall time at anchor + (monotonic elapsed since anchor) × speed."""

    def __init__(
        self,
        speed: float = 1.0,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._wall = wall
        self.mono = mono
        self.restart()

    def restart(self) -> None:
        self._wall0 = self._wall()
        self._mono0 = self.mono()

    def virtual_at(self, mono: float) -> float:
        return self._wall0 + (mono - self._mono0) * self.speed

    def mono_at(self, virtual: float) -> float:
        return self._mono0 + (virtual - self._wall0) / self.speed

    def now(self) -> float:
        return self.virtual_at(self.mono())


def iso(virtual: float) -> str:
    """ISO-8601 in UTC with milliseconds: enough to keep billed durations exact at any speed."""
    return datetime.fromtimestamp(virtual, UTC).isoformat(timespec="milliseconds")
