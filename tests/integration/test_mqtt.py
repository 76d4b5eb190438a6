"""The MQTT device transport against the real broker on 127.0.0.1:1883, on SQLite and PostgreSQL.

A separate `aiomqtt` client plays the pile: signed envelopes to `{prefix}/{id}/events`, and it
reads `acks`, `commands` and `errors`. Every test uses its own topic prefix, so parallel runs
on one broker never see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import func, select

from bot.context import CTX
from bot.piles import mqtt
from core.billing import wallet
from core.billing.wallet import LedgerEntry
from core.charging import sessions as charging
from core.charging.tables import Charge
from core.config_sections import MqttSettings
from core.db import transaction
from core.piles.auth import sign
from core.piles.tables import Pile, PileEvent, RejectedEvent
from core.riders import identities as riders
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings

HOST, PORT = "127.0.0.1", 1883
PILE = "P0001"
T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)


def _broker_up() -> bool:
    try:
        socket.create_connection((HOST, PORT), timeout=1).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _broker_up(), reason=f"no MQTT broker on {HOST}:{PORT}")


def envelope(body: bytes | str, *, secret: str = PILE_SECRET, at: float | None = None,
             sig: str | None = None) -> bytes:
    text = body if isinstance(body, str) else body.decode()
    ts = int(time.time() if at is None else at)
    return json.dumps({"ts": ts, "sig": sig or sign(secret, ts, text.encode()),
                       "body": text}).encode()


class MqttPile:
    """The pile's side: publishes envelopes, collects what the service sends back by kind."""

    def __init__(self, prefix: str, pile_id: str = PILE) -> None:
        self.prefix, self.pile_id = prefix, pile_id
        self.inbox: dict[str, asyncio.Queue[dict[str, Any]]] = {
            k: asyncio.Queue() for k in ("acks", "commands", "errors")}
        self.seq = 0

    async def __aenter__(self) -> MqttPile:
        self.client = aiomqtt.Client(HOST, PORT, identifier=f"pile-{uuid.uuid4().hex[:8]}")
        await self.client.__aenter__()
        await self.client.subscribe(f"{self.prefix}/{self.pile_id}/+", qos=1)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self.client.messages:
            kind = str(message.topic).rsplit("/", 1)[1]
            if kind in self.inbox:
                self.inbox[kind].put_nowait(json.loads(message.payload))

    def ev(self, type_: str, at: datetime, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"id": f"m{self.seq}", "type": type_, "ts": at.isoformat(), **fields}

    async def publish(self, payload: bytes) -> None:
        await self.client.publish(f"{self.prefix}/{self.pile_id}/events", payload, qos=1)

    async def send(self, events: list[dict[str, Any]]) -> bytes:
        payload = envelope(json.dumps({"events": events}))
        await self.publish(payload)
        return payload

    async def next(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.inbox[kind].get(), timeout)

    async def nothing(self, kind: str, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        assert self.inbox[kind].empty(), self.inbox[kind].get_nowait()


@pytest.fixture
async def broker_app(db_url: str) -> AsyncIterator[tuple[Running, str]]:
    prefix = f"test-{uuid.uuid4().hex[:10]}/piles"
    srv = start_server(make_settings(db_url))
    ctx = srv.app[CTX]
    cfg = MqttSettings(enabled=True, host=HOST, port=PORT, topic_prefix=prefix, sweep_s=0.2)
    bridge = mqtt.setup(srv.app, ctx, cfg)
    assert bridge is not None
    async with srv as running:
        await asyncio.wait_for(bridge.connected.wait(), 5)
        yield running, prefix


async def count(server: Running, model: Any, *where: Any) -> int:
    async with server.ctx.sm() as s:
        return await s.scalar(select(func.count()).select_from(model).where(*where)) or 0


async def test_a_charge_over_mqtt_is_billed_once(broker_app: tuple[Running, str]) -> None:
    server, prefix = broker_app
    ctx = server.ctx
    await seed_city(ctx)
    async with MqttPile(prefix) as pile:
        now = datetime.now(UTC)
        await pile.send([pile.ev("heartbeat", now, signal_dbm=-70)]
                        + [pile.ev("port_status", now, port=n, status="idle") for n in (1, 2)])
        ack = await pile.next("acks")
        assert (ack["accepted"], ack["duplicates"]) == (3, 0) and isinstance(ack["ts"], int)
        async with ctx.sm() as s:
            assert (await s.get(Pile, PILE)).online

        # A rider presses Start: the start command reaches the pile at once (wake_pile), not
        # with the periodic sweep, which is made too slow to matter here.
        server.app[mqtt.MQTT].cfg.sweep_s = 30
        await asyncio.sleep(0.3)  # the sweep loop now waits 30 s
        async with transaction(ctx.sm) as s:
            rider = await riders.rider_for(s, "webchat", "mqtt-rider")
            await wallet.post(s, rider.id, "topup", 2000, "mqtt-topup")
            charge = await charging.start_charge(s, rider, f"{PILE}-01", ctx.settings, ctx.clock())
            charge_id = charge.id
        t = time.monotonic()
        ctx.wake_pile(PILE)
        cmds = (await pile.next("commands"))["commands"]
        assert time.monotonic() - t < 1.0
        assert [(c["type"], c["port"], c["session"]) for c in cmds] == [
            ("start", 1, f"S{charge_id}")]

        # The whole session in one batch, then the very same message again.
        start = T0
        batch = [pile.ev("command_ack", start, command=cmds[0]["id"], ok=True),
                 pile.ev("session_started", start, port=1, session=cmds[0]["session"])]
        batch += [pile.ev("meter", start + timedelta(seconds=30 * k), port=1,
                          session=cmds[0]["session"], power_w=180, energy_wh=round(1.5 * k))
                  for k in range(1, 20)]
        batch.append(pile.ev("session_ended", start + timedelta(minutes=10), port=1,
                             session=cmds[0]["session"], reason="full", energy_wh=30,
                             duration_s=600))
        payload = await pile.send(batch)
        ack = await pile.next("acks")
        assert (ack["accepted"], ack["duplicates"]) == (len(batch), 0)
        async with ctx.sm() as s:
            charge = await s.get(Charge, charge_id)
            assert charge.state == "settled" and charge.amount_fen > 0
            balance = (await s.get(riders.Rider, rider.id)).balance_fen
        assert balance == 2000 - charge.amount_fen

        await pile.publish(payload)
        ack = await pile.next("acks")
        assert (ack["accepted"], ack["duplicates"]) == (0, len(batch))
        assert await count(server, LedgerEntry, LedgerEntry.kind == "charge") == 1
        assert await count(server, PileEvent, PileEvent.pile_id == PILE) == len(batch) + 3
        async with ctx.sm() as s:
            assert (await s.get(riders.Rider, rider.id)).balance_fen == balance
        await pile.nothing("errors", 0)


async def test_a_command_queued_elsewhere_is_swept_out(broker_app: tuple[Running, str]) -> None:
    """No wake-up (another process queued it): the periodic sweep still delivers it."""
    server, prefix = broker_app
    ctx = server.ctx
    await seed_city(ctx)
    async with MqttPile(prefix) as pile:
        now = datetime.now(UTC)
        await pile.send([pile.ev("heartbeat", now), pile.ev("port_status", now, port=2,
                                                             status="idle")])
        await pile.next("acks")
        async with transaction(ctx.sm) as s:
            rider = await riders.rider_for(s, "webchat", "sweep-rider")
            await wallet.post(s, rider.id, "topup", 1000, "sweep-topup")
            await charging.start_charge(s, rider, f"{PILE}-02", ctx.settings, ctx.clock())
        cmds = (await pile.next("commands", 3))["commands"]
        assert [c["type"] for c in cmds] == ["start"]
        await pile.nothing("commands", 0.5)  # handed out once, until due for a resend


async def test_bad_messages_get_an_error_and_change_nothing(
    broker_app: tuple[Running, str],
) -> None:
    server, prefix = broker_app
    await seed_city(server.ctx)
    async with MqttPile(prefix) as pile:
        body = json.dumps({"events": [pile.ev("heartbeat", datetime.now(UTC))]})

        await pile.publish(envelope(body, sig="0" * 64))
        err = await pile.next("errors")
        assert (err["error"], err["status"]) == ("bad or stale signature", 401)

        await pile.publish(envelope(body, secret="not-the-secret"))
        assert (await pile.next("errors"))["status"] == 401

        await pile.publish(envelope(body, at=time.time() - 600))  # outside the replay window
        assert (await pile.next("errors"))["error"] == "bad or stale signature"

        await pile.publish(b"not json at all")
        assert (await pile.next("errors"))["field"] == "message"

        await pile.publish(envelope("{not json"))
        assert (await pile.next("errors"))["field"] == "body"

        await pile.publish(envelope(json.dumps({"events": []})))
        assert (await pile.next("errors"))["field"] == "events"

        assert await count(server, PileEvent) == 0
        async with server.ctx.sm() as s:
            assert not (await s.get(Pile, PILE)).online
        await pile.nothing("acks", 0)

        # A bad event is refused alone, in the ack, and kept: the rest of its batch is applied.
        bad = {"events": [pile.ev("meter", datetime.now(UTC), port=1, session="S1",
                                  energy_wh=5), pile.ev("heartbeat", datetime.now(UTC))]}
        await pile.publish(envelope(json.dumps(bad)))
        ack = await pile.next("acks")
        assert ack["accepted"] == 1
        assert [r["field"] for r in ack["rejected"]] == ["events[0].power_w"], ack
        await pile.publish(envelope(json.dumps({"events": [{"id": "x", "type": "nope",
                                                            "ts": "2025-01-01T00:00:00Z"}]})))
        assert [r["field"] for r in (await pile.next("acks"))["rejected"]] == ["events[0].type"]
        assert await count(server, PileEvent) == 1
        assert await count(server, RejectedEvent) == 2

        # The loop survived all of it: a good message is still taken.
        await pile.publish(envelope(body))
        assert (await pile.next("acks"))["accepted"] == 1

    async with MqttPile(prefix, "P9999") as stranger:
        await stranger.publish(envelope(body))
        err = await stranger.next("errors")
        assert (err["error"], err["status"]) == ("bad or stale signature", 401)


async def test_no_broker_does_not_stop_the_app(db_url: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind((HOST, 0))
        free = s.getsockname()[1]
    srv = start_server(make_settings(db_url))
    cfg = MqttSettings(enabled=True, host=HOST, port=free, reconnect_min_s=0.05,
                            reconnect_max_s=0.1)
    bridge = mqtt.setup(srv.app, srv.app[CTX], cfg)
    assert bridge is not None
    async with srv as running:
        await asyncio.sleep(0.4)  # several failed attempts
        async with running.http.get(running.url + "/healthz") as r:
            assert r.status == 200
        assert not bridge.connected.is_set() and bridge.connections == 0


def test_disabled_by_default() -> None:
    from aiohttp import web

    app = web.Application()
    assert mqtt.setup(app, None, MqttSettings()) is None  # type: ignore[arg-type]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private Mosquitto with a TLS listener only, on a certificate from a throwaway CA."""
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("no mosquitto binary to run a TLS broker")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt",
             cwd=tmp_path)
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    (tmp_path / "mosquitto.conf").write_text(
        # `user root`: as root, Mosquitto would drop to its own user and not read our 0700 tmp.
        f"user root\nlistener {port} {HOST}\nallow_anonymous true\ncafile {tmp_path}/ca.crt\n"
        f"certfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            time.sleep(0.05)
        yield port, tmp_path / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_tls_to_the_broker_is_verified(db_url: str, tls_broker: tuple[int, Path]) -> None:
    port, ca = tls_broker
    prefix = f"tls-{uuid.uuid4().hex[:8]}/piles"
    # Trusting our CA: the bridge connects and a signed batch is stored and acknowledged.
    srv = start_server(make_settings(db_url))
    cfg = MqttSettings(enabled=True, host=HOST, port=port, topic_prefix=prefix, tls=True,
                       ca_file=str(ca), sweep_s=0.2)
    bridge = mqtt.setup(srv.app, srv.app[CTX], cfg)
    assert bridge is not None
    async with srv as server:
        await asyncio.wait_for(bridge.connected.wait(), 10)
        await seed_city(server.ctx)
        context = mqtt.tls_context(cfg)
        async with aiomqtt.Client(HOST, port, tls_context=context) as pile:
            await pile.subscribe(f"{prefix}/{PILE}/acks", qos=1)
            body = json.dumps({"events": [{"id": "t1", "type": "heartbeat",
                                           "ts": datetime.now(UTC).isoformat()}]})
            await pile.publish(f"{prefix}/{PILE}/events", envelope(body), qos=1)
            async with asyncio.timeout(10):
                async for message in pile.messages:
                    assert json.loads(message.payload)["accepted"] == 1
                    break
        assert await count(server, PileEvent, PileEvent.pile_id == PILE) == 1

    # Without our CA the broker's certificate is not trusted: no connection, the app still up.
    srv = start_server(make_settings(db_url))
    untrusted = MqttSettings(enabled=True, host=HOST, port=port, topic_prefix=prefix, tls=True,
                             reconnect_min_s=0.1, reconnect_max_s=0.2)
    bridge = mqtt.setup(srv.app, srv.app[CTX], untrusted)
    assert bridge is not None
    async with srv as server:
        await asyncio.sleep(1.0)  # several connection attempts, all refused
        assert bridge.connections == 0 and not bridge.connected.is_set()
        async with server.http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
