"""`chargebot …` (DESIGN §6). Each command prints a clear error and exits non-zero on bad input."""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from sqlalchemy import select

from core.config import ConfigError, Settings, blank_secrets, load_settings
from core.db import make_engine, make_sessionmaker, transaction
from core.migrate import upgrade

log = logging.getLogger("chargebot")


class CliError(Exception):
    pass


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "database", None):
        os.environ["CHARGEBOT_DATABASE__URL"] = args.database
    try:
        return load_settings()
    except ConfigError as exc:
        raise CliError(str(exc)) from None


async def _with_session(settings: Settings, fn):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database.url)
    try:
        async with transaction(make_sessionmaker(engine)) as session:
            return await fn(session)
    finally:
        await engine.dispose()


def cmd_db(args: argparse.Namespace) -> None:
    settings = _settings(args)
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
    from bot.app import create_app

    web.run_app(create_app(settings), host=host, port=port, print=None, reuse_port=reuse_port)


def cmd_serve(args: argparse.Namespace) -> None:
    """One process, or N stateless workers sharing the port (SO_REUSEPORT: the kernel spreads
    connections). Several workers need PostgreSQL: SQLite has one writer, and the scheduler
    leader is chosen with a PostgreSQL advisory lock."""
    settings = _settings(args)
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


def run_workers(n: int, target: Callable[..., None], args: tuple) -> None:
    """n spawned processes running target(*args) until SIGTERM/SIGINT, which they all get."""
    import multiprocessing
    import signal

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
    settings = _settings(args)
    # The demo's money is play money: its riders top up with the sandbox, which serve refuses.
    if "sandbox" not in settings.payments.providers:
        settings.payments.providers.append("sandbox")
    # /?as=demo-technician opens the web chat as the demo city's staff; serve refuses it.
    settings.server.webchat_demo_identities = True
    upgrade(settings.database.url)
    asyncio.run(_demo(settings, args))


async def _demo(settings: Settings, args: argparse.Namespace) -> None:
    from bot import demo
    from bot.app import create_app
    from simulator import Fleet

    created = await _with_session(settings, demo.seed)
    host, port = args.host or settings.server.host, args.port or settings.server.port
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    url = f"http://{host}:{port}"
    specs = await _pile_specs(settings, None)
    fleet = Fleet(url, specs, speed=args.speed, heartbeat_s=20, meter_every_s=3,
                  fault_rate_per_hour=args.fault_rate)
    await fleet.start()
    print(f"demo city {'seeded' if created else 'loaded'}: {len(specs)} simulated piles, "
          f"time ×{args.speed:g}")
    print(f"web chat: {url}/   (Ctrl-C to stop)")
    try:
        await asyncio.Event().wait()
    finally:
        await fleet.stop()
        await runner.cleanup()


async def _pile_specs(settings: Settings, limit: int | None):  # type: ignore[no-untyped-def]
    from core.piles import Pile
    from simulator import PileSpec

    async def load(session):  # type: ignore[no-untyped-def]
        stmt = select(Pile).order_by(Pile.id)
        if limit:
            stmt = stmt.limit(limit)
        return [PileSpec(p.id, p.secret, p.ports) for p in (await session.execute(stmt)).scalars()]

    return await _with_session(settings, load)


def cmd_simulate(args: argparse.Namespace) -> None:
    from simulator import Fleet

    settings = _settings(args)
    if args.piles < 1:
        raise CliError("--piles must be at least 1")
    specs = asyncio.run(_pile_specs(settings, args.piles))
    if not specs:
        raise CliError("no piles in the database: add some with `chargebot piles add` or run "
                       "`chargebot demo` once")
    print(f"simulating {len(specs)} piles against {args.url} (time ×{args.speed:g})")
    fleet = Fleet(args.url, specs, speed=args.speed, fault_rate_per_hour=args.fault_rate)
    asyncio.run(fleet.run_forever())


