"""What a simulated OCPP 1.6J charge point says (simulator/ocpp.py has the link and the
mapping's table): the controller's events become calls waiting in `queue`, built into
payloads (`ocpp.v16.call`) only when they go, with the transaction bookkeeping in between —
sessions ↔ transactionIds, each connector's energy register, the stop reasons the point chose.
No socket here, and nothing awaits.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ocpp.v16 import call

from simulator.controller import PileController
from simulator.state import FAULT_DETAILS

log = logging.getLogger("chargebot.simulator")

VENDOR = "chargebot-sim"
MAX_QUEUE = 20_000
ERROR_CODES = {
    "overload": "OverCurrentFailure", "short_circuit": "OverCurrentFailure",
    "over_temperature": "HighTemperature", "leakage": "GroundFailure",
    "over_voltage": "OverVoltage", "under_voltage": "UnderVoltage",
    "meter_fault": "PowerMeterFailure", "relay_stuck": "PowerSwitchFailure",
    "relay_open": "PowerSwitchFailure", "comm_loss": "InternalError",
}
STOP_REASONS = {"full": "Local", "limit": "Local", "user": "Remote",
                "unplugged": "EVDisconnected", "no_load": "EVDisconnected",
                "power_loss": "PowerLoss", "fault": "Other"}
# Ends after which the bike may still be on the plug: the connector shows Finishing first.
FINISHING_AFTER = frozenset({"full", "limit", "user"})
TRANSACTIONAL = frozenset({"start", "meter", "stop"})


@dataclass
class Outgoing:
    """One call waiting to go; its payload is built when it goes (a StopTransaction needs the
    transactionId that the StartTransaction before it is answered with)."""

    kind: str  # status | heartbeat | start | meter | stop
    fields: dict[str, Any]
    session: str | None = None
    unique_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the same on a resend
    errors: int = 0


def wire_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _virtual(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts).timestamp()


def _error_code(faults: Collection[str]) -> tuple[str, str | None]:
    """(errorCode, vendorErrorCode) of the port's first fault, by name."""
    for code in sorted(faults):
        return ERROR_CODES.get(code, "OtherError"), code
    return "OtherError", None


def _status(connector: int, status: str, at: float, faults: Collection[str] = ()) -> Outgoing:
    error, vendor_code = _error_code(faults) if faults else ("NoError", None)
    return Outgoing("status", {"connector_id": connector, "status": status, "error_code": error,
                               "vendor_error_code": vendor_code, "ts": at})


