"""Stopping background tasks: a lost cancel does not leave shutdown waiting forever."""

from __future__ import annotations

import asyncio

import pytest

from bot import tasks
from bot.tasks import stop_task, wait_event


async def test_a_task_that_loses_a_cancel_is_cancelled_again_until_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_AFTER_S", 0.1)
    ticks = 0

    async def sweeper() -> None:
        nonlocal ticks
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                ticks += 1
                if ticks == 1:
                    continue  # what 3.11's wait_for does when the wait completes as it is cancelled
                raise

    task = asyncio.create_task(sweeper())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), 10)
    assert task.cancelled() and ticks == 2


async def test_a_task_that_failed_is_stopped_without_raising(caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    async def broken() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(broken(), name="broken-one")
    await asyncio.sleep(0)
    await stop_task(task)
    await stop_task(None)
    assert "broken-one" in caplog.text and "boom" in caplog.text


async def test_wait_event_says_whether_the_event_came() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    asyncio.get_running_loop().call_soon(ev.set)
    assert await wait_event(ev, 10) is True


async def test_a_caller_cancelled_while_stopping_sees_the_task_end_first() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # cleanup that takes a while

    inner = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    outer = asyncio.create_task(stop_task(inner))
    await asyncio.sleep(0.05)
    outer.cancel()
    await asyncio.sleep(0.05)
    assert not outer.done() and not inner.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 10)
    assert inner.done()
