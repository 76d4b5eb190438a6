"""How late the event loop runs: the worst lag over the last minute, for /metrics.

Every rider, pile and notifier shares one event loop per worker; a callback that holds it (an
import, a chart, a fit) delays all of them by as long, and no other figure shows it. A small task
sleeps a short interval and records how late it woke.

`server.slow_callback_s` > 0 also turns on asyncio's debug mode, which logs each callback that
held the loop longer than that ("Executing <…> took N seconds") with what it was: the way to
find the culprit once the gauge says there is one. Debug mode slows everything a little; it is
for tests, benchmarks and hunting, not for production.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import AsyncIterator

from aiohttp import web

from bot.tasks import stop_task
from core.config import Settings

log = logging.getLogger("chargebot.loop")

# 0.1 s: a blocked loop is seen to within a tenth of a second, at ten wake-ups a second.
INTERVAL_S = 0.1
WINDOW_S = 60.0


class LoopLag:
    """The worst lateness of a periodic wake-up, per second, over the last minute."""

    def __init__(self, interval_s: float = INTERVAL_S, window_s: float = WINDOW_S) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._seconds: deque[tuple[int, float]] = deque()  # (whole loop second, worst lag)

    def record(self, at: float, lag: float) -> None:
        second = math.floor(at)
        if self._seconds and self._seconds[-1][0] == second:
            if lag > self._seconds[-1][1]:
                self._seconds[-1] = (second, lag)
        else:
            self._seconds.append((second, lag))
        while self._seconds and self._seconds[0][0] <= second - self.window_s:
            self._seconds.popleft()

    def worst(self, now: float) -> float:
        """The worst lag in the minute before `now` (loop time), 0 when nothing was late."""
        since = now - self.window_s
        return max((lag for second, lag in self._seconds if second + 1 > since), default=0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            woke = loop.time()
            self.record(woke, max(0.0, woke - due))

    def lines(self) -> list[str]:
        worst = self.worst(asyncio.get_running_loop().time())
        return ["# TYPE chargebot_event_loop_lag_max_seconds gauge",
                f"chargebot_event_loop_lag_max_seconds {worst:.3f}"]


LAG = web.AppKey("loop_lag", LoopLag)


def setup(app: web.Application, settings: Settings) -> None:
    """Measure from the first start-up step on (register before the others), and turn on
    asyncio's slow-callback log when configured."""
    monitor = app[LAG] = LoopLag()
    slow_s = settings.server.slow_callback_s

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        if slow_s > 0:
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = slow_s
            log.info("asyncio debug on: callbacks holding the loop over %.3f s are logged",
                     slow_s)
        task = asyncio.create_task(monitor.run(), name="loop-lag")
        yield
        await stop_task(task)

    app.cleanup_ctx.append(lifecycle)
