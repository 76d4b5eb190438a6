"""`chargebot serve`, `demo`, `db upgrade` and `simulate`: running the service and its fleet."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot import demo
from bot.cli.common import CliError, settings_for, with_session
from core.config import Settings, blank_secrets
from core.migrate import upgrade
from core.piles.tables import Pile, PileProtocol
from simulator import Fleet, PileSpec

if TYPE_CHECKING:
    from simulator.ap3000 import BoardSpec
    from simulator.ocpp import PointSpec


def cmd_db(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    upgrade(settings.database.url)
    print(f"database is at the latest schema ({_safe_url(settings.database.url)})")


def _safe_url(url: str) -> str:
    """Never print a password that may sit in the URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _serve_one(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    # Here, not at the top (start-up cost): `db upgrade` and `simulate` need no app.
    from bot.app import create_app

    web.run_app(create_app(settings), host=host, port=port, print=None, reuse_port=reuse_port)


def cmd_serve(args: argparse.Namespace) -> None:
    """One process, or N stateless workers sharing the port (SO_REUSEPORT: the kernel spreads
    connections). Several workers need PostgreSQL: SQLite has one writer, and the scheduler
    leader is chosen with a PostgreSQL advisory lock."""
    settings = settings_for(args)
    if blank := blank_secrets(settings):
        raise CliError("empty secret(s) configured: " + ", ".join(blank)
                       + " — set a real value or remove the key")
    if "sandbox" in settings.payments.providers:
        raise CliError("payments.providers lists \"sandbox\", which credits money nobody paid: "
                       "it is for `chargebot demo` only — remove it (providers: telegram, "
                       "wechatpay)")
    if settings.server.webchat_demo_identities:
        raise CliError("server.webchat_demo_identities is on: anyone could open the web chat as "
                       "the demo's staff (/?as=demo-technician); it is for `chargebot demo` "
                       "only — set server.webchat_demo_identities = false (or remove "
                       "CHARGEBOT_SERVER__WEBCHAT_DEMO_IDENTITIES)")
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    if args.workers > 1 and not settings.database.url.startswith("postgresql"):
        raise CliError("--workers > 1 needs PostgreSQL (database.url postgresql+asyncpg://…)")
    upgrade(settings.database.url)
    host, port = args.host or settings.server.host, args.port or settings.server.port
    print(f"chargebot serving on http://{host}:{port} with {args.workers} worker(s)")
    if args.workers == 1:
        _serve_one(settings, host, port, False)
        return
    run_workers(args.workers, _serve_one, (settings, host, port, True))


def run_workers(n: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    """n spawned processes running target(*args) until SIGTERM/SIGINT, which they all get."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no shared loop state
    procs = [ctx.Process(target=target, args=args, daemon=False) for _ in range(n)]
    for p in procs:
        p.start()

    def stop(_sig: int, _frame: object) -> None:
        for p in procs:
            p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()


def cmd_demo(args: argparse.Namespace) -> None:
    os.environ.setdefault("CHARGEBOT_DATABASE__URL", "sqlite+aiosqlite:///var/demo.db")
    settings = settings_for(args)
    log_file = _quiet_console(settings.database.url)
    # The demo's money is play money: its riders top up with the sandbox, which serve refuses.
    if "sandbox" not in settings.payments.providers:
        settings.payments.providers.append("sandbox")
    # /?as=demo-technician opens the web chat as the demo city's staff; serve refuses it.
    settings.server.webchat_demo_identities = True
    # The demo city's AP3000 boards (bot/demo.py) speak TCP to the gateway, on a free local port.
    if not settings.piles.ap3000.enabled:
        settings.piles.ap3000.enabled = True
        settings.piles.ap3000.host, settings.piles.ap3000.port = "127.0.0.1", 0
    # Its OCPP charge points connect to the app's own /ocpp/{id} (bot/piles/ocpp).
    settings.piles.ocpp.enabled = True
    upgrade(settings.database.url)
    asyncio.run(_demo(settings, args, log_file))


async def _demo(settings: Settings, args: argparse.Namespace, log_file: Path | None) -> None:
    # Here, not at the top (start-up cost): `db upgrade` and `simulate` need no app.
    from bot.app import create_app
    from bot.piles.ap3000 import AP3000
    from simulator.ap3000 import Ap3000Fleet
    from simulator.ocpp import OcppFleet

    created = await with_session(settings, demo.seed)
    host, port = args.host or settings.server.host, args.port or settings.server.port
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    url = f"http://{host}:{port}"
    specs = await _pile_specs(settings, None)
    fleet = Fleet(url, specs, speed=args.speed, heartbeat_s=20, meter_every_s=3,
                  fault_rate_per_hour=args.fault_rate,
                  fault_share=args.fault_share)
    await fleet.start()
    gateway = app[AP3000]
    boards = await _ap3000_specs(settings)
    ap3000 = Ap3000Fleet(_local(settings.piles.ap3000.host), gateway.port, boards,
                         speed=args.speed, heartbeat_s=20, meter_every_s=3,
                         fault_rate_per_hour=args.fault_rate, fault_share=args.fault_share)
    await ap3000.start()
    points = await _ocpp_specs(settings)
    ocpp_url = f"ws://{_local(host)}:{port}/ocpp"
    ocpp = OcppFleet(ocpp_url, points, speed=args.speed, heartbeat_s=20, meter_every_s=3,
                     fault_rate_per_hour=args.fault_rate, fault_share=args.fault_share,
                     model="ocpp-2")
    await ocpp.start()
    print(f"demo city {'seeded' if created else 'loaded'}: {len(specs)} simulated piles over "
          f"HTTP, {len(boards)} AP3000 boards over TCP, {len(points)} OCPP 1.6J charge points "
          f"over WebSocket, time ×{args.speed:g}")
    print(f"AP3000 gateway: {settings.piles.ap3000.host}:{gateway.port}")
    print(f"OCPP 1.6J charge points {', '.join(p.charge_point_id for p in points) or '(none)'}"
          f" → {ocpp_url}/{{id}} (Basic auth with the pile's secret)")
    if log_file is not None:
        print(f"log: {log_file} (warnings also here)")
    print(f"web chat: {url}/   (Ctrl-C to stop)")
    try:
        await asyncio.Event().wait()
    finally:
        await ocpp.stop()
        await ap3000.stop()
        await fleet.stop()
        await runner.cleanup()


def _quiet_console(db_url: str) -> Path | None:
    """The demo's INFO lines (~200 a minute from the fleet) go to var/log/demo.log beside its
    database, and the console keeps warnings, so the chat's address stays in sight. Unless
    CHARGEBOT_LOG asks for a level on the console."""
    if "CHARGEBOT_LOG" in os.environ:
        return None
    db = db_url.split("///", 1)[-1]
    path = (Path(db).parent if db and db != ":memory:" else Path("var")) / "log" / "demo.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(logging.WARNING)
    to_file = logging.handlers.RotatingFileHandler(path, maxBytes=20 * 2**20, backupCount=2,
                                                   encoding="utf-8")
    if root.handlers:
        to_file.setFormatter(root.handlers[0].formatter)
        for f in root.handlers[0].filters:
            to_file.addFilter(f)
    root.addHandler(to_file)
    return path


def _local(host: str) -> str:
    """Where a simulator on this machine reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


async def _pile_specs(settings: Settings, limit: int | None) -> list[PileSpec]:

    async def load(session: AsyncSession) -> list[PileSpec]:
        # Piles that speak another wire (AP3000, OCPP) are not simulated over HTTP.
        stmt = select(Pile).where(col(Pile.protocol) == PileProtocol.json).order_by(col(Pile.id))
        if limit:
            stmt = stmt.limit(limit)
        return [PileSpec(p.id, p.secret, p.ports) for p in (await session.execute(stmt)).scalars()]

    return await with_session(settings, load)


async def _ap3000_specs(settings: Settings) -> list[BoardSpec]:
    # Here, not at the top: the AP3000 simulator imports the gateway's codec (and the app).
    from simulator.ap3000 import BoardSpec

    async def load(session: AsyncSession) -> list[BoardSpec]:
        stmt = select(Pile).where(col(Pile.protocol) == PileProtocol.ap3000).order_by(
            col(Pile.id))
        return [BoardSpec(p.id, int(p.wire_id), p.ports)
                for p in (await session.execute(stmt)).scalars() if p.wire_id]

    return await with_session(settings, load)


async def _ocpp_specs(settings: Settings) -> list[PointSpec]:
    # Here, not at the top (start-up cost): the OCPP simulator imports the `ocpp` package.
    from simulator.ocpp import PointSpec

    async def load(session: AsyncSession) -> list[PointSpec]:
        stmt = select(Pile).where(col(Pile.protocol) == PileProtocol.ocpp16).order_by(
            col(Pile.id))
        return [PointSpec(p.id, p.wire_id, p.secret, p.ports)
                for p in (await session.execute(stmt)).scalars() if p.wire_id]

    return await with_session(settings, load)


def cmd_simulate(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    if args.piles < 1:
        raise CliError("--piles must be at least 1")
    specs = asyncio.run(_pile_specs(settings, args.piles))
    if not specs:
        raise CliError("no piles in the database: add some with `chargebot piles add` or run "
                       "`chargebot demo` once")
    print(f"simulating {len(specs)} piles against {args.url} (time ×{args.speed:g})")
    fleet = Fleet(args.url, specs, speed=args.speed, fault_rate_per_hour=args.fault_rate,
                  fault_share=args.fault_share)
    asyncio.run(fleet.run_forever())
