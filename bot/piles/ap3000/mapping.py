"""What AP3000 reports become in DESIGN §3 events, and what our commands become on the wire
(docs/ap3000.md is the contract; its tables are here, row by row). Pure: the caller gives the
time and the ids' stamp; the events are plain dicts for `core.piles.events.parse_batch`.

Event ids are built from the report's content (the order number, the seconds of a progress,
a status report's msg id and the time it first arrived), so a board that resends a frame it
got no answer to sends duplicates, never a second event.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.piles.ap3000 import frames
from bot.piles.ap3000.frames import Alarm, Progress, Record

Event = dict[str, Any]
MAX_PORT = 99  # our port numbers (DESIGN §3): wire ports above 98 name no port of ours

# Port status bytes → (our port status, fault code or None).
STATUSES: dict[int, tuple[str, str | None]] = {
    0x00: ("idle", None),
    0x06: ("idle", None),  # storage full
    0x01: ("charging", None),
    0x02: ("plugged", None),  # scanned, not charging
    0x03: ("full", None),  # scanned, charged
    0x05: ("full", None),  # floating (浮充)
    0x04: ("fault", "short_circuit"),
    0x10: ("fault", "short_circuit"),  # line short
    0x0D: ("fault", "short_circuit"),  # short-circuit pre-warning
    0x07: ("fault", "meter_fault"),  # metering chip stuck
    0x0A: ("fault", "meter_fault"),  # meter broken
    0x08: ("fault", "relay_open"),  # contactor/breaker open
    0x0B: ("fault", "relay_open"),  # relay won't close
    0x09: ("fault", "relay_stuck"),
    0x0E: ("fault", "relay_stuck"),  # relay-stuck pre-warning
    0x0F: ("fault", "card_reader"),  # card chip broken
}

# Stop reasons of a charge record (0x03) → (our end reason, fault code or None).
STOP_REASONS: dict[int, tuple[str, str | None]] = {
    0x00: ("full", None),
    0x09: ("full", None),  # power too low
    0x1C: ("full", None),  # low-power cut
    0x01: ("user", None),  # manual
    0x07: ("user", None),  # remote stop
    0x13: ("user", None),  # card stop
    0x15: ("user", None),  # external forced stop
    0x16: ("user", None),  # card forced stop
    0x02: ("limit", None),  # max time
    0x03: ("limit", None),  # preset time
    0x04: ("limit", None),  # preset energy
    0x05: ("unplugged", None),
    0x0D: ("unplugged", None),
    0x0C: ("no_load", None),  # no battery detected
    0x0E: ("no_load", None),  # no power
    0x06: ("fault", "overload"),
    0x08: ("fault", "overload"),  # dynamic load
    0x11: ("fault", "overload"),  # this port
    0x12: ("fault", "overload"),  # another port
    0x0A: ("fault", "over_temperature"),  # ambient
    0x0B: ("fault", "over_temperature"),  # port
    0x0F: ("fault", "relay_open"),  # relay won't close
    0x10: ("fault", "flooding"),
    0x14: ("fault", "door_open"),
    0x17: ("fault", "emergency_stop"),
    0x18: ("fault", "system_error"),
    0x19: ("fault", "system_error"),  # storage fault
    0x1A: ("fault", "over_voltage"),
    0x1B: ("fault", "under_voltage"),
}

DOOR_OPEN_ALARM = 1
NOT_SUPPORTED = "not supported by AP3000"


def stop_reason(byte: int) -> tuple[str, str | None]:
    return STOP_REASONS.get(byte, ("fault", f"stop_reason_{byte}"))


def our_port(wire_port: int) -> int | None:
    """Wire ports are 0-based (0 = our port 1); 0xFF (every port) and ports past ours: None."""
    port = wire_port + 1
    return port if wire_port != frames.ALL_PORTS and port <= MAX_PORT else None


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def from_unix(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def firmware(version: int) -> str:
    """100 → "V1.00"."""
    return f"V{version // 100}.{version % 100:02d}"


def signal_dbm(signal: int | None) -> int | None:
    """The module's CSQ (0-31) as dBm; 99 (and anything past 31) means unknown."""
    return -113 + 2 * signal if signal is not None and 0 <= signal <= 31 else None


def temperature_c(byte: int | None) -> int | None:
    return byte - 65 if byte else None  # 0 = no sensor


def heartbeat(event_id: str, ts: datetime, *, firmware_version: int | None = None,
              signal: int | None = None, temp: int | None = None) -> Event:
    event: Event = {"id": event_id, "type": "heartbeat", "ts": iso(ts)}
    if firmware_version is not None:
        event["firmware"] = firmware(firmware_version)
    if (dbm := signal_dbm(signal)) is not None:
        event["signal_dbm"] = dbm
    if (celsius := temperature_c(temp)) is not None:
        event["temperature_c"] = celsius
    return event


def port_changes(key: str, ts: datetime, before: Sequence[int] | None, after: Sequence[int]
                 ) -> list[Event]:
    """`port_status` for each port whose status byte changed (every port when `before` is None),
    with a `fault` on entering a fault byte and a `fault_cleared` on leaving one. A byte not in
    the table changes nothing (the port keeps what it had)."""
    out: list[Event] = []
    when = iso(ts)
    for i, byte in enumerate(after):
        port = our_port(i)
        if port is None or byte not in STATUSES:
            continue
        old = before[i] if before is not None and i < len(before) else None
        if old == byte:
            continue
        status, code = STATUSES[byte]
        old_code = STATUSES[old][1] if old in STATUSES else None
        if old_code is not None and old_code != code:
            out.append({"id": f"clear:{port}:{key}", "type": "fault_cleared", "ts": when,
                        "port": port, "code": old_code})
        if code is not None and code != old_code:
            out.append({"id": f"fault:{port}:{key}", "type": "fault", "ts": when,
                        "port": port, "code": code, "detail": f"AP3000 port status 0x{byte:02X}"})
        out.append({"id": f"ps:{port}:{key}", "type": "port_status", "ts": when, "port": port,
                    "status": status})
    return out


