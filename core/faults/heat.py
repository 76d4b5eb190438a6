"""One charge's terminal heating, the per-charge input of the wear model (core.wear).

Its own module, with the standard library only: every settlement computes it, and core.wear
brings numpy and scipy (seconds to import) that only the daily maintenance fit needs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

# Under ~50 W (float charge, a charger's standby) the terminal rise is a fraction of a degree,
# so its ratio to power is mostly sensor noise.
MIN_POWER_W = 50.0
# One reading can be a spike; a median of three is the least that survives one.
MIN_SAMPLES = 3


def heat_coefficient(
    samples: Sequence[tuple[float, float]], ambient_c: float = 25.0
) -> float | None:
    """One charge's terminal heating in degrees C per 100 W, from (power_w, temperature_c)."""
    ratios = [100.0 * (temp - ambient_c) / power for power, temp in samples if power >= MIN_POWER_W]
    if len(ratios) < MIN_SAMPLES:
        return None
    return float(statistics.median(ratios))
