"""One connected charge point, as the `ocpp` package sees it: the calls it makes to us.

Each handler turns its call into §3 events and answers only once they are committed
(`Host.submit`): a charge point that gets no answer resends, and the event ids, made from the
message's content or its transaction, make the resend count once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus

from bot.piles.ocpp import store
from bot.piles.ocpp.translate import (
    PORT_STATUS,
    Reading,
    digest,
    end_reason,
    fault_code,
    meter_event,
    parse_time,
    reading,
    wire_time,
)
from core.charging.tables import ChargeState
from core.piles.wire import BatchResult

log = logging.getLogger("chargebot.ocpp")
# Every message in and out, as the `ocpp` package logs them (at INFO): quiet unless asked for.
WIRE_LOG = logging.getLogger("chargebot.ocpp.messages")


class Host(Protocol):
    """What a charge point's handlers need from the gateway."""

    async def submit(self, pile_id: str, events: list[dict[str, Any]]) -> BatchResult: ...

    async def transaction(self, pile_id: str, tx: int) -> store.TxInfo | None: ...

    def remember(self, pile_id: str, tx: int, info: store.TxInfo | None) -> None: ...

    async def charge_by_ref(self, pile_id: str, ref: str
                            ) -> tuple[int, ChargeState] | None: ...

    async def open_faults(self, pile_id: str, port: int) -> list[str]: ...

    def faulted(self, pile_id: str) -> None: ...

    @property
    def heartbeat_interval_s(self) -> int: ...


def _unknown_tx(*parts: Any) -> int:
    """A transactionId for a start we did not ask for (a local card, a tag not ours): negative,
    so it never names a charge, and the same for a resent StartTransaction."""
    return -(int(digest(*parts), 16) % (2**31 - 1)) - 1


