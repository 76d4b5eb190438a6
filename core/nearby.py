"""Nearest piles with a free port, by real (geodesic) distance.

An indexed bounding box on (lat, lon) grows until it provably holds the k nearest; within it a
cheap equirectangular distance ranks candidates and geopy's geodesic (~60 µs a call) is spent
only on the few that can still be in the top k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geopy.distance import geodesic
from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.charging import OPEN_STATES, Charge
from core.piles import Pile, Port, Site

EARTH_M = 6_371_008.8
WALK_M_PER_MIN = 80  # 4.8 km/h
DETOUR = 1.3  # streets are not straight lines; a common urban detour factor
START_RADIUS_M = 600.0
MAX_RADIUS_M = 30_000.0
SLACK = 1.01  # equirectangular error at city scale is far below 1 %


@dataclass(frozen=True)
class NearbyPile:
    pile_id: str
    site_id: str
    site_name: str
    address: str
    lat: float
    lon: float
    distance_m: float
    walk_minutes: int
    free_ports: tuple[int, ...]


def walk_minutes(distance_m: float) -> int:
    return max(1, math.ceil(distance_m * DETOUR / WALK_M_PER_MIN))


def cheap_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    y = math.radians(lat2 - lat1)
    return EARTH_M * math.hypot(x, y)


def free_port_filter():  # type: ignore[no-untyped-def]
    """What 'free' means everywhere: online pile, no maintenance, idle port, no open charge."""
    return and_(
        Pile.online.is_(True),
        Pile.maintenance.is_(False),
        Port.maintenance.is_(False),
        Port.status == "idle",
        ~exists().where(Charge.port_id == Port.id, Charge.state.in_(OPEN_STATES)),
    )


async def nearest_free(
    session: AsyncSession, lat: float, lon: float, k: int = 5, *,
    exclude_pile: str | None = None, max_radius_m: float = MAX_RADIUS_M,
) -> list[NearbyPile]:
    radius = START_RADIUS_M
    while True:
        dlat = math.degrees(radius / EARTH_M)
        worst_lat = min(89.0, abs(lat) + dlat)
        dlon = math.degrees(radius / (EARTH_M * math.cos(math.radians(worst_lat))))
        stmt = (
            select(Pile.id, Pile.lat, Pile.lon, Site.id, Site.name, Site.address, Port.number)
            .join(Port, Port.pile_id == Pile.id)
            .join(Site, Site.id == Pile.site_id)
            .where(
                Pile.lat.between(lat - dlat, lat + dlat),
                Pile.lon.between(lon - dlon, lon + dlon),
                free_port_filter(),
            )
        )
        if exclude_pile:
            stmt = stmt.where(Pile.id != exclude_pile)
        piles: dict[str, list] = {}
        for pid, plat, plon, sid, sname, saddr, number in await session.execute(stmt):
            entry = piles.get(pid)
            if entry is None:
                piles[pid] = [plat, plon, sid, sname, saddr, [number]]
            else:
                entry[5].append(number)
        ranked = sorted(
            ((cheap_distance_m(lat, lon, v[0], v[1]), pid) for pid, v in piles.items()),
        )
        # Everything within `radius` is inside the box, so k hits inside it are the true top k.
        inside = [r for r in ranked if r[0] * SLACK <= radius]
        if len(inside) >= k or radius >= max_radius_m:
            break
        radius *= 2
    if not ranked:
        return []
    cutoff = ranked[min(k, len(ranked)) - 1][0] * SLACK + 1.0
    exact = sorted(
        (geodesic((lat, lon), (piles[pid][0], piles[pid][1])).meters, pid)
        for cheap, pid in ranked if cheap <= cutoff
    )
    out = []
    for dist, pid in exact[:k]:
        plat, plon, sid, sname, saddr, numbers = piles[pid]
        out.append(NearbyPile(
            pile_id=pid, site_id=sid, site_name=sname, address=saddr, lat=plat, lon=plon,
            distance_m=dist, walk_minutes=walk_minutes(dist), free_ports=tuple(sorted(numbers)),
        ))
    return out


async def free_ports(session: AsyncSession, pile_id: str) -> tuple[Pile, Site, list[int]] | None:
    row = (
        await session.execute(
            select(Pile, Site).join(Site, Site.id == Pile.site_id).where(Pile.id == pile_id)
        )
    ).first()
    if row is None:
        return None
    numbers = await session.execute(
        select(Port.number).join(Pile, Pile.id == Port.pile_id)
        .where(Port.pile_id == pile_id, free_port_filter()).order_by(Port.number)
    )
    return row[0], row[1], [n for (n,) in numbers]
