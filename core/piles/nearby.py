"""Nearest piles with a free port, by real (geodesic) distance.

An indexed bounding box on (lat, lon) grows until it provably holds the k nearest; within it a
cheap equirectangular distance ranks candidates and the geodesic (~100 µs a call) is spent only
on the few that can still be in the top k. The box query ranks piles in SQL and returns the
free ports of only the nearest few, so a dense city costs no more rows than a sparse one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from geopy.distance import geodesic
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Exists,
    Float,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    exists,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import OPEN_STATES, Charge
from core.db import table_of
from core.piles.tables import Pile, Port, PortStatusValue, Site

EARTH_M = 6_371_008.8
WALK_M_PER_MIN = 80  # 4.8 km/h
DETOUR = 1.3  # streets are not straight lines; a common urban detour factor
START_RADIUS_M = 600.0
MAX_RADIUS_M = 30_000.0
SLACK = 1.01  # equirectangular error at city scale is far below 1 %
EXTRA = 4  # piles fetched beyond k: room for near-ties before a second round trip


def geodesic_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The distance a rider is shown: WGS-84 geodesic (geopy). ~2× geographiclib called directly,
    but only the few piles that can still be in the top k get one (the rest are ranked by the
    equirectangular `cheap_distance_m`), so a query spends a handful of calls."""
    meters: float = geodesic((lat1, lon1), (lat2, lon2)).meters
    return meters


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


# The filters below take the model classes (ORM statements) or their tables' columns, `.c`
# (the Core box query): both name the same columns, so `port`, `pile`, `charge` are `Any`.
def _open_charge_on_port(port: Any = Port, charge: Any = Charge) -> Exists:
    # The open states are rendered as literals, `state IN ('requested', 'started')`, exactly as in
    # the partial index uq_charges_open_port: a planner can only use a partial index when it can
    # see the predicate; with bound parameters SQLite scanned the whole charges table (ended ones
    # included, so ever-growing) once per candidate port.
    open_states: BindParameter[Any] = bindparam("open_states", OPEN_STATES, expanding=True,
                                                literal_execute=True)
    return exists().where(charge.port_id == port.id, charge.state.in_(open_states))


def _pile_usable(pile: Any = Pile) -> ColumnElement[bool]:
    return and_(pile.online.is_(True), pile.maintenance.is_(False), pile.in_service.is_(True))


def _port_free(port: Any = Port, charge: Any = Charge) -> ColumnElement[bool]:
    return and_(port.maintenance.is_(False), port.status == PortStatusValue.idle,
                ~_open_charge_on_port(port, charge))


def free_port_filter() -> ColumnElement[bool]:
    """What 'free' means everywhere: online pile, no maintenance, idle port, no open charge."""
    return and_(_pile_usable(), _port_free())


async def nearest_free(
    session: AsyncSession, lat: float, lon: float, k: int = 5, *,
    exclude_pile: str | None = None, max_radius_m: float = MAX_RADIUS_M,
) -> list[NearbyPile]:
    """The k nearest piles with a free port, all within `max_radius_m` (geodesic), nearest first;
    fewer, or none, when fewer are that close. Equal distances are ordered by pile id.

    Usually one round trip: the box query ranks its piles in SQL (equirectangular at the query's
    latitude) and returns the free ports of only the first `limit` of them.
    """
    if k <= 0:
        return []
    radius = min(START_RADIUS_M, max_radius_m)
    limit = k + EXTRA
    cos_lat = math.cos(math.radians(lat))
    while True:
        piles, last_m = await _box(session, lat, lon, radius, cos_lat, limit, exclude_pile)
        ranked = sorted((cheap_distance_m(lat, lon, v[0], v[1]), pid) for pid, v in piles.items())
        # Everything within `radius` is inside the box, so k hits inside it are the true top k.
        inside = sum(1 for r in ranked if r[0] * SLACK <= radius)
        done = inside >= k or radius >= max_radius_m
        if done and ranked:
            cutoff = ranked[min(k, len(ranked)) - 1][0] * SLACK + 1.0
            # Piles cut off by the LIMIT rank at or after the last one returned: fine as long as
            # none of them can still be within `cutoff`; else ask for more rows.
            if last_m is not None and cutoff * SLACK >= last_m:
                limit *= 4
                continue
        if done:
            break
        radius = min(radius * 2, max_radius_m)
    if not ranked:
        return []
    exact = sorted(
        (geodesic_m(lat, lon, piles[pid][0], piles[pid][1]), pid)
        for cheap, pid in ranked if cheap <= cutoff
    )
    out = []
    for dist, pid in exact[:k]:
        # At the last radius the box may hold fewer than k within reach plus farther ones from
        # its corners; those are not the nearest beyond max_radius_m, just ones the box hit.
        if dist > max_radius_m:
            break
        plat, plon, sid, sname, saddr, numbers = piles[pid]
        out.append(NearbyPile(
            pile_id=pid, site_id=sid, site_name=sname, address=saddr, lat=plat, lon=plon,
            distance_m=dist, walk_minutes=walk_minutes(dist), free_ports=tuple(sorted(numbers)),
        ))
    return out


