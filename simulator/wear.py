"""Ports wearing out by a hidden hazard: a fast fleet simulation for predictive maintenance.

Not the HTTP device (too slow for years of charges): each port is simulated on its own, charge by
charge, with telemetry as the pile would send it. The hidden lives go to a ground-truth file the
predictor never reads; `score` judges a run against it.

Each port has its own random streams (usage, telemetry, lives), so two runs with the same seed and
different maintenance policies see the same riders and the same hidden lives: a fair comparison.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.faults.wear import PortState, WearModel, fit, forecast, heat_coefficient, port_history


@dataclass(frozen=True)
class HiddenHazard:
    """What wears a pile model's ports out. The predictor must learn it from history."""

    shape: float  # Weibull k on cycles
    scale: float  # Weibull lambda, cycles
    frailty_sd: float = 0.15  # log-sd of a per-port multiplier on scale (site, wiring, dust)
    sudden: float = 0.15  # share of lives ending with no thermal precursor (relay welds shut)
    runaway_days: tuple[float, float] = (1.5, 5.0)  # e-folding time of the heating before failure


PILE_MODELS: dict[str, HiddenHazard] = {
    "generic-10": HiddenHazard(shape=3.5, scale=1300.0),
    "budget-12": HiddenHazard(shape=2.6, scale=650.0),
}
WEAR_CODES = ("over_temperature", "relay_stuck")
# The operator's daily planning job runs early, before the couriers' day starts.
CHECK_HOUR = 7.0
# Meter samples per charge kept for the heat coefficient: at these fractions of the charge, with
# the charger's power relative to its constant-current draw (the last one floats at 5-25 W).
SAMPLE_AT = (0.08, 0.2, 0.35, 0.5, 0.75, 0.95)
SAMPLE_POWER = (1.0, 1.0, 1.0, 1.0, 0.5, 0.0)
# Terminals warm ~2.5 degrees C per 100 W when healthy (simulator.charger uses power / 40).
HEALTHY_HEAT = 2.5
USAGE_DAYS = 14  # window for the usage rate the policy sees
# policy(t, port, state): asked at every daily check (t in days) whether to service the port now.
Policy = Callable[[float, int, PortState], bool]


# Named tuples, not frozen dataclasses: a run creates a million of them, three times faster.
class Charge(NamedTuple):
    port: int
    at: float  # days since the simulation started
    power_w: float  # the charger's constant-current draw
    ambient_c: float | None  # the pile's temperature reading at the start (telemetry only)
    heat: float | None  # heat_coefficient() of the charge's meter samples
    samples: tuple[tuple[float, float], ...] = ()  # only with keep_samples=True


class Fault(NamedTuple):
    port: int
    at: float
    code: str


class Renewal(NamedTuple):
    port: int
    at: float
    kind: str  # "repair" after a fault, "service" for a preventive visit


@dataclass(frozen=True)
class Life:
    """Ground truth of one port life: hidden length, how it ended, when it failed or would have."""

    port: int
    model: str
    start: float
    cycles: int  # hidden: the charge on which this life fails
    sudden: bool  # no thermal precursor
    heat_rise: float  # heating at failure, as a multiple of the healthy rise (0 when sudden)
    runaway_days: float  # e-folding time of that heating before the failure
    end: str  # "failure", "service" or "open" (still running when the simulation stopped)
    ended_at: float | None
    fails_at: float | None  # the failure, or when it would have come; None beyond the run


@dataclass
class History:
    """What the platform observes: the tables the scheduler job would read."""

    seed: int
    days: int
    models: dict[int, str]
    charges: list[Charge] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    renewals: list[Renewal] = field(default_factory=list)


def simulate(
    ports: int,
    days: int,
    seed: int,
    policy: Policy | None = None,
    ground_truth: Path | None = None,
    *,
    hazards: Mapping[str, HiddenHazard] = PILE_MODELS,
    telemetry: bool = True,
    keep_samples: bool = False,
) -> History:
    """Run a fleet for `days`; `policy(t, port, state)` is asked daily whether to service."""
    history = History(seed=seed, days=days, models=fleet(ports, hazards))
    truth: list[Life] = []
    for port, model in history.models.items():
        _Port(port, model, hazards[model], days, seed, telemetry, keep_samples).run(
            policy, history, truth
        )
    for rows in (history.charges, history.faults, history.renewals):
        rows.sort(key=lambda r: r.at)
    if ground_truth is not None:
        ground_truth.write_text(
            json.dumps({"seed": seed, "days": days, "lives": [asdict(life) for life in truth]})
        )
    return history


