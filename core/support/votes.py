"""The monthly "best pile" vote: one vote per rider per month (changeable until it closes), cast
in chat or in a rider group's native Telegram poll; the winner is recorded for the site's staff."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core import outbox
from core.db import utcnow
from core.notices.support import BestPileNotice
from core.piles.tables import Site
from core.riders import staff
from core.support.reviews import SiteReview

MAX_OPTIONS = 10  # Telegram polls take at most 10 options


class VotePoll(SQLModel, table=True):
    """A native poll posted in a rider group: which option is which site."""

    __tablename__ = "vote_polls"

    id: int | None = Field(default=None, primary_key=True)
    month: str = Field(max_length=7, index=True)
    chat_id: str = Field(max_length=32)
    poll_id: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    sites: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Vote(SQLModel, table=True):
    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("month", "rider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    month: str = Field(max_length=7)
    rider_id: int = Field(foreign_key="riders.id")
    site_id: str = Field(max_length=32)
    voted_at: datetime = Field(default_factory=utcnow)


class BestPile(SQLModel, table=True):
    __tablename__ = "best_piles"

    id: int | None = Field(default=None, primary_key=True)
    month: str = Field(sa_column=Column(String(7), unique=True, nullable=False))
    site_id: str = Field(max_length=32)
    votes: int
    recorded_at: datetime = Field(default_factory=utcnow)


def month_of(now: datetime) -> str:
    return now.strftime("%Y-%m")


async def candidates(session: AsyncSession, limit: int = MAX_OPTIONS) -> list[Site]:
    """The best-reviewed sites first (then by id), as many as a poll can hold."""
    avg = func.coalesce(func.avg(col(SiteReview.stars)), 0)
    rows = await session.execute(
        select(Site).outerjoin(SiteReview, col(SiteReview.site_id) == col(Site.id))
        .group_by(col(Site.id)).order_by(avg.desc(), col(Site.id)).limit(limit))
    return list(rows.scalars())


async def cast(session: AsyncSession, month: str, rider_id: int, site_id: str,
               now: datetime) -> bool:
    """Record (or change) the rider's vote; False when the month is closed or the site unknown."""
    if await winner(session, month) is not None or await session.get(Site, site_id) is None:
        return False
    found = (await session.execute(select(Vote).where(
        col(Vote.month) == month, col(Vote.rider_id) == rider_id))).scalars().first()
    if found is None:
        try:
            async with session.begin_nested():
                session.add(Vote(month=month, rider_id=rider_id, site_id=site_id, voted_at=now))
                await session.flush()
            return True
        except IntegrityError:  # the same rider's second tap raced the first
            found = (await session.execute(select(Vote).where(
                col(Vote.month) == month, col(Vote.rider_id) == rider_id))).scalars().one()
    found.site_id, found.voted_at = site_id, now
    return True


async def poll_answer(session: AsyncSession, poll_id: str, rider_id: int, options: list[int],
                      now: datetime) -> bool:
    poll = (await session.execute(select(VotePoll).where(
        col(VotePoll.poll_id) == poll_id))).scalars().first()
    if poll is None or not options or not 0 <= options[0] < len(poll.sites):
        return False  # a retracted vote (no options) keeps the last one
    return await cast(session, poll.month, rider_id, poll.sites[options[0]], now)


async def winner(session: AsyncSession, month: str) -> BestPile | None:
    return (await session.execute(select(BestPile).where(
        col(BestPile.month) == month))).scalars().first()


async def close(session: AsyncSession, month: str, now: datetime) -> BestPile | None:
    """Count the month's votes once and tell the winning site's staff; None without votes."""
    if (done := await winner(session, month)) is not None:
        return done
    counts = list(await session.execute(
        select(col(Vote.site_id), func.count()).where(col(Vote.month) == month)
        .group_by(col(Vote.site_id)).order_by(func.count().desc(), col(Vote.site_id))))
    if not counts:
        return None
    site_id, n = counts[0]
    best = BestPile(month=month, site_id=site_id, votes=int(n), recorded_at=now)
    try:
        async with session.begin_nested():
            session.add(best)
            await session.flush()
    except IntegrityError:
        return await winner(session, month)
    site = await session.get(Site, site_id)
    info = BestPileNotice(month=month, site=site.name if site else site_id, votes=int(n))
    people = {r.rider_id for role in ("technician", "supervisor")
              for r in await staff.for_site(session, site_id, role)}
    for rid in sorted(people):
        await outbox.enqueue(session, rid, info, f"best_pile:{month}:{rid}",
                             now=now)
    return best
