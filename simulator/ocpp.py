"""Simulated OCPP 1.6J charge points: a PileController on a WebSocket to the OCPP gateway.

Each point wraps the same controller as an HTTP pile (simulator/controller.py) and speaks OCPP
1.6J with the `ocpp` package's own `ChargePoint` over aiohttp's client WebSocket (subprotocol
`ocpp1.6`, HTTP Basic auth: user = the charge point id, password = the pile's secret). What the
controller emits becomes the charge point's calls, the central system's calls become controller
commands:

- connect, and again after a Reset: BootNotification, then StatusNotification of connectors
  0..n as they are now;
- heartbeat → Heartbeat;
- port_status → StatusNotification(connectorId = port): idle → Available, plugged → Preparing,
  a charge → Charging (SuspendedEV while the bike draws under the full threshold: floating, or
  gone), locked → Unavailable, fault → Faulted with an errorCode (below),
  vendorErrorCode = our fault code and info = its text. A pile-wide fault is connector 0
  Faulted and its connectors Unavailable;
- session_started → StartTransaction(idTag = the session, which is the idTag RemoteStart gave;
  meterStart in Wh), then Charging; the transactionId it is answered with names the rest;
- meter → MeterValues: Energy.Active.Import.Register in kWh with 4 decimals (0.1 Wh),
  Power.Active.Import (W), Voltage (V), Current.Import (A), Temperature (Celsius), decimals;
- session_ended → StopTransaction(meterStop in Wh, reason below), then Finishing where the bike
  may still hang on the plug;
- RemoteStartTransaction → start (connectorId, or the first free one): Accepted / Rejected;
- RemoteStopTransaction → stop of that transaction's session: Accepted / Rejected;
- Reset (Soft, Hard) → reboot: Accepted; the point sends the StopTransaction of every charge
  it ended (1.6 §5.14), then drops the link and boots again;
- UnlockConnector → a running transaction is stopped first (1.6 §5.17): Unlocked;
- ChangeAvailability → Inoperative: lock, Operative: unlock (connector 0 = all): Accepted, or
  Scheduled while a charge runs on it.

Stop reasons (OCPP 1.6 has none for "battery full" or "limit reached": those are the charge
point ending a charge by itself, a regular end, so `Local`):

| session_ended reason | StopTransaction.reason |
|---|---|
| full, limit | Local |
| user (our RemoteStop) | Remote |
| unplugged, no_load | EVDisconnected |
| power_loss | PowerLoss, or SoftReset / HardReset when a Reset caused it |
| fault | Other |
| stopped because StartTransaction's idTag was not Accepted | DeAuthorized |
| stopped by UnlockConnector | UnlockCommand |

Fault codes → errorCode: overload, short_circuit → OverCurrentFailure; over_temperature →
HighTemperature; leakage → GroundFailure; over/under_voltage → OverVoltage/UnderVoltage;
meter_fault → PowerMeterFailure; relay_stuck, relay_open → PowerSwitchFailure; comm_loss →
InternalError; anything else → OtherError. A fault that leaves a charge running is a warning:
Charging with that errorCode.

Delivery: calls go one at a time (OCPP-J). Transaction messages (Start/Stop/MeterValues) wait
for the link and go again, same unique id, while the server does not answer (a timeout, a
dropped link): a StopTransaction is never lost that way; only a CALLERROR answered 5 times
gives one up. Statuses and heartbeats that could not go are replaced by fresh statuses after
the next boot. The calls themselves are built in simulator/ocpp_messages.py; this module holds
the link, the central system's calls and the fleet.

The point's clock, as simulator/ap3000.py's: a transaction is stamped from the wall time it
started plus its virtual duration, so a demo compressed in time still bills virtual durations;
statuses carry the wall time of the moment they describe.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import (
    Action,
    AvailabilityStatus,
    RemoteStartStopStatus,
    ResetStatus,
    UnlockStatus,
)

from simulator.charger import ChargerProfile
from simulator.clock import VirtualClock
from simulator.controller import FIRMWARE, PileController, SimSettings
from simulator.ocpp_messages import TRANSACTIONAL, VENDOR, Messages, Outgoing
from simulator.pile import cancel_all, drive, report_crash
from simulator.state import Port

log = logging.getLogger("chargebot.simulator")
# The `ocpp` package logs every message at INFO: quiet unless asked for.
WIRE_LOG = logging.getLogger("chargebot.simulator.ocpp")

SUBPROTOCOL = "ocpp1.6"
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
CALL_TIMEOUT_S = 30.0  # no answer this long: the call goes again (transaction messages)
CALL_ERRORS_KEPT = 5  # a CallError this many times: the server will not take it; dropped
ANSWER_HOLD_S = 2.0  # our calls wait this long at most for the answer to the server's call


@dataclass(frozen=True)
class PointSpec:
    pile_id: str
    charge_point_id: str
    secret: str = field(repr=False)  # keeps the secret out of logs and tracebacks
    ports: int


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Socket:
    """`recv()`/`send()` over aiohttp's client WebSocket, as the `ocpp` package wants."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def recv(self) -> str:
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                return str(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise ConnectionError(f"websocket {msg.type.name}")

    async def send(self, text: str) -> None:
        if self.ws.closed:
            raise ConnectionError("websocket closed")
        await self.ws.send_str(text)


class _Wire(ChargePoint):  # the ocpp package ships no types: Any to mypy
    """One connection's `ChargePoint`: the central system's calls, handed to the point. Each
    answer holds our own calls back until it has gone (`@after`), so a StartTransaction never
    overtakes the RemoteStartTransaction.conf that allowed it."""

    def __init__(self, point: OcppPoint, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(point.cp_id, _Socket(ws), response_timeout=CALL_TIMEOUT_S,
                         logger=WIRE_LOG)
        self.point = point

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> Any:
        ok = self.point.remote_start(id_tag, connector_id)
        return call_result.RemoteStartTransaction(
            status=RemoteStartStopStatus.accepted if ok else RemoteStartStopStatus.rejected)

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        ok = self.point.remote_stop(transaction_id)
        return call_result.RemoteStopTransaction(
            status=RemoteStartStopStatus.accepted if ok else RemoteStartStopStatus.rejected)

    @on(Action.reset)
    def on_reset(self, type: str, **_: Any) -> Any:  # noqa: A002 - OCPP's field name
        ok = self.point.reset(type)
        return call_result.Reset(status=ResetStatus.accepted if ok else ResetStatus.rejected)

    @on(Action.unlock_connector)
    def on_unlock(self, connector_id: int, **_: Any) -> Any:
        return call_result.UnlockConnector(status=self.point.unlock(connector_id))

    @on(Action.change_availability)
    def on_availability(self, connector_id: int, type: str, **_: Any) -> Any:  # noqa: A002
        return call_result.ChangeAvailability(
            status=self.point.availability(connector_id, type == "Operative"))

    @after(Action.remote_start_transaction)
    def after_remote_start(self, **_: Any) -> None:
        self.point.answered()

    @after(Action.remote_stop_transaction)
    def after_remote_stop(self, **_: Any) -> None:
        self.point.answered()

    @after(Action.reset)
    def after_reset(self, **_: Any) -> None:
        self.point.answered(reboot=True)

    @after(Action.unlock_connector)
    def after_unlock(self, **_: Any) -> None:
        self.point.answered()

    @after(Action.change_availability)
    def after_availability(self, **_: Any) -> None:
        self.point.answered()


class OcppPoint:
    """One charge point: a ticker for the controller and a link that reconnects with backoff."""

    def __init__(self, controller: PileController, cp_id: str, secret: str, url: str, *,
                 model: str = "sim-ocpp") -> None:
        self.controller = controller
        self.pile_id = controller.pile_id
        self.cp_id = cp_id
        self.model = model
        self.url = f"{url.rstrip('/')}/{cp_id}"
        self._secret = secret
        self._http: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._reboot = asyncio.Event()
        self._reset_pending = False
        self._tasks: list[asyncio.Task[None]] = []
        self.messages = Messages(controller, cp_id)
        self._hold_until = 0.0
        self._cmd_seq = 0
        controller.notify = self._on_change

    @property
    def transactions(self) -> dict[str, int]:
        """Open transactions: session (the idTag) → the transactionId the server gave."""
        return self.messages.transactions

    def _on_change(self) -> None:
        self._wake.set()
        self._kick.set()

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self.controller.boot()
        self._tasks = [asyncio.create_task(drive(self.controller, self._wake),
                                           name=f"ocpp-{self.pile_id}-tick"),
                       asyncio.create_task(self._link_loop(), name=f"ocpp-{self.pile_id}-link")]
        for task in self._tasks:
            task.add_done_callback(report_crash)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)

    # ---- the link -------------------------------------------------------------------------
    async def _link_loop(self) -> None:
        assert self._http is not None
        backoff = BACKOFF_START_S
        while True:
            was_up = False
            try:
                async with self._http.ws_connect(
                        self.url, protocols=(SUBPROTOCOL,),
                        headers={"Authorization": _basic_auth(self.cp_id, self._secret)}) as ws:
                    if ws.protocol != SUBPROTOCOL:
                        log.warning("%s: the server did not agree to %s", self.cp_id,
                                    SUBPROTOCOL)
                    else:
                        was_up = True
                        await self._session(ws)
            except aiohttp.WSServerHandshakeError as exc:
                # 401 is a wrong secret or an unregistered id: say so once per failure streak.
                log.log(logging.WARNING if backoff == BACKOFF_START_S else logging.DEBUG,
                        "%s: OCPP handshake refused (%s)", self.cp_id, exc.status)
            except (aiohttp.ClientError, OSError, ConnectionError, TimeoutError) as exc:
                log.info("%s: OCPP link dropped (%s)", self.cp_id, exc.__class__.__name__)
            finally:
                self.connected.clear()
                self._hold_until = 0.0
                self._reset_pending = False
            if self._reboot.is_set():
                self._reboot.clear()
                continue  # a reset: straight back, as a rebooted charge point does
            if was_up:
                backoff = BACKOFF_START_S  # it was up: the drop is news, not a refusal
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2.0, BACKOFF_MAX_S)

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """One connection: the central system's calls are served while we boot and then send;
        whichever ends first (the socket closing, a failed send, a reset) ends both."""
        wire = _Wire(self, ws)
        tasks = [asyncio.create_task(wire.start(), name=f"ocpp-{self.pile_id}-recv"),
                 asyncio.create_task(self._talk(wire), name=f"ocpp-{self.pile_id}-send")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _end(tasks)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def _talk(self, wire: _Wire) -> None:
        while True:
            booted = await wire.call(call.BootNotification(
                charge_point_model=self.model, charge_point_vendor=VENDOR,
                charge_point_serial_number=self.cp_id, firmware_version=FIRMWARE))
            if booted is not None and booted.status == "Accepted":
                break
            # Pending or Rejected: ask again after the interval it gave (1.6 §4.2).
            await asyncio.sleep(max(1.0, float(getattr(booted, "interval", 0) or 10)))
        log.info("%s: OCPP charge point booted", self.cp_id)
        self.messages.after_boot()
        self.connected.set()
        await self._send_loop(wire)

    async def _send_loop(self, wire: _Wire) -> None:
        loop, queue = asyncio.get_running_loop(), self.messages.queue  # one deque, for good
        while True:
            self._kick.clear()
            self.messages.drain()
            if self._reset_pending and not any(out.kind == "stop" for out in queue):
                self._reset_pending = False
                self._reboot.set()
                return
            held = self._hold_until - loop.time()
            if held > 0 or not queue:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(held if held > 0 else None):
                        await self._kick.wait()
                continue
            await self._deliver(wire, queue[0])

    async def _deliver(self, wire: _Wire, out: Outgoing) -> None:
        queue = self.messages.queue
        payload = self.messages.payload(out)
        if payload is None:
            queue.popleft()
            return
        try:
            result = await wire.call(payload, suppress=False, unique_id=out.unique_id)
        except OCPPError as exc:
            out.errors += 1
            log.warning("%s: %s answered with %s (%s)", self.cp_id, out.kind,
                        type(exc).__name__, exc.description)
            if out.kind not in TRANSACTIONAL or out.errors >= CALL_ERRORS_KEPT:
                queue.popleft()
            else:
                await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** out.errors))
            return
        except TimeoutError:
            log.info("%s: no answer to %s in %.0f s", self.cp_id, out.kind, CALL_TIMEOUT_S)
            if out.kind not in TRANSACTIONAL:
                queue.popleft()
            return  # a transaction message goes again, same unique id
        queue.popleft()
        if (session := self.messages.answered(out, result)) is not None:
            self._run({"type": "stop", "port": self.messages.port_of[session],
                       "session": session})
            self._hold_until = 0.0

    # ---- the central system's calls (run on the receive loop: never await here) -----------
    def _hold(self) -> None:
        self._hold_until = asyncio.get_running_loop().time() + ANSWER_HOLD_S

    def answered(self, *, reboot: bool = False) -> None:
        self._hold_until = 0.0
        self._kick.set()
        if reboot:
            self._reset_pending = True  # once the StopTransactions it caused have gone

    def _run(self, cmd: dict[str, Any]) -> bool:
        """A command through the controller; its ack, emitted at once, is taken from the
        outbox here (it is the answer to the call, not a message of its own)."""
        self._hold()
        self._cmd_seq += 1
        cid = f"ocpp:{self.controller.boot_id}:{self._cmd_seq}"
        self.controller.handle_command({**cmd, "id": cid})
        outbox = self.controller.outbox
        for i, event in enumerate(outbox):
            if event["type"] == "command_ack" and event.get("command") == cid:
                del outbox[i]
                return bool(event.get("ok"))
        return False

    def _free_connector(self) -> int | None:
        for number, port in sorted(self.controller.ports.items()):
            if self._startable(port):
                return number
        return None

    def _startable(self, port: Port) -> bool:
        return (port.session is None and not port.locked and not port.faults
                and not self.controller.pile_faults)

    def remote_start(self, id_tag: str, connector_id: int | None) -> bool:
        port = connector_id if connector_id else self._free_connector()
        return port is not None and self._run({"type": "start", "port": port,
                                               "session": id_tag})

    def remote_stop(self, transaction_id: int) -> bool:
        session = self.messages.session_of.get(transaction_id)
        if session is None:
            self._hold()
            return False
        return self._run({"type": "stop", "port": self.messages.port_of[session],
                          "session": session})

    def reset(self, kind: str) -> bool:
        for port in self.controller.ports.values():
            if port.session is not None:
                self.messages.stop_reason[port.session.id] = f"{kind}Reset"  # SoftReset / HardReset
        return self._run({"type": "reboot"})

    def unlock(self, connector_id: int) -> str:
        port = self.controller.ports.get(connector_id)
        self._hold()
        if port is None:
            return UnlockStatus.not_supported
        if port.session is not None:
            session = port.session.id
            self.messages.stop_reason[session] = "UnlockCommand"
            if not self._run({"type": "stop", "port": connector_id, "session": session}):
                return UnlockStatus.unlock_failed
        return UnlockStatus.unlocked

    def availability(self, connector_id: int, operative: bool) -> str:
        if connector_id and connector_id not in self.controller.ports:
            self._hold()
            return AvailabilityStatus.rejected
        ports = ([self.controller.ports[connector_id]] if connector_id
                 else list(self.controller.ports.values()))
        if not self._run({"type": "unlock" if operative else "lock", "port": connector_id}):
            return AvailabilityStatus.rejected
        # A charge runs on: the connector goes out of use once it ends (1.6 §5.2).
        busy = not operative and any(p.session is not None for p in ports)
        return AvailabilityStatus.scheduled if busy else AvailabilityStatus.accepted


