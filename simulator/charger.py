"""Physics of one rider's charger on a pile port: power curve, energy and when a charge ends.

Pure functions of *virtual minutes since session start*; no clocks, no I/O. The pile asks
"where is this charge at minute t?" on every tick instead of stepping fixed increments, so a
demo running at 3600x computes exactly the same charge as one running in real time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

# Exponential taper rate in e-folds per taper phase: 4 brings the CV-phase excess power to ~2 %
# of its start by the end of the phase, which is what real chargers' curves look like.
TAPER_EFOLDS = 4.0
# A pile sees "normal power, then 0 W" and needs a few samples to call it unplugged;
# DOMAIN.md says the stop comes within ~60 s.
UNPLUG_DETECT_MIN = 0.5
# Power drawn by a disconnected charger / blown fuse: below any sensible band.
NO_LOAD_POWER_W = 1.0
# No-load sessions stop after a few minutes so the rider pays nothing (DOMAIN.md).
NO_LOAD_DETECT_MIN = 3.0
CC_NOISE = 0.03

KINDS = ("normal", "no_load", "unplug_after")


@dataclass(frozen=True)
class ChargerProfile:
    """One rider's charger and battery. Powers in W, times in virtual minutes."""

    cc_power_w: float = 220.0
    cc_minutes: float = 180.0
    taper_minutes: float = 90.0
    float_power_w: float = 15.0
    kind: str = "normal"
    unplug_after_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown charger kind {self.kind!r}")
        if self.kind == "unplug_after" and self.unplug_after_minutes is None:
            raise ValueError("kind 'unplug_after' needs unplug_after_minutes")
        if min(self.cc_power_w, self.cc_minutes, self.taper_minutes, self.float_power_w) < 0:
            raise ValueError("powers and durations must not be negative")

    @staticmethod
    def random(rng: random.Random) -> ChargerProfile:
        """A plausible rider: mostly lead-acid 48 V packs, some lithium (DOMAIN.md numbers)."""
        lead_acid = rng.random() < 0.7
        total_h = rng.uniform(6.0, 8.0) if lead_acid else rng.uniform(3.0, 5.0)
        cc_h = total_h * rng.uniform(0.6, 0.7)
        # Keep the pack between ~0.45 and ~1.35 kWh so a full charge lands in DOMAIN's
        # 0.5–1.5 kWh once the taper is added, while staying inside the 120–350 W wall draw.
        power = rng.uniform(120.0, 350.0)
        power = min(max(power, 450.0 / cc_h), 1350.0 / cc_h)
        power = min(max(power, 120.0), 350.0)
        base = ChargerProfile(
            cc_power_w=round(power, 1),
            cc_minutes=round(cc_h * 60.0, 1),
            taper_minutes=round((total_h - cc_h) * 60.0, 1),
            float_power_w=round(rng.uniform(5.0, 25.0), 1),
        )
        roll = rng.random()
        if roll < 0.03:
            return replace(base, kind="no_load")
        if roll < 0.10:
            # Riders who need the bike back early: somewhere in the first 90 % of the charge.
            leave = rng.uniform(0.2, 0.9) * total_h * 60.0
            return replace(base, kind="unplug_after", unplug_after_minutes=round(leave, 1))
        return base


@dataclass(frozen=True)
class ChargePlan:
    """When and why a charge ends on its own (barring stop commands and faults)."""

    end_minute: float  # math.inf when nothing would ever end it
    reason: str  # full | no_load | unplugged | limit | "" when end_minute is inf


def _taper_k(p: ChargerProfile) -> float:
    return TAPER_EFOLDS / p.taper_minutes


def _connected_power(p: ChargerProfile, minute: float) -> float:
    """Power as the charger would draw it if never unplugged."""
    if p.kind == "no_load":
        return NO_LOAD_POWER_W
    if minute < p.cc_minutes:
        return p.cc_power_w
    tau = minute - p.cc_minutes
    if p.taper_minutes <= 0 or tau >= p.taper_minutes:
        return p.float_power_w
    # Normalised so the taper starts exactly at cc power and lands exactly on float power:
    # no step in the curve a meter could mistake for an unplug.
    k = _taper_k(p)
    end = math.exp(-k * p.taper_minutes)
    frac = (math.exp(-k * tau) - end) / (1.0 - end)
    return p.float_power_w + (p.cc_power_w - p.float_power_w) * frac


def unplug_minute(p: ChargerProfile, manual: float | None = None) -> float | None:
    """The earliest unplug: the profile's own or one the rider did by hand."""
    own = p.unplug_after_minutes if p.kind == "unplug_after" else None
    candidates = [m for m in (own, manual) if m is not None]
    return min(candidates) if candidates else None


def power_w(p: ChargerProfile, minute: float, *, unplugged_at: float | None = None) -> float:
    """Noise-free power at `minute` since start."""
    unplug = unplug_minute(p, unplugged_at)
    if minute < 0 or (unplug is not None and minute >= unplug):
        return 0.0
    return _connected_power(p, minute)


