"""Nearest free ports: p50/p99 of the query plus the reply a rider gets, vs a brute-force scan.

    .venv/bin/python bench/nearest.py        (from the repo root; `make bench` runs it)

SQLite file under /tmp/chargebot-bench. A ~20 km city around Hangzhou, 10 ports a pile, ~5 % of
ports busy (half an open charge, half a charging/full status) and half as many settled charges
as ports (history the open-charge check must not wade through). Each timed call opens a session,
runs core.nearby.nearest_free(k=5) and renders the handler's reply (bot.handlers.ports.
nearby_reply → Reply.as_dict()), as a rider's "share location" message does.

The baseline, in the same process: fetch every free port, geodesic to every pile, sort, same reply.

Sizes: 10k and 100k ports in the ~20 km city, and 1M ports (100k piles) over a ~63 km metro
area, so that piles stand about as densely as in the 100k city and what grows is the table.
`--ports 1000000` runs one size only; `--postgres` runs on a fresh PostgreSQL database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from types import SimpleNamespace

import common  # noqa: F401  (puts the repo root on sys.path)
from common import city_point, drop_postgres, fresh_postgres, fresh_sqlite, machine, pct, seed_city
from geopy.distance import geodesic
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.handlers.ports import nearby_reply
from bot.i18n import tr
from core.db import make_engine, make_sessionmaker, transaction
from core.piles.nearby import NearbyPile, free_port_filter, nearest_free, walk_minutes
from core.piles.tables import Pile, Port, Site

PORTS_PER_PILE = 10
BUSY_SHARE = 0.05
HISTORY_SHARE = 0.5
# ports, fast queries, baseline queries, half the area's side (m), target p99 (s) or None
SIZES = [(10_000, 2_000, 20, 10_000.0, None), (100_000, 2_000, 4, 10_000.0, 0.005),
         (1_000_000, 2_000, 2, 31_623.0, 0.010)]
WARMUP = 100
TURN = SimpleNamespace(lang="zh_CN")


def render(found: list[NearbyPile]) -> dict:
    return nearby_reply(TURN, found, tr(TURN.lang, "Nearest free ports:")).as_dict()  # type: ignore[arg-type]


async def fast(session: AsyncSession, lat: float, lon: float) -> tuple[list[NearbyPile], dict]:
    found = await nearest_free(session, lat, lon, 5)
    return found, render(found)


async def brute(session: AsyncSession, lat: float, lon: float) -> tuple[list[NearbyPile], dict]:
    rows = await session.execute(
        select(Pile.id, Pile.lat, Pile.lon, Site.id, Site.name, Site.address, Port.number)
        .join(Port, Port.pile_id == Pile.id).join(Site, Site.id == Pile.site_id)
        .where(free_port_filter())
    )
    piles: dict[str, list] = {}
    for pid, plat, plon, sid, sname, saddr, number in rows:
        piles.setdefault(pid, [plat, plon, sid, sname, saddr, []])[5].append(number)
    ranked = sorted((geodesic((lat, lon), (v[0], v[1])).meters, pid) for pid, v in piles.items())
    found = []
    for dist, pid in ranked[:5]:
        plat, plon, sid, sname, saddr, numbers = piles[pid]
        found.append(NearbyPile(pid, sid, sname, saddr, plat, plon, dist, walk_minutes(dist),
                                tuple(sorted(numbers))))
    return found, render(found)


async def timed(fn, sm, points, *, with_session: bool = False):  # type: ignore[no-untyped-def]
    """Seconds per call, and the answers. By default as in a handler, whose turn already holds
    an open session (connection checked out, transaction begun); with_session also opens and
    closes one per call."""
    out, answers = [], []
    for lat, lon in points:
        if with_session:
            t0 = time.perf_counter()
            async with sm() as session:
                answers.append((await fn(session, lat, lon))[0])
            out.append(time.perf_counter() - t0)
        else:
            async with sm() as session:
                await session.connection()
                t0 = time.perf_counter()
                answers.append((await fn(session, lat, lon))[0])
                out.append(time.perf_counter() - t0)
    return out, answers


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


async def run_size(url: str, ports: int, n_fast: int, n_brute: int, span: float,
                   target: float | None) -> None:
    rng = random.Random(ports)
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    t0 = time.perf_counter()
    async with transaction(sm) as session:
        await seed_city(session, rng, piles=ports // PORTS_PER_PILE, ports=PORTS_PER_PILE,
                        busy_share=BUSY_SHARE, history_share=HISTORY_SHARE, half_span_m=span)
    label = f"{ports // 1000}k ports ({ports // PORTS_PER_PILE:,} piles, {2 * span / 1000:.0f} km)"
    print(f"seeded {label} in {time.perf_counter() - t0:.1f} s")

    await timed(fast, sm, [city_point(rng, span) for _ in range(WARMUP)])
    fast_s, _ = await timed(fast, sm, [city_point(rng, span) for _ in range(n_fast)])
    whole_s, _ = await timed(fast, sm, [city_point(rng, span) for _ in range(n_fast // 2)],
                             with_session=True)
    render_s = []
    async with sm() as session:
        for lat, lon in [city_point(rng, span) for _ in range(200)]:
            found = await nearest_free(session, lat, lon, 5)
            t = time.perf_counter()
            render(found)
            render_s.append(time.perf_counter() - t)

    points = [city_point(rng, span) for _ in range(n_brute)]
    await timed(brute, sm, points[:1])  # warm
    brute_s, expected = await timed(brute, sm, points)
    _, got = await timed(fast, sm, points)
    for a, b in zip(got, expected, strict=True):  # the two agree
        assert [(n.pile_id, n.free_ports) for n in a] == [(n.pile_id, n.free_ports) for n in b]
    await engine.dispose()

    p50, p99 = pct(fast_s, 50), pct(fast_s, 99)
    b50, b99 = pct(brute_s, 50), pct(brute_s, 99)
    verdict = ("n/a" if target is None
               else f"target p99 < {target * 1000:.0f} ms: {'met' if p99 < target else 'NOT met'}")
    print(f"nearest_free + reply, {label}: p50 {ms(p50)}  p99 {ms(p99)}  (n={n_fast}; reply "
          f"rendering alone p50 {pct(render_s, 50) * 1e6:.0f} µs)")
    print(f"  same, incl. opening/closing a session, {label}: p50 {ms(pct(whole_s, 50))}  "
          f"p99 {ms(pct(whole_s, 99))}  (n={len(whole_s)})")
    print(f"brute-force baseline, {label}: p50 {ms(b50)}  p99 {ms(b99)}  (n={n_brute})")
    print(f"ratio {label}: baseline/nearest_free p50 {b50 / p50:.0f}x, p99 {b99 / p99:.0f}x; "
          f"{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", type=int, action="append",
                        help="run only this size (10000, 100000 or 1000000); repeatable")
    parser.add_argument("--postgres", action="store_true",
                        help="on a fresh PostgreSQL database (127.0.0.1:5432) instead of SQLite")
    args = parser.parse_args()
    only, pg = args.ports, args.postgres
    print(f"nearest free ports, {'PostgreSQL 15' if pg else 'SQLite file DB'}, {machine()}")
    sizes = [s for s in SIZES if not only or s[0] in only]
    fresh = fresh_postgres if pg else fresh_sqlite
    urls = [(fresh(f"chargebot_bench_nearest_{s[0]}"), *s) for s in sizes]
    for url, ports, nf, nb, span, target in urls:
        try:
            asyncio.run(run_size(url, ports, nf, nb, span, target))
        finally:
            if pg:
                drop_postgres(url)


if __name__ == "__main__":
    main()