def progress_events(p: Progress, now: datetime) -> list[Event]:
    """0x06 → `session_started` + `meter`; none for a charge we did not start (no order no.)."""
    port = our_port(p.port)
    if not p.order_no or port is None:
        return []
    meter: Event = {
        "id": f"meter:{p.order_no}:{p.seconds}", "type": "meter", "ts": iso(now),
        "port": port, "session": p.order_no, "power_w": p.power / 10, "energy_wh": p.energy * 10,
    }
    if p.voltage is not None:
        meter["voltage_v"] = p.voltage / 10
    if p.current is not None:
        meter["current_a"] = p.current / 1000
    if (celsius := temperature_c(p.port_temp)) is not None:
        meter["temperature_c"] = celsius
    started: Event = {"id": f"start:{p.order_no}", "type": "session_started",
                      "ts": iso(now - timedelta(seconds=p.seconds)), "port": port,
                      "session": p.order_no}
    return [started, meter]


# A board whose clock was never set reports times near 1970; the record is still a bill.
_EARLIEST_BOARD_TIME = 946_684_800  # 2000-01-01


def record_events(r: Record, now: datetime) -> list[Event]:
    """0x03 → `session_started` + (`fault`) + `session_ended`. A record without an order number
    (a coin or card charge we did not start) gives only its fault, if it has one."""
    reason, code = stop_reason(r.stop_reason)
    port = our_port(r.port)
    ended = from_unix(r.ended_at) if r.ended_at >= _EARLIEST_BOARD_TIME else now
    out: list[Event] = []
    if port is not None and r.order_no:
        out.append({"id": f"start:{r.order_no}", "type": "session_started",
                    "ts": iso(ended - timedelta(seconds=r.seconds)), "port": port,
                    "session": r.order_no})
    if code is not None:
        ref = r.order_no or f"{r.ended_at}:{r.port}"
        out.append({"id": f"stopfault:{ref}", "type": "fault", "ts": iso(ended), "port": port,
                    "code": code, "detail": f"AP3000 stop reason 0x{r.stop_reason:02X}"})
    if port is not None and r.order_no:
        out.append({"id": f"end:{r.order_no}", "type": "session_ended", "ts": iso(ended),
                    "port": port, "session": r.order_no, "reason": reason,
                    "energy_wh": r.energy * 10, "duration_s": r.seconds})
    return out


def alarm_events(a: Alarm, key: str, ts: datetime) -> list[Event]:
    if a.alarm != DOOR_OPEN_ALARM:
        return []
    return [{"id": f"alarm:{a.port}:{key}", "type": "fault", "ts": iso(ts),
             "port": our_port(a.port), "code": "door_open", "detail": "AP3000 port alarm 1"}]


def command_ack(command_id: str, ok: bool, error: str | None, ts: datetime) -> Event:
    event: Event = {"id": f"ack:{command_id}", "type": "command_ack", "ts": iso(ts),
                    "command": command_id, "ok": ok}
    if error:
        event["error"] = error
    return event


def ack_for_result(command_id: str, result: int, ts: datetime) -> Event:
    return command_ack(command_id, result == 0, None if result == 0 else f"result {result}", ts)


# --- our commands → frames -----------------------------------------------------------------


class Unsupported(ValueError):
    """A command this board cannot run; the text is the `command_ack` error."""


_START_STOP = struct.Struct("<BIBBH16sB")  # mode, amount, port, action, limit, order_no, reserved


def msg_id_for(command_id: str) -> int:
    """The msg id a command goes out with, the same every time it is (re)sent: from its number,
    1..65535 (0 is left out, some boards count their own frames from it)."""
    digits = command_id.lstrip("c")
    return (int(digits) - 1) % 0xFFFF + 1 if digits.isdigit() and int(digits) > 0 else 1


def command_frame(device_id: int, cmd: dict[str, Any]) -> tuple[int, int, bytes]:
    """(msg id, command byte, frame) for one of our queued commands (`PileCommand.wire()`)."""
    kind = cmd.get("type")
    msg_id = msg_id_for(str(cmd.get("id", "")))
    if kind == "reboot":
        return msg_id, frames.REBOOT, frames.encode(device_id, msg_id, frames.REBOOT)
    if kind not in ("start", "stop"):
        raise Unsupported(NOT_SUPPORTED)
    port = cmd.get("port")
    wire_port = frames.ALL_PORTS if port is None else int(port) - 1
    if not 0 <= wire_port <= 0xFF:
        raise Unsupported(f"port {port} is not on an AP3000 board")
    try:
        order = frames.pack_order_no(str(cmd.get("session") or ""))
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    start = kind == "start"
    limit = min(int(cmd.get("max_minutes") or 0), 0xFFFF) if start else 0
    data = _START_STOP.pack(0, 0, wire_port, 1 if start else 0, limit, order, 0)
    return msg_id, frames.START_STOP, frames.encode(device_id, msg_id, frames.START_STOP, data)