class Messages:
    def __init__(self, controller: PileController, cp_id: str) -> None:
        self.controller = controller
        self.cp_id = cp_id
        self.queue: deque[Outgoing] = deque()
        self._sent: dict[int, tuple[str, str]] = {}  # connector → (status, errorCode) it has
        self._last_fault: dict[int, str] = {}
        # Transactions: session ↔ transactionId, and what a session's messages are built from.
        self.transactions: dict[str, int] = {}
        self.session_of: dict[int, str] = {}
        self.port_of: dict[str, int] = {}
        self._meter_start: dict[str, int] = {}
        self._start_v: dict[str, float] = {}
        self._start_wall: dict[str, float] = {}
        self.stop_reason: dict[str, str] = {}  # session → the reason when the point stopped it
        self._suspended: set[str] = set()  # sessions whose bike draws (almost) nothing
        # Each connector's energy register (Wh): a real meter does not start at zero.
        meters = random.Random(f"{cp_id}:register")
        self._register = {n: meters.randint(1_000, 900_000) for n in controller.ports}

    def after_boot(self) -> None:
        """What was not sent before the link dropped is history now, except transactions;
        fresh statuses of every connector tell the present, first."""
        self.drain()
        kept = [out for out in self.queue if out.kind in TRANSACTIONAL]
        self.queue.clear()
        self.queue.extend(self.fresh_statuses() + kept)
        self._sent.clear()

    def _wall(self, virtual: float) -> float:
        """The wall time of a virtual instant (the clock runs `speed` times faster)."""
        clock = self.controller.clock
        return time.time() - (clock.now() - virtual) / clock.speed

    def _session_time(self, session: str, virtual: float) -> float:
        return self._start_wall[session] + (virtual - self._start_v[session])

    def drain(self) -> None:
        for event in self.controller.take_batch():
            self._translate(event)
        while len(self.queue) > MAX_QUEUE:
            self._shed_one()

    def _shed_one(self) -> None:
        """Offline for hours: readings and statuses go first, transactions' ends last."""
        for i, out in enumerate(self.queue):
            if out.kind in ("meter", "status", "heartbeat"):
                del self.queue[i]
                return
        self.queue.popleft()

    def _status(self, connector: int, status: str, at: float, faults: Collection[str] = (),
                ) -> None:
        self.queue.append(_status(connector, status, at, faults))

    def _translate(self, event: dict[str, Any]) -> None:
        kind, at_v = event["type"], _virtual(event["ts"])
        port_no = event.get("port")
        if kind == "heartbeat":
            if not any(out.kind == "heartbeat" for out in self.queue):
                self.queue.append(Outgoing("heartbeat", {}))
        elif kind == "port_status" and port_no and event["status"] != "charging":
            # Charging is told right after its StartTransaction (session_started).
            self._port_status(port_no, event["status"], self._wall(at_v))
        elif kind == "fault":
            self._fault(port_no, event["code"], self._wall(at_v))
        elif kind == "fault_cleared" and not port_no:
            pile = self.controller.pile_faults
            self._status(0, "Faulted" if pile else "Available", self._wall(at_v), pile)
        elif kind == "session_started":
            self._started(event, at_v)
        elif kind == "meter":
            self._meter(event, at_v)
        elif kind == "session_ended":
            self._ended(event, at_v)
        # command_ack: the answer to its call (simulator/ocpp.py); fault_cleared on a port: its
        # status follows

    def _port_status(self, number: int, status: str, at: float) -> None:
        port = self.controller.ports[number]
        if status in ("fault", "offline") and port.faults:
            self._status(number, "Faulted", at, port.faults)
        elif status == "fault" and not self.controller.pile_faults:
            self._status(number, "Faulted", at, [self._last_fault.get(number, "")])
        elif status in ("fault", "offline"):
            self._status(number, "Unavailable", at)  # locked, or the whole pile is faulted
        else:
            self._status(number, "Preparing" if status == "plugged" else "Available", at)

    def _fault(self, number: int | None, code: str, at: float) -> None:
        if not number:
            self._status(0, "Faulted", at, [code])
            return
        self._last_fault[number] = code
        port = self.controller.ports[number]
        # A fault the charge survives is a warning: Charging with its errorCode (1.6 §4.9).
        self._status(number, "Charging" if port.session is not None else "Faulted", at, [code])

    def _started(self, event: dict[str, Any], at_v: float) -> None:
        session, number = event["session"], event["port"]
        self.port_of[session] = number
        self._start_v[session] = at_v
        self._start_wall[session] = self._wall(at_v)
        self._meter_start[session] = self._register[number]
        self.queue.append(Outgoing("start", {"connector_id": number}, session))
        self._status(number, "Charging", self._start_wall[session])

    def _meter(self, event: dict[str, Any], at_v: float) -> None:
        session = event["session"]
        if session not in self._start_v:
            return
        energy = Decimal(str(event.get("energy_wh") or 0))
        values = [("Energy.Active.Import.Register", "kWh",
                   f"{(self._meter_start[session] + energy) / 1000:.4f}"),
                  ("Power.Active.Import", "W", f"{float(event.get('power_w') or 0):.1f}")]
        for measurand, unit, key, digits in (("Voltage", "V", "voltage_v", 1),
                                             ("Current.Import", "A", "current_a", 3),
                                             ("Temperature", "Celsius", "temperature_c", 1)):
            if isinstance(value := event.get(key), int | float):
                values.append((measurand, unit, f"{value:.{digits}f}"))
        self.queue.append(Outgoing("meter", {
            "connector_id": event["port"],
            "meter_value": [{
                "timestamp": wire_time(self._session_time(session, at_v)),
                "sampled_value": [{"value": v, "measurand": m, "unit": u, "location": "Outlet",
                                   "context": "Sample.Periodic"} for m, u, v in values]}]},
            session))
        # The bike stopped drawing (full, floating; or taken away): SuspendedEV, and Charging
        # again only well above the line, so noise around it does not flap the status.
        power, line = float(event.get("power_w") or 0), self.controller.settings.full_threshold_w
        if session not in self._suspended and power < line:
            self._suspended.add(session)
            self._status(event["port"], "SuspendedEV", self._wall(at_v))
        elif session in self._suspended and power > 2 * line:
            self._suspended.discard(session)
            self._status(event["port"], "Charging", self._wall(at_v))

    def _ended(self, event: dict[str, Any], at_v: float) -> None:
        session, number, reason = event["session"], event["port"], event.get("reason", "")
        if session not in self._start_v:
            return
        # The register counts whole watt-hours into meterStop, as a meter's display does.
        meter_stop = self._meter_start[session] + math.floor(float(event.get("energy_wh") or 0))
        self._register[number] = meter_stop
        ocpp_reason = self.stop_reason.pop(session, None) or STOP_REASONS.get(reason, "Other")
        ended = self._session_time(session, at_v)
        self.queue.append(Outgoing("stop", {"meter_stop": meter_stop, "ts": ended,
                                         "reason": ocpp_reason}, session))
        if reason in FINISHING_AFTER:
            self._status(number, "Finishing", self._wall(at_v))

    def fresh_statuses(self) -> list[Outgoing]:
        """Every connector as it is now, for the central system's first word after a boot."""
        now = time.time()
        pile = self.controller.pile_faults
        out = [_status(0, "Faulted" if pile else "Available", now, pile)]
        for number, port in sorted(self.controller.ports.items()):
            if port.session is not None:
                suspended = port.session.id in self._suspended
                out.append(_status(number, "SuspendedEV" if suspended else "Charging", now))
            elif port.faults:
                out.append(_status(number, "Faulted", now, port.faults))
            elif pile or port.locked:
                out.append(_status(number, "Unavailable", now))
            else:
                out.append(_status(number, "Preparing" if port.plugged else "Available", now))
        return out

    def payload(self, out: Outgoing) -> Any:
        """The call for `out`, or None when it has nothing (left) to say."""
        f = out.fields
        if out.kind == "heartbeat":
            return call.Heartbeat()
        if out.kind == "status":
            said = (f["status"], f["error_code"])
            if self._sent.get(f["connector_id"]) == said:
                return None
            vendor = f["vendor_error_code"]
            return call.StatusNotification(
                connector_id=f["connector_id"], error_code=f["error_code"], status=f["status"],
                timestamp=wire_time(f["ts"]),
                info=FAULT_DETAILS.get(vendor) if vendor else None,
                vendor_id=VENDOR if vendor else None, vendor_error_code=vendor)
        assert out.session is not None
        session = out.session
        if out.kind == "start":
            return call.StartTransaction(
                connector_id=f["connector_id"], id_tag=session,
                meter_start=self._meter_start[session],
                timestamp=wire_time(self._start_wall[session]))
        tx = self.transactions.get(session)
        if tx is None:
            log.warning("%s: %s of session %s has no transaction: dropped", self.cp_id,
                        out.kind, session)
            if out.kind == "stop":
                self.forget(session)
            return None
        if out.kind == "meter":
            return call.MeterValues(connector_id=f["connector_id"], transaction_id=tx,
                                    meter_value=f["meter_value"])
        return call.StopTransaction(meter_stop=f["meter_stop"], timestamp=wire_time(f["ts"]),
                                    transaction_id=tx, reason=f["reason"], id_tag=session)

    def answered(self, out: Outgoing, result: Any) -> str | None:
        """Keep what the answer to `out` says; returns a session the point must stop now."""
        if out.kind == "status":
            self._sent[out.fields["connector_id"]] = (out.fields["status"],
                                                      out.fields["error_code"])
        elif out.kind == "start" and out.session is not None:
            tx = int(result.transaction_id)
            self.transactions[out.session] = tx
            self.session_of[tx] = out.session
            status = (result.id_tag_info or {}).get("status")
            port = self.controller.ports[out.fields["connector_id"]]
            if status != "Accepted" and port.session is not None and (
                    port.session.id == out.session):
                # StopTransactionOnInvalidId: the charge point ends what it may not run.
                log.info("%s: idTag %s is %s: stopping", self.cp_id, out.session, status)
                self.stop_reason[out.session] = "DeAuthorized"
                return out.session
        elif out.kind == "stop" and out.session is not None:
            self.forget(out.session)
        return None

    def forget(self, session: str) -> None:
        tx = self.transactions.pop(session, None)
        if tx is not None:
            self.session_of.pop(tx, None)
        for table in (self.port_of, self._meter_start, self._start_v, self._start_wall):
            table.pop(session, None)
        self._suspended.discard(session)
