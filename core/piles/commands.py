"""Commands queued for a pile, handed out in webhook responses and by long poll."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.db import row_id
from core.piles.tables import COMMAND_TYPES, CommandState, PileCommand

PENDING = (CommandState.queued, CommandState.sent)  # not yet acknowledged, failed or expired


def parse_command_id(public_id: str) -> int | None:
    return row_id(public_id[1:]) if public_id.startswith("c") else None


async def queue(
    db: AsyncSession, pile_id: str, type_: str, port: int | None, *,
    now: datetime, charge_id: int | None = None, **args: Any,
) -> PileCommand:
    """`now` is the service's clock (its age decides resends and expiry in `take`)."""
    if type_ not in COMMAND_TYPES:
        raise ValueError(type_)
    cmd = PileCommand(pile_id=pile_id, type=type_, port=port, charge_id=charge_id,
                      args={k: v for k, v in args.items() if v is not None}, created_at=now)
    db.add(cmd)
    await db.flush()
    return cmd


async def take(
    session: AsyncSession, pile_id: str, now: datetime, *, resend_s: float, ttl_s: float,
) -> list[dict[str, Any]]:
    """Commands to hand to the pile now: new ones, and unacknowledged ones due for a resend.

    A resent command keeps its id, so a pile that already ran it just acknowledges again.
    """
    rows = (
        await session.execute(
            select(PileCommand)
            .where(
                col(PileCommand.pile_id) == pile_id,
                or_(
                    col(PileCommand.state) == CommandState.queued,
                    (col(PileCommand.state) == CommandState.sent)
                    & (col(PileCommand.sent_at) < now - timedelta(seconds=resend_s)),
                ),
                col(PileCommand.created_at) >= now - timedelta(seconds=ttl_s),
            )
            .order_by(col(PileCommand.id))
        )
    ).scalars().all()
    for cmd in rows:
        cmd.state = CommandState.sent
        cmd.sent_at = now
    return [cmd.wire() for cmd in rows]


async def piles_with_pending(session: AsyncSession) -> set[str]:
    """Piles that have a command not yet acknowledged, failed or expired."""
    return set((await session.scalars(
        select(col(PileCommand.pile_id)).distinct().where(col(PileCommand.state).in_(PENDING))
    )).all())


async def has_pending(session: AsyncSession, pile_id: str) -> bool:
    found = await session.scalar(
        select(col(PileCommand.id))
        .where(col(PileCommand.pile_id) == pile_id, col(PileCommand.state).in_(PENDING))
        .limit(1)
    )
    return found is not None


async def acknowledge(
    session: AsyncSession, pile_id: str, public_id: str, ok: bool, error: str | None,
    now: datetime,
) -> PileCommand | None:
    cid = parse_command_id(public_id)
    if cid is None:
        return None
    cmd = await session.get(PileCommand, cid)
    if cmd is None or cmd.pile_id != pile_id or cmd.state in (CommandState.acked,
                                                                 CommandState.failed):
        return None
    cmd.state = CommandState.acked if ok else CommandState.failed
    cmd.acked_at = now
    cmd.error = (error or "")[:200] or None
    return cmd


async def expire(session: AsyncSession, now: datetime, ttl_s: float) -> int:
    result = await session.execute(
        update(PileCommand)
        .where(
            col(PileCommand.state).in_(PENDING),
            col(PileCommand.created_at) < now - timedelta(seconds=ttl_s),
        )
        .values(state=CommandState.expired)
    )
    return cast(CursorResult[Any], result).rowcount or 0
