"""Bill arithmetic: tiers, blocks, free minutes, windows across midnight, one rounding per bill."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from core.billing.tariffs import band_power_w, compute_bill, minutes_in_window

TIERS = [{"up_to_w": 200, "fen_per_hour": 25}, {"up_to_w": 400, "fen_per_hour": 40},
         {"up_to_w": 1000, "fen_per_hour": 60}]
POWER = {"mode": "power_tier", "unit_minutes": 1, "free_minutes": 1, "tiers": TIERS,
         "band_by": "peak_minute", "min_fee_fen": 0, "cap_fen": 0}
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def test_power_band_uses_the_highest_one_minute_mean_not_a_spike() -> None:
    samples = [(T0 + timedelta(seconds=10 * i), 180.0) for i in range(60)]
    samples.append((T0 + timedelta(seconds=605), 950.0))  # one spike inside minute 10
    band = band_power_w(samples, band_by="peak_minute", started_at=T0, energy_wh=0,
                        duration_s=600, port_limit_w=1000)
    assert band == round((180 * 0 + 950) / 1)  # minute 10 holds only the spike
    samples.append((T0 + timedelta(seconds=601), 180.0))
    band = band_power_w(samples, band_by="peak_minute", started_at=T0, energy_wh=0,
                        duration_s=600, port_limit_w=1000)
    assert band == round((950 + 180) / 2)
    # Readings above the port limit are filtered like the boards do.
    assert band_power_w([(T0, 5000.0), (T0, 150.0)], band_by="peak_minute", started_at=T0,
                        energy_wh=0, duration_s=60, port_limit_w=1000) == 150


def test_three_hours_at_250_w_costs_the_400_w_tier() -> None:
    bill = compute_bill(POWER, started_at=T0, duration_s=3 * 3600, energy_wh=750,
                        samples=[(T0 + timedelta(minutes=m), 250.0) for m in range(180)])
    assert (bill.tier_up_to_w, bill.fen_per_hour) == (400, 40)
    assert bill.billable_minutes == 179
    assert bill.amount_fen == 119  # 40/60 × 179 = 119.33 → 119


def test_a_minute_or_less_is_free_and_started_minutes_count() -> None:
    assert compute_bill(POWER, started_at=T0, duration_s=60, energy_wh=3).amount_fen == 0
    bill = compute_bill(POWER, started_at=T0, duration_s=61, energy_wh=3)
    assert bill.billable_minutes == 1


def test_time_tariff_in_started_half_hour_blocks() -> None:
    t = {"mode": "time", "unit_minutes": 30, "fen_per_hour": 25, "free_minutes": 0}
    # 4 h 01 min = 9 started blocks = 270 min → 25/60 × 270 = 112.5 → 113 (half up)
    assert compute_bill(t, started_at=T0, duration_s=4 * 3600 + 60, energy_wh=0).amount_fen == 113


def test_energy_tariff_with_service_fee() -> None:
    t = {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80, "free_minutes": 0}
    assert compute_bill(t, started_at=T0, duration_s=3600, energy_wh=1234).amount_fen == 222


def test_off_peak_window_across_midnight_in_local_time() -> None:
    # 21:00–01:00 Shanghai: 180 of 240 minutes fall in 22:00–08:00.
    start = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    t = {"mode": "time", "unit_minutes": 1, "fen_per_hour": 60, "free_minutes": 0,
         "off_peak": {"start": "22:00", "end": "08:00", "percent": 80}}
    bill = compute_bill(t, started_at=start, duration_s=4 * 3600, energy_wh=0)
    assert bill.off_peak_minutes == 180
    assert bill.amount_fen == 60 + 144  # 60 peak minutes at ¥0.60/h + 180 at 80 %


def test_minimum_fee_and_cap() -> None:
    t = {"mode": "time", "unit_minutes": 1, "fen_per_hour": 60, "free_minutes": 0,
         "min_fee_fen": 50, "cap_fen": 300}
    assert compute_bill(t, started_at=T0, duration_s=120, energy_wh=0).amount_fen == 50
    assert compute_bill(t, started_at=T0, duration_s=10 * 3600, energy_wh=0).amount_fen == 300


@given(st.integers(0, 16 * 3600), st.integers(0, 3000), st.floats(0, 1000))
def test_at_the_same_power_a_longer_charge_never_costs_less(duration_s: int, energy: int,
                                                            power: float) -> None:
    samples = [(T0 + timedelta(seconds=30), power)]
    a = compute_bill(POWER, started_at=T0, duration_s=duration_s, energy_wh=energy,
                     samples=samples)
    b = compute_bill(POWER, started_at=T0, duration_s=duration_s + 60, energy_wh=energy,
                     samples=samples)
    assert 0 <= a.amount_fen <= b.amount_fen


@given(st.integers(0, 48 * 60), st.integers(0, 24 * 60))
def test_window_minutes_never_exceed_the_interval(length: int, offset: int) -> None:
    start = T0 + timedelta(minutes=offset)
    n = minutes_in_window(start, start + timedelta(minutes=length), ("22:00", "08:00"),
                          "Asia/Shanghai")
    assert 0 <= n <= length
