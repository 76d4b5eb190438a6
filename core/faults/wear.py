"""Predictive maintenance for pile ports: a Weibull wear-out model per pile model plus heat trend.

Pure: dataclasses and functions only. A daily job reads each port's history (charges since its
last renewal and their meter samples; wear-out faults) and asks `forecast` whether to plan a visit.

The combination, in one sentence: the Weibull gives the odds that a port of this age fails before
the next chance to plan a visit; the port's recent heating multiplies those odds by how much
likelier such heating is for a port in its last week than for a healthy one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

# The per-charge coefficient lives apart, on the standard library only: settlement computes it
# for every charge and must not wait for numpy and scipy. Re-exported for the model's users.
from core.faults.heat import MIN_POWER_W as MIN_POWER_W
from core.faults.heat import MIN_SAMPLES as MIN_SAMPLES
from core.faults.heat import heat_coefficient as heat_coefficient

# A two-parameter Weibull from fewer failures swings wildly with every new failure.
MIN_FAILURES = 10
# A life with fewer healthy charges says little about its own heating level.
MIN_LIFE_CHARGES = 10
MAD_TO_SD = 1.4826  # MAD of normal noise -> its standard deviation
# Charges averaged for the heat trend: enough to beat per-charge noise (ambient drift during a
# charge, an off ambient reading), few enough (about a day) to follow a contact that heats up
# over its last days.
HEAT_WINDOW = 6
# Training windows: charges in the last WARNING_DAYS before a wear-out failure show what "about to
# fail" looks like; charges more than HEALTHY_DAYS before any failure show what healthy looks like.
WARNING_DAYS = 7.0
HEALTHY_DAYS = 30.0
# A failure "had a thermal precursor" when its last window ran this many sds above healthy.
PRECURSOR_Z = 3.0
# The job runs daily: a port not flagged today waits a day for the next chance.
CHECK_EVERY_DAYS = 1.0
# Plan the visit once P(failure before the next chance) x the cost of an unplanned failure
# exceeds the cost of a planned visit. An unplanned failure costs about three planned visits
# (est.: an urgent call-out instead of a route stop, refunds, a dead port until repaired).
SERVICE_PROBABILITY = 1.0 / 3.0


@dataclass(frozen=True)
class WearModel:
    """A pile model's fitted wear-out: Weibull on cycles per life, healthy and failing heating."""

    shape: float  # Weibull k on charge cycles between a renewal and a wear-out failure
    scale: float  # Weibull lambda, cycles
    heat_baseline: float  # a healthy port's heating, degrees C per 100 W
    heat_spread: float  # robust sd of one charge's coefficient around its port's own level
    heat_port_spread: float  # robust sd of healthy ports' levels around the baseline
    heat_warning: float  # median excess over baseline in the last week before precursor failures
    sudden_share: float  # share of failures with no thermal precursor (heat looks healthy)
    samples: int  # lives used in the fit, failed and censored
    failures: int


@dataclass(frozen=True)
class PortState:
    cycles: int  # charges since the port was last renewed (repair or preventive service)
    cycles_per_day: float  # recent usage rate
    heat: Sequence[float]  # per-charge heating coefficients since renewal, oldest first


@dataclass(frozen=True)
class Forecast:
    failure_probability: float  # P(wear-out failure within the horizon | survived, heat)
    days_to_failure: float  # median residual life given the same evidence
    heat_ratio: float | None  # recent heating / healthy baseline; None without recent charges
    service: bool  # plan a preventive visit now


@dataclass
class PortHistory:
    """One port's training data (per life) and where its running life stands."""

    lives: list[tuple[int, bool]] = field(default_factory=list)  # (cycles, wore out)
    heat: list[list[float]] = field(default_factory=list)  # per life: charges far from its end
    warning: list[list[float]] = field(default_factory=list)  # per failure: its last days
    state: PortState = field(default_factory=lambda: PortState(0, 0.0, ()))


def port_history(charges: Sequence[tuple[float, float | None]],
                 ends: Sequence[tuple[float, bool]], now: float,
                 usage_days: float = 14.0) -> PortHistory:
    """Cut one port's charges into lives at its wear-out failures and preventive services.

    Times are days on any one scale. charges: (at, heat coefficient or None), in time order;
    ends: (at, failed) in time order, failed=False for a service (a censored life). The running
    life is censored at `now`; a charge at the same time as a failure belongs to that life."""
    out = PortHistory()
    i = 0
    for at, failed in [*ends, (now, False)]:
        life: list[tuple[float, float | None]] = []
        while i < len(charges) and charges[i][0] <= at:
            life.append(charges[i])
            i += 1
        out.lives.append((len(life), failed))
        # A life that ended without failing may still have been near it: only charges long
        # before the end of any life count as healthy.
        out.heat.append([h for t, h in life if h is not None and at - t > HEALTHY_DAYS])
        if failed:
            out.warning.append([h for t, h in life if h is not None and at - t <= WARNING_DAYS])
        last = life
    recent = sum(1 for t, _ in last if now - t <= usage_days)
    out.state = PortState(cycles=len(last), cycles_per_day=recent / usage_days,
                          heat=tuple(h for _, h in last if h is not None))
    return out


