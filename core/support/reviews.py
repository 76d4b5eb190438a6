"""Riders rate a site after a charge (stars, tags, a few words, a photo); port cards show it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import Column, String, UniqueConstraint, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow

TAGS = ("fast", "easy_to_find", "clean", "safe", "good_price", "slow", "hard_to_find", "dirty")


class SiteReview(SQLModel, table=True):
    __tablename__ = "site_reviews"
    __table_args__ = (UniqueConstraint("charge_id"),)  # one review per charge

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    site_id: str = Field(max_length=32, index=True)
    charge_id: int = Field(foreign_key="charges.id")
    stars: int
    tags: str = ""  # comma-separated TAGS
    text: str = Field(default="", sa_column=Column(String(500), nullable=False, default=""))
    photo: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


async def rate(session: AsyncSession, rider_id: int, charge_id: int, site_id: str, stars: int,
               now: datetime) -> SiteReview:
    """The rider's review of this charge's site; rating again changes the stars."""
    found = (await session.execute(select(SiteReview).where(
        col(SiteReview.charge_id) == charge_id))).scalars().first()
    if found is None:
        found = SiteReview(rider_id=rider_id, site_id=site_id, charge_id=charge_id,
                           stars=stars, created_at=now)
        session.add(found)
    found.stars = stars
    await session.flush()
    return found


def toggle_tag(review: SiteReview, tag: str) -> None:
    if tag not in TAGS:
        return
    tags = [t for t in review.tags.split(",") if t]
    tags = [t for t in tags if t != tag] if tag in tags else [*tags, tag]
    review.tags = ",".join(tags)


async def summary(session: AsyncSession, site_id: str, top: int = 2
                  ) -> tuple[float | None, int, list[str]]:
    """(average stars, reviews, most given tags) for a port card."""
    avg, n = (await session.execute(select(func.avg(col(SiteReview.stars)), func.count()).where(
        col(SiteReview.site_id) == site_id))).one()
    if not n:
        return None, 0, []
    counts: Counter[str] = Counter()
    for (tags,) in await session.execute(select(col(SiteReview.tags)).where(
            col(SiteReview.site_id) == site_id, col(SiteReview.tags) != "")):
        counts.update(t for t in tags.split(",") if t)
    return float(avg), int(n), [t for t, _ in counts.most_common(top)]