def cmd_sites_import(args: argparse.Namespace) -> None:
    from core import piles

    settings = _settings(args)
    path = Path(args.file)
    if not path.exists():
        raise CliError(f"no such file: {path}")
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"id", "name", "address", "lat", "lon", "kind", "tariff"}
        if not need <= set(reader.fieldnames or []):
            raise CliError(f"{path}: columns must be {','.join(sorted(need))}")
        for i, row in enumerate(reader, start=2):
            try:
                lat, lon = float(row["lat"]), float(row["lon"])
            except ValueError:
                raise CliError(f"{path}:{i}: lat/lon must be numbers") from None
            if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not row["id"]:
                raise CliError(f"{path}:{i}: bad id or coordinates")
            if row["tariff"] and row["tariff"] not in settings.billing.tariffs:
                raise CliError(f"{path}:{i}: unknown tariff {row['tariff']!r}")
            rows.append(row | {"lat": lat, "lon": lon})

    async def save(session):  # type: ignore[no-untyped-def]
        for r in rows:
            await piles.add_site(session, r["id"], r["name"], r["lat"], r["lon"],
                                 address=r["address"], kind=r["kind"] or "community",
                                 tariff=r["tariff"] or settings.billing.default_tariff)

    asyncio.run(_with_session(settings, save))
    print(f"imported {len(rows)} sites")


def cmd_piles_add(args: argparse.Namespace) -> None:
    from core import piles

    settings = _settings(args)
    if not re.match(r"^P\d{4,}$", args.id):
        raise CliError("--id must look like P0001")

    async def add(session):  # type: ignore[no-untyped-def]
        if await session.get(piles.Pile, args.id):
            raise CliError(f"pile {args.id} exists already")
        try:
            return await piles.add_pile(session, args.site, args.id, args.ports, model=args.model,
                                        secret=args.secret)
        except ValueError as exc:
            raise CliError(str(exc)) from None

    pile = asyncio.run(_with_session(settings, add))
    print(f"pile {pile.id} added with {pile.ports} ports at site {pile.site_id}")
    # Printed once so the installer can program the controller; never logged.
    print(f"secret: {pile.secret}")


def cmd_piles_list(args: argparse.Namespace) -> None:
    from core.piles import Pile

    settings = _settings(args)

    async def load(session):  # type: ignore[no-untyped-def]
        return list((await session.execute(select(Pile).order_by(Pile.id))).scalars())

    for p in asyncio.run(_with_session(settings, load)):
        state = "online" if p.online else "offline"
        print(f"{p.id}\t{p.site_id}\t{p.ports} ports\t{p.model}\t{state}")


_AGO = re.compile(r"(\d+)\s*([mhd])")