def fit(
    lives: Sequence[tuple[int, bool]],
    heat: Sequence[Sequence[float]],
    warning: Sequence[Sequence[float]] = (),
) -> WearModel:
    """Fit one pile model from its ports' history.

    lives: (cycles, failed) per port life; failed=False is right-censored (still running, or
    renewed by a preventive visit before failing). heat: per life, the coefficients of its charges
    more than HEALTHY_DAYS before any wear-out failure. warning: per wear-out failure, the
    coefficients of the charges in the WARNING_DAYS before it, oldest first.
    """
    failed = [c for c, f in lives if f and c > 0]
    censored = [c for c, f in lives if not f]
    if len(failed) < MIN_FAILURES:
        raise ValueError(
            f"need at least {MIN_FAILURES} wear-out failures to fit a Weibull, got {len(failed)}"
        )
    per_life = [np.asarray(h, dtype=float) for h in heat if len(h)]
    if sum(h.size for h in per_life) < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} healthy heating coefficients")
    data = stats.CensoredData(uncensored=failed, right=censored)
    shape, _, scale = stats.weibull_min.fit(data, floc=0)
    everything = np.concatenate(per_life)
    baseline = float(np.median(everything))
    long = [h for h in per_life if h.size >= MIN_LIFE_CHARGES]
    if long:
        within = _robust_sd(np.concatenate([h - np.median(h) for h in long]))
        between = _robust_sd(np.array([np.median(h) for h in long]))
    else:
        within, between = _robust_sd(everything), 0.0
    partial = WearModel(
        shape=float(shape),
        scale=float(scale),
        heat_baseline=baseline,
        heat_spread=max(within, 1e-6),
        heat_port_spread=between,
        heat_warning=0.0,
        sudden_share=1.0,
        samples=len(failed) + len(censored),
        failures=len(failed),
    )
    hot = [w for w in warning if len(w) and _heat_z(partial, w) >= PRECURSOR_Z]
    if not hot:
        return partial
    excess = float(np.median(np.concatenate([np.asarray(w, dtype=float) for w in hot])))
    seen = sum(1 for w in warning if len(w))
    # Laplace's rule: a finite history never proves that ports cannot fail without warning.
    sudden = (seen - len(hot) + 1) / (seen + 2)
    return replace(partial, heat_warning=excess - baseline, sudden_share=sudden)


def forecast(
    model: WearModel,
    state: PortState,
    *,
    lead_hours: float = 24.0,
    horizon_days: float | None = None,
    threshold: float = SERVICE_PROBABILITY,
) -> Forecast:
    """Should this port get a planned visit now, with at least `lead_hours` of notice?

    horizon_days defaults to the lead time plus a day: a port left alone today is looked at
    again tomorrow, and must not fail before tomorrow's visit could still be planned.
    """
    horizon = lead_hours / 24.0 + CHECK_EVERY_DAYS if horizon_days is None else horizon_days
    rate = max(state.cycles_per_day, 1e-9)
    log_lr = _heat_log_lr(model, state.heat)
    h_now = _cum_hazard(model, state.cycles)
    p_weibull = -math.expm1(h_now - _cum_hazard(model, state.cycles + rate * horizon))
    p = _posterior(p_weibull, log_lr)
    # Median residual life: where the Weibull odds of having failed, times the heat likelihood
    # ratio, reach one (the ratio read as if it held at every horizon: an approximation).
    target = h_now + math.log1p(math.exp(-log_lr))
    cycles_left = model.scale * target ** (1.0 / model.shape) - state.cycles
    recent = state.heat[-HEAT_WINDOW:]
    ratio = statistics.fmean(recent) / model.heat_baseline if recent else None
    return Forecast(
        failure_probability=p,
        days_to_failure=max(cycles_left, 0.0) / rate,
        heat_ratio=ratio,
        service=p >= threshold,
    )


def _robust_sd(x: np.ndarray) -> float:
    return float(MAD_TO_SD * np.median(np.abs(x - np.median(x))))


def _cum_hazard(model: WearModel, cycles: float) -> float:
    # Weibull cumulative hazard: S(x) = exp(-H(x)), so P(survive a..b | a) = exp(H(a) - H(b)).
    return float((max(cycles, 0.0) / model.scale) ** model.shape)


def _posterior(p: float, log_lr: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return p
    log_odds = math.log(p) - math.log1p(-p) + log_lr
    return 1.0 / (1.0 + math.exp(-log_odds)) if log_odds > -700 else 0.0


def _window_sd(model: WearModel, n: int) -> float:
    # Averaging charges beats the per-charge noise, never the port's own level.
    return math.hypot(model.heat_spread / math.sqrt(n), model.heat_port_spread)


def _heat_z(model: WearModel, heat: Sequence[float]) -> float:
    recent = heat[-HEAT_WINDOW:]
    return (statistics.fmean(recent) - model.heat_baseline) / _window_sd(model, len(recent))


def _heat_log_lr(model: WearModel, heat: Sequence[float]) -> float:
    """Log of how much likelier the recent heating is for a failing port than a healthy one.

    A failing port either fails suddenly (heats like a healthy one) or runs `heat_warning` hot;
    healthy and hot are normals with the sd of a window mean. The sudden share keeps the ratio
    from ever falling below it: a port at normal heat can still fail like a welded relay.
    """
    if not heat or model.heat_warning <= 0.0:
        return 0.0
    sd = _window_sd(model, len(heat[-HEAT_WINDOW:]))
    x, mu = _heat_z(model, heat), model.heat_warning / sd
    log_hot = min(max(mu * x - mu * mu / 2.0, -700.0), 700.0)
    q = model.sudden_share
    return math.log(q + (1.0 - q) * math.exp(log_hot)) if q > 0 else log_hot
