"""Tariffs and bill arithmetic (integer fen, rounded once per bill)."""

from core.billing.tariffs import Bill, band_power_w, compute_bill, tariff_snapshot

__all__ = ["Bill", "band_power_w", "compute_bill", "tariff_snapshot"]