def _connected_energy_wh(p: ChargerProfile, minute: float) -> float:
    if minute <= 0:
        return 0.0
    if p.kind == "no_load":
        return NO_LOAD_POWER_W * minute / 60.0
    cc = min(minute, p.cc_minutes)
    wmin = p.cc_power_w * cc
    tau = minute - p.cc_minutes
    if tau > 0:
        t_taper = min(tau, p.taper_minutes)
        if t_taper > 0:
            k = _taper_k(p)
            end = math.exp(-k * p.taper_minutes)
            excess = (p.cc_power_w - p.float_power_w) / (1.0 - end)
            wmin += p.float_power_w * t_taper
            wmin += excess * ((1.0 - math.exp(-k * t_taper)) / k - t_taper * end)
        wmin += p.float_power_w * max(0.0, tau - p.taper_minutes)
    return wmin / 60.0


def energy_wh(p: ChargerProfile, minute: float, *, unplugged_at: float | None = None) -> float:
    """Exact ∫P dt from start to `minute` (closed form, so it never drifts with tick size)."""
    unplug = unplug_minute(p, unplugged_at)
    if unplug is not None:
        minute = min(minute, unplug)
    return _connected_energy_wh(p, minute)


def minute_below(p: ChargerProfile, threshold_w: float) -> float | None:
    """First minute from which power stays under `threshold_w`, None if it never does.

    The connected curve never rises, so "first under" is also "stays under".
    """
    if p.kind == "no_load":
        return 0.0 if threshold_w > NO_LOAD_POWER_W else None
    if p.cc_power_w < threshold_w:
        return 0.0
    if p.float_power_w >= threshold_w:
        return None
    if p.taper_minutes <= 0:
        return p.cc_minutes
    k = _taper_k(p)
    end = math.exp(-k * p.taper_minutes)
    target = (threshold_w - p.float_power_w) * (1.0 - end) / (p.cc_power_w - p.float_power_w)
    return p.cc_minutes - math.log(target + end) / k


def minute_for_energy(
    p: ChargerProfile, target_wh: float, *, unplugged_at: float | None = None
) -> float | None:
    """First minute at which delivered energy reaches `target_wh`; None if it never does."""
    if target_wh <= 0:
        return 0.0
    unplug = unplug_minute(p, unplugged_at)
    lo, hi = 0.0, 60.0
    while energy_wh(p, hi, unplugged_at=unplugged_at) < target_wh:
        if unplug is not None and hi >= unplug:
            return None
        if _connected_power(p, hi) <= 0:
            return None
        hi *= 2.0
        if hi > 1e7:
            return None
    # Energy is continuous and non-decreasing; bisect to well under a virtual second.
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if energy_wh(p, mid, unplugged_at=unplugged_at) >= target_wh:
            hi = mid
        else:
            lo = mid
    return hi


def plan_charge(
    p: ChargerProfile,
    *,
    full_threshold_w: float = 30.0,
    float_window_min: float = 120.0,
    max_minutes: float | None = None,
    max_energy_wh: float | None = None,
    unplugged_at: float | None = None,
) -> ChargePlan:
    """The earliest of every way a charge ends by itself. Limits of 0/None mean "no limit"."""
    ends: list[tuple[float, str]] = []
    unplug = unplug_minute(p, unplugged_at)
    if unplug is not None:
        ends.append((unplug + UNPLUG_DETECT_MIN, "unplugged"))
    if p.kind == "no_load":
        ends.append((NO_LOAD_DETECT_MIN, "no_load"))
    else:
        below = minute_below(p, full_threshold_w)
        if below is not None:
            ends.append((below + float_window_min, "full"))
    if max_minutes:
        ends.append((float(max_minutes), "limit"))
    if max_energy_wh:
        at = minute_for_energy(p, float(max_energy_wh), unplugged_at=unplugged_at)
        if at is not None:
            ends.append((at, "limit"))
    if not ends:
        return ChargePlan(math.inf, "")
    end, reason = min(ends, key=lambda e: e[0])
    return ChargePlan(end, reason)


def reported_power_w(
    p: ChargerProfile, minute: float, rng: random.Random, *, unplugged_at: float | None = None
) -> float:
    """What the port's meter shows: CC has ripple, a no-load charger reads 0–2 W."""
    clean = power_w(p, minute, unplugged_at=unplugged_at)
    if clean <= 0:
        return 0.0
    if p.kind == "no_load":
        return round(rng.uniform(0.0, 2.0), 1)
    if minute < p.cc_minutes:
        clean *= 1.0 + rng.uniform(-CC_NOISE, CC_NOISE)
    return round(clean, 1)


def line_voltage_v(rng: random.Random) -> float:
    return round(rng.uniform(217.0, 223.0), 1)


def port_temperature_c(power: float, rng: random.Random, ambient_c: float = 25.0) -> float:
    # Terminals warm up with current: a few degrees at a couple of hundred watts.
    return round(ambient_c + power / 40.0 + rng.uniform(-0.5, 0.5), 1)
