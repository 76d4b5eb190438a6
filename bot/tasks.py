"""Waiting on events and stopping background tasks, free of Python 3.11's `wait_for` races.

On 3.11 `asyncio.wait_for` returns normally when a cancel lands in the same loop iteration as
the thing it waits for completing: the cancel is lost. A sweep loop waiting on its wake event
then runs on, and the shutdown that awaits it waits forever (a CI run hung so). Hence
`asyncio.timeout` for waiting, and a stop that cancels until the task has ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("chargebot.tasks")
RECANCEL_AFTER_S = 3.0


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; whether it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended, cancelling again if a cancel was lost.
    An exception it ended with is logged, not raised: stopping goes on. A caller cancelled
    meanwhile (cleanup code runs while its own task is being cancelled) still sees the task
    end first, then gets its CancelledError."""
    if task is None:
        return
    interrupted = False
    task.cancel()
    while not task.done():
        try:
            done, _ = await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
        except asyncio.CancelledError:
            interrupted = True
            continue
        if not done:
            task.cancel()  # the cancel was lost (or its cleanup is slow: cut it short)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("task %s ended with %r", task.get_name(), exc)
    if interrupted:
        raise asyncio.CancelledError
