"""Tariff arithmetic. A tariff is data (bot.toml); each charge keeps a snapshot of it.

Everything is exact (Fraction) until the single half-up rounding to the fen at the end, so the
same inputs give the same bill on every machine and in every order. DESIGN §5 is the contract:

- a charge that lasts no longer than `free_minutes` costs nothing, whatever ended it (a fault
  included);
- a longer one is billed per started unit of the time *after* the free minutes:
  units = ceil((duration − free) / unit), amount = units × unit / 60 × fen_per_hour, rounded
  half-up once, at the end;
- a charge that delivered no energy (0 Wh, or the pile's `no_load`) costs nothing, in every mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from core.config_sections import TariffSettings

# Pile readings arrive as JSON numbers, whole or decimal (DESIGN §3): ints, floats, and
# whatever exact type a caller already holds.
Reading = float | Fraction | Decimal

# The pile saw no charger draw power: nothing flowed, even if the counter crept up a watt-hour.
NO_ENERGY_REASONS = frozenset({"no_load"})


def tariff_snapshot(tariff: TariffSettings, name: str) -> dict[str, Any]:
    return {"name": name, **tariff.model_dump()}


@dataclass(frozen=True)
class Bill:
    amount_fen: int
    mode: str
    duration_s: int
    billable_minutes: int  # units × unit_minutes after the free minutes; what plans pay for
    free_minutes: int  # the part of the tariff's free minutes this charge used
    off_peak_minutes: int
    band_w: int | None
    tier_up_to_w: int | None
    fen_per_hour: int | None
    energy_wh: float  # at the pile's resolution: 750 stays 750, 512.5 stays 512.5
    delivered_energy: bool = True

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def exact(x: Reading) -> Fraction:
    """A reading as the decimal the pile sent. A float goes through its shortest repr, so
    183.4 is 1834/10 and not the binary 183.400000000000005684…; `Fraction(x, 1000)` would
    even raise for a float."""
    if isinstance(x, Fraction | int | Decimal):
        return Fraction(x)
    return Fraction(repr(float(x)))


def _as_reading(x: Fraction) -> float:
    # Whole values stay ints, so a whole-Wh bill reads (and stores) exactly as it did.
    return x.numerator if x.denominator == 1 else float(x)


def delivered_no_energy(energy_wh: Reading, reason: str | None = None) -> bool:
    """DESIGN §5: a charge that delivered nothing (the pile found no charger, a relay that never
    closed) costs nothing in every mode: 0 Wh, or the pile's own `no_load` end."""
    return reason in NO_ENERGY_REASONS or exact(energy_wh) <= 0


