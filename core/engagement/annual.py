"""A rider's year of charging: charges, hours, energy, and what it means in km and CO₂.

Estimates, with their sources (all configurable by editing these constants, none published for
shared piles specifically):
- KM_PER_KWH = 50: a 48 V 20 Ah lead-acid pack holds ~0.96 kWh and takes a rider 50–60 km;
  chargers are ~90 % efficient (DOMAIN.md's published load model: 0.96 kWh packs, 90 %), so a
  kWh from the wall is ~50 km.
- GRID_KG_PER_KWH = 0.5703: China's national grid average emission factor, 0.5703 tCO₂/MWh
  (Ministry of Ecology and Environment, announced 2023 for 2022 data).
- PETROL_KG_PER_KM = 0.058: the trip a small petrol scooter would have made instead, at
  ~2.5 L/100 km (an estimate for 50–125 cc scooters) × 2.31 kg CO₂ per litre of petrol (the
  IPCC default for motor gasoline, ~2.3 kg/L).
CO₂ avoided = km × PETROL_KG_PER_KM − kWh × GRID_KG_PER_KWH.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import Charge, ChargeState

KM_PER_KWH = 50.0
GRID_KG_PER_KWH = 0.5703
PETROL_KG_PER_KM = 0.058


@dataclass(frozen=True)
class Year:
    year: int
    charges: int
    hours: float
    energy_kwh: float
    spent_fen: int
    favourite_site: str | None
    km: float
    co2_kg: float


def estimate(energy_kwh: float) -> tuple[float, float]:
    """(km ridden, kg CO₂ avoided) for this much energy charged."""
    km = energy_kwh * KM_PER_KWH
    return km, km * PETROL_KG_PER_KM - energy_kwh * GRID_KG_PER_KWH


async def of(session: AsyncSession, rider_id: int, year: int, tz: str) -> Year:
    zone = ZoneInfo(tz)
    start = datetime(year, 1, 1, tzinfo=zone).astimezone(UTC)
    end = datetime(year + 1, 1, 1, tzinfo=zone).astimezone(UTC)
    where = (col(Charge.rider_id) == rider_id,
             col(Charge.state).in_((ChargeState.ended, ChargeState.settled)),
             col(Charge.ended_at) >= start, col(Charge.ended_at) < end)
    n, seconds, wh, spent = (await session.execute(select(
        func.count(), func.coalesce(func.sum(col(Charge.duration_s)), 0),
        func.coalesce(func.sum(col(Charge.energy_wh)), 0),
        func.coalesce(func.sum(col(Charge.paid_fen)), 0)).where(*where))).one()
    fav = (await session.execute(
        select(col(Charge.site_id)).where(*where).group_by(col(Charge.site_id))
        .order_by(func.count().desc(), col(Charge.site_id)).limit(1))).scalar()
    kwh = int(wh or 0) / 1000  # never None (COALESCE): the stubs only see the column type
    km, co2 = estimate(kwh)
    return Year(year, int(n), int(seconds or 0) / 3600, kwh, int(spent), fav, km, co2)
