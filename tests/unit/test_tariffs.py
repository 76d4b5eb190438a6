"""Bill arithmetic: tiers, blocks, free minutes, windows across midnight, one rounding per bill,
no energy no charge, readings at their decimal resolution (DESIGN §5, §3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.billing.tariffs import (
    band_power_w,
    compute_bill,
    delivered_no_energy,
    exact,
    minutes_in_window,
)
from tests.support.tariffs import BY_TIME, POWER, WORDS

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
    assert compute_bill(t, started_at=T0, duration_s=4 * 3600 + 60,
                        energy_wh=900).amount_fen == 113


def test_energy_tariff_with_service_fee() -> None:
    t = {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80, "free_minutes": 0}
    assert compute_bill(t, started_at=T0, duration_s=3600, energy_wh=1234).amount_fen == 222


def test_off_peak_window_across_midnight_in_local_time() -> None:
    # 21:00–01:00 Shanghai: 180 of 240 minutes fall in 22:00–08:00.
    start = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    t = {"mode": "time", "unit_minutes": 1, "fen_per_hour": 60, "free_minutes": 0,
         "off_peak": {"start": "22:00", "end": "08:00", "percent": 80}}
    bill = compute_bill(t, started_at=start, duration_s=4 * 3600, energy_wh=1000)
    assert bill.off_peak_minutes == 180
    assert bill.amount_fen == 60 + 144  # 60 peak minutes at ¥0.60/h + 180 at 80 %


def test_minimum_fee_and_cap() -> None:
    t = {"mode": "time", "unit_minutes": 1, "fen_per_hour": 60, "free_minutes": 0,
         "min_fee_fen": 50, "cap_fen": 300}
    assert compute_bill(t, started_at=T0, duration_s=120, energy_wh=8).amount_fen == 50
    assert compute_bill(t, started_at=T0, duration_s=10 * 3600, energy_wh=2500).amount_fen == 300


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


@pytest.mark.parametrize("reason", [None, "user", "fault", "power_loss", "unplugged", "full"])
def test_a_12_second_charge_is_free_whatever_ended_it(reason: str | None) -> None:
    bill = compute_bill(BY_TIME, started_at=T0, duration_s=12, energy_wh=1, reason=reason)
    assert (bill.amount_fen, bill.billable_minutes) == (0, 0)


def test_two_and_a_half_minutes_on_half_hour_blocks_is_13_fen() -> None:
    # 150 − 60 s free = 90 s → 1 started block → 30/60 × 25 = 12.5 → 13 (not 29 min → 12)
    bill = compute_bill(BY_TIME, started_at=T0, duration_s=150, energy_wh=6)
    assert (bill.amount_fen, bill.billable_minutes, bill.free_minutes) == (13, 30, 1)


MODES = {
    "time": {"mode": "time", "fen_per_hour": 60, "free_minutes": 1, "min_fee_fen": 50},
    "power_tier_peak": {**POWER, "min_fee_fen": 50},
    "power_tier_mean": {**POWER, "band_by": "session_mean", "min_fee_fen": 50},
    "energy": {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80,
               "free_minutes": 1, "min_fee_fen": 50},
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(("energy_wh", "reason"), [
    (0, "no_load"), (0, "fault"), (0.0, "user"), (0, None), (3, "no_load"), (0.4, "no_load"),
])
def test_a_charge_that_delivered_no_energy_costs_nothing_in_every_mode(
    mode: str, energy_wh: float, reason: str | None,
) -> None:
    # 3 min with a 250 W reading but nothing counted (a relay that never closed), or the pile's
    # own "no charger detected": no minimum fee, no plan minutes, nothing left due.
    bill = compute_bill(MODES[mode], started_at=T0, duration_s=180, energy_wh=energy_wh,
                        samples=[(T0 + timedelta(seconds=30), 250.0)], reason=reason)
    assert (bill.amount_fen, bill.billable_minutes, bill.delivered_energy) == (0, 0, False)


def test_what_counts_as_no_energy() -> None:
    assert delivered_no_energy(0) and delivered_no_energy(0.0) and delivered_no_energy(-1)
    assert delivered_no_energy(12.5, "no_load")
    assert not delivered_no_energy(0.1) and not delivered_no_energy(12.5, "fault")


def test_readings_are_kept_at_their_decimal_resolution() -> None:
    assert exact(183.4) == Fraction(1834, 10)  # not the binary 183.40000000000000568…
    assert exact(512.5) == Fraction(1025, 2) and exact(7) == 7
    assert exact(Decimal("0.01")) == Fraction(1, 100)
    energy = {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80}
    bill = compute_bill(energy, started_at=T0, duration_s=3600, energy_wh=512.5)
    assert (bill.amount_fen, bill.energy_wh) == (92, 512.5)  # 0.5125 × 180 = 92.25 → 92
    assert compute_bill(energy, started_at=T0, duration_s=3600, energy_wh=750).energy_wh == 750
    # session_mean on a decimal counter: 12.5 Wh in 60 s = 750 W.
    assert band_power_w([], band_by="session_mean", started_at=T0, energy_wh=12.5,
                        duration_s=60, port_limit_w=1000) == 750


@given(st.sampled_from([1, 5, 30, 60]), st.sampled_from([0, 1, 5, 30]), st.integers(1, 300),
       st.integers(0, 48 * 3600))
def test_time_bills_started_units_after_the_free_minutes_rounded_once(
    unit: int, free: int, rate: int, duration_s: int,
) -> None:
    t = {"mode": "time", "unit_minutes": unit, "free_minutes": free, "fen_per_hour": rate}
    bill = compute_bill(t, started_at=T0, duration_s=duration_s, energy_wh=100)
    over = duration_s - free * 60
    units = 0 if over <= 0 else (over + unit * 60 - 1) // (unit * 60)
    # units × unit / 60 × rate, half up in integers: floor((2 × minutes × rate + 60) / 120)
    assert bill.billable_minutes == units * unit
    assert bill.amount_fen == (2 * units * unit * rate + 60) // 120


@given(st.sampled_from(sorted(MODES)), st.integers(0, 60), st.floats(0, 5000),
       st.sampled_from([None, "user", "fault", "power_loss", "full", "unplugged", "limit"]))
def test_within_the_free_minute_nothing_is_ever_charged(
    mode: str, duration_s: int, energy_wh: float, reason: str | None,
) -> None:
    bill = compute_bill(MODES[mode], started_at=T0, duration_s=duration_s, energy_wh=energy_wh,
                        samples=[(T0 + timedelta(seconds=5), 900.0)], reason=reason)
    assert bill.amount_fen == 0


@given(st.floats(0, 10_000, allow_nan=False).map(lambda x: round(x, 1)))
def test_a_float_reading_bills_like_the_decimal_it_was_sent_as(energy_wh: float) -> None:
    t = {"mode": "energy", "fen_per_kwh": 5000, "service_fen_per_kwh": 0}
    as_float = compute_bill(t, started_at=T0, duration_s=3600, energy_wh=energy_wh)
    as_decimal = compute_bill(t, started_at=T0, duration_s=3600,
                              energy_wh=Decimal(repr(energy_wh)))
    assert as_float.amount_fen == as_decimal.amount_fen
    assert as_float.energy_wh == energy_wh


# --- what the port card says: the same rules, in the rider's words ------------------------------


@pytest.mark.parametrize(("tariff", "lang", "words"), WORDS)
def test_the_price_is_told_in_words_before_the_start(tariff: dict, lang: str,
                                                     words: str) -> None:
    from bot.handlers.text import tariff_sentence

    assert tariff_sentence(lang, tariff) == words
