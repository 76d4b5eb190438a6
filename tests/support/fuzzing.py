"""Hypothesis as an input generator for async tests: draw the examples up front, then send
them over HTTP (a `@given` test cannot await the running app)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, given, settings


def draw_examples(strategy: Any, n: int, *, derandomize: bool = False) -> list[Any]:
    """Up to `n` values of `strategy`, generated only (no shrinking, no example database);
    `derandomize` draws the same ones on every run."""
    found: list[Any] = []

    @settings(max_examples=n, database=None, deadline=None, derandomize=derandomize,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def examples(strategy: Any, n: int) -> list[Any]:
    """`draw_examples`, the same ones on every run: a failure reproduces as it was."""
    return draw_examples(strategy, n, derandomize=True)
