"""`chargebot events rejected`: what piles sent that we refused."""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.cli.common import CliError, settings_for, with_session
from core.db import aware, utcnow
from core.piles.tables import RejectedEvent

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
    settings = settings_for(args)
    stmt = select(RejectedEvent).order_by(col(RejectedEvent.received_at), col(RejectedEvent.id))
    if args.pile:
        stmt = stmt.where(col(RejectedEvent.pile_id) == args.pile)
    if args.since:
        stmt = stmt.where(col(RejectedEvent.received_at) >= _since(args.since, utcnow()))
    stmt = stmt.limit(args.limit)

    async def load(session: AsyncSession) -> list[RejectedEvent]:
        return list((await session.execute(stmt)).scalars())

    rows = asyncio.run(with_session(settings, load))
    if not rows:
        print("no rejected events" + (f" for pile {args.pile}" if args.pile else ""))
        return
    print("received_at\tpile\tindex\tid\tfield\terror\traw")
    for r in rows:
        print(f"{aware(r.received_at).isoformat(timespec='seconds')}\t{r.pile_id}\t{r.position}"
              f"\t{r.event_id or '-'}\t{r.field}\t{r.error}\t{r.raw}")
