"""nearest_free against a brute-force geodesic scan, on SQLite and PostgreSQL.

A few thousand random ports over a ~20 km city (plus clusters of piles metres apart and a pair
on the very same spot) with every way a port can be unusable: pile offline or in maintenance,
port in maintenance, a non-idle status, an open charge. Ended charges must not hide a port.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from geopy.distance import geodesic
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.charging.tables import Charge
from core.db import transaction
from core.piles.nearby import MAX_RADIUS_M, NearbyPile, free_port_filter, nearest_free
from core.piles.tables import Pile, Port, Site, port_code
from core.riders.tables import Rider

CENTER = (30.27, 120.15)
HALF_SPAN_M = 10_000.0  # the city is a ~20 km square
M_PER_DEG_LAT = 110_850.0
NOW = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)

# Why a port is not free; None means free. Drawn per port (pile-level ones per pile).
PILE_EXCLUSIONS = ("offline", "maintenance")
PORT_EXCLUSIONS = (
    "port_maintenance", "fault", "offline", "charging", "full", "plugged", "requested", "started",
)


@dataclass
class City:
    coords: dict[str, tuple[float, float]] = field(default_factory=dict)
    free: dict[str, list[int]] = field(default_factory=dict)  # pile -> free port numbers
    excluded: set[tuple[str, int]] = field(default_factory=set)  # (pile, port) never listed
    reasons: dict[str, int] = field(default_factory=dict)
    _ranked: dict[tuple[float, float], list[tuple[float, str]]] = field(default_factory=dict)

    def brute(
        self, lat: float, lon: float, k: int = 5, *, exclude: str | None = None,
        max_radius_m: float = MAX_RADIUS_M,
    ) -> list[tuple[float, str]]:
        """Geodesic to every pile with a free port; equal distances ordered by pile id."""
        key = (lat, lon)
        if key not in self._ranked:
            self._ranked[key] = sorted(
                (geodesic((lat, lon), self.coords[pid]).meters, pid)
                for pid, numbers in self.free.items() if numbers
            )
        found = [(d, pid) for d, pid in self._ranked[key] if pid != exclude and d <= max_radius_m]
        return found[:k]


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(lat))
    return lat + north_m / M_PER_DEG_LAT, lon + east_m / m_per_deg_lon


def city_point(rng: random.Random) -> tuple[float, float]:
    return offset(*CENTER, rng.uniform(-HALF_SPAN_M, HALF_SPAN_M),
                  rng.uniform(-HALF_SPAN_M, HALF_SPAN_M))


async def seed(
    session: AsyncSession, rng: random.Random, *, scattered: int, clusters: int = 0,
    ports: int = 2, free_share: float = 0.5,
) -> City:
    """Bulk-insert piles and ports; each port is free with probability ~free_share."""
    city = City()
    sites = [{"id": f"S{i:03d}", "name": f"站点{i}", "address": f"测试路{i}号",
              "lat": CENTER[0], "lon": CENTER[1], "kind": "community", "tariff": "standard"}
             for i in range(20)]
    spots = [city_point(rng) for _ in range(scattered)]
    for _ in range(clusters):  # 3 to 6 piles within a few metres of each other
        lat, lon = city_point(rng)
        spots += [offset(lat, lon, rng.uniform(-4, 4), rng.uniform(-4, 4))
                  for _ in range(rng.randint(3, 6))]
    if clusters:
        spots.append(spots[-1])  # two piles on the very same spot: ties go by pile id

    pile_rows, port_rows, charge_rows = [], [], []
    port_id = 0
    for i, (lat, lon) in enumerate(spots, 1):
        pid = f"P{i:05d}"
        pile_state = None if rng.random() < 0.85 else rng.choice(PILE_EXCLUSIONS)
        pile_rows.append({
            "id": pid, "site_id": rng.choice(sites)["id"], "model": "generic-10",
            "secret": f"s-{pid}", "ports": ports, "lat": lat, "lon": lon,
            "online": pile_state != "offline", "maintenance": pile_state == "maintenance",
        })
        city.coords[pid] = (lat, lon)
        city.free[pid] = []
        for n in range(1, ports + 1):
            port_id += 1
            state = None if rng.random() < free_share else rng.choice(PORT_EXCLUSIONS)
            status = state if state in ("fault", "offline", "charging", "full", "plugged") else (
                "idle")
            port_rows.append({
                "id": port_id, "pile_id": pid, "number": n, "code": port_code(pid, n),
                "status": status, "maintenance": state == "port_maintenance",
            })
            charge = {
                "rider_id": 1, "port_id": port_id, "pile_id": pid, "port_number": n,
                "port_code": port_code(pid, n), "site_id": pile_rows[-1]["site_id"],
                "tariff": {}, "requested_at": NOW, "amount_fen": 0, "paid_fen": 0,
                "session_ref": None,
            }
            if state in ("requested", "started"):  # an open charge on an idle-looking port
                charge_rows.append({**charge, "state": state,
                                    "session_ref": f"s{port_id}" if state == "started" else None})
            elif rng.random() < 0.2:  # history on the port must not hide it
                charge_rows.append({**charge, "state": rng.choice(("ended", "settled", "failed"))})
            reason = pile_state or state
            city.reasons[reason or "free"] = city.reasons.get(reason or "free", 0) + 1
            if reason is None:
                city.free[pid].append(n)
            else:
                city.excluded.add((pid, n))

    await session.execute(insert(Site.__table__), sites)
    await session.execute(insert(Pile.__table__), pile_rows)
    await session.execute(insert(Port.__table__), port_rows)
    await session.execute(insert(Rider.__table__), [{
        "id": 1, "display_name": "bench", "language": "zh_CN", "balance_fen": 0,
        "created_at": NOW}])
    if charge_rows:
        await session.execute(insert(Charge.__table__), charge_rows)
    return city




def check(found: list[NearbyPile], expected: list[tuple[float, str]], city: City,
          where: str) -> None:
    assert [n.pile_id for n in found] == [pid for _, pid in expected], where
    for n, (dist, pid) in zip(found, expected, strict=True):
        assert abs(n.distance_m - dist) < 0.01, (where, pid, n.distance_m, dist)
        assert n.free_ports == tuple(sorted(city.free[pid])), (where, pid)
        assert (n.lat, n.lon) == city.coords[pid]
        assert n.walk_minutes >= 1
        for number in n.free_ports:
            assert (pid, number) not in city.excluded, (where, pid, number)


async def test_matches_brute_force(sm: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(20250501)
    async with transaction(sm) as session:
        city = await seed(session, rng, scattered=1_500, clusters=25)
    # Every exclusion is really exercised, and there is plenty both free and not.
    for reason in ("free", *PILE_EXCLUSIONS, *PORT_EXCLUSIONS):
        assert city.reasons.get(reason, 0) >= 20, (reason, city.reasons)

    points = [city_point(rng) for _ in range(30)]
    # Right next to clusters and the same-spot pair: near-ties and exact ties.
    cluster_piles = list(city.coords)[1_500:]
    points += [offset(*city.coords[pid], 1.0, -1.0) for pid in rng.sample(cluster_piles, 5)]
    points.append(city.coords[list(city.coords)[-1]])
    async with sm() as session:
        for lat, lon in points:
            found = await nearest_free(session, lat, lon, 5)
            assert len(found) == 5
            check(found, city.brute(lat, lon, 5), city, f"at {lat},{lon}")
            # k other than 5, as the "alternatives" reply asks for 3
            check(await nearest_free(session, lat, lon, 3), city.brute(lat, lon, 3), city,
                  f"k=3 at {lat},{lon}")


async def test_outside_the_city_and_max_radius(sm: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(7)
    async with transaction(sm) as session:
        city = await seed(session, rng, scattered=1_500, clusters=10)
    cases = [
        (15_000.0, 0.0),   # just north of the city: plenty within reach
        (30_000.0, 0.0),   # the nearest ones ~20 km away, farther ones beyond 30 km
        (-26_000.0, 26_000.0),  # diagonal: the corners of the search box reach past 30 km
        (38_000.0, 0.0),   # only the city's edge is within 30 km, if anything
        (45_000.0, 0.0),   # nothing within 30 km, although the box's corners hold piles
        (0.0, -120_000.0),  # nowhere near
    ]
    counts = []
    async with sm() as session:
        for north, east in cases:
            lat, lon = offset(*CENTER, north, east)
            found = await nearest_free(session, lat, lon, 5)
            expected = city.brute(lat, lon, 5)
            check(found, expected, city, f"{north},{east}")
            assert all(n.distance_m <= MAX_RADIUS_M for n in found)
            counts.append(len(found))
        assert counts[0] == 5 and counts[-1] == 0 and counts[-2] == 0

        # A tighter max radius is honoured the same way.
        for lat, lon in [city_point(rng) for _ in range(5)]:
            for radius in (150.0, 400.0, 1_000.0):
                found = await nearest_free(session, lat, lon, 5, max_radius_m=radius)
                check(found, city.brute(lat, lon, 5, max_radius_m=radius), city,
                      f"r={radius} at {lat},{lon}")


async def test_fewer_than_k_free_in_total(sm: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(11)
    async with transaction(sm) as session:
        city = await seed(session, rng, scattered=60, ports=2, free_share=0.03)
    free_piles = [p for p, n in city.free.items() if n]
    if not 1 <= len(free_piles) < 5:  # keep the scenario exact whatever the draw
        pytest.fail(f"the draw gave {len(free_piles)} free piles; pick another seed")
    async with sm() as session:
        for lat, lon in [CENTER, *(city_point(rng) for _ in range(5))]:
            found = await nearest_free(session, lat, lon, 5)
            check(found, city.brute(lat, lon, 5), city, f"at {lat},{lon}")
            assert len(found) == len(free_piles)


async def test_nothing_free(sm: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(3)
    async with transaction(sm) as session:
        city = await seed(session, rng, scattered=40, free_share=0.0)
    assert not any(city.free.values())
    async with sm() as session:
        assert await nearest_free(session, *CENTER, 5) == []


async def test_edge_of_each_radius(sm: async_sessionmaker[AsyncSession]) -> None:
    """Piles a hair inside / outside the search radii, in every direction (geodesic metres)."""
    lat0, lon0 = CENTER
    rings = [(599.0, "A"), (601.0, "B"), (999.0, "C"), (1_001.0, "D"), (29_990.0, "E"),
             (30_010.0, "F")]
    spots = {}
    for dist, tag in rings:
        for bearing in range(0, 360, 45):
            p = geodesic(meters=dist).destination((lat0, lon0), bearing)
            spots[f"P{tag}{bearing:03d}"] = (p.latitude, p.longitude)
    async with transaction(sm) as session:
        await session.execute(insert(Site.__table__), [{
            "id": "S1", "name": "s", "address": "", "lat": lat0, "lon": lon0,
            "kind": "community", "tariff": "standard"}])
        await session.execute(insert(Pile.__table__), [{
            "id": pid, "site_id": "S1", "model": "m", "secret": "x", "ports": 1, "lat": la,
            "lon": lo, "online": True, "maintenance": False} for pid, (la, lo) in spots.items()])
        await session.execute(insert(Port.__table__), [{
            "pile_id": pid, "number": 1, "code": port_code(pid, 1), "status": "idle",
            "maintenance": False} for pid in spots])
    city = City(coords=spots, free={pid: [1] for pid in spots})
    async with sm() as session:
        for k in (1, 5, 8, 9, 16, 17, 40, 48):
            for radius in (600.0, 1_000.0, MAX_RADIUS_M):
                found = await nearest_free(session, lat0, lon0, k, max_radius_m=radius)
                check(found, city.brute(lat0, lon0, k, max_radius_m=radius), city,
                      f"k={k} r={radius}")
        found = await nearest_free(session, lat0, lon0, 100)
        assert {n.pile_id[1] for n in found} == set("ABCDE")


async def test_exclude_pile(sm: async_sessionmaker[AsyncSession]) -> None:
    rng = random.Random(5)
    async with transaction(sm) as session:
        city = await seed(session, rng, scattered=800, clusters=10)
    free_piles = [p for p, n in city.free.items() if n]
    async with sm() as session:
        for pid in rng.sample(free_piles, 10):
            lat, lon = city.coords[pid]
            assert (await nearest_free(session, lat, lon, 1))[0].pile_id == pid
            found = await nearest_free(session, lat, lon, 3, exclude_pile=pid)
            assert pid not in [n.pile_id for n in found]
            check(found, city.brute(lat, lon, 3, exclude=pid), city, f"without {pid}")


async def test_open_charge_lookup_uses_the_partial_index(
    sm: async_sessionmaker[AsyncSession], db_url: str,
) -> None:
    """One charges scan per candidate port was the cost that grew with every finished charge."""
    if not db_url.startswith("sqlite"):
        pytest.skip("the plan check reads SQLite's EXPLAIN QUERY PLAN")
    stmt = select(Port.number).join(Pile, Pile.id == Port.pile_id).where(free_port_filter())
    async with sm() as session:
        conn = await session.connection()
        # As executed: literal_execute parameters inlined, the others still bound.
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
        rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params)).all()
    details = " | ".join(str(r[-1]) for r in rows)
    assert "uq_charges_open_port" in details, details
    assert "SCAN charges" not in details, details
