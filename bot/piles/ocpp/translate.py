"""OCPP 1.6J words → our pile events (DESIGN §3): statuses, error codes, stop reasons, meter
values and the event ids that make a resent message count once. Pure: no socket, no database.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

# StatusNotification.status → our port status. Unavailable (the charge point, or our own
# ChangeAvailability, took the connector out of use) and Reserved (held for an idTag we did not
# give: riders start from chat) both mean "not startable": `offline`.
PORT_STATUS = {
    "Available": "idle",
    "Preparing": "plugged",
    "Charging": "charging",
    "SuspendedEV": "charging",
    "SuspendedEVSE": "charging",
    "Finishing": "full",
    "Faulted": "fault",
    "Unavailable": "offline",
    "Reserved": "offline",
}

# StatusNotification.errorCode (with status Faulted) → our fault codes (DOMAIN.md). Any other
# code is kept as `ocpp_{errorCode}`, so an operator still sees what the charge point said.
FAULT_CODE = {
    "OverCurrentFailure": "overload",
    "HighTemperature": "over_temperature",
    "GroundFailure": "leakage",
    "OverVoltage": "over_voltage",
    "UnderVoltage": "under_voltage",
    "PowerMeterFailure": "meter_fault",
}

# StopTransaction.reason (absent = Local) → our end reasons.
END_REASON = {
    "EVDisconnected": "unplugged",
    "Local": "user",
    "Remote": "user",
    "DeAuthorized": "user",
    "UnlockCommand": "user",
    "PowerLoss": "power_loss",
    "Reboot": "power_loss",
    "HardReset": "power_loss",
    "SoftReset": "power_loss",
    "EmergencyStop": "fault",
    "Other": "fault",
}


def fault_code(error_code: str, vendor_error_code: str | None = None) -> str:
    """Ours for a code we know; else the charge point's, with its vendor code when it gives
    one (OtherError E07 and OtherError E12 are different faults to a technician)."""
    if error_code in FAULT_CODE:
        return FAULT_CODE[error_code]
    code = "ocpp_Faulted" if error_code == "NoError" else f"ocpp_{error_code}"
    vendor = "".join(ch for ch in (vendor_error_code or "") if ch.isascii() and
                     (ch.isalnum() or ch in "-_."))
    return (f"{code}_{vendor}" if vendor else code)[:40]


def end_reason(reason: str | None, *, full: bool = False) -> str:
    """`full`: the EV had stopped drawing (SuspendedEV) before the stop. The charge point then
    ends the transaction itself, as "Local" (or with no reason): a full charge, not a rider."""
    if full and reason in (None, "Local"):
        return "full"
    return END_REASON.get(reason or "Local", "fault")


def digest(*parts: Any) -> str:
    """A short stable hash of message content: the part of an event id that makes a resent
    message the same event and a different one (even under a reused unique id) a new one."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def parse_time(value: Any) -> datetime | None:
    """An OCPP timestamp (ISO 8601, `Z` or an offset), or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def wire_time(ts: datetime) -> str:
    """Our time as OCPP writes it: UTC with a `Z`."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Reading:
    """One meterValue element, in our units, at the charge point's resolution."""

    ts: datetime
    register_wh: Decimal | None = None  # Energy.Active.Import.Register
    power_w: Decimal | None = None
    voltage_v: Decimal | None = None
    current_a: Decimal | None = None
    temperature_c: Decimal | None = None


# measurand → (field, {unit: factor to our unit}); None as a unit is the value's default unit.
_UNITS: dict[str, tuple[str, dict[str | None, Decimal]]] = {
    "Energy.Active.Import.Register": ("register_wh", {
        None: Decimal(1), "Wh": Decimal(1), "kWh": Decimal(1000)}),
    "Power.Active.Import": ("power_w", {None: Decimal(1), "W": Decimal(1), "kW": Decimal(1000)}),
    "Voltage": ("voltage_v", {None: Decimal(1), "V": Decimal(1)}),
    "Current.Import": ("current_a", {None: Decimal(1), "A": Decimal(1)}),
}


def _number(value: Any) -> Decimal | None:
    try:
        n = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return n if n.is_finite() else None


def _temperature(n: Decimal, unit: str | None) -> Decimal | None:
    if unit in (None, "Celsius"):
        return n
    if unit == "Fahrenheit":
        return (n - 32) * 5 / 9
    if unit == "K":
        return n - Decimal("273.15")
    return None


def _merge(found: dict[str, list[tuple[str | None, Decimal]]], field: str) -> Decimal | None:
    """A reading without a phase wins; else the phases' sum (energy, power) or the largest
    (current, voltage, temperature: the conductor closest to its limit)."""
    values = found.get(field)
    if not values:
        return None
    plain = [v for phase, v in values if phase is None]
    if plain:
        return max(plain) if field == "temperature_c" else plain[0]
    lines = [v for phase, v in values if phase in ("L1", "L2", "L3")] or [v for _, v in values]
    return sum(lines, Decimal(0)) if field in ("register_wh", "power_w") else max(lines)


def reading(meter_value: Any, fallback: datetime) -> Reading | None:
    """A meterValue element (keys in snake case, as the `ocpp` package hands them over), or
    None when it holds nothing we read. Unknown measurands, units and signed values are skipped."""
    if not isinstance(meter_value, dict):
        return None
    found: dict[str, list[tuple[str | None, Decimal]]] = {}
    for sv in meter_value.get("sampled_value") or []:
        if not isinstance(sv, dict) or sv.get("format") == "SignedData":
            continue
        measurand = sv.get("measurand") or "Energy.Active.Import.Register"
        unit, phase = sv.get("unit"), sv.get("phase")
        n = _number(sv.get("value"))
        if n is None:
            continue
        if measurand == "Temperature":
            field, value = "temperature_c", _temperature(n, unit)
        elif measurand in _UNITS:
            field, factors = _UNITS[measurand]
            factor = factors.get(unit)
            value = None if factor is None else n * factor
        else:
            continue
        if value is not None:
            found.setdefault(field, []).append((phase, value))
    if not found:
        return None
    ts = parse_time(meter_value.get("timestamp")) or fallback
    return Reading(ts=ts, register_wh=_merge(found, "register_wh"),
                   power_w=_merge(found, "power_w"), voltage_v=_merge(found, "voltage_v"),
                   current_a=_merge(found, "current_a"),
                   temperature_c=_merge(found, "temperature_c"))


def number(n: Decimal | None) -> float | None:
    """A reading for the event: a JSON number at its resolution (1.2345 kWh → 1234.5 Wh)."""
    if n is None:
        return None
    f = float(n)
    return f if math.isfinite(f) else None


def meter_event(event_id: str, port: int, session: str, r: Reading, energy_wh: Decimal,
                power_w: Decimal) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": event_id, "type": "meter", "ts": wire_time(r.ts), "port": port,
        "session": session, "power_w": number(max(power_w, Decimal(0))),
        "energy_wh": number(max(energy_wh, Decimal(0))),
    }
    for key, value in (("voltage_v", r.voltage_v), ("current_a", r.current_a),
                       ("temperature_c", r.temperature_c)):
        if (n := number(value)) is not None:
            event[key] = round(n, 3) if key == "temperature_c" else n
    return event
