"""Table of hand-computed bills: every mode, tier edge, free minute, block, window, fee and cap.

Each case's expected fen is written by hand with its arithmetic; the code must agree exactly.
DESIGN §5 is the contract: a charge of at most `free_minutes` costs nothing (whatever ended
it); a longer one pays units = ceil((duration − free) / unit) started units, amount =
units × unit / 60 × fen_per_hour, rounded half up once; a charge that delivered no energy
(0 Wh, or the pile's `no_load`) costs nothing in every mode.
Start times are UTC; comments give the Asia/Shanghai (UTC+8) local time the windows use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.billing.tariffs import compute_bill, tariff_snapshot
from core.config import load_settings

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 Shanghai, far from any off-peak window

# DOMAIN.md's mini-program bands (fen per hour): 0–180 W ¥0.55 … 800–1200 W ¥1.50.
BANDS = [{"up_to_w": 180, "fen_per_hour": 55}, {"up_to_w": 360, "fen_per_hour": 65},
         {"up_to_w": 540, "fen_per_hour": 85}, {"up_to_w": 800, "fen_per_hour": 100},
         {"up_to_w": 1200, "fen_per_hour": 150}]
# bot.toml's / DESIGN §5's standard tiers.
STANDARD = [{"up_to_w": 200, "fen_per_hour": 25}, {"up_to_w": 400, "fen_per_hour": 40},
            {"up_to_w": 1000, "fen_per_hour": 60}]
NIGHT = {"start": "22:00", "end": "08:00", "percent": 80}  # 14:00–00:00 UTC


def tariff(mode: str, **kw: Any) -> dict[str, Any]:
    """A plain dict shaped like `tariff_snapshot` output (all keys present, neutral defaults)."""
    t: dict[str, Any] = {
        "name": "case", "mode": mode, "unit_minutes": 1, "free_minutes": 0, "min_fee_fen": 0,
        "cap_fen": 0, "fen_per_hour": 0, "tiers": [], "band_by": "peak_minute",
        "fen_per_kwh": 0, "service_fen_per_kwh": 0, "off_peak": None,
    }
    t.update(kw)
    return t


def time_t(fen_per_hour: int = 60, **kw: Any) -> dict[str, Any]:
    return tariff("time", fen_per_hour=fen_per_hour, **kw)


def bands(**kw: Any) -> dict[str, Any]:
    return tariff("power_tier", **{"tiers": BANDS, **kw})


def energy_t(fen_per_kwh: int = 100, service: int = 80, **kw: Any) -> dict[str, Any]:
    return tariff("energy", fen_per_kwh=fen_per_kwh, service_fen_per_kwh=service, **kw)


# bot.toml's `by_time` (the site): ¥0.25/h in started 30-minute blocks, 1 minute free.
# One block is 30/60 × 25 = 12.5 fen, so the single rounding at the end is visible.
BY_TIME = time_t(25, unit_minutes=30, free_minutes=1)


def at(seconds: float, watts: float, start: datetime = T0) -> tuple[datetime, float]:
    return (start + timedelta(seconds=seconds), watts)


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


H = 3600


@dataclass(frozen=True)
class Case:
    name: str
    tariff: dict[str, Any]
    duration_s: float
    expected_fen: int
    energy_wh: float = 100  # some energy flowed, unless a case says otherwise (0 Wh is free)
    samples: tuple[tuple[datetime, float], ...] = ()
    start: datetime = T0
    port_limit_w: float = 1000
    reason: str | None = None
    billable_minutes: int | None = None  # checked when given: units × unit_minutes
    xfail: str | None = field(default=None, compare=False)


# One charge with a lone 900 W reading in minute 5 and 200 W otherwise: 210 Wh in 1 h.
SPIKE = (at(30, 200.0), at(5 * 60 + 30, 900.0), at(30 * 60, 200.0))
W250 = (at(30, 250.0),)  # one 250 W reading: peak_minute = 250 W

CASES = [
    # --- the site: time, 30-minute blocks, ¥0.25/h, 1 minute free -------------------
    Case("by_time_0s", BY_TIME, 0, 0, billable_minutes=0),  # 0 s ≤ 60 s free → 0
    Case("by_time_12s", BY_TIME, 12, 0, billable_minutes=0),  # 12 s ≤ 60 s free → 0
    Case("by_time_60s", BY_TIME, 60, 0, billable_minutes=0),  # 60 s ≤ 60 s free → 0
    Case("by_time_59_9s_decimal_duration", BY_TIME, 59.9, 0),  # 59.9 s ≤ 60 s free → 0
    Case("by_time_60_4s_decimal_duration", BY_TIME, 60.4, 13, billable_minutes=30),
    # 60.4 − 60 = 0.4 s → ceil(0.4/1800) = 1 unit → 12.5 → 13 (not truncated to a free 60 s)
    Case("by_time_61s", BY_TIME, 61, 13, billable_minutes=30),
    # 61 − 60 = 1 s → ceil(1/1800) = 1 unit → 1 × 30 min × 25/60 = 12.5 → 13
    Case("by_time_2m30s", BY_TIME, 150, 13, billable_minutes=30),
    # 150 − 60 = 90 s → 1 unit → 30 × 25/60 = 12.5 → 13
    Case("by_time_29m59s", BY_TIME, 29 * 60 + 59, 13, billable_minutes=30),
    # 1799 − 60 = 1739 s → ceil(1739/1800) = 1 unit → 12.5 → 13
    Case("by_time_30m00s", BY_TIME, 30 * 60, 13, billable_minutes=30),
    # 1800 − 60 = 1740 s → 1 unit → 12.5 → 13
    Case("by_time_30m01s", BY_TIME, 30 * 60 + 1, 13, billable_minutes=30),
    # 1801 − 60 = 1741 s → 1 unit → 12.5 → 13
    Case("by_time_31m00s_fills_the_first_block", BY_TIME, 31 * 60, 13, billable_minutes=30),
    # 1860 − 60 = 1800 s → exactly 1 unit → 12.5 → 13
    Case("by_time_31m01s_starts_a_second_block", BY_TIME, 31 * 60 + 1, 25, billable_minutes=60),
    # 1861 − 60 = 1801 s → ceil(1801/1800) = 2 units → 60 × 25/60 = 25
    Case("by_time_three_blocks_rounded_once", BY_TIME, 61 * 60 + 1, 38, billable_minutes=90),
    # 3661 − 60 = 3601 s → 3 units → 90 × 25/60 = 37.5 → 38 (per block: 13 × 3 = 39)
    Case("by_time_4h01m_is_one_yuan", BY_TIME, 4 * H + 60, 100, billable_minutes=240),
    # 14460 − 60 = 14400 s → 8 units → 240 × 25/60 = 100
    Case("by_time_4h01m01s", BY_TIME, 4 * H + 61, 113, billable_minutes=270),
    # 14461 − 60 = 14401 s → 9 units → 270 × 25/60 = 112.5 → 113
    # --- the same blocks without free minutes: the unit edge itself --------------------------
    Case("unit30_free0_29m59s", time_t(25, unit_minutes=30), 29 * 60 + 59, 13),
    # ceil(1799/1800) = 1 unit → 12.5 → 13
    Case("unit30_free0_30m00s", time_t(25, unit_minutes=30), 30 * 60, 13),
    # ceil(1800/1800) = 1 unit → 12.5 → 13
    Case("unit30_free0_30m01s", time_t(25, unit_minutes=30), 30 * 60 + 1, 25),
    # ceil(1801/1800) = 2 units → 60 × 25/60 = 25
    # --- a fault or power loss that cuts a charge within the free minute ----------------------
    Case("fault_cut_after_12s_is_free", BY_TIME, 12, 0, energy_wh=1, reason="fault"),
    # 12 s ≤ 60 s free → 0, whatever ended it
    Case("power_loss_after_59s_is_free", BY_TIME, 59, 0, energy_wh=3, reason="power_loss"),
    # 59 s ≤ 60 s free → 0
    Case("fault_cut_within_free_minute_power_tier",
         tariff("power_tier", tiers=STANDARD, free_minutes=1), 45, 0, energy_wh=2,
         samples=(at(10, 390.0),), reason="fault"),  # 45 s ≤ 60 s free → 0 (no band needed)
    Case("fault_after_the_free_minute_is_billed", BY_TIME, 5 * 60, 13, energy_wh=20,
         reason="fault"),  # 300 − 60 = 240 s → 1 unit → 12.5 → 13 (settlement refunds later)
    # --- no energy delivered: free in every mode (relay_open, no_load, 0 Wh) -------------------
    Case("no_energy_time", BY_TIME, 3 * 60, 0, energy_wh=0, billable_minutes=0),
    # 0 Wh → 0 (was 13: 1 block), so the rider's next start is not blocked by a due bill
    Case("no_energy_time_relay_open_fault", time_t(60), H, 0, energy_wh=0, reason="fault"),
    # relay never closed: 0 Wh over an hour → 0
    Case("no_energy_power_tier_peak_minute",
         tariff("power_tier", tiers=STANDARD, free_minutes=1), H, 0, energy_wh=0,
         samples=W250),  # a reading but 0 Wh counted → nothing delivered → 0
    Case("no_energy_power_tier_session_mean", bands(band_by="session_mean"), H, 0,
         energy_wh=0),  # 0 Wh → 0 W → no energy → 0
    Case("no_energy_energy_mode", energy_t(100, 80), H, 0, energy_wh=0),  # 0 kWh → 0
    Case("no_energy_keeps_no_minimum_fee", time_t(60, min_fee_fen=50), H, 0, energy_wh=0),
    # 0 Wh → 0, and a minimum fee never lifts a free charge
    Case("no_load_time_counter_crept", BY_TIME, 3 * 60, 0, energy_wh=2, reason="no_load"),
    # the pile found no charger: `no_load` → 0 although the counter shows 2 Wh
    Case("no_load_power_tier", tariff("power_tier", tiers=STANDARD), 3 * 60, 0, energy_wh=1,
         samples=W250, reason="no_load"),  # no_load → 0
    Case("no_load_energy_mode", energy_t(100, 80, min_fee_fen=50), 3 * 60, 0, energy_wh=3,
         reason="no_load"),  # no_load → 0 (not 3 × 0.18 = 0.54 → 1 → min fee 50)
    Case("a_tenth_of_a_watt_hour_is_energy", time_t(60), H, 60, energy_wh=0.1),
    # 0.1 Wh > 0 → billed: 60 units × 1 min × 60/60 = 60
    # --- each mode -------------------------------------------------------------------------
    Case("time_per_minute", time_t(60), 10 * 60, 10),  # 60/60 × 10 = 10
    Case("energy_with_service", energy_t(100, 80), H, 222,
         energy_wh=1234),  # 1.234 kWh × (100 + 80) = 222.12 → 222
    Case("energy_decimal_512_5_wh", energy_t(100, 80), H, 92,
         energy_wh=512.5),  # 0.5125 kWh × 180 = 92.25 → 92
    Case("energy_decimal_exact_at_the_half", energy_t(5000, 0), H, 501, energy_wh=100.1),
    # 0.1001 kWh × 5000 = 500.5 → 501 (the binary float 100.0999… would round to 500)
    Case("energy_free_minute_61s", energy_t(100, 80, free_minutes=1), 61, 1, energy_wh=5,
         billable_minutes=1),  # 61 > 60 s free → billed: 0.005 kWh × 180 = 0.9 → 1
    Case("energy_free_minute_60s", energy_t(100, 80, free_minutes=1), 60, 0,
         energy_wh=5),  # 60 s ≤ 60 s free → 0 although 5 Wh flowed
    Case("power_tier_3h_250w_standard",
         tariff("power_tier", tiers=STANDARD, free_minutes=1), 3 * H, 119, energy_wh=750,
         samples=W250, billable_minutes=179),
    # 250 W → 400 W tier; 10800 − 60 = 10740 s → 179 units → 40/60 × 179 = 119.33 → 119
    Case("power_tier_30min_blocks_2m30s",
         tariff("power_tier", tiers=STANDARD, unit_minutes=30, free_minutes=1), 150, 20,
         energy_wh=10, samples=W250),  # 250 W → 40 fen/h; 1 unit → 30 × 40/60 = 20
    Case("power_tier_session_mean_free_minute", bands(band_by="session_mean", free_minutes=1),
         2 * H, 129, energy_wh=500, billable_minutes=119),
    # 500 Wh / 2 h = 250 W → ≤360 → 65 fen/h; 7200 − 60 = 7140 s → 119 → 65 × 119/60
    # = 128.92 → 129
    Case("session_mean_decimal_energy", bands(band_by="session_mean"), H, 65,
         energy_wh=183.4),  # 183.4 Wh / 1 h = 183.4 W → 183 → >180 → 65/60 × 60 = 65
    Case("session_mean_decimal_half_watt_is_dearer", bands(band_by="session_mean"), H, 65,
         energy_wh=180.5),  # 180.5 W → half up 181 → >180 → 65
    Case("session_mean_decimal_under_half_stays", bands(band_by="session_mean"), H, 55,
         energy_wh=180.4),  # 180.4 W → 180 → ≤180 → 55
    Case("peak_minute_decimal_readings", bands(), H, 65,
         samples=(at(10, 180.3), at(20, 180.8))),  # (180.3 + 180.8)/2 = 180.55 → 181 → 65
    # --- every tier boundary (peak_minute, one reading, 60 min) ---------------------------------
    Case("tier_at_180w", bands(), H, 55, samples=(at(30, 180.0),)),  # ≤180 → 55/60 × 60 = 55
    Case("tier_181w", bands(), H, 65, samples=(at(30, 181.0),)),  # 181–360 → 65/60 × 60 = 65
    Case("tier_at_360w", bands(), H, 65, samples=(at(30, 360.0),)),  # ≤360 → 65/60 × 60 = 65
    Case("tier_361w", bands(), H, 85, samples=(at(30, 361.0),)),  # 361–540 → 85/60 × 60 = 85
    Case("tier_at_540w", bands(), 40 * 60, 57,
         samples=(at(30, 540.0),)),  # ≤540 → 85/60 × 40 = 56.67 → 57
    Case("tier_541w", bands(), 40 * 60, 67,
         samples=(at(30, 541.0),)),  # 541–800 → 100/60 × 40 = 66.67 → 67
    Case("tier_at_800w", bands(), 40 * 60, 67,
         samples=(at(30, 800.0),)),  # ≤800 → 100/60 × 40 = 66.67 → 67
    Case("tier_801w", bands(), H, 150, samples=(at(30, 801.0),),
         port_limit_w=1500),  # 801–1200 → 150/60 × 60 = 150
    Case("tier_at_1200w_top", bands(), H, 150, samples=(at(30, 1200.0),),
         port_limit_w=1500),  # ≤1200 → 150/60 × 60 = 150
    Case("above_top_tier_uses_last", bands(), H, 150, samples=(at(30, 1201.0),),
         port_limit_w=1500),  # 1201 W > every up_to_w → last tier: 150/60 × 60 = 150
    Case("tiers_listed_out_of_order", bands(tiers=list(reversed(BANDS))), H, 65,
         samples=W250),  # sorted by up_to_w, 250 W → ≤360 → 65
    # --- peak_minute vs session_mean -------------------------------------------------------
    Case("spike_minute_peak_minute", bands(), H, 150, energy_wh=210,
         samples=SPIKE),  # minute 5 mean = 900 W → ≤1200 → 150/60 × 60 = 150
    Case("spike_minute_session_mean", bands(band_by="session_mean"), H, 65, energy_wh=210,
         samples=SPIKE),  # 210 Wh × 3600 / 3600 s = 210 W → ≤360 → 65/60 × 60 = 65
    Case("spike_averaged_within_its_minute", bands(), H, 85,
         samples=(at(300, 200.0), at(320, 200.0), at(340, 900.0))),
    # (200 + 200 + 900) / 3 = 433 W → ≤540 → 85/60 × 60 = 85
    Case("no_samples_falls_back_to_energy", bands(), 2 * H, 130,
         energy_wh=600),  # 600 Wh / 2 h = 300 W → ≤360 → 65/60 × 120 = 130
    Case("reading_above_port_limit_ignored", bands(), H, 55,
         samples=(at(30, 5000.0), at(40, 150.0))),  # 5000 > 1000 dropped; 150 W → 55
    Case("all_readings_above_limit_use_energy", bands(), H, 65, energy_wh=250,
         samples=(at(30, 5000.0),)),  # nothing left; 250 Wh / 1 h = 250 W → ≤360 → 65
    Case("reading_at_port_limit_kept", bands(), H, 150,
         samples=(at(30, 1000.0),)),  # 1000 ≤ limit 1000 kept → ≤1200 → 150
    Case("reading_before_start_ignored", bands(), H, 55,
         samples=(at(-30, 900.0), at(30, 150.0))),  # only 150 W is "since start" → 55
    # --- free minutes (time, 60 fen/h, per minute: fen = billable minutes) -------------------
    Case("free0_one_second", time_t(60), 1, 1),  # ceil(1/60) = 1 unit → 1
    Case("free0_zero_seconds", time_t(60), 0, 0),  # 0 units → 0
    Case("free1_exactly_60s", time_t(60, free_minutes=1), 60, 0),  # 60 ≤ 60 → free
    Case("free1_61s", time_t(60, free_minutes=1), 61, 1),  # ceil(1/60) = 1 → 1
    Case("free30_exactly_1800s", time_t(60, free_minutes=30), 1800, 0),  # 1800 ≤ 1800 → free
    Case("free30_1801s", time_t(60, free_minutes=30), 1801, 1),  # ceil(1/60) = 1 → 1
    Case("free30_two_hours", time_t(60, free_minutes=30), 2 * H, 90),  # (7200 − 1800)/60 = 90
    Case("free1_with_30min_blocks", time_t(60, unit_minutes=30, free_minutes=1), 61, 30,
         billable_minutes=30),
    # 61 − 60 = 1 s → 1 unit = 30 min → 60/60 × 30 = 30 (the old "block − free" gave 29)
    # --- started units ---------------------------------------------------------------------
    Case("unit1_exact_10min", time_t(60), 600, 10),  # 10 started minutes → 10
    Case("unit1_one_second_over", time_t(60), 601, 11),  # 11 started minutes → 11
    Case("unit30_exact_block", time_t(60, unit_minutes=30), 1800, 30),  # 1 block = 30 min
    Case("unit30_one_second_over", time_t(60, unit_minutes=30), 1801, 60),  # 2 blocks = 60
    Case("unit60_exact_hour", time_t(60, unit_minutes=60), H, 60),  # 1 unit = 60 min
    Case("unit60_one_second_over", time_t(60, unit_minutes=60), H + 1, 120),  # 2 units = 120
    Case("one_yuan_for_4h", time_t(25, unit_minutes=30), 4 * H, 100),  # 25/60 × 240 = 100
    Case("4h_plus_one_second", time_t(25, unit_minutes=30), 4 * H + 1, 113),
    # 9 blocks = 270 min → 25/60 × 270 = 112.5 → 113 (half up)
    # --- off-peak windows, local Asia/Shanghai time --------------------------------------------
    Case("tou_start_before_window", time_t(60, off_peak=NIGHT), 2 * H, 108,
         start=utc(2, 13)),  # 21:00–23:00 local: 60 peak + 60 × 0.8 = 60 + 48 = 108
    Case("tou_inside_across_midnight", time_t(60, off_peak=NIGHT), 3 * H, 144,
         start=utc(2, 15)),  # 23:00–02:00 local: 180 off × 0.8 = 144
    Case("tou_spanning_both_edges", time_t(60, off_peak=NIGHT), 12 * H, 600,
         start=utc(2, 13)),  # 21:00–09:00 local: 120 peak + 600 × 0.8 = 120 + 480 = 600
    Case("tou_longer_than_24h", time_t(60, off_peak=NIGHT), 30 * H, 1632,
         start=utc(2, 12)),
    # 20:00 Mar 2 – 02:00 Mar 4 local: off 600 (22–08) + 240 (22–02) = 840, peak 1800 − 840 = 960
    # → 960 + 840 × 0.8 = 960 + 672 = 1632
    Case("tou_local_date_not_utc", time_t(60, off_peak=NIGHT), H, 54,
         start=utc(2, 23, 30)),  # 07:30–08:30 Mar 3 local: 30 × 0.8 + 30 = 24 + 30 = 54
    Case("tou_midday_window_not_crossing_midnight",
         time_t(60, off_peak={"start": "12:00", "end": "14:00", "percent": 50}), 4 * H, 180,
         start=utc(2, 3)),  # 11:00–15:00 local: 120 peak + 120 × 0.5 = 120 + 60 = 180
    Case("tou_free_minutes_shift_the_interval",
         time_t(60, free_minutes=10, off_peak=NIGHT), 40 * 60, 24,
         start=utc(2, 13, 50)),  # 21:50 local; billable 22:00–22:30 all off: 30 × 0.8 = 24
    Case("tou_blocks_across_the_edge",
         time_t(60, unit_minutes=30, free_minutes=1, off_peak=NIGHT), 46 * 60, 51,
         start=utc(2, 13, 44), billable_minutes=60),
    # 21:44 local; 2760 − 60 = 2700 s → 2 units = 60 min billed 21:45–22:45:
    # 15 peak + 45 off → 60/60 × (15 + 45 × 0.8) = 15 + 36 = 51
    Case("tou_free_minute_before_the_morning_edge",
         time_t(60, free_minutes=1, off_peak=NIGHT), 61 * 60, 54, start=utc(2, 23, 29),
         billable_minutes=60),
    # 07:29 local; 3660 − 60 = 3600 s → 60 min billed 07:30–08:30 (the free minute is the
    # 07:29 one): 30 off + 30 peak → 30 × 0.8 + 30 = 24 + 30 = 54
    Case("tou_energy_by_time_share", energy_t(100, 80, off_peak=NIGHT), 2 * H, 162,
         energy_wh=1000, start=utc(2, 13)),
    # 21:00–23:00 local: 1 kWh × 180 × (60 + 60 × 0.8) / 120 = 180 × 108 / 120 = 162
    Case("tou_power_tier_session_mean", bands(band_by="session_mean", off_peak=NIGHT), 2 * H,
         117, energy_wh=500, start=utc(2, 13)),
    # 500 Wh / 2 h = 250 W → 65 fen/h; 21:00–23:00: 65/60 × (60 + 48) = 117
    # --- minimum fee (time, 60 fen/h) -----------------------------------------------------------
    Case("min_fee_below", time_t(60, min_fee_fen=50), 2 * 60, 50),  # 2 < 50 → 50
    Case("min_fee_equal", time_t(60, min_fee_fen=50), 50 * 60, 50),  # 50 = 50 → 50
    Case("min_fee_above", time_t(60, min_fee_fen=50), 51 * 60, 51),  # 51 > 50 → 51
    Case("min_fee_free_session_stays_zero", time_t(60, min_fee_fen=50, free_minutes=1), 60, 0),
    # 60 s ≤ 60 s free → 0, no minimum fee
    Case("min_fee_by_time_61s", {**BY_TIME, "min_fee_fen": 50}, 61, 50),
    # 1 unit → 12.5 → 13 > 0 → lifted to the 50 minimum
    Case("min_fee_by_time_12s_stays_zero", {**BY_TIME, "min_fee_fen": 50}, 12, 0),
    # 12 s ≤ 60 s free → 0, no minimum fee
    Case("min_fee_no_energy_stays_zero", energy_t(100, 80, min_fee_fen=50), H, 0, energy_wh=0),
    # 0 Wh → nothing delivered → 0, no minimum fee
    # --- cap (time, 60 fen/h) ---------------------------------------------------------------------
    Case("cap_below", time_t(60, cap_fen=300), 299 * 60, 299),  # 299 < 300
    Case("cap_exactly", time_t(60, cap_fen=300), 300 * 60, 300),  # 300 = 300
    Case("cap_above", time_t(60, cap_fen=300), 10 * H, 300),  # 600 > 300 → 300
    Case("cap_beats_min_fee", time_t(60, min_fee_fen=500, cap_fen=300), 2 * 60, 300),
    # 2 → min fee 500 → capped 300
    Case("cap_by_time_a_whole_day", {**BY_TIME, "cap_fen": 500}, 24 * H, 500),
    # 86400 − 60 = 86340 s → ceil(47.97) = 48 units → 1440 × 25/60 = 600 > 500 → 500
    Case("cap_energy_mode", energy_t(100, 80, cap_fen=200), 3 * H, 200, energy_wh=1500),
    # 1.5 kWh × 180 = 270 > 200 → 200
    # --- half-up, once per bill ------------------------------------------------------------------
    Case("half_fen_rounds_up", time_t(1), 30 * 60, 1),  # 1/60 × 30 = 0.5 → 1
    Case("x_point_5_rounds_up", energy_t(149, 0), H, 224,
         energy_wh=1500),  # 1.5 × 149 = 223.5 → 224
    Case("x_point_49_rounds_down", energy_t(149, 0), H, 150,
         energy_wh=1010),  # 1.01 × 149 = 150.49 → 150
    Case("once_not_per_minute_25_per_hour", time_t(25), 179 * 60, 75),
    # 25/60 × 179 = 74.58 → 75 (each minute rounded alone: 0.42 → 0, total 0)
    Case("once_not_per_minute_40_per_hour", tariff("power_tier", tiers=STANDARD), 179 * 60, 119,
         samples=W250),  # 40/60 × 179 = 119.33 → 119 (per minute: 0.67 → 1, 179)
    Case("once_not_per_price_part", time_t(3, off_peak={**NIGHT, "percent": 50}), 30 * 60, 1,
         start=utc(2, 13, 50)),
    # 21:50–22:20 local: 3/60 × 10 = 0.5 peak + 3/60 × 20 × 0.5 = 0.5 off → 1.0 → 1
    # (each part rounded alone: 1 + 1 = 2)
    Case("once_not_per_energy_part", energy_t(105, 85), H, 19,
         energy_wh=100),  # 0.1 × (105 + 85) = 19.0 → 19 (parts alone: 10.5 → 11 + 8.5 → 9 = 20)
]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def test_case_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bill_table(case: Case) -> None:
    bill = compute_bill(
        case.tariff, started_at=case.start, duration_s=case.duration_s, energy_wh=case.energy_wh,
        samples=list(case.samples), tz="Asia/Shanghai", port_limit_w=case.port_limit_w,
        reason=case.reason,
    )
    assert bill.amount_fen == case.expected_fen
    assert bill.mode == case.tariff["mode"]
    if case.billable_minutes is not None:
        assert bill.billable_minutes == case.billable_minutes
    assert bill.energy_wh == case.energy_wh  # kept at the pile's resolution


def test_every_configured_tariff_bills_a_3h_250w_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.delenv("CHARGEBOT_CONFIG", raising=False)
    tariffs = load_settings().billing.tariffs
    assert tariffs
    start = utc(2, 12)  # 20:00 Shanghai, so an off-peak window is crossed too
    samples = [at(60 * m + 30, 250.0, start) for m in range(180)]
    for name, settings in tariffs.items():
        snapshot = tariff_snapshot(settings, name)
        again = json.loads(json.dumps(snapshot))
        assert again == snapshot, name
        bills = [
            compute_bill(t, started_at=start, duration_s=3 * H, energy_wh=750, samples=samples)
            for t in (snapshot, again)
        ]
        assert bills[0] == bills[1], name
        assert bills[0].amount_fen >= 0, name


def test_a_band_half_a_watt_over_the_edge_is_the_dearer_band() -> None:
    from core.billing.tariffs import band_power_w

    t0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    samples = [(t0 + timedelta(seconds=10), 200.0), (t0 + timedelta(seconds=20), 201.0)]
    assert band_power_w(samples, band_by="peak_minute", started_at=t0, energy_wh=0,
                        duration_s=60, port_limit_w=1000) == 201  # 200.5 rounds half up


def test_off_peak_minutes_count_elapsed_time_across_a_dst_change() -> None:
    from core.billing.tariffs import minutes_in_window

    # Berlin springs forward at 02:00 local on 2026-03-29: 3 real hours from 00:00 UTC.
    start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    n = minutes_in_window(start, start + timedelta(hours=3), ("00:00", "08:00"), "Europe/Berlin")
    assert n == 180
