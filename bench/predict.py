"""Predictive maintenance: the wear model against 'service every N cycles' on an unseen fleet.

Train on fleet A (run to failure, no preventive visits) from observed history only; evaluate on
fleet B (another seed) with the forecast policy, then with the baseline at a matched number of
visits. The hidden lives are read back from the simulator's ground-truth file, by the scorer only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.faults.wear import SERVICE_PROBABILITY, WearModel  # noqa: E402
from simulator.wear import (  # noqa: E402
    PILE_MODELS,
    HiddenHazard,
    Score,
    evaluate,
    fleet,
    matched_baseline,
    predictive,
    simulate,
    train,
)

BENCH_DIR = Path(os.environ.get("CHARGEBOT_BENCH_DIR", "/tmp/chargebot-bench"))
PORTS, DAYS = 250, 400
TRAIN_SEED, EVAL_SEED = 1, 2
WINDOW_DAYS = 7.0  # a visit counts when the hidden failure would have come within (24 h, 7 d]
LEAD_HOURS = 24.0
# A harsher world for the honest comment: more failures without warning, faster runaway.
HARSH = {
    name: replace(h, sudden=0.25, runaway_days=(0.75, 2.5)) for name, h in PILE_MODELS.items()
}


def row(name: str, s: Score) -> str:
    return (f"{name:<22} {s.visits:>6} {s.true_visits:>5} {s.late_visits:>5} {s.failures:>8} "
            f"{s.unplanned:>9} {s.recall:>7.1%} {s.precision:>9.1%} {s.median_lead_h:>9.0f} h")


def describe(models: Mapping[str, WearModel], hazards: Mapping[str, HiddenHazard]) -> None:
    for name, m in models.items():
        h = hazards[name]
        print(f"  {name}: Weibull k {m.shape:.2f} lambda {m.scale:.0f} cycles "
              f"(hidden k {h.shape}, lambda {h.scale:.0f} x per-port frailty sd {h.frailty_sd}); "
              f"{m.failures} failures / {m.samples} lives; heat {m.heat_baseline:.2f} "
              f"degC/100 W, sd {m.heat_spread:.2f} per charge, {m.heat_port_spread:.2f} per "
              f"port, last-week excess {m.heat_warning:+.2f}; sudden share "
              f"{m.sudden_share:.0%} (hidden {h.sudden:.0%})")


def scenario(title: str, hazards: Mapping[str, HiddenHazard]) -> None:
    started = time.perf_counter()
    models = train(simulate(PORTS, DAYS, TRAIN_SEED, hazards=hazards))
    print(f"\n{title}: trained on fleet A (seed {TRAIN_SEED}, {PORTS} ports, {DAYS} days, "
          "run to failure)")
    describe(models, hazards)
    fleet_b = (PORTS, DAYS, EVAL_SEED, BENCH_DIR / f"wear-truth-seed{EVAL_SEED}.json")
    opts = {"hazards": hazards, "window_days": WINDOW_DAYS, "lead_hours": LEAD_HOURS}
    model = evaluate(predictive(models, fleet(PORTS, hazards)), *fleet_b, **opts)
    n, base = matched_baseline(model.visits, *fleet_b, **opts)
    none = evaluate(None, *fleet_b, telemetry=False, **opts)
    print(f"evaluated on fleet B (seed {EVAL_SEED}, {PORTS} ports, {DAYS} days); "
          f"window (24 h, {WINDOW_DAYS:.0f} d]")
    print(f"{'policy':<22} {'visits':>6} {'TP':>5} {'late':>5} {'failures':>8} "
          f"{'unplanned':>9} {'recall':>7} {'precision':>9} {'med. lead':>11}")
    print(row(f"forecast (p >= {SERVICE_PROBABILITY:.2f})", model))
    print(row(f"every {n} cycles", base))
    print(f"{'no maintenance':<22} {0:>6} {'':>5} {'':>5} {none.unplanned:>8} "
          f"{none.unplanned:>9}")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b else "inf"

    print(f"forecast / baseline: recall {ratio(model.recall, base.recall)}, precision "
          f"{ratio(model.precision, base.precision)}, median lead "
          f"{ratio(model.median_lead_h, base.median_lead_h)}, visits "
          f"{ratio(model.visits, base.visits)}, unplanned failures "
          f"{ratio(model.unplanned, base.unplanned)}")
    met = {
        "recall >= 70%": model.recall >= 0.70,
        "precision >= 50%": model.precision >= 0.50,
        "median lead >= 24 h": model.median_lead_h >= LEAD_HOURS,
        "beats baseline": model.recall > base.recall and model.precision > base.precision,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items())
          + f"  ({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-harsh", action="store_true", help="skip the harsher world")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    print("predictive maintenance, simulated fleets (simulator/wear.py), fixed seeds")
    scenario("as simulated", PILE_MODELS)
    if not args.no_harsh:
        scenario("harsher world (25% sudden, runaway e-folding 0.75-2.5 d)", HARSH)


if __name__ == "__main__":
    main()