def _box_statement() -> Select[Any]:
    """Built once, on the tables (no ORM layer): per call only the parameters change."""
    tables = {m: table_of(m) for m in (Pile, Port, Site, Charge)}
    pile, port, site, charge = (tables[m].c for m in (Pile, Port, Site, Charge))
    dy = pile.lat - bindparam("lat", type_=Float)
    dx = (pile.lon - bindparam("lon", type_=Float)) * bindparam("cos_lat", type_=Float)
    planar = (dy * dy + dx * dx).label("planar")
    cand = (
        select(pile.id, pile.lat, pile.lon, pile.site_id, planar)
        .where(
            pile.lat.between(bindparam("lat_lo", type_=Float), bindparam("lat_hi", type_=Float)),
            pile.lon.between(bindparam("lon_lo", type_=Float), bindparam("lon_hi", type_=Float)),
            pile.id != bindparam("exclude", type_=String),
            _pile_usable(pile),
            exists().where(port.pile_id == pile.id, _port_free(port, charge)),
        )
        .order_by(planar, pile.id)
        .limit(bindparam("limit", type_=Integer))
        .subquery("cand")
    )
    return (
        select(cand.c.id, cand.c.lat, cand.c.lon, cand.c.planar, site.id, site.name,
               site.address, port.number)
        .join(tables[Site], site.id == cand.c.site_id)
        .join(tables[Port], port.pile_id == cand.c.id)
        .where(_port_free(port, charge))
    )


_BOX = _box_statement()


async def _box(
    session: AsyncSession, lat: float, lon: float, radius: float, cos_lat: float, limit: int,
    exclude_pile: str | None,
) -> tuple[dict[str, list[Any]], float | None]:
    """Free ports of the `limit` piles with a free port nearest (by a planar metric) to the
    point, within a box reaching `radius` * SLACK; and, when the limit cut the answer short, the
    distance in metres (same metric) of the last pile returned, else None."""
    # The box reaches SLACK beyond `radius`: on the ellipsoid a point `radius` away (geodesic)
    # can be up to ~0.6 % further on the sphere the box is drawn on.
    reach = radius * SLACK
    dlat = math.degrees(reach / EARTH_M)
    worst_lat = min(89.0, abs(lat) + dlat)
    dlon = math.degrees(reach / (EARTH_M * math.cos(math.radians(worst_lat))))
    conn = await session.connection()
    rows = await conn.execute(_BOX, {
        "lat": lat, "lon": lon, "cos_lat": cos_lat, "lat_lo": lat - dlat, "lat_hi": lat + dlat,
        "lon_lo": lon - dlon, "lon_hi": lon + dlon, "exclude": exclude_pile or "",
        "limit": limit,
    })
    piles: dict[str, list[Any]] = {}
    worst = 0.0
    for pid, plat, plon, plan, sid, sname, saddr, number in rows:
        entry = piles.get(pid)
        if entry is None:
            piles[pid] = [plat, plon, sid, sname, saddr, [number]]
            worst = max(worst, plan)
        else:
            entry[5].append(number)
    if len(piles) < limit:
        return piles, None
    return piles, EARTH_M * math.radians(math.sqrt(worst))


async def free_ports(session: AsyncSession, pile_id: str) -> tuple[Pile, Site, list[int]] | None:
    row = (
        await session.execute(
            select(Pile, Site).join(Site, col(Site.id) == col(Pile.site_id))
            .where(col(Pile.id) == pile_id)
        )
    ).first()
    if row is None:
        return None
    numbers = await session.execute(
        select(col(Port.number)).join(Pile, col(Pile.id) == col(Port.pile_id))
        .where(col(Port.pile_id) == pile_id, free_port_filter()).order_by(col(Port.number))
    )
    return row[0], row[1], [n for (n,) in numbers]