async def _end(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until they have ended. A cancel that lands just as a call's answer arrives is
    lost in Python 3.11's `asyncio.wait_for` (the `ocpp` package waits for answers with it),
    and the task would go on forever."""
    cancelled = False
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=0.5)
        except asyncio.CancelledError:
            cancelled = True  # we are being stopped too: finish this first
    for task in tasks:
        if not task.cancelled():
            task.exception()  # seen (the caller raises the one that matters)
    if cancelled:
        raise asyncio.CancelledError


class OcppFleet:
    """Several simulated OCPP 1.6J charge points on one virtual clock, against one central
    system: `url` is its OCPP endpoint without the id (ws://host:port/ocpp)."""

    def __init__(self, url: str, points: list[PointSpec], *, speed: float = 1.0,
                 heartbeat_s: float = 60.0, meter_every_s: float = 30.0,
                 fault_rate_per_hour: float = 0.0, fault_share: float = 0.0,
                 seed: int | None = None,
                 default_profile: ChargerProfile | None = None, model: str = "sim-ocpp") -> None:
        self.url = url
        self.clock = VirtualClock(speed)
        settings = SimSettings(heartbeat_s=heartbeat_s, meter_every_s=meter_every_s,
                               fault_rate_per_hour=fault_rate_per_hour,
                               fault_share=fault_share,
                               default_profile=default_profile)
        self.points: dict[str, OcppPoint] = {}
        for spec in points:
            if spec.pile_id in self.points:
                raise ValueError(f"pile {spec.pile_id} listed twice")
            rng = random.Random(f"{seed}:{spec.pile_id}") if seed is not None else random.Random()
            controller = PileController(spec.pile_id, spec.ports, self.clock, settings, rng)
            self.points[spec.pile_id] = OcppPoint(controller, spec.charge_point_id, spec.secret,
                                                  url, model=model)
        self._http: aiohttp.ClientSession | None = None

    def controller(self, pile_id: str) -> PileController:
        return self.points[pile_id].controller

    @property
    def connected(self) -> int:
        """Charge points whose BootNotification was accepted on a live connection."""
        return sum(p.connected.is_set() for p in self.points.values())

    async def start(self) -> None:
        if self._http is not None:
            return
        self._http = aiohttp.ClientSession()
        if WIRE_LOG.level == logging.NOTSET:  # as the gateway's: set it to read every message
            WIRE_LOG.setLevel(logging.WARNING)
        self.clock.restart()
        for point in self.points.values():
            point.start(self._http)
        log.info("simulated OCPP charge points: %d → %s", len(self.points), self.url)

    async def stop(self) -> None:
        if self._http is None:
            return
        http, self._http = self._http, None
        await asyncio.gather(*(p.stop() for p in self.points.values()))
        await http.close()
