"""The pile's wire format (DESIGN §3): one pydantic model per event type, the bounds every
stored number must keep, and the answer a pile gets for a batch."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.charging.tables import EndReason
from core.piles.tables import PortStatusValue

MAX_BATCH = 500
# Pile clocks before 2000 were never set; and any two accepted times lie less than 2^31 s apart,
# so a duration computed from them always fits the 32-bit integer columns.
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TS_MAX = TS_MIN + timedelta(seconds=2**31 - 1)
# Bounds that keep every stored number inside a 32-bit column (energy × 3600 / 1 s included):
# far beyond any e-bike session (the per-session cap is ~2 kWh, the charge cap 8 h).
MAX_ENERGY_WH = 100_000
MAX_DURATION_S = 31 * 24 * 3600
MAX_INT32 = 2**31 - 1
OUR_COMMAND_ID = re.compile(r"c[0-9]{1,10}")
FAULT_CODES = (
    "overload", "over_temperature", "over_voltage", "under_voltage", "leakage", "short_circuit",
    "relay_stuck", "relay_open", "meter_fault", "comm_loss", "power_loss", "smoke", "flooding",
    "door_open",
)


EventId = Annotated[str, Field(min_length=1, max_length=80)]
PortNo = Annotated[int, Field(ge=1, le=99)]
SessionRef = Annotated[str, Field(min_length=1, max_length=40)]


# Readings are JSON numbers, whole or decimal (boards report 0.1 W, 0.01 kWh, 0.1 V; OCPP meter
# values are decimals): kept as floats at their resolution. Only money is integer fen.
Reading = Annotated[float, Field(allow_inf_nan=False)]


class _Event(BaseModel):
    # Unknown fields are kept in the stored payload, not refused: a newer firmware that adds a
    # field must not lose its riders' bills.
    model_config = ConfigDict(extra="allow", strict=False, allow_inf_nan=False)
    id: EventId
    ts: datetime


class Heartbeat(_Event):
    type: Literal["heartbeat"]
    signal_dbm: Annotated[Reading, Field(ge=-255, le=255)] | None = None
    temperature_c: Annotated[Reading, Field(ge=-60, le=400)] | None = None
    firmware: Annotated[str, Field(max_length=64)] | None = None


class PortStatus(_Event):
    type: Literal["port_status"]
    port: PortNo
    status: PortStatusValue  # the ports column's enum: same values and message as a Literal


class Meter(_Event):
    type: Literal["meter"]
    port: PortNo
    session: SessionRef
    power_w: Annotated[Reading, Field(ge=0, le=100_000)]
    energy_wh: Annotated[Reading, Field(ge=0, le=MAX_ENERGY_WH)]
    voltage_v: Annotated[Reading, Field(ge=0, le=1000)] | None = None
    current_a: Annotated[Reading, Field(ge=0, le=1000)] | None = None
    temperature_c: Annotated[Reading, Field(ge=-60, le=400)] | None = None


class SessionStarted(_Event):
    type: Literal["session_started"]
    port: PortNo
    session: SessionRef


class SessionEnded(_Event):
    type: Literal["session_ended"]
    port: PortNo
    session: SessionRef
    reason: EndReason
    energy_wh: Annotated[Reading, Field(ge=0, le=MAX_ENERGY_WH)]
    duration_s: Annotated[Reading, Field(ge=0, le=MAX_DURATION_S)]


class Fault(_Event):
    type: Literal["fault"]
    port: PortNo | None = None
    code: Annotated[str, Field(min_length=1, max_length=40)]
    detail: Annotated[str, Field(max_length=500)] | None = None


class FaultCleared(_Event):
    type: Literal["fault_cleared"]
    port: PortNo | None = None
    code: Annotated[str, Field(min_length=1, max_length=40)]


class CommandAck(_Event):
    type: Literal["command_ack"]
    command: Annotated[str, Field(min_length=1, max_length=40)]
    ok: bool
    error: Annotated[str, Field(max_length=200)] | None = None


AnyEvent = Annotated[
    Heartbeat | PortStatus | Meter | SessionStarted | SessionEnded | Fault | FaultCleared
    | CommandAck,
    Field(discriminator="type"),
]
_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
EVENT_TYPES = (
    "heartbeat", "port_status", "meter", "session_started", "session_ended", "fault",
    "fault_cleared", "command_ack",
)


def unstorable(value: Any, where: str) -> tuple[str, str] | None:
    """(field, problem) where a value no database can hold hides, if anywhere: NUL and lone
    surrogates in text, NaN and ±Infinity among numbers (no JSON column takes them)."""
    if isinstance(value, str):
        if "\x00" in value:
            return where, "must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where, "must not contain unpaired surrogate characters"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, "must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            if (bad := unstorable(k, f"{where}.{k!r}")
                    or unstorable(v, f"{where}.{k}")) is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (bad := unstorable(v, f"{where}[{i}]")) is not None:
                return bad
    return None


def check(raw: Any, where: str, suspicious: bool,
           ) -> tuple[Any, None] | tuple[None, tuple[str, str]]:
    """The parsed event, or the (field, problem) that refuses it."""
    if not isinstance(raw, dict):
        return None, (where, "must be an object")
    if raw.get("type") not in EVENT_TYPES:
        return None, (f"{where}.type", f"must be one of {', '.join(EVENT_TYPES)}")
    if suspicious and (bad := unstorable(raw, where)) is not None:
        return None, bad
    try:
        event = _adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"][1:]] or ["?"]
        return None, (f"{where}.{'.'.join(loc)}", err["msg"])
    if event.ts.tzinfo is None:
        event.ts = event.ts.replace(tzinfo=UTC)
    if not TS_MIN <= event.ts <= TS_MAX:  # compared as instants, before any conversion
        return None, (f"{where}.ts", f"must lie between {TS_MIN:%Y} and {TS_MAX:%Y}")
    return event, None


# The pile's own fields ride on the parsed event under this key, stored verbatim later: cheaper
# than dumping the model, and a plain instance-dict entry costs nothing, where a pydantic private
# attribute costs ~20 µs.
RAW = "__chargebot_raw__"


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    billed: list[int] = field(default_factory=list)
    notify: bool = False
    commands: list[dict[str, Any]] = field(default_factory=list)
