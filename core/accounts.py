"""One rider across platforms: a one-time code joins a WeChat and a Telegram identity."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import wallet
from core.charging import OPEN_STATES, Charge, due_charges
from core.errors import LinkCodeInvalid, LinkRefused
from core.outbox import OutboxMessage
from core.riders import Identity, LinkCode, Rider

CODE_TTL = timedelta(minutes=10)


async def create_link_code(session: AsyncSession, rider_id: int, now: datetime) -> str:
    for _ in range(10):
        code = f"{secrets.randbelow(1_000_000):06d}"
        if await session.get(LinkCode, code) is None:
            session.add(LinkCode(code=code, rider_id=rider_id, expires_at=now + CODE_TTL))
            await session.flush()
            return code
    raise RuntimeError("no free link code")  # a million codes live at once: not a real case


async def redeem_link_code(session: AsyncSession, code: str, rider: Rider, now: datetime) -> Rider:
    """Move `rider`'s identities, charges and balance to the rider who made the code."""
    link = await session.get(LinkCode, code.strip())
    if link is None or link.used_at is not None or link.expires_at < now:
        raise LinkCodeInvalid()
    if link.rider_id == rider.id:
        raise LinkRefused(reason="same")
    target = await session.get(Rider, link.rider_id)
    if target is None:
        raise LinkCodeInvalid()
    mine = list((await session.execute(
        select(Identity).where(Identity.rider_id == rider.id))).scalars())
    theirs = {i.platform for i in (await session.execute(
        select(Identity).where(Identity.rider_id == target.id))).scalars()}
    if any(i.platform in theirs for i in mine):
        raise LinkRefused(reason="same_platform")
    open_here = await session.scalar(select(Charge.id).where(
        Charge.rider_id == rider.id, Charge.state.in_(OPEN_STATES)).limit(1))
    if open_here is not None or await due_charges(session, rider.id):  # type: ignore[arg-type]
        raise LinkRefused(reason="busy")
    link.used_at = now
    balance = await wallet.balance(session, rider.id)  # type: ignore[arg-type]
    if balance:
        await wallet.post(session, rider.id, "adjustment", -balance, f"link:{code}:out",  # type: ignore[arg-type]
                          memo=f"moved to rider {target.id}")
        await wallet.post(session, target.id, "adjustment", balance, f"link:{code}:in",  # type: ignore[arg-type]
                          memo=f"moved from rider {rider.id}")
    for table in (Identity, Charge, OutboxMessage):
        await session.execute(update(table).where(table.rider_id == rider.id)  # type: ignore[attr-defined]
                              .values(rider_id=target.id))
    target.last_platform = rider.last_platform
    return target
