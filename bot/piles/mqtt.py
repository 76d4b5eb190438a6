"""MQTT device transport (DESIGN §3 over a broker): the path for large fleets.

A pile keeps one MQTT connection instead of HTTP requests and a long poll. The rules are the
HTTP contract's, byte for byte: the same HMAC-SHA256 signature over the same `"{ts}.{body}"`,
the same 300 s replay window, the same validation (`events.parse_batch`) and the same group
commit (`IngestWriter`), so event-id idempotency, billing and every other effect are identical.

Topics (`{prefix}` is `mqtt.topic_prefix`, default `piles`; QoS 1 everywhere):

* `{prefix}/{pile_id}/events` — pile → service. Payload, a JSON object:

      {"ts": 1764123456, "sig": "<hex>", "body": "{\\"events\\": [...]}"}

  `body` is the exact JSON text an HTTP pile would POST (`{"events": [EVENT, ...]}`, 1–500
  events); `ts` is unix seconds (an integer, or a string of digits); `sig` is hex
  HMAC-SHA256(pile secret, `"{ts}.{body}"`) where body is the UTF-8 bytes of `body` — exactly
  `X-Timestamp` / `X-Signature` of the HTTP contract (`core.pile_auth.sign`).
* `{prefix}/{pile_id}/acks` — service → pile, after the batch is durably stored:
  `{"ts": <the envelope's ts>, "accepted": n, "duplicates": d, "rejected": [...]}` (the HTTP
  200 answer without the commands; `rejected` lists the batch's bad events, which were kept for
  operators while the rest was applied). A pile that sees no ack resends the same batch;
  duplicates are acknowledged, never applied twice.
* `{prefix}/{pile_id}/commands` — service → pile: `{"commands": [COMMAND, ...]}`, COMMAND as in
  the HTTP contract. Published with each ack that has commands, at once when a command is queued
  in this process (`ctx.wake_pile`), and by a sweep every `sweep_s` (commands queued by another
  process, and resends of unacknowledged ones after `piles.command_resend_s`). A command keeps
  its id when resent: the pile acknowledges with a `command_ack` event as over HTTP.
* `{prefix}/{pile_id}/errors` — service → pile, for a dropped message:
  `{"error": "...", "status": 400|401|503, "field"?: "...", "ts"?: ...}`, the HTTP error bodies
  plus the HTTP status they stand for. `field` names the bad part: `message` (the envelope is
  not `{ts, sig, body}`), `body` (not JSON), or `events` (not a list of 1–500). 401 bad or stale
  signature or unknown pile, 503 not stored (resend later).

Only piles that have sent a valid message over MQTT (within `2 × piles.offline_after_s`) get
commands from the sweep, so HTTP piles of a mixed fleet keep theirs for their long poll.
Several service processes share one fleet with a shared subscription (`shared_group`:
`$share/{group}/{prefix}/+/events`, EMQX and Mosquitto ≥ 1.6). The broker connection is
restored with backoff; a broker outage never stops the app (HTTP keeps working). With
`tls = true` the connection is verified TLS (`ca_file` for a private CA; `cert_file`/`key_file`
when the broker wants client certificates).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
from aiohttp import web

from bot.context import Context
from bot.piles.ingest import WRITER, take_due_commands
from bot.piles.trust import SECRETS, SecretCache
from bot.tasks import stop_task, wait_event
from core.config_sections import MqttSettings
from core.errors import InvalidEvent
from core.piles import events
from core.piles.auth import verify

log = logging.getLogger("chargebot.mqtt")


def tls_context(cfg: MqttSettings) -> ssl.SSLContext | None:
    """Verified TLS (hostname and chain) or none: never a context that skips verification."""
    if not cfg.tls:
        return None
    context = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return context


class _Reject(Exception):
    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.body: dict[str, Any] = {"error": error, "status": status, **extra}


class MqttBridge:
    def __init__(self, app: web.Application, ctx: Context, cfg: MqttSettings) -> None:
        self.app, self.ctx, self.cfg = app, ctx, cfg
        self.prefix = cfg.topic_prefix.strip("/")
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.handled = 0
        self._mqtt_piles: dict[str, float] = {}  # pile id → monotonic time of its last message
        self._woken: set[str] = set()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    # --- topics ---------------------------------------------------------------------------

    def topic(self, pile_id: str, kind: str) -> str:
        return f"{self.prefix}/{pile_id}/{kind}"

    def subscription(self) -> str:
        topic = f"{self.prefix}/+/events"
        return f"$share/{self.cfg.shared_group}/{topic}" if self.cfg.shared_group else topic

    def pile_of(self, topic: str) -> str | None:
        head, tail = f"{self.prefix}/", "/events"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        pile_id = topic[len(head):-len(tail)]
        return pile_id if pile_id and "/" not in pile_id else None

    # --- the connection -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff for as long as the app runs."""
        delay = self.cfg.reconnect_min_s
        while True:
            before = self.connections
            try:
                await self._serve()
            except aiomqtt.MqttError as exc:
                log.warning("MQTT broker %s:%s: %s", self.cfg.host, self.cfg.port, exc)
            except Exception:
                log.exception("MQTT bridge failed")
            finally:
                self.client = None
                self.connected.clear()
            if self.connections > before:  # it was up: the next try starts from the minimum
                delay = self.cfg.reconnect_min_s
            log.info("MQTT reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _serve(self) -> None:
        cfg = self.cfg
        identifier = cfg.client_id or (
            f"chargebot-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        async with aiomqtt.Client(
            cfg.host, cfg.port, identifier=identifier, username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            keepalive=cfg.keepalive_s, timeout=10, tls_context=tls_context(cfg),
        ) as client:
            await client.subscribe(self.subscription(), qos=1)
            self.client = client
            self.connections += 1
            self.connected.set()
            log.info("MQTT connected to %s:%s as %s, subscribed %s",
                     cfg.host, cfg.port, identifier, self.subscription())
            limit = asyncio.Semaphore(max(1, cfg.max_inflight))
            sweeper = asyncio.create_task(self._sweep_loop(client), name="mqtt-commands")
            try:
                async for message in client.messages:
                    await limit.acquire()
                    task = asyncio.create_task(
                        self._handle(client, str(message.topic), message.payload),
                        name="mqtt-message")
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                    task.add_done_callback(lambda _t: limit.release())
            finally:
                await stop_task(sweeper)

    async def stop_inflight(self) -> None:
        tasks = list(self._inflight)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _publish(self, client: aiomqtt.Client, topic: str, doc: dict[str, Any]) -> None:
        try:
            await client.publish(topic, json.dumps(doc, ensure_ascii=False), qos=1, timeout=10)
        except aiomqtt.MqttError as exc:
            log.warning("MQTT publish to %s failed: %s", topic, exc)

    # --- pile → service -------------------------------------------------------------------

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: Any) -> None:
        pile_id = self.pile_of(topic)
        if pile_id is None:
            log.warning("MQTT message on unexpected topic %s dropped", topic[:200])
            return
        try:
            try:
                reply = await self.ingest(pile_id, payload)
            except _Reject as rej:
                log.warning("MQTT message from pile %s dropped: %s", pile_id[:40],
                            rej.body["error"])
                if len(pile_id) <= 32:  # never publish to topics an attacker made up at length
                    await self._publish(client, self.topic(pile_id, "errors"), rej.body)
                return
            self.handled += 1
            ack, cmds = reply
            await self._publish(client, self.topic(pile_id, "acks"), ack)
            if cmds:
                await self._publish(client, self.topic(pile_id, "commands"), {"commands": cmds})
        except Exception:  # one bad message never stops the loop
            log.exception("MQTT message from pile %s failed", pile_id[:40])

    async def ingest(self, pile_id: str, payload: Any
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One signed envelope through the HTTP path; raises `_Reject` with the error body."""
        if len(pile_id) > 32:
            raise _Reject(401, "missing or bad pile id")
        try:
            env = json.loads(payload)
        except (TypeError, ValueError, RecursionError):
            env = None
        if (not isinstance(env, dict) or not isinstance(env.get("body"), str)
                or not isinstance(env.get("sig"), str)
                or not isinstance(env.get("ts"), int | str) or isinstance(env.get("ts"), bool)):
            raise _Reject(400, 'message must be a JSON object {"ts", "sig", "body"}',
                          field="message")
        ts = env["ts"]
        secret = await self.app[SECRETS].get(self.ctx, pile_id)
        if secret is None:
            raise _Reject(401, "bad or stale signature", ts=ts)  # no pile-id probing
        try:
            body = env["body"].encode()
        except UnicodeEncodeError:  # a lone surrogate: no pile signed these bytes
            raise _Reject(401, "bad or stale signature", ts=ts) from None
        if not verify(secret, str(ts), body, env["sig"], time.time()):
            raise _Reject(401, "bad or stale signature", ts=ts)
        self._mqtt_piles[pile_id] = time.monotonic()
        try:
            raw = events.decode_body(body)
        except (ValueError, RecursionError):
            raise _Reject(400, "body is not JSON", field="body", ts=ts) from None
        try:
            batch = events.parse_batch(raw, body)
        except InvalidEvent as exc:
            raise _Reject(400, f"{exc.field}: {exc.problem}", field=exc.field, ts=ts) from None
        try:
            result = await self.app[WRITER].submit(pile_id, batch)
        except Exception:
            raise _Reject(503, "could not store the events, retry", ts=ts) from None
        ack = {"ts": ts, "accepted": result.accepted, "duplicates": result.duplicates,
               "rejected": result.rejected}
        return ack, result.commands

    # --- service → pile: commands queued outside an ingest ---------------------------------

    def woken(self, pile_id: str) -> None:
        """`ctx.wake_pile` hook: a command was just committed for this pile in this process."""
        if pile_id in self._mqtt_piles:
            self._woken.add(pile_id)
            self._wake.set()

    def _live_piles(self) -> set[str]:
        horizon = time.monotonic() - 2 * self.ctx.settings.piles.offline_after_s
        for pid in [p for p, seen in self._mqtt_piles.items() if seen < horizon]:
            del self._mqtt_piles[pid]
        return set(self._mqtt_piles)

    async def _sweep_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await wait_event(self._wake, self.cfg.sweep_s)
            self._wake.clear()
            woken, self._woken = self._woken, set()
            try:
                await self.sweep(client, woken)
            except aiomqtt.MqttError:
                raise
            except Exception:
                log.exception("MQTT command sweep failed")

    async def sweep(self, client: aiomqtt.Client, woken: set[str] | None = None) -> int:
        """Publish the due commands of every MQTT pile that has any; returns piles served."""
        out = await take_due_commands(self.ctx, self._live_piles(), woken)
        for pile_id, cmds in out.items():
            await self._publish(client, self.topic(pile_id, "commands"), {"commands": cmds})
        return len(out)


MQTT = web.AppKey("mqtt_bridge", MqttBridge)


def _hook_wake_pile(ctx: Context, callback: Callable[[str], None]) -> Callable[[], None]:
    """Be told of `ctx.wake_pile(pile_id)`; returns the undo."""
    ctx.pile_listeners.append(callback)
    return lambda: ctx.pile_listeners.remove(callback)


def setup(app: web.Application, ctx: Context, cfg: MqttSettings | None = None
          ) -> MqttBridge | None:
    """Run the MQTT transport with the app when `cfg` (default `ctx.settings.mqtt`) is enabled.

    Call after `bot.piles.http.setup` (it uses that module's ingest writer and secret cache).
    """
    if cfg is None:
        cfg = ctx.settings.mqtt
    if cfg is None or not cfg.enabled:
        return None
    if SECRETS not in app:
        app[SECRETS] = SecretCache()
    bridge = app[MQTT] = MqttBridge(app, ctx, cfg)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        unhook = _hook_wake_pile(ctx, bridge.woken)
        task = asyncio.create_task(bridge.run(), name="mqtt-bridge")
        try:
            yield
        finally:
            unhook()
            await stop_task(task)
            await bridge.stop_inflight()

    app.cleanup_ctx.append(lifecycle)
    return bridge