def fleet(ports: int, hazards: Mapping[str, HiddenHazard] = PILE_MODELS) -> dict[int, str]:
    """Each port's pile model: the models take turns, so every fleet has them all."""
    names = sorted(hazards)
    return {port: names[port % len(names)] for port in range(ports)}


def load_truth(path: Path) -> list[Life]:
    return [Life(**row) for row in json.loads(path.read_text())["lives"]]


def ambient_c(t: np.ndarray) -> np.ndarray:
    """Air at the pile: a Yangtze-delta year (5 degrees C in January, 29 in July) and a day's
    swing damped by the shed or garage most piles stand in."""
    season = 17.0 - 12.0 * np.cos(2 * np.pi * (t - 15.0) / 365.0)
    day = 2.5 * np.sin(2 * np.pi * ((t % 1.0) - 0.375))
    return season + day


@dataclass(frozen=True, slots=True)
class _Hidden:
    start: float
    cycles: int
    sudden: bool
    heat: float  # this contact's healthy heating, degrees C per 100 W
    amp: float
    tau: float


class _Port:
    """One port's charges, telemetry and lives. Exogenous draws are made up front, vectorised."""

    def __init__(self, port: int, model: str, hazard: HiddenHazard, days: int, seed: int,
                 telemetry: bool, keep: bool) -> None:
        self.port, self.model, self.hazard, self.days = port, model, hazard, days
        self.telemetry, self.keep = telemetry, keep
        self.lives_rng = np.random.default_rng([seed, port, 1])
        self.repair_rng = np.random.default_rng([seed, port, 4])
        self.frailty = math.exp(self.lives_rng.normal(0.0, hazard.frailty_sd))
        use = np.random.default_rng([seed, port, 2])
        day = np.repeat(np.arange(days), use.poisson(use.uniform(2.0, 8.0), days))
        n = day.size
        # Couriers: some charge around the 18:00 peak, the rest whenever the bike is free.
        hour = np.where(use.random(n) < 0.4, use.normal(18.0, 1.5, n), use.uniform(0, 24, n))
        at = np.sort(day + np.clip(hour, 0.0, 23.99) / 24.0)
        power = np.round(use.uniform(120.0, 350.0, n), 1)
        duration = use.uniform(3.0, 8.0, n) / 24.0
        # Python lists: the loop below touches one charge at a time, where numpy is slower.
        self.at: list[float] = at.tolist()
        self.power: list[float] = power.tolist()
        if telemetry:
            self._telemetry(np.random.default_rng([seed, port, 3]), at, power, duration)

    def _telemetry(self, tel: np.random.Generator, at: np.ndarray, power: np.ndarray,
                   duration: np.ndarray) -> None:
        n = at.size
        at_sample = at[:, None] + duration[:, None] * np.array(SAMPLE_AT)
        jitter = 1.0 + tel.normal(0.0, 0.02, at_sample.shape)
        sample_power = np.round(power[:, None] * np.array(SAMPLE_POWER) * jitter, 1)
        sample_power[:, -1] = np.round(tel.uniform(5.0, 25.0, n), 1)
        # The air around the terminals (plus sensor noise) drifts during a charge, while the
        # pile reports one, slightly off reading at the start: the heat signal's main noise.
        sample_air = ambient_c(at_sample) + tel.normal(0.0, 0.4, at_sample.shape)
        self.sample_power: list[list[float]] = sample_power.tolist()
        self.sample_air: list[list[float]] = sample_air.tolist()
        self.reading: list[float] = np.round(ambient_c(at) + tel.normal(0.0, 0.5, n), 1).tolist()

    def _life(self, start: float) -> _Hidden:
        rng, h = self.lives_rng, self.hazard
        # Always the same number of draws per life, so a policy changes when lives start but
        # never which lives a port gets.
        return _Hidden(
            start=start,
            cycles=max(1, round(h.scale * self.frailty * rng.weibull(h.shape))),
            sudden=bool(rng.random() < h.sudden),
            heat=HEALTHY_HEAT * math.exp(rng.normal(0.0, 0.06)),
            # Once the plating is worn through the contact oxidises and heats, which speeds the
            # oxidation: heating grows to `amp` times the healthy rise at failure, e-folding
            # every `tau` days before it. Oxidation runs on the clock, not on the charge count.
            amp=math.exp(rng.normal(math.log(1.5), 0.4)),
            tau=float(rng.uniform(*h.runaway_days)),
        )

    def _failure_index(self, j: int, life: _Hidden, cycles: int) -> int:
        """Index of the charge that would end `life`, `cycles` into it before charge j."""
        return j + life.cycles - cycles - 1

    def _time_of(self, k: int) -> float | None:
        return self.at[k] if k < len(self.at) else None

    def run(self, policy: Policy | None, out: History, truth: list[Life]) -> None:
        life, cycles = self._life(0.0), 0
        heat: deque[float] = deque(maxlen=64)
        recent: deque[float] = deque()
        down_until, check = -1.0, CHECK_HOUR / 24.0

        def close(end: str, at: float | None, fails_at: float | None) -> None:
            truth.append(Life(self.port, self.model, life.start, life.cycles, life.sudden,
                              0.0 if life.sudden else life.amp, life.tau, end, at, fails_at))

        for j, t in enumerate(self.at):
            while policy is not None and check <= t:
                while recent and recent[0] < check - USAGE_DAYS:
                    recent.popleft()
                if down_until <= check:
                    rate = len(recent) / min(USAGE_DAYS, max(check, 1.0))
                    if policy(check, self.port, PortState(cycles, rate, tuple(heat))):
                        close("service", check, self._time_of(self._failure_index(j, life, cycles)))
                        out.renewals.append(Renewal(self.port, check, "service"))
                        life, cycles = self._life(check), 0
                        heat.clear()
                check += 1.0
            if t < down_until:
                continue
            recent.append(t)
            h = self._charge(j, t, life, cycles)
            out.charges.append(h)
            cycles += 1
            if h.heat is not None:
                heat.append(h.heat)
            if cycles >= life.cycles:
                code = WEAR_CODES[1] if life.sudden else WEAR_CODES[0]
                out.faults.append(Fault(self.port, t, code))
                close("failure", t, t)
                down_until = t + float(self.repair_rng.uniform(0.3, 2.0))
                out.renewals.append(Renewal(self.port, down_until, "repair"))
                life, cycles = self._life(down_until), 0
                heat.clear()
        close("open", None, None)

    def _charge(self, j: int, t: float, life: _Hidden, cycles: int) -> Charge:
        if not self.telemetry:
            return Charge(self.port, t, self.power[j], None, None)
        reading, d = self.reading[j], 0.0
        if not life.sudden:
            fails_at = self._time_of(self._failure_index(j, life, cycles))
            # A life failing after the run shows no heat yet; only visits in the run's last
            # window could notice, and `score` leaves those out of precision.
            if fails_at is not None:
                d = life.amp * math.exp((t - fails_at) / life.tau)
        k = life.heat * (1.0 + d) / 100.0
        samples = tuple((p, a + p * k) for p, a in zip(self.sample_power[j], self.sample_air[j],
                                                         strict=True))
        return Charge(self.port, t, self.power[j], reading, heat_coefficient(samples, reading),
                      samples if self.keep else ())


