"""One simulated pile on the wire: ticker, event sender and command long-poll (DESIGN §3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

import aiohttp

from core.piles.auth import signed_headers
from simulator.controller import PileController

log = logging.getLogger("chargebot.simulator")

MAX_BATCH = 500
# Lets a burst (ack + status + session_started) leave in one request without delaying it
# noticeably: the server should see a session end well under a second after it happens.
DEBOUNCE_S = 0.05
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
POST_TIMEOUT_S = 15.0
# A server that answers long polls at once (or a fake one) must not make us spin.
MIN_POLL_GAP_S = 0.1
MAX_ERROR_BODY = 500


class SimulatedPile:
    def __init__(self, controller: PileController, secret: str, url: str,
                 long_poll_s: float) -> None:
        self.controller = controller
        self.pile_id = controller.pile_id
        self._secret = secret
        self._events_url = f"{url.rstrip('/')}/api/piles/events"
        self._commands_url = f"{url.rstrip('/')}/api/piles/{self.pile_id}/commands"
        self.long_poll_s = long_poll_s
        self.events_sent = 0
        self._http: aiohttp.ClientSession | None = None
        self._inflight: list[dict[str, Any]] | None = None
        self._inflight_body = b""
        self._queued = asyncio.Event()
        self._wake = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._net: list[asyncio.Task[None]] = []
        controller.notify = self._on_change

    def _on_change(self) -> None:
        self._queued.set()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self.controller.silent

    @property
    def idle(self) -> bool:
        """Nothing waiting to be delivered."""
        return not self.controller.outbox and self._inflight is None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self.controller.boot()
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"sim-{self.pile_id}-tick")
        self._ticker.add_done_callback(report_crash)
        if not self.paused:
            self._start_net()

    def _start_net(self) -> None:
        self._net = [
            asyncio.create_task(self._send_loop(), name=f"sim-{self.pile_id}-send"),
            asyncio.create_task(self._poll_loop(), name=f"sim-{self.pile_id}-poll"),
        ]
        for task in self._net:
            task.add_done_callback(report_crash)

    async def _stop_net(self) -> None:
        tasks, self._net = self._net, []
        await cancel_all(tasks)

    async def stop(self) -> None:
        await self._stop_net()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    def pause(self) -> None:
        if self.paused:
            return
        self.controller.set_silent(True)
        # Cutting the link mid-request is the point: an in-flight batch stays in
        # `_inflight` and goes out again, same ids, after resume.
        tasks, self._net = self._net, []
        for task in tasks:
            task.cancel()

    def resume(self) -> None:
        if not self.paused:
            return
        self.controller.set_silent(False)
        if self._http is not None:
            self._start_net()

    # ---- physics --------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        await drive(self.controller, self._wake)

    # ---- events out -----------------------------------------------------------------------
    async def _send_loop(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            if self._inflight is None:
                if not self.controller.outbox:
                    self._queued.clear()
                    await self._queued.wait()
                    await asyncio.sleep(DEBOUNCE_S)
                    continue
                self._inflight = self.controller.take_batch(MAX_BATCH)
                # Serialised once: a retry must send byte-identical events.
                self._inflight_body = json.dumps(
                    {"events": self._inflight}, ensure_ascii=False, separators=(",", ":")
                ).encode()
            if await self._post_inflight():
                self._inflight = None
                backoff = BACKOFF_START_S
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2.0, BACKOFF_MAX_S)

    async def _post_inflight(self) -> bool:
        """True when the batch is done with (delivered or rejected for good)."""
        assert self._http is not None and self._inflight is not None
        body = self._inflight_body
        headers = signed_headers(self.pile_id, self._secret, body, time.time())
        try:
            async with self._http.post(
                self._events_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s: sending %d events failed (%s); retrying",
                        self.pile_id, len(self._inflight), exc.__class__.__name__)
            return False
        if status == 429 or status >= 500:
            log.warning("%s: server answered %d to %d events; retrying",
                        self.pile_id, status, len(self._inflight))
            return False
        if status >= 300:
            # Our bug or a misconfigured pile: retrying the same bytes would loop forever.
            log.error("%s: server rejected %d events with %d, dropping them: %s",
                      self.pile_id, len(self._inflight), status, text[:MAX_ERROR_BODY])
            return True
        self.events_sent += len(self._inflight)
        self.controller.handle_commands(_commands(text, self.pile_id))
        return True

    # ---- commands in ----------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        assert self._http is not None
        backoff = BACKOFF_START_S
        timeout = aiohttp.ClientTimeout(total=self.long_poll_s + 10.0)
        while True:
            started = time.monotonic()
            # A fresh nonce signed with the query: the service accepts a poll's signature once,
            # and a pile that polls again within the same second must not reuse it.
            query = f"wait={self.long_poll_s:g}&nonce={secrets.token_hex(8)}"
            headers = signed_headers(self.pile_id, self._secret, query.encode(), time.time())
            headers.pop("Content-Type", None)
            try:
                async with self._http.get(f"{self._commands_url}?{query}", headers=headers,
                                          timeout=timeout) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("%s: command poll failed (%s)", self.pile_id, exc.__class__.__name__)
                status, text = 0, ""
            if 200 <= status < 300:
                backoff = BACKOFF_START_S
                commands = _commands(text, self.pile_id)
                self.controller.handle_commands(commands)
                gap = MIN_POLL_GAP_S - (time.monotonic() - started)
                if not commands and gap > 0:
                    await asyncio.sleep(gap)
                continue
            if status and backoff == BACKOFF_START_S:  # once per failure streak, not per retry
                log.warning("%s: command poll answered %d: %s",
                            self.pile_id, status, text[:MAX_ERROR_BODY])
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2.0, BACKOFF_MAX_S)


async def drive(controller: PileController, wake: asyncio.Event) -> None:
    """Tick the controller at its next deadline, or at once when `wake` is set; forever."""
    clock = controller.clock
    while True:
        wake.clear()
        controller.tick(clock.mono())
        delay = controller.next_deadline() - clock.mono()
        if delay <= 0:
            await asyncio.sleep(0)  # never starve the loop, even if a deadline misbehaves
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def report_crash(task: asyncio.Task[None]) -> None:
    # These loops never end on their own; a silent death would just look like an offline pile.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("simulator task %s crashed", task.get_name(), exc_info=exc)


def _commands(text: str, pile_id: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        log.warning("%s: server answer is not JSON: %s", pile_id, text[:MAX_ERROR_BODY])
        return []
    commands = data.get("commands") if isinstance(data, dict) else None
    return commands if isinstance(commands, list) else []
