"""Shared by the benchmarks: the repo on sys.path, fresh SQLite files, seeding, percentiles."""

from __future__ import annotations

import math
import os
import platform
import random
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from core.charging.tables import Charge  # noqa: E402
from core.config import Settings  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.piles.tables import Pile, Port, Site, port_code  # noqa: E402
from core.riders.tables import Rider  # noqa: E402

BENCH_DIR = Path(os.environ.get("CHARGEBOT_BENCH_DIR", "/tmp/chargebot-bench"))
CENTER = (30.27, 120.15)
M_PER_DEG_LAT = 110_850.0
NOW = datetime.now(UTC)


def fresh_sqlite(name: str) -> str:
    """A new, migrated SQLite file under BENCH_DIR. Call outside an event loop (alembic)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    return url


PG_SERVER = os.environ.get("CHARGEBOT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


def _pg_admin(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def drop_postgres(url: str) -> None:
    """A bench database holds up to a million rows: do not leave it on the developer's server."""
    _pg_admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def fresh_postgres(name: str) -> str:
    """A new, migrated PostgreSQL database (dropped first if a previous run left it)."""
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    upgrade(url)
    return url


def settings_for(db_url: str) -> Settings:
    """Like tests.support.settings.make_settings, with the production sweep intervals from
    bot.toml."""
    return Settings(
        database={"url": db_url},
        server={"public_url": "http://127.0.0.1", "webchat": True},
        telegram={"token": None},
        scheduler={"offline_sweep_s": 15, "command_sweep_s": 5},
        piles={"offline_after_s": 180},
        # The benches' riders start without a wallet: the start floor is not what they measure.
        billing={"start_min_balance_fen": 0},
    )


def city_point(rng: random.Random, half_span_m: float = 10_000.0) -> tuple[float, float]:
    """A point in a ~20 km square city around CENTER."""
    north, east = rng.uniform(-half_span_m, half_span_m), rng.uniform(-half_span_m, half_span_m)
    return (CENTER[0] + north / M_PER_DEG_LAT,
            CENTER[1] + east / (M_PER_DEG_LAT * math.cos(math.radians(CENTER[0]))))


async def seed_city(
    session: AsyncSession, rng: random.Random, *, piles: int, ports: int, busy_share: float,
    history_share: float = 0.0, charges_per_pile: int = 0, half_span_m: float = 10_000.0,
) -> dict[str, dict[str, Any]]:
    """Bulk-insert a city: `piles` × `ports`, online, each port busy with p=busy_share (half an
    open charge, half a charging/full status); `history_share` ended charges per port; and
    `charges_per_pile` started charges with session refs on ports 1..n (for ingest).

    Returns {pile id: {"secret", "lat", "lon", "sessions": {port: session_ref}}}.
    """
    sites = [{"id": f"S{i:03d}", "name": f"小区车棚{i}", "address": f"文三路{i}号",
              "lat": CENTER[0], "lon": CENTER[1], "kind": "community", "tariff": "standard"}
             for i in range(max(1, piles // 4))]
    out: dict[str, dict[str, Any]] = {}
    pile_rows, port_rows, charge_rows = [], [], []
    port_id = 0
    for i in range(1, piles + 1):
        pid = f"P{i:05d}"
        lat, lon = city_point(rng, half_span_m)
        site = sites[(i - 1) // 4 % len(sites)]["id"]
        pile_rows.append({"id": pid, "site_id": site, "model": "generic-10",
                          "secret": f"bench-secret-{pid}", "ports": ports, "lat": lat,
                          "lon": lon, "online": True, "maintenance": False,
                          "last_seen_at": NOW})
        out[pid] = {"secret": f"bench-secret-{pid}", "lat": lat, "lon": lon, "sessions": {}}
        for n in range(1, ports + 1):
            port_id += 1
            code = port_code(pid, n)
            charge = {"rider_id": 1, "port_id": port_id, "pile_id": pid, "port_number": n,
                      "port_code": code, "site_id": site, "tariff": {}, "requested_at": NOW,
                      "amount_fen": 0, "paid_fen": 0, "session_ref": None,
                      "started_at": None}
            status = "idle"
            if n <= charges_per_pile:
                ref = f"{pid}-s{n}"
                charge_rows.append({**charge, "state": "started", "session_ref": ref,
                                    "started_at": NOW})
                out[pid]["sessions"][n] = ref
                status = "charging"
            elif rng.random() < busy_share:
                if rng.random() < 0.5:
                    charge_rows.append({**charge, "state": rng.choice(("requested", "started"))})
                else:
                    status = rng.choice(("charging", "full"))
            if rng.random() < history_share:
                charge_rows.append({**charge, "state": "settled"})
            port_rows.append({"id": port_id, "pile_id": pid, "number": n, "code": code,
                              "status": status, "maintenance": False})
    await session.execute(insert(Site.__table__), sites)
    await session.execute(insert(Pile.__table__), pile_rows)
    await session.execute(insert(Port.__table__), port_rows)
    await session.execute(insert(Rider.__table__), [{
        "id": 1, "display_name": "bench", "language": "zh_CN", "balance_fen": 0,
        "created_at": NOW}])
    for start in range(0, len(charge_rows), 20_000):
        await session.execute(insert(Charge.__table__), charge_rows[start:start + 20_000])
    return out


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


async def app_with_fake_telegram(db_url: str, tune: Any = None) -> tuple[Any, Any, str, Any]:
    """The real app on 127.0.0.1 with python-telegram-bot pointed at the local fake Bot API:
    (app, runner, base URL, fake); `tune(settings)`, when given, adjusts the settings first.
    Clean up with `runner.cleanup()` and `fake.stop()`."""
    from aiohttp import web
    from pydantic import SecretStr

    from bot.app import create_app
    from tests.fakes.telegram_api import FakeTelegram

    fake = FakeTelegram()
    await fake.start()
    settings = settings_for(db_url)
    if tune is not None:
        tune(settings)
    settings.telegram.token = SecretStr(fake.token)
    settings.telegram.base_url = fake.base_url
    settings.telegram.base_file_url = fake.base_file_url
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return app, runner, f"http://127.0.0.1:{port}", fake
