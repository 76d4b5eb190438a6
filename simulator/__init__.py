"""Pile-controller simulator: the demo's fleet and the tests' device (DESIGN §3)."""

from simulator.charger import ChargerProfile
from simulator.fleet import Fleet, PileSpec

__all__ = ["ChargerProfile", "Fleet", "PileSpec"]