def band_power_w(
    samples: Sequence[tuple[datetime, float]], *, band_by: str, started_at: datetime | None,
    energy_wh: Reading, duration_s: Reading, port_limit_w: float,
) -> int:
    """The power that chooses the tier.

    `peak_minute`: the highest mean over any whole minute since start (firmware smooths power the
    same way, so a single spike never moves a rider into a dearer band). Readings above the port
    limit are filtered like the boards do. `session_mean`: energy over time.
    """
    if band_by == "peak_minute" and samples:
        origin = started_at or samples[0][0]
        buckets: dict[int, list[Fraction]] = {}
        for ts, power in samples:
            if 0 <= power <= port_limit_w and ts >= origin:
                minute = int((ts - origin).total_seconds() // 60)
                buckets.setdefault(minute, []).append(exact(power))
        if buckets:
            # Half up, like the money: 200.5 W is over a 200 W band.
            return round_half_up(max(sum(v, Fraction(0)) / len(v) for v in buckets.values()))
    seconds = exact(duration_s)
    if seconds <= 0:
        return 0
    return round_half_up(max(Fraction(0), exact(energy_wh)) * 3600 / seconds)


def _parse_hhmm(s: str) -> time:
    h, m = s.split(":")
    return time(int(h), int(m))


def minutes_in_window(start: datetime, end: datetime, window: tuple[str, str], tz: str) -> int:
    """Whole minutes of [start, end) in a daily local window; windows may cross midnight."""
    if end <= start:
        return 0
    zone = ZoneInfo(tz)
    local_start = start.astimezone(zone)
    local_end = end.astimezone(zone)
    w_start, w_end = _parse_hhmm(window[0]), _parse_hhmm(window[1])
    total = timedelta()
    day = local_start.date() - timedelta(days=1)
    while day <= local_end.date():
        a = datetime.combine(day, w_start, zone)
        b = datetime.combine(day if w_end > w_start else day + timedelta(days=1), w_end, zone)
        # Elapsed time, not wall-clock time: compare in UTC so a DST change counts right.
        lo = max(a.astimezone(UTC), start.astimezone(UTC))
        hi = min(b.astimezone(UTC), end.astimezone(UTC))
        if hi > lo:
            total += hi - lo
        day += timedelta(days=1)
    return int(total.total_seconds() // 60)


def _tier(tiers: Iterable[dict[str, int]], band_w: int) -> dict[str, int]:
    ordered = sorted(tiers, key=lambda t: t["up_to_w"])
    for t in ordered:
        if band_w <= t["up_to_w"]:
            return t
    return ordered[-1]


def billed_units(duration_s: Reading, free_minutes: int, unit_minutes: int) -> int:
    """Started units of the time after the free minutes; 0 for a charge within them."""
    over = exact(duration_s) - free_minutes * 60
    if over <= 0:
        return 0
    return math.ceil(over / (unit_minutes * 60))  # exact: no float near a unit's edge


def compute_bill(
    tariff: dict[str, Any], *, started_at: datetime, duration_s: Reading, energy_wh: Reading,
    samples: Sequence[tuple[datetime, float]] = (), tz: str = "Asia/Shanghai",
    port_limit_w: float = 1000, reason: str | None = None,
) -> Bill:
    """The bill for one finished charge (or, for /status, the charge so far).

    `started_at` is timezone-aware (the pile's clock); `reason` is the pile's end reason, when
    the charge has ended. A pile may report a decimal duration: 60.4 s is longer than a free
    minute and is billed as such, while the bill shows whole seconds.
    """
    # Long on purpose: DESIGN §5's rule reads top to bottom here (free minutes, units, mode,
    # off-peak share, minimum, cap, one rounding at the end); split, its order would hide.
    seconds = max(Fraction(0), exact(duration_s))
    energy = max(Fraction(0), exact(energy_wh))
    unit = max(1, int(tariff.get("unit_minutes", 1)))
    free = max(0, int(tariff.get("free_minutes", 0)))
    mode = tariff["mode"]
    delivered = not delivered_no_energy(energy, reason)
    units = billed_units(seconds, free, unit) if delivered else 0
    billable = units * unit
    band_w = tier_w = rate = None
    off_peak_minutes = 0
    fen = 0
    if billable:
        # The billed span is the time after the free minutes, rounded up to whole units, so
        # off-peak minutes are counted over exactly the minutes the rider pays for.
        begin = started_at + timedelta(minutes=free)
        end = begin + timedelta(minutes=billable)
        off_peak = tariff.get("off_peak")
        percent = Fraction(100)
        if off_peak:
            off_peak_minutes = min(
                billable, minutes_in_window(begin, end, (off_peak["start"], off_peak["end"]), tz)
            )
            percent = Fraction(int(off_peak["percent"]))
        weighted = (billable - off_peak_minutes) + off_peak_minutes * percent / 100
        if mode == "energy":
            per_kwh = int(tariff["fen_per_kwh"]) + int(tariff.get("service_fen_per_kwh", 0))
            # Energy is spread over the billable minutes, so off-peak weighs by time share.
            amount = energy / 1000 * per_kwh * weighted / billable
        else:
            if mode == "power_tier":
                band_w = band_power_w(
                    samples, band_by=tariff.get("band_by", "peak_minute"), started_at=started_at,
                    energy_wh=energy, duration_s=seconds, port_limit_w=port_limit_w,
                )
                tier = _tier(tariff["tiers"], band_w)
                tier_w, rate = tier["up_to_w"], int(tier["fen_per_hour"])
            else:
                rate = int(tariff["fen_per_hour"])
            amount = Fraction(rate, 60) * weighted
        fen = round_half_up(amount)  # the one rounding of the bill
        # A minimum fee lifts a charge that costs something; it never makes a free one paid.
        if 0 < fen < int(tariff.get("min_fee_fen", 0)):
            fen = int(tariff["min_fee_fen"])
        cap = int(tariff.get("cap_fen", 0))
        if cap and fen > cap:
            fen = cap
    return Bill(
        amount_fen=fen, mode=mode, duration_s=math.floor(seconds), billable_minutes=billable,
        free_minutes=min(free, math.ceil(seconds / 60)), off_peak_minutes=off_peak_minutes,
        band_w=band_w, tier_up_to_w=tier_w, fen_per_hour=rate, energy_wh=_as_reading(energy),
        delivered_energy=delivered,
    )