def _since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO-8601 date or time (UTC unless it says otherwise), or 30m / 2h / 7d."""
    if m := _AGO.fullmatch(text.strip()):
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: int(m.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"--since {text!r}: give an ISO date/time (2026-12-07, "
                       "2026-12-07T08:00+08:00) or an age like 30m, 2h, 7d") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def cmd_events_rejected(args: argparse.Namespace) -> None:
    """Events piles sent that could not be applied (the rest of their batch was), newest last."""
    from core.db import aware, utcnow
    from core.events import RejectedEvent

    settings = _settings(args)
    stmt = select(RejectedEvent).order_by(RejectedEvent.received_at, RejectedEvent.id)
    if args.pile:
        stmt = stmt.where(RejectedEvent.pile_id == args.pile)
    if args.since:
        stmt = stmt.where(RejectedEvent.received_at >= _since(args.since, utcnow()))
    stmt = stmt.limit(args.limit)

    async def load(session):  # type: ignore[no-untyped-def]
        return list((await session.execute(stmt)).scalars())

    rows = asyncio.run(_with_session(settings, load))
    if not rows:
        print("no rejected events" + (f" for pile {args.pile}" if args.pile else ""))
        return
    print("received_at\tpile\tindex\tid\tfield\terror\traw")
    for r in rows:
        print(f"{aware(r.received_at).isoformat(timespec='seconds')}\t{r.pile_id}\t{r.position}"
              f"\t{r.event_id or '-'}\t{r.field}\t{r.error}\t{r.raw}")


async def _wechat_client(settings: Settings):  # type: ignore[no-untyped-def]
    import aiohttp

    from notifications.wechat_client import WechatClient

    if settings.wechat.secret is None or not settings.wechat.appid:
        raise CliError("WeChat is not configured: set wechat.appid and CHARGEBOT_WECHAT__SECRET")
    engine = make_engine(settings.database.url)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    return WechatClient(make_sessionmaker(engine), settings.wechat, http), engine, http


def cmd_wechat_menu(args: argparse.Namespace) -> None:
    from bot.wechat_menu import menu
    from notifications.wechat_client import WechatError

    settings = _settings(args)

    async def publish() -> None:
        client, engine, http = await _wechat_client(settings)
        try:
            await client.create_menu(menu())
        except WechatError as exc:
            raise CliError(f"WeChat refused the menu: {exc}") from None
        finally:
            await http.close()
            await engine.dispose()

    asyncio.run(publish())
    print("WeChat menu published")


def cmd_piles_qr(args: argparse.Namespace) -> None:
    from bot.qr import telegram_link, write_sign
    from core.piles import Port
    from notifications.wechat_client import WechatError

    settings = _settings(args)
    out = Path(args.out)

    async def make() -> list[tuple[str, Path, str | None]]:
        async def ports(session):  # type: ignore[no-untyped-def]
            return list((await session.execute(
                select(Port.code).where(Port.pile_id == args.pile).order_by(Port.number)
            )).scalars())

        codes = await _with_session(settings, ports)
        if not codes:
            raise CliError(f"unknown pile {args.pile}")
        wechat = None
        if settings.wechat.secret is not None and settings.wechat.appid:
            wechat = await _wechat_client(settings)
        made = []
        try:
            for code in codes:
                wx_url = image = None
                if wechat is not None:
                    try:
                        ticket = await wechat[0].qr_ticket(f"port_{code}")
                    except WechatError as exc:
                        raise CliError(f"WeChat QR for {code} failed: {exc}") from None
                    wx_url = ticket["url"]
                    image = ("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="
                             + ticket["ticket"])
                tg = telegram_link(settings.telegram.bot_username, code)
                made.append((code, write_sign(out, code, tg, wx_url), image))
        finally:
            if wechat is not None:
                await wechat[2].close()
                await wechat[1].dispose()
        return made

    for code, path, image in asyncio.run(make()):
        print(f"{code}\t{path}" + (f"\t{image}" if image else ""))


def cmd_refund(args: argparse.Namespace) -> None:
    """Staff: give back part of a bill, once per --key."""

    from core.billing import disputes
    from core.charging import Charge

    settings = _settings(args)
    if args.fen <= 0:
        raise CliError("--fen must be a positive number of fen")

    async def go(session):  # type: ignore[no-untyped-def]
        charge = await session.get(Charge, args.charge)
        if charge is None:
            raise CliError(f"unknown charge {args.charge}")
        try:
            return await disputes.refund(session, charge, args.fen, args.key or
                                         f"staff-{args.fen}-{args.reason[:20]}", args.reason,
                                         datetime.now(UTC))
        except disputes.RefundTooLarge as exc:
            raise CliError(f"at most {exc.params['max']} fen can be refunded") from None
        except disputes.NothingToDispute:
            raise CliError("that charge has no bill to refund") from None

    done = asyncio.run(_with_session(settings, go))
    print(f"refunded {done} fen on charge {args.charge}" if done else
          "nothing refunded: this refund was already made")


def cmd_disputes(args: argparse.Namespace) -> None:

    from core.billing import disputes
    from core.charging import Charge

    settings = _settings(args)

    async def go(session):  # type: ignore[no-untyped-def]
        if args.disputes_command == "list":
            rows = await session.execute(select(disputes.Dispute).where(
                disputes.Dispute.state != "resolved").order_by(disputes.Dispute.due_at))
            return [f"{d.id}\tcharge {d.charge_id}\t{d.state}\tdue {d.due_at:%Y-%m-%d %H:%M}"
                    for d in rows.scalars()]
        d = await session.get(disputes.Dispute, args.id)
        if d is None:
            raise CliError(f"unknown dispute {args.id}")
        charge = await session.get(Charge, d.charge_id)
        now = datetime.now(UTC)
        if args.refund:
            try:
                d.refund_fen += await disputes.refund(session, charge, args.refund,
                                                      f"dispute-{d.id}", args.note, now)
            except disputes.RefundTooLarge as exc:
                raise CliError(f"at most {exc.params['max']} fen can be refunded") from None
        d.state, d.resolution, d.resolved_at = "resolved", args.note, now
        return [f"dispute {d.id} resolved, {d.refund_fen} fen refunded"]

    for line in asyncio.run(_with_session(settings, go)):
        print(line)


def cmd_coupons_issue(args: argparse.Namespace) -> None:
    from core.billing import coupons
    from core.riders import Rider

    settings = _settings(args)
    if (args.fen > 0) == (args.percent > 0):
        raise CliError("give either --fen or --percent")

    async def go(session):  # type: ignore[no-untyped-def]
        if await session.get(Rider, args.rider) is None:
            raise CliError(f"unknown rider {args.rider}")
        c = await coupons.issue(session, args.rider, amount_fen=args.fen,
                                percent_off=args.percent, days=args.days, reason=args.reason)
        return c.code

    print(f"coupon {asyncio.run(_with_session(settings, go))} issued")


def cmd_staff_add(args: argparse.Namespace) -> None:
    """A technician or supervisor is a chat user with a role: found (or created, so a work
    order can reach them before they ever wrote) by platform and user id."""
    from core import staff
    from core.piles import Site
    from core.riders import PLATFORMS, rider_for

    settings = _settings(args)
    if args.platform == "webchat":
        raise CliError("staff are not added by a web chat id any more (whoever knew it could "
                       "act as them): add them with their Telegram or WeChat account (--platform "
                       "telegram|wechat); in the web chat they log in with a one-time link "
                       "(/weblogin in their own chat) or a password (chargebot staff passwd)")
    if args.platform not in PLATFORMS:
        raise CliError(f"--platform must be one of {', '.join(PLATFORMS)}")
    try:
        staff.parse_hours(args.hours or settings.maintenance.default_hours)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if not sites:
        raise CliError("--sites needs site ids, or * for every site")

    async def go(session):  # type: ignore[no-untyped-def]
        for site in sites:
            if site != staff.ALL_SITES and await session.get(Site, site) is None:
                raise CliError(f"unknown site {site}")
        rider = await rider_for(session, args.platform, args.user, chat_id=args.chat or None,
                                display_name=args.name or "")
        for site in sites:
            await staff.add(session, rider.id, args.role, site,
                            hours=args.hours or settings.maintenance.default_hours,
                            name=args.name or "")
        return rider.id

    rider_id = asyncio.run(_with_session(settings, go))
    print(f"{args.role} {args.name or args.user} (rider {rider_id}) at {', '.join(sites)}")


def cmd_staff_passwd(args: argparse.Namespace) -> None:
    """A staff member's web-chat password (argon2id); their open web sessions end."""
    import getpass

    from core import staff_passwords, web_sessions

    settings = _settings(args)
    if args.platform not in staff_passwords.PLATFORMS:
        raise CliError(f"--platform must be one of {', '.join(staff_passwords.PLATFORMS)}")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("new web chat password: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the two passwords differ; nothing changed")
    if len(password) < staff_passwords.MIN_LENGTH:
        raise CliError(f"a password needs at least {staff_passwords.MIN_LENGTH} characters")
    account = f"{args.platform}:{args.user}"

    async def go(session):  # type: ignore[no-untyped-def]
        rider_id = await staff_passwords.staff_rider(session, args.platform, args.user)
        if rider_id is None:
            raise CliError(f"{account} is not staff: add them first (chargebot staff add)")
        now = datetime.now(UTC)
        await staff_passwords.set_password(session, rider_id, password, now)
        return rider_id, await web_sessions.end_all(session, rider_id, now)

    rider_id, ended = asyncio.run(_with_session(settings, go))
    print(f"web chat password set for {account} (rider {rider_id}); {ended} open session(s) "
          f"ended. They log in at {settings.server.public_url.rstrip('/')}/?login as {account}")