class CentralPoint(ChargePoint):  # the ocpp package ships no types: Any to mypy
    def __init__(self, cp_id: str, connection: Any, host: Host, pile_id: str, ports: int,
                 clock: Callable[[], datetime], response_timeout: float = 30) -> None:
        super().__init__(cp_id, connection, response_timeout=response_timeout, logger=WIRE_LOG)
        self.host, self.pile_id, self.ports, self.clock = host, pile_id, ports, clock
        self.statuses: dict[int, str] = {}  # connector → the last status it reported here
        # Connectors whose EV stopped drawing (SuspendedEV) since they last charged: a "Local"
        # stop there is the charge point ending a full charge (充满自停), not the rider.
        self.ev_done: set[int] = set()

    async def _submit(self, events: list[dict[str, Any]]) -> BatchResult:
        return await self.host.submit(self.pile_id, events)

    def _heartbeat(self, event_id: str, **fields: Any) -> dict[str, Any]:
        return {"id": event_id, "type": "heartbeat", "ts": wire_time(self.clock()),
                **{k: v for k, v in fields.items() if v is not None}}

    # --- the charge point's life ----------------------------------------------------------

    @on(Action.boot_notification)
    async def on_boot_notification(self, call_unique_id: str, firmware_version: str | None = None,
                                   **payload: Any) -> Any:
        fw = firmware_version[:64] if isinstance(firmware_version, str) else None
        await self._submit([self._heartbeat(
            f"boot:{digest(call_unique_id, fw, payload)}", firmware=fw)])
        return call_result.BootNotification(
            current_time=wire_time(self.clock()), interval=self.host.heartbeat_interval_s,
            status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    async def on_heartbeat(self, call_unique_id: str, **_: Any) -> Any:
        now = self.clock()
        await self._submit([self._heartbeat(f"hb:{digest(call_unique_id, wire_time(now))}")])
        return call_result.Heartbeat(current_time=wire_time(now))

    @on(Action.status_notification)
    async def on_status_notification(
        self, call_unique_id: str, connector_id: int, error_code: str, status: str,
        timestamp: str | None = None, info: str | None = None, vendor_id: str | None = None,
        vendor_error_code: str | None = None, **_: Any,
    ) -> Any:
        ts = wire_time(parse_time(timestamp) or self.clock())
        base = "st:" + digest(call_unique_id, connector_id, error_code, status, timestamp, info,
                              vendor_id, vendor_error_code)
        events: list[dict[str, Any]] = []
        if 0 <= connector_id <= self.ports:
            place: dict[str, Any] = {"port": connector_id} if connector_id else {}
            if connector_id and status in PORT_STATUS:
                events.append({"id": base, "type": "port_status", "ts": ts,
                               "port": connector_id, "status": PORT_STATUS[status]})
            if status == "Faulted":
                detail = " ".join(str(x) for x in (error_code, info, vendor_id,
                                                   vendor_error_code) if x)
                events.append({"id": f"{base}:f", "type": "fault", "ts": ts, **place,
                               "code": fault_code(error_code, vendor_error_code),
                               "detail": detail[:500]})
            elif self.statuses.get(connector_id, "Faulted") == "Faulted":
                # Leaving Faulted (or the first word since we connected): what it reported
                # before is gone.
                for cause in await self.host.open_faults(self.pile_id, connector_id):
                    events.append({"id": f"{base}:c:{cause}", "type": "fault_cleared",
                                   "ts": ts, **place, "code": cause})
            self.statuses[connector_id] = status
            if status == "SuspendedEV":
                self.ev_done.add(connector_id)
            elif status != "Finishing":
                self.ev_done.discard(connector_id)
        else:
            log.warning("charge point %s: status of connector %s, it has %s", self.id,
                        connector_id, self.ports)
        await self._submit(events or [self._heartbeat(base)])
        if status == "Faulted":
            self.host.faulted(self.pile_id)  # its work order may have taken the port out
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_tag: str, **_: Any) -> Any:
        # Riders start from chat; the idTag is the session ref we gave in RemoteStartTransaction.
        return call_result.Authorize(id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted))

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    async def on_firmware_status(self, **_: Any) -> Any:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    async def on_diagnostics_status(self, **_: Any) -> Any:
        return call_result.DiagnosticsStatusNotification()

    # --- transactions ---------------------------------------------------------------------

    @on(Action.start_transaction)
    async def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int,
                                   timestamp: str, **_: Any) -> Any:
        found = await self.host.charge_by_ref(self.pile_id, id_tag)
        if found is None:
            log.warning("charge point %s started a transaction for %r, not our session",
                        self.id, id_tag[:40])
            return call_result.StartTransaction(
                transaction_id=_unknown_tx(self.id, connector_id, id_tag, timestamp),
                id_tag_info=IdTagInfo(status=AuthorizationStatus.invalid))
        tx, state = found
        started = parse_time(timestamp) or self.clock()
        result = await self._submit([{
            "id": store.start_event_id(tx), "type": "session_started",
            "ts": wire_time(started), "port": connector_id, "session": id_tag,
            "meter_start_wh": meter_start, "transaction_id": tx}])
        # A resend keeps what the first StartTransaction said: read it back when needed.
        self.host.remember(self.pile_id, tx, None if result.duplicates else store.TxInfo(
            session=id_tag, port=connector_id, meter_start_wh=meter_start, started=started))
        ok = state not in (ChargeState.failed, ChargeState.refunded)
        return call_result.StartTransaction(transaction_id=tx, id_tag_info=IdTagInfo(
            status=AuthorizationStatus.accepted if ok else AuthorizationStatus.invalid))

    def _meters(self, tx: int, info: store.TxInfo, connector: int, values: Any
                ) -> list[dict[str, Any]]:
        out = []
        for mv in values if isinstance(values, list) else []:
            r = reading(mv, self.clock())
            if r is None:
                continue
            energy = self._energy(info, r)
            if energy is None:
                continue
            power = r.power_w if r.power_w is not None else self._power(info, r.ts, energy)
            out.append(meter_event(f"tx{tx}:m:{digest(mv)}", connector, info.session, r,
                                   energy, power))
            if info.last_ts is None or r.ts > info.last_ts:
                info.last_ts, info.last_energy = r.ts, energy
        return out

    @staticmethod
    def _energy(info: store.TxInfo, r: Reading) -> Decimal | None:
        """This session's energy: the register less meterStart (our meter events count from the
        start of the charge), or the last one when this reading has no register."""
        if r.register_wh is None:
            return info.last_energy
        if info.meter_start_wh is None:
            return None  # a register without its start means nothing to a bill
        return r.register_wh - info.meter_start_wh

    @staticmethod
    def _power(info: store.TxInfo, ts: datetime, energy: Decimal) -> Decimal:
        """No Power.Active.Import sent: the mean since the reading before (or the start)."""
        since, before = info.last_ts, info.last_energy
        if since is None or before is None or ts <= since:
            since, before = info.started, Decimal(0)
        if since is None or ts <= since:
            return Decimal(0)
        return (energy - before) * 3600 / Decimal(str((ts - since).total_seconds()))

    @on(Action.meter_values)
    async def on_meter_values(self, connector_id: int, meter_value: list[Any],
                              transaction_id: int | None = None, **_: Any) -> Any:
        if transaction_id is not None and connector_id > 0:
            info = await self.host.transaction(self.pile_id, transaction_id)
            events = self._meters(transaction_id, info, connector_id, meter_value) if info else []
            if events:
                await self._submit(events)
        # Readings outside a transaction have no charge to go to.
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    async def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None,
        id_tag: str | None = None, transaction_data: list[Any] | None = None, **_: Any,
    ) -> Any:
        answer = call_result.StopTransaction(
            id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted) if id_tag else None)
        info = await self.host.transaction(self.pile_id, transaction_id)
        if info is None:
            log.warning("charge point %s stopped transaction %s, not one of ours", self.id,
                        transaction_id)
            return answer
        ended = parse_time(timestamp) or self.clock()
        events = self._meters(transaction_id, info, info.port, transaction_data)
        if info.meter_start_wh is not None:
            energy = Decimal(meter_stop - info.meter_start_wh)
        else:  # the start's register is lost: the session's last reading is what we know
            energy = info.last_energy or Decimal(0)
        duration = max(0.0, (ended - info.started).total_seconds()) if info.started else 0.0
        events.append({
            "id": f"tx{transaction_id}:end", "type": "session_ended", "ts": wire_time(ended),
            "port": info.port, "session": info.session,
            "reason": end_reason(reason, full=info.port in self.ev_done),
            "energy_wh": float(max(energy, Decimal(0))), "duration_s": duration,
            "meter_stop_wh": meter_stop, "ocpp_reason": reason or "Local",
            "transaction_id": transaction_id})
        await self._submit(events)
        self.host.remember(self.pile_id, transaction_id, None)
        return answer
