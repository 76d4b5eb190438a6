"""`chargebot staff add|list|passwd`: technicians, supervisors and agents."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.cli.common import CliError, settings_for, with_session
from core.db import saved_id
from core.piles.tables import Site
from core.riders import staff, staff_passwords, web_sessions
from core.riders.identities import rider_for
from core.riders.tables import PLATFORMS


def cmd_staff_add(args: argparse.Namespace) -> None:
    """A technician or supervisor is a chat user with a role: found (or created, so a work
    order can reach them before they ever wrote) by platform and user id."""

    settings = settings_for(args)
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

    async def go(session: AsyncSession) -> int:
        for site in sites:
            if site != staff.ALL_SITES and await session.get(Site, site) is None:
                raise CliError(f"unknown site {site}")
        rider = await rider_for(session, args.platform, args.user, chat_id=args.chat or None,
                                display_name=args.name or "")
        rider_id = saved_id(rider)
        for site in sites:
            await staff.add(session, rider_id, args.role, site,
                            hours=args.hours or settings.maintenance.default_hours,
                            name=args.name or "")
        return rider_id

    rider_id = asyncio.run(with_session(settings, go))
    print(f"{args.role} {args.name or args.user} (rider {rider_id}) at {', '.join(sites)}")


def cmd_staff_passwd(args: argparse.Namespace) -> None:
    """A staff member's web-chat password (argon2id); their open web sessions end."""
    settings = settings_for(args)
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

    async def go(session: AsyncSession) -> tuple[int, int]:
        rider_id = await staff_passwords.staff_rider(session, args.platform, args.user)
        if rider_id is None:
            raise CliError(f"{account} is not staff: add them first (chargebot staff add)")
        now = datetime.now(UTC)
        await staff_passwords.set_password(session, rider_id, password, now)
        return rider_id, await web_sessions.end_all(session, rider_id, now)

    rider_id, ended = asyncio.run(with_session(settings, go))
    print(f"web chat password set for {account} (rider {rider_id}); {ended} open session(s) "
          f"ended. They log in at {settings.server.public_url.rstrip('/')}/?login as {account}")


def cmd_staff_list(args: argparse.Namespace) -> None:
    settings = settings_for(args)

    async def go(session: AsyncSession) -> list[staff.StaffRole]:
        rows = await session.execute(
            select(staff.StaffRole).order_by(col(staff.StaffRole.site_id)))
        return list(rows.scalars())

    for r in asyncio.run(with_session(settings, go)):
        print(f"{r.site_id:<10} {r.role:<11} rider {r.rider_id:<6} {r.hours}  {r.name}")
