"""Fault policies and detection from telemetry (pure: no database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.config_sections import FaultModelSettings, FaultSettings


@dataclass(frozen=True)
class Policy:
    severity: str  # critical | warning | info (DOMAIN.md: the operators' alert levels)
    stops: bool  # the charge on that port (or pile) cannot go on
    out_of_service: bool  # no new starts until a technician resolves it
    self_clearing: bool = False  # resolved when the pile says it is gone (grid, link)


POLICIES: dict[str, Policy] = {
    # reported by the pile (DOMAIN.md vocabulary)
    "overload": Policy("warning", True, True),
    "over_temperature": Policy("critical", True, True),
    "over_voltage": Policy("warning", True, False, self_clearing=True),
    "under_voltage": Policy("warning", True, False, self_clearing=True),
    "leakage": Policy("critical", True, True),
    "short_circuit": Policy("critical", True, True),
    "relay_stuck": Policy("critical", True, True),
    "relay_open": Policy("warning", True, True),
    "meter_fault": Policy("warning", False, True),
    "comm_loss": Policy("warning", True, False, self_clearing=True),
    "power_loss": Policy("warning", True, False, self_clearing=True),
    "smoke": Policy("critical", True, True),
    "flooding": Policy("critical", True, True),
    "door_open": Policy("info", False, False, self_clearing=True),
    # detected here from the event stream
    "over_current": Policy("critical", True, True),
    "interrupted": Policy("warning", True, True),
    "offline": Policy("warning", True, False, self_clearing=True),
    "meter_backwards": Policy("warning", False, True),
    "impossible_power": Policy("warning", False, True),
}


DETECTED = ("over_current", "interrupted", "offline", "meter_backwards", "impossible_power")


def policy(cause: str) -> Policy:
    return POLICIES.get(cause, Policy("warning", True, True))


def over_limits(m: FaultModelSettings, power_w: float, current_a: float | None,
                temperature_c: float | None) -> str | None:
    """Which threshold of the pile's model this one reading breaks, worst first."""
    if temperature_c is not None and temperature_c > m.max_temperature_c:
        return "over_temperature"
    if current_a is not None and current_a > m.max_current_a:
        return "over_current"
    if power_w > m.max_power_w:
        return "impossible_power"
    return None


def lowest_limits(cfg: FaultSettings) -> FaultModelSettings:
    """The strictest threshold of any model: a reading under all of them needs no pile lookup."""
    models = list(cfg.models.values()) or [FaultModelSettings()]
    return FaultModelSettings(
        max_temperature_c=min(m.max_temperature_c for m in models),
        max_current_a=min(m.max_current_a for m in models),
        max_power_w=min(m.max_power_w for m in models),
    )


@dataclass
class PowerTrack:
    """Per charge: the last reading and when power suddenly fell to nothing (if it has)."""

    ts: datetime | None
    power_w: float | None
    energy_wh: float | None
    dropped_at: datetime | None  # the pile's clock
    dropped_seen_at: datetime | None  # ours

    def step(self, ts: datetime, power_w: float, energy_wh: float, cfg: FaultSettings,
             now: datetime) -> str | None:
        """Take a newer reading; returns a detected cause: interrupted or meter_backwards."""
        found = None
        if self.energy_wh is not None and energy_wh < self.energy_wh:
            found = "meter_backwards"  # a cumulative counter never runs back
        if power_w <= cfg.zero_w:
            if self.dropped_at is None:
                if self.power_w is not None and self.power_w >= cfg.drop_from_w:
                    self.dropped_at, self.dropped_seen_at = ts, now
            elif (ts - self.dropped_at).total_seconds() >= cfg.interrupt_grace_s:
                found = found or "interrupted"
        else:
            # Power is back (or it is a float/taper reading): no interruption.
            self.dropped_at = self.dropped_seen_at = None
        self.ts, self.power_w, self.energy_wh = ts, power_w, energy_wh
        return found
