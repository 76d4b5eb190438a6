"""Riders' ideas (/suggest): staff adopt the good ones, and the rider charges free for 3 months."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Column, CursorResult, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import AutoString, Field, SQLModel, col

from core import outbox
from core.billing.plans import RiderPlan
from core.db import utcnow
from core.notices.support import SuggestionDecidedNotice

REWARD_DAYS = 90
# Free charging is a plan entry like any other: minutes enough for the whole period.
REWARD_MINUTES = REWARD_DAYS * 24 * 60


class SuggestionState(StrEnum):
    """new → adopted | declined"""

    new = "new"
    adopted = "adopted"
    declined = "declined"


class Suggestion(SQLModel, table=True):
    __tablename__ = "suggestions"

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    text: str = Field(sa_column=Column(String(1000), nullable=False))
    state: SuggestionState = Field(default=SuggestionState.new, sa_type=AutoString(12))
    created_at: datetime = Field(default_factory=utcnow)
    decided_at: datetime | None = None
    decided_by: int | None = None
    plan_id: int | None = None


async def submit(session: AsyncSession, rider_id: int, text: str, now: datetime) -> Suggestion:
    s = Suggestion(rider_id=rider_id, text=text.strip()[:1000], created_at=now)
    session.add(s)
    await session.flush()
    return s


async def pending(session: AsyncSession, limit: int = 10) -> list[Suggestion]:
    rows = await session.execute(select(Suggestion)
                                 .where(col(Suggestion.state) == SuggestionState.new)
                                 .order_by(col(Suggestion.id)).limit(limit))
    return list(rows.scalars())


async def decide(session: AsyncSession, suggestion_id: int, staff_id: int, adopt: bool,
                 now: datetime) -> Suggestion | None:
    """Adopt (3 months of free charging, as a plan) or decline, once; None if already decided."""
    claimed = cast("CursorResult[Any]", await session.execute(
        update(Suggestion).where(col(Suggestion.id) == suggestion_id,
                                 col(Suggestion.state) == SuggestionState.new)
        .values(state=SuggestionState.adopted if adopt else SuggestionState.declined,
                decided_at=now, decided_by=staff_id)
        .execution_options(synchronize_session=False)))
    if claimed.rowcount != 1:
        return None
    s = await session.get(Suggestion, suggestion_id)
    assert s is not None
    await session.refresh(s)
    if adopt:
        plan = RiderPlan(rider_id=s.rider_id, plan="suggestion_reward",
                         minutes_total=REWARD_MINUTES, price_fen=0, starts_at=now,
                         ends_at=now + timedelta(days=REWARD_DAYS), created_at=now)
        session.add(plan)
        await session.flush()
        s.plan_id = plan.id
    await outbox.enqueue(session, s.rider_id,
                         SuggestionDecidedNotice(suggestion_id=s.id, adopted=adopt,
                                                 days=REWARD_DAYS, text=s.text[:120]),
                         f"suggestion:{s.id}", now=now)
    return s
