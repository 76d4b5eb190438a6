"""A stopping notifier stops, even when a pass fails on its way out (a session cancelled
mid-statement raises from its close and hides the CancelledError)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from notifications.worker import Notifier


class _FailsOnTheWayOut(Notifier):
    def __init__(self) -> None:
        nothing: Any = None  # never reached: claim is replaced
        super().__init__(sm=nothing, senders={}, render=nothing)
        self.started = asyncio.Event()
        self.passes = 0

    async def claim(self, exclude: set[int] | None = None) -> list[Any]:
        self.passes += 1
        if self.passes > 1:  # it went round again instead of stopping: end the test's task
            raise asyncio.CancelledError
        self.started.set()
        try:
            await asyncio.Event().wait()  # a pass under way: a claim waiting on the database
        except asyncio.CancelledError:
            raise RuntimeError("Can't reconnect until invalid transaction is rolled back") from None
        return []


async def test_a_cancelled_notifier_ends_even_when_its_pass_fails_on_the_way_out(
    caplog: Any,
) -> None:
    notifier = _FailsOnTheWayOut()
    task = asyncio.create_task(notifier.run())
    await notifier.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert notifier.passes == 1
    assert "retrying" not in caplog.text