def cmd_staff_list(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from core import staff

    settings = _settings(args)

    async def go(session):  # type: ignore[no-untyped-def]
        rows = await session.execute(select(staff.StaffRole).order_by(staff.StaffRole.site_id))
        return list(rows.scalars())

    for r in asyncio.run(_with_session(settings, go)):
        print(f"{r.site_id:<10} {r.role:<11} rider {r.rider_id:<6} {r.hours}  {r.name}")


def cmd_report_monthly(args: argparse.Namespace) -> None:
    from bot.handlers.surveys import text_summary
    from core import reports

    settings = _settings(args)
    try:
        reports.month_bounds(args.month, settings.server.timezone)
    except ValueError as exc:
        raise CliError(f"--month: {exc}") from exc

    async def go(session):  # type: ignore[no-untyped-def]
        return await reports.monthly(session, args.month, settings.server.timezone)

    report = asyncio.run(_with_session(settings, go))
    for path in reports.write(report, Path(args.out)):
        print(path)
    print(text_summary(report, "en"))


def cmd_vouchers_redeem(args: argparse.Namespace) -> None:
    """The merchant side: a voucher code is good once."""

    from core import vouchers

    settings = _settings(args)

    async def go(session):  # type: ignore[no-untyped-def]
        try:
            v = await vouchers.redeem(session, args.code, args.merchant or None,
                                      datetime.now(UTC))
        except vouchers.VoucherError as exc:
            raise CliError(exc.explain()) from None
        return vouchers.redeemed_line(v)

    print(asyncio.run(_with_session(settings, go)))


def cmd_broadcast(args: argparse.Namespace) -> None:
    """Queue a message for the riders' groups (`support.rider_groups`) at a local time, or with
    --riders for every rider in their own chat (one outbox message each, resumable)."""
    from zoneinfo import ZoneInfo

    from core import broadcasts

    settings = _settings(args)
    now = datetime.now(UTC)
    if args.at:
        try:
            at = datetime.strptime(args.at, "%Y-%m-%d %H:%M").replace(
                tzinfo=ZoneInfo(settings.server.timezone))
        except ValueError as exc:
            raise CliError("--at must look like 2031-03-20 19:00 (local time)") from exc
    elif args.riders:
        at = now
    else:
        raise CliError("--at is required for the riders' groups (--riders sends now without it)")
    if not args.zh.strip():
        raise CliError("--zh must not be empty")
    if args.cause and not args.riders:
        raise CliError("--cause goes with --riders")
    if args.riders:
        print(asyncio.run(_broadcast_riders(settings, args, at, now)))
        return

    async def go(session):  # type: ignore[no-untyped-def]
        b = await broadcasts.schedule(session, args.zh, args.en or "", at, kind=args.kind)
        return b.id

    print(f"broadcast {asyncio.run(_with_session(settings, go))} queued for {args.at}")


async def _broadcast_riders(settings: Settings, args: argparse.Namespace, at: datetime,
                            now: datetime) -> str:
    from zoneinfo import ZoneInfo

    from core import broadcasts

    engine = make_engine(settings.database.url)
    try:
        # Without --at the broadcast is "today's": a re-run later the same day resumes it.
        when = args.at or "today " + at.astimezone(
            ZoneInfo(settings.server.timezone)).date().isoformat()
        cause = args.cause or broadcasts.riders_cause(args.zh, args.en or "", when)
        done = await broadcasts.queue_for_riders(
            make_sessionmaker(engine), args.zh, args.en or "", at, cause=cause, now=now)
    except broadcasts.BroadcastError as exc:
        raise CliError(str(exc)) from None
    finally:
        await engine.dispose()
    when = args.at or "now"
    already = done.riders - done.queued
    return (f"broadcast {done.broadcast_id} (cause {done.cause}) to {done.riders} riders, "
            f"{when}: {done.queued} queued" + (f", {already} already queued before" if already
                                               else ""))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chargebot", description="e-bike charging piles via chat")
    ap.add_argument("--database", help="database URL (overrides bot.toml)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port (PostgreSQL)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("demo", help="SQLite + demo city + simulated fleet + web chat")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--speed", type=float, default=60.0, help="simulated time factor")
    p.add_argument("--fault-rate", type=float, default=0.02,
                   help="faults per charging port-hour of virtual time (0 for none)")
    p.set_defaults(fn=cmd_demo)

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate to the latest schema").set_defaults(fn=cmd_db)

    sites = sub.add_parser("sites").add_subparsers(dest="sites_command", required=True)
    p = sites.add_parser("import", help="sites from CSV: id,name,address,lat,lon,kind,tariff")
    p.add_argument("file")
    p.set_defaults(fn=cmd_sites_import)

    pl = sub.add_parser("piles").add_subparsers(dest="piles_command", required=True)
    p = pl.add_parser("add", help="register a pile and print its secret")
    p.add_argument("--site", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--ports", type=int, required=True)
    p.add_argument("--model", default="generic-10")
    p.add_argument("--secret")
    p.set_defaults(fn=cmd_piles_add)
    pl.add_parser("list", help="list piles").set_defaults(fn=cmd_piles_list)
    p = pl.add_parser("qr", help="printable QR signs, one PNG per port")
    p.add_argument("--pile", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_piles_qr)

    p = sub.add_parser("refund", help="staff: refund part of a bill")
    p.add_argument("--charge", type=int, required=True)
    p.add_argument("--fen", type=int, required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--key", help="idempotency key (default: from amount and reason)")
    p.set_defaults(fn=cmd_refund)

    dp = sub.add_parser("disputes").add_subparsers(dest="disputes_command", required=True)
    dp.add_parser("list", help="open and escalated disputes").set_defaults(fn=cmd_disputes)
    p = dp.add_parser("resolve", help="answer a dispute, optionally with a refund")
    p.add_argument("id", type=int)
    p.add_argument("--refund", type=int, default=0, help="fen")
    p.add_argument("--note", required=True)
    p.set_defaults(fn=cmd_disputes)

    cp = sub.add_parser("coupons").add_subparsers(dest="coupons_command", required=True)
    p = cp.add_parser("issue", help="give a rider a coupon")
    p.add_argument("--rider", type=int, required=True)
    p.add_argument("--fen", type=int, default=0)
    p.add_argument("--percent", type=int, default=0)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--reason", default="")
    p.set_defaults(fn=cmd_coupons_issue)

    vp = sub.add_parser("vouchers").add_subparsers(dest="vouchers_command", required=True)
    p = vp.add_parser("redeem", help="merchant side: redeem a partner voucher (once)")
    p.add_argument("code")
    p.add_argument("--merchant", default="", help="the merchant redeeming (checked if given)")
    p.set_defaults(fn=cmd_vouchers_redeem)

    p = sub.add_parser("broadcast", help="a message to the riders' groups at a local time, "
                                         "or with --riders to every rider")
    p.add_argument("--at", help="local time, e.g. '2031-03-20 19:00' (--riders: default now)")
    p.add_argument("--riders", action="store_true",
                   help="every rider in their own chat and language, once each; running the "
                        "same command again resumes it and sends nothing twice")
    p.add_argument("--cause", default="",
                   help="with --riders: a name for this broadcast (default: from the texts and "
                        "time); the same cause is never queued twice for a rider")
    p.add_argument("--zh", required=True, help="the message in Chinese")
    p.add_argument("--en", default="", help="the message in English")
    p.add_argument("--kind", default="notice", choices=["notice", "safety", "maintenance"])
    p.set_defaults(fn=cmd_broadcast)

    rp = sub.add_parser("report").add_subparsers(dest="report_command", required=True)
    p = rp.add_parser("monthly", help="the monthly satisfaction report: CSV and PNG charts")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--out", required=True, help="directory for figures.csv and the charts")
    p.set_defaults(fn=cmd_report_monthly)

    st = sub.add_parser("staff").add_subparsers(dest="staff_command", required=True)
    p = st.add_parser("add", help="make a chat user a technician, supervisor or agent (service)")
    p.add_argument("--platform", required=True,
                   help="telegram | wechat (in the web chat, staff log in: /weblogin or "
                        "staff passwd)")
    p.add_argument("--user", required=True, help="Telegram user id or WeChat openid")
    p.add_argument("--chat", default="", help="chat id if not the user's private chat")
    p.add_argument("--role", required=True, choices=["technician", "supervisor", "agent"])
    p.add_argument("--sites", required=True, help="comma-separated site ids, or *")
    p.add_argument("--hours", default="", help="local on-duty hours, e.g. 08:00-20:00")
    p.add_argument("--name", default="", help="shown to riders, e.g. 王师傅")
    p.set_defaults(fn=cmd_staff_add)
    st.add_parser("list", help="staff and their sites").set_defaults(fn=cmd_staff_list)
    p = st.add_parser("passwd", help="set a staff member's web chat password (argon2); "
                                     "they log in as platform:user")
    p.add_argument("--platform", required=True, help="telegram | wechat")
    p.add_argument("--user", required=True, help="Telegram user id or WeChat openid")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p.set_defaults(fn=cmd_staff_passwd)

    ev = sub.add_parser("events").add_subparsers(dest="events_command", required=True)
    p = ev.add_parser("rejected", help="pile events that were refused, with field and reason")
    p.add_argument("--pile", help="only this pile")
    p.add_argument("--since", help="ISO date/time, or an age: 30m, 2h, 7d")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(fn=cmd_events_rejected)

    wx = sub.add_parser("wechat").add_subparsers(dest="wechat_command", required=True)
    wx.add_parser("menu", help="publish the official account's menu").set_defaults(
        fn=cmd_wechat_menu)

    p = sub.add_parser("simulate", help="run simulated pile controllers against a server")
    p.add_argument("--url", required=True)
    p.add_argument("--piles", type=int, required=True)
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.set_defaults(fn=cmd_simulate)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CHARGEBOT_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: "
                               "%(message)s")
    from bot.logs import RequestIdFilter

    for handler in logging.getLogger().handlers:  # every line has a request id ("-" outside)
        handler.addFilter(RequestIdFilter())
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except CliError as exc:
        print(f"chargebot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