@dataclass(frozen=True)
class Observed:
    """A pile model's training data as the platform sees it (never the ground truth)."""

    lives: list[tuple[int, bool]] = field(default_factory=list)  # (cycles, wore out)
    heat: list[list[float]] = field(default_factory=list)  # per life: charges far from its end
    warning: list[list[float]] = field(default_factory=list)  # per failure: its last days


def observed(history: History) -> dict[str, Observed]:
    """What the scheduler job would read from the charges and faults tables, per pile model:
    the same cut into lives as production (`core.wear.port_history`)."""
    out = {m: Observed() for m in sorted(set(history.models.values()))}
    charges: dict[int, list[tuple[float, float | None]]] = {p: [] for p in history.models}
    ends: dict[int, list[tuple[float, bool]]] = {p: [] for p in history.models}
    for c in history.charges:
        charges[c.port].append((c.at, c.heat))
    for f in history.faults:
        if f.code in WEAR_CODES:
            ends[f.port].append((f.at, True))
    for r in history.renewals:
        if r.kind == "service":
            ends[r.port].append((r.at, False))
    for port, model in history.models.items():
        h = port_history(charges[port], sorted(ends[port]), float(history.days))
        data = out[model]
        data.lives.extend(h.lives)
        data.heat.extend(h.heat)
        data.warning.extend(h.warning)
    return out


