"""Predictive maintenance: the wear model's arithmetic, the wear simulator, and the acceptance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.faults.wear import HEAT_WINDOW, PortState, WearModel, fit, forecast, heat_coefficient
from simulator.wear import (
    PILE_MODELS,
    History,
    Life,
    Policy,
    evaluate,
    every_n_cycles,
    fleet,
    load_truth,
    matched_baseline,
    observed,
    predictive,
    simulate,
    train,
)

HEALTHY = [[2.5 + 0.1 * np.sin(i) for i in range(40)] for _ in range(30)]
MODEL = WearModel(
    shape=3.0, scale=900.0, heat_baseline=2.5, heat_spread=0.5, heat_port_spread=0.15,
    heat_warning=1.2, sudden_share=0.15, samples=400, failures=300,
)


def censored_weibull(shape: float, scale: float, n: int, seed: int) -> list[tuple[int, bool]]:
    """Lives observed until a random inspection cut-off: about a third are still running."""
    rng = np.random.default_rng(seed)
    life = scale * rng.weibull(shape, n)
    cutoff = rng.uniform(0.3, 2.0, n) * scale
    return [(max(1, round(min(lv, c))), bool(lv <= c)) for lv, c in zip(life, cutoff, strict=True)]


# ---- fit -------------------------------------------------------------------------------------


def test_fit_recovers_weibull_parameters_from_censored_lives() -> None:
    lives = censored_weibull(3.0, 800.0, 600, seed=11)
    assert 0.2 < sum(not f for _, f in lives) / len(lives) < 0.5
    model = fit(lives, HEALTHY)
    assert model.shape == pytest.approx(3.0, rel=0.12)
    assert model.scale == pytest.approx(800.0, rel=0.06)
    assert (model.samples, model.failures) == (600, sum(f for _, f in lives))
    # Dropping the censored lives (ports still running) would make ports look short-lived.
    naive = fit([(c, True) for c, f in lives if f], HEALTHY)
    assert naive.scale < 0.9 * model.scale


def test_fit_learns_healthy_heat_and_the_warning_excess() -> None:
    lives = censored_weibull(3.0, 800.0, 200, seed=3)
    hot = [[2.5 + 0.1 * k for k in range(6)] + [4.0] * 6 for _ in range(17)]
    sudden = [[2.5] * 12 for _ in range(3)]
    model = fit(lives, HEALTHY, hot + sudden)
    assert model.heat_baseline == pytest.approx(2.5, abs=0.05)
    assert 0.0 < model.heat_spread < 0.2
    assert model.heat_warning > 0.8
    assert model.sudden_share == pytest.approx((3 + 1) / (20 + 2))


def test_fit_refuses_too_few_failures() -> None:
    lives = [(500, True)] * 5 + [(300, False)] * 200
    with pytest.raises(ValueError, match="wear-out failures"):
        fit(lives, HEALTHY)
    with pytest.raises(ValueError, match="heating"):
        fit(censored_weibull(3.0, 800.0, 100, seed=1), [[2.5]])


# ---- heat_coefficient ------------------------------------------------------------------------


def test_heat_coefficient_is_degrees_per_100_w_and_ignores_float_power() -> None:
    samples = [(200.0, 30.0), (200.0, 30.2), (220.0, 30.5), (100.0, 27.4), (15.0, 26.0)]
    # 2.5, 2.6, 2.5, 2.4 per 100 W; the 15 W float sample (6.7 per 100 W) is noise.
    assert heat_coefficient(samples, ambient_c=25.0) == pytest.approx(2.5)
    assert heat_coefficient(samples, ambient_c=20.0) == pytest.approx(5.0, abs=0.05)


def test_heat_coefficient_shrugs_off_one_spike_and_needs_three_samples() -> None:
    spiky = [(200.0, 30.0), (200.0, 30.0), (200.0, 85.0)]
    assert heat_coefficient(spiky) == pytest.approx(2.5)
    assert heat_coefficient([(200.0, 30.0), (200.0, 30.0), (20.0, 25.5)]) is None
    assert heat_coefficient([]) is None


# ---- forecast --------------------------------------------------------------------------------


def state(cycles: int, heat: float = 2.5, rate: float = 5.0) -> PortState:
    return PortState(cycles=cycles, cycles_per_day=rate, heat=[heat] * HEAT_WINDOW)


def test_brand_new_port_is_not_serviced() -> None:
    f = forecast(MODEL, PortState(cycles=0, cycles_per_day=6.0, heat=[]))
    assert f.failure_probability < 1e-4 and not f.service
    assert f.days_to_failure > 100
    assert f.heat_ratio is None


def test_more_cycles_mean_higher_failure_probability_and_less_time_left() -> None:
    forecasts = [forecast(MODEL, state(c)) for c in (0, 200, 500, 800, 1200, 2000)]
    probs = [f.failure_probability for f in forecasts]
    days = [f.days_to_failure for f in forecasts]
    assert all(a < b for a, b in zip(probs, probs[1:], strict=False))
    assert all(a > b for a, b in zip(days, days[1:], strict=False))


def test_hotter_trend_means_higher_probability_until_a_visit_is_planned() -> None:
    heats = (2.3, 2.5, 2.8, 3.2, 3.7, 4.5)
    forecasts = [forecast(MODEL, state(700, h)) for h in heats]
    probs = [f.failure_probability for f in forecasts]
    assert all(a < b for a, b in zip(probs, probs[1:], strict=False))
    assert not forecasts[1].service and forecasts[-1].service
    assert forecasts[-1].heat_ratio == pytest.approx(1.8)
    # The same heat on a young port says less: the Weibull prior still counts.
    assert forecast(MODEL, state(100, 3.2)).failure_probability < probs[3]


def test_a_port_at_normal_heat_keeps_the_odds_of_a_sudden_failure() -> None:
    unknown = forecast(MODEL, PortState(cycles=2500, cycles_per_day=5.0, heat=[]))
    cold = forecast(MODEL, state(2500, 2.5))
    odds = unknown.failure_probability / (1 - unknown.failure_probability)
    # Normal heat rules out a thermal failure, not a welded relay: odds x sudden_share at least.
    assert cold.failure_probability >= 0.99 * (odds * 0.15) / (1 + odds * 0.15)
    assert cold.failure_probability < unknown.failure_probability
    assert cold.days_to_failure < forecast(MODEL, state(500, 2.5)).days_to_failure


# ---- the simulator ---------------------------------------------------------------------------


def digest(history: History) -> list[tuple[int, float, float | None]]:
    return [(c.port, round(c.at, 9), c.heat) for c in history.charges]


def test_simulator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = simulate(12, 200, seed=7, ground_truth=tmp_path / "a.json")
    b = simulate(12, 200, seed=7, ground_truth=tmp_path / "b.json")
    c = simulate(12, 200, seed=8)
    assert digest(a) == digest(b) and a.faults == b.faults
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert digest(a) != digest(c)


def test_ground_truth_matches_what_the_platform_observed(tmp_path: Path) -> None:
    truth_file = tmp_path / "truth.json"
    history = simulate(30, 300, seed=5, policy=every_n_cycles(400), ground_truth=truth_file)
    truth = load_truth(truth_file)
    assert json.loads(truth_file.read_text())["seed"] == 5
    failed = sorted((life.port, life.ended_at) for life in truth if life.end == "failure")
    assert failed == sorted((f.port, f.at) for f in history.faults)
    assert len(failed) > 10
    serviced = sorted((life.port, life.ended_at) for life in truth if life.end == "service")
    assert serviced == sorted((r.port, r.at) for r in history.renewals if r.kind == "service")
    # A failed life ran exactly its hidden number of charges; a serviced one stopped short, at
    # the first daily check after its 400th charge.
    charges: dict[int, list[float]] = {}
    for c in history.charges:
        charges.setdefault(c.port, []).append(c.at)
    for life in truth:
        ran = sum(1 for at in charges[life.port] if life.start <= at <= (life.ended_at or 1e9))
        if life.end == "failure":
            assert ran == life.cycles
        elif life.end == "service":
            assert 400 <= ran < min(life.cycles, 430)
            assert life.fails_at is None or life.fails_at > life.ended_at
    codes = Counter(f.code for f in history.faults)
    assert set(codes) <= {"over_temperature", "relay_stuck"} and codes["over_temperature"] > 0


def test_policies_get_the_same_hidden_lives_for_a_fair_comparison(tmp_path: Path) -> None:
    def lives(policy: Policy | None, name: str) -> dict[int, list[int]]:
        simulate(20, 300, seed=3, policy=policy, ground_truth=tmp_path / name)
        out: dict[int, list[int]] = {}
        for life in load_truth(tmp_path / name):
            out.setdefault(life.port, []).append(life.cycles)
        return out

    free, serviced = lives(None, "free.json"), lives(every_n_cycles(300), "serviced.json")
    for port, hidden in free.items():
        n = min(len(hidden), len(serviced[port]))
        assert hidden[:n] == serviced[port][:n]


def test_training_data_treats_serviced_lives_as_censored() -> None:
    history = simulate(20, 300, seed=4, policy=every_n_cycles(350))
    data = observed(history)
    assert set(data) == set(PILE_MODELS)
    lives = [life for d in data.values() for life in d.lives]
    services = sum(1 for r in history.renewals if r.kind == "service")
    # Each service censors a life, and so does the end of the run, once per port.
    assert sum(1 for _, f in lives if not f) == services + 20
    assert sum(1 for c, f in lives if not f and 350 <= c < 380) >= services
    assert max(c for c, f in lives if not f) < 380
    assert sum(f for _, f in lives) == len(history.faults)
    assert all(len(w) <= 80 for d in data.values() for w in d.warning)


def test_life_round_trips_through_the_truth_file(tmp_path: Path) -> None:
    simulate(3, 60, seed=1, ground_truth=tmp_path / "t.json")
    assert all(isinstance(life, Life) for life in load_truth(tmp_path / "t.json"))


# ---- acceptance (issue 5) --------------------------------------------------------------------

PORTS, DAYS = 80, 300


@pytest.fixture(scope="module")
def models() -> dict[str, WearModel]:
    """Fitted on fleet A (seed 1), run to failure, from observed history only."""
    return train(simulate(PORTS, DAYS, seed=1))


def test_forecast_meets_targets_and_beats_every_n_cycles_on_an_unseen_fleet(
    models: dict[str, WearModel], tmp_path: Path
) -> None:
    truth = tmp_path / "fleet-b.json"
    s = evaluate(predictive(models, fleet(PORTS)), PORTS, DAYS, 2, truth)
    assert s.failures > 80 and s.visits > 80
    assert s.recall >= 0.70
    assert s.precision >= 0.50
    assert s.median_lead_h >= 24.0
    n, base = matched_baseline(s.visits, PORTS, DAYS, 2, truth)
    assert base.visits >= s.visits
    assert s.recall > 2 * base.recall and s.precision > 2 * base.precision
    assert s.unplanned < base.unplanned
