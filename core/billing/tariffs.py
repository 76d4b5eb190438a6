"""Tariff arithmetic. A tariff is data (bot.toml); each charge keeps a snapshot of it.

Everything is exact (Fraction) until the single half-up rounding to the fen at the end, so the
same inputs give the same bill on every machine and in every order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from core.config import TariffSettings


def tariff_snapshot(tariff: TariffSettings, name: str) -> dict[str, Any]:
    return {"name": name, **tariff.model_dump()}


@dataclass(frozen=True)
class Bill:
    amount_fen: int
    mode: str
    duration_s: int
    billable_minutes: int
    free_minutes: int
    off_peak_minutes: int
    band_w: int | None
    tier_up_to_w: int | None
    fen_per_hour: int | None
    energy_wh: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def band_power_w(
    samples: Sequence[tuple[datetime, float]], *, band_by: str, started_at: datetime | None,
    energy_wh: int, duration_s: int, port_limit_w: float,
) -> int:
    """The power that chooses the tier.

    `peak_minute`: the highest mean over any whole minute since start (firmware smooths power the
    same way, so a single spike never moves a rider into a dearer band). Readings above the port
    limit are filtered like the boards do. `session_mean`: energy over time.
    """
    if band_by == "peak_minute" and samples:
        origin = started_at or samples[0][0]
        buckets: dict[int, list[float]] = {}
        for ts, power in samples:
            if 0 <= power <= port_limit_w and ts >= origin:
                minute = int((ts - origin).total_seconds() // 60)
                buckets.setdefault(minute, []).append(power)
        if buckets:
            # Half up, like the money: 200.5 W is over a 200 W band.
            return round_half_up(max(Fraction(sum(v)) / len(v) for v in buckets.values()))
    if duration_s <= 0:
        return 0
    return round_half_up(Fraction(energy_wh * 3600, duration_s))


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


def compute_bill(
    tariff: dict[str, Any], *, started_at: datetime, duration_s: int, energy_wh: int,
    samples: Sequence[tuple[datetime, float]] = (), tz: str = "Asia/Shanghai",
    port_limit_w: float = 1000,
) -> Bill:
    """The bill for one finished charge. `started_at` is timezone-aware (the pile's clock)."""
    duration_s = max(0, int(duration_s))
    energy_wh = max(0, int(energy_wh))
    unit = max(1, int(tariff.get("unit_minutes", 1)))
    free = max(0, int(tariff.get("free_minutes", 0)))
    mode = tariff["mode"]
    started_units = math.ceil(duration_s / (unit * 60)) if duration_s else 0
    billable = max(0, started_units * unit - free)
    band_w = tier_w = rate = None
    off_peak_minutes = 0
    if billable == 0:
        amount = Fraction(0)
    else:
        begin = started_at + timedelta(minutes=free)
        end = started_at + timedelta(minutes=free + billable)
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
            amount = Fraction(energy_wh, 1000) * per_kwh * weighted / billable
        else:
            if mode == "power_tier":
                band_w = band_power_w(
                    samples, band_by=tariff.get("band_by", "peak_minute"), started_at=started_at,
                    energy_wh=energy_wh, duration_s=duration_s, port_limit_w=port_limit_w,
                )
                tier = _tier(tariff["tiers"], band_w)
                tier_w, rate = tier["up_to_w"], int(tier["fen_per_hour"])
            else:
                rate = int(tariff["fen_per_hour"])
            amount = Fraction(rate, 60) * weighted
    fen = round_half_up(amount)
    if fen > 0 and fen < int(tariff.get("min_fee_fen", 0)):
        fen = int(tariff["min_fee_fen"])
    cap = int(tariff.get("cap_fen", 0))
    if cap and fen > cap:
        fen = cap
    return Bill(
        amount_fen=fen, mode=mode, duration_s=duration_s, billable_minutes=billable,
        free_minutes=min(free, started_units * unit), off_peak_minutes=off_peak_minutes,
        band_w=band_w, tier_up_to_w=tier_w, fen_per_hour=rate, energy_wh=energy_wh,
    )
