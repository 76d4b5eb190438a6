"""`chargebot broadcast`: a message for the riders' groups, or with --riders for every rider."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from bot.cli.common import CliError, settings_for, with_session
from core.config import Settings
from core.db import make_engine, make_sessionmaker, saved_id
from core.engagement import broadcasts


def cmd_broadcast(args: argparse.Namespace) -> None:
    """Queue a message for the riders' groups (`support.rider_groups`) at a local time, or with
    --riders for every rider in their own chat (one outbox message each, resumable)."""

    settings = settings_for(args)
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

    async def go(session: AsyncSession) -> int:
        b = await broadcasts.schedule(session, args.zh, args.en or "", at, kind=args.kind)
        return saved_id(b)

    print(f"broadcast {asyncio.run(with_session(settings, go))} queued for {args.at}")


async def _broadcast_riders(settings: Settings, args: argparse.Namespace, at: datetime,
                            now: datetime) -> str:


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
