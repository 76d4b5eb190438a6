"""An OCPP 1.6J charge point for tests, built with the `ocpp` package's own `ChargePoint` over a
real WebSocket (aiohttp's client): it shares nothing with the gateway's code.

It answers the central system's calls the way a compliant charge point does and records each,
so a test can wait for `RemoteStartTransaction`, `ChangeAvailability`, … to arrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AvailabilityStatus,
    RemoteStartStopStatus,
    ResetStatus,
    UnlockStatus,
)

from core.db import transaction
from core.piles import fleet
from core.piles.tables import PileProtocol
from tests.support.journey import wait_until


class ClientSocket:
    """`recv()`/`send()` over aiohttp's client WebSocket, as the `ocpp` package wants."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def recv(self) -> str:
        msg = await self.ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"websocket {msg.type.name}")
        return str(msg.data)

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)


def ocpp_time(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestPoint(ChargePoint):
    """A charge point that accepts what it is asked and remembers it."""

    __test__ = False  # not a pytest class

    def __init__(self, cp_id: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(cp_id, ClientSocket(ws), response_timeout=15)
        self.ws = ws
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def received(self, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.calls if name == action]

    async def wait_for(self, action: str, count: int = 1, timeout: float = 15) -> dict[str, Any]:
        """The `count`-th call of `action` the central system made, once it has arrived."""
        await wait_until(lambda: len(self.received(action)) >= count, timeout=timeout)
        return self.received(action)[count - 1]

    async def send(self, payload: Any, unique_id: str | None = None) -> Any:
        """One call to the central system; the same `unique_id` twice is a resend."""
        return await self.call(payload, suppress=False, unique_id=unique_id)

    @on(Action.remote_start_transaction)
    def tp_remote_start(self, id_tag: str, connector_id: int | None = None, **kw: Any) -> Any:
        self.calls.append(("RemoteStartTransaction",
                           {"id_tag": id_tag, "connector_id": connector_id, **kw}))
        return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.remote_stop_transaction)
    def tp_remote_stop(self, transaction_id: int, **kw: Any) -> Any:
        self.calls.append(("RemoteStopTransaction", {"transaction_id": transaction_id, **kw}))
        return call_result.RemoteStopTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.reset)
    def tp_reset(self, type: str, **kw: Any) -> Any:  # noqa: A002 - OCPP's field name
        self.calls.append(("Reset", {"type": type, **kw}))
        return call_result.Reset(status=ResetStatus.accepted)

    @on(Action.unlock_connector)
    def tp_unlock(self, connector_id: int, **kw: Any) -> Any:
        self.calls.append(("UnlockConnector", {"connector_id": connector_id, **kw}))
        return call_result.UnlockConnector(status=UnlockStatus.unlocked)

    @on(Action.change_availability)
    def tp_availability(self, connector_id: int, type: str, **kw: Any) -> Any:  # noqa: A002
        self.calls.append(("ChangeAvailability",
                           {"connector_id": connector_id, "type": type, **kw}))
        return call_result.ChangeAvailability(status=AvailabilityStatus.accepted)

    # --- what a charge point says -------------------------------------------------------

    async def boot(self) -> Any:
        return await self.send(call.BootNotification(
            charge_point_model="EB-2", charge_point_vendor="TestVendor",
            firmware_version="1.6.2"))

    async def status(self, connector: int, status: str, at: datetime,
                     error_code: str = "NoError", **extra: Any) -> Any:
        return await self.send(call.StatusNotification(
            connector_id=connector, error_code=error_code, status=status,
            timestamp=ocpp_time(at), **extra))

    async def meter(self, connector: int, tx: int, at: datetime, **measurands: tuple[str, str]
                    ) -> Any:
        """MeterValues with one meterValue: `energy=("1.0125", "kWh")`, `power=("250.5", "W")`,
        `temperature=("36.5", "Celsius")`, `voltage=…`, `current=…`."""
        names = {"energy": "Energy.Active.Import.Register", "power": "Power.Active.Import",
                 "temperature": "Temperature", "voltage": "Voltage",
                 "current": "Current.Import"}
        sampled = [{"value": value, "measurand": names[key], "unit": unit,
                    "context": "Sample.Periodic"}
                   for key, (value, unit) in measurands.items()]
        return await self.send(call.MeterValues(
            connector_id=connector, transaction_id=tx,
            meter_value=[{"timestamp": ocpp_time(at), "sampledValue": sampled}]))


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic auth (security profile 1)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def connected(url: str, cp_id: str, password: str) -> AsyncIterator[TestPoint]:
    """A charge point connected to `url` (the test server), serving calls until the block ends."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{url}/ocpp/{cp_id}", protocols=["ocpp1.6"],
            headers=basic_auth(cp_id, password)) as ws:
        assert ws.protocol == "ocpp1.6"
        point = TestPoint(cp_id, ws)
        task = asyncio.create_task(point.start())
        try:
            yield point
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task


async def add_charge_point(ctx: Any, cp_id: str = "CP001", pile_id: str = "P0201",
                           ports: int = 2, site_id: str = "T01") -> str:
    """An OCPP pile on an existing site, as `chargebot piles add --protocol ocpp16` makes one;
    returns its secret (the Basic-auth password)."""
    secret = secrets.token_hex(16)
    async with transaction(ctx.sm) as session:
        await fleet.add_pile(session, site_id, pile_id, ports, secret=secret,
                             protocol=PileProtocol.ocpp16, wire_id=cp_id)
    return secret