def train(history: History) -> dict[str, WearModel]:
    """One fitted wear model per pile model, from observed history only."""
    return {m: fit(o.lives, o.heat, o.warning) for m, o in observed(history).items()}


def predictive(models: Mapping[str, WearModel], port_models: Mapping[int, str]) -> Policy:
    """The forecast policy: plan a visit when `core.wear.forecast` says so."""
    return lambda t, port, state: forecast(models[port_models[port]], state).service


def every_n_cycles(n: int) -> Policy:
    """The baseline: service a port once it has run `n` charges since its last renewal."""
    return lambda t, port, state: state.cycles >= n


@dataclass(frozen=True)
class Score:
    visits: int  # preventive visits whose outcome is known (not in the run's last window)
    true_visits: int  # of those: the hidden failure would have come within (lead, window]
    late_visits: int  # visits with the failure within the lead time: too late to plan
    failures: int  # failures that happened plus failures a visit prevented within the window
    caught: int  # failures prevented with at least the lead time
    unplanned: int  # failures that happened
    recall: float
    precision: float
    median_lead_h: float  # over visits that prevented a failure within the window


def score(history: History, truth: Sequence[Life], window_days: float = 7.0,
          lead_hours: float = 24.0) -> Score:
    """Judge a run's preventive visits against the hidden lives."""
    unplanned = sum(1 for life in truth if life.end == "failure")
    visits = true = late = caught = 0
    leads: list[float] = []
    for life in truth:
        if life.end != "service" or life.ended_at is None:
            continue
        lead_h = math.inf if life.fails_at is None else 24.0 * (life.fails_at - life.ended_at)
        hit = lead_hours < lead_h <= 24.0 * window_days
        if lead_h <= 24.0 * window_days:
            leads.append(lead_h)
            late += lead_h <= lead_hours
            caught += hit
        if life.ended_at <= history.days - window_days:
            visits += 1
            true += hit
    failures = unplanned + len(leads)
    return Score(
        visits=visits,
        true_visits=true,
        late_visits=late,
        failures=failures,
        caught=caught,
        unplanned=unplanned,
        recall=caught / failures if failures else 0.0,
        precision=true / visits if visits else 0.0,
        median_lead_h=statistics.median(leads) if leads else 0.0,
    )


def evaluate(policy: Policy | None, ports: int, days: int, seed: int, truth: Path, *,
             hazards: Mapping[str, HiddenHazard] = PILE_MODELS, telemetry: bool = True,
             window_days: float = 7.0, lead_hours: float = 24.0) -> Score:
    """Simulate a fleet under `policy`, write its ground truth to `truth`, and score the run."""
    history = simulate(ports, days, seed, policy, truth, hazards=hazards, telemetry=telemetry)
    return score(history, load_truth(truth), window_days, lead_hours)


def matched_baseline(visits: int, ports: int, days: int, seed: int, truth: Path, *,
                     hazards: Mapping[str, HiddenHazard] = PILE_MODELS,
                     window_days: float = 7.0, lead_hours: float = 24.0) -> tuple[int, Score]:
    """The every-N-cycles baseline at (just) at least `visits` visits: N and its score."""

    def run(n: int) -> Score:
        # The baseline never looks at heat: skip the telemetry, same riders and lives.
        return evaluate(every_n_cycles(n), ports, days, seed, truth, hazards=hazards,
                        telemetry=False, window_days=window_days, lead_hours=lead_hours)

    # Every 100 cycles is far more visits, every 3000 far fewer, than any sensible forecast's.
    lo, hi, best = 100, 3000, None
    while hi - lo > max(1, lo // 100):  # within 1 % of the crossing N is close enough
        mid = (lo + hi) // 2
        s = run(mid)
        if s.visits >= visits:
            lo, best = mid, (mid, s)
        else:
            hi = mid
    return best if best is not None else (lo, run(lo))
