"""Nudges riders asked for: off-peak reminders for riders who often charge at the evening peak
(DOMAIN.md: the evening peak is 18:00 ± 90 min; night tariffs are cheaper after 22:00)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core import outbox
from core.charging.tables import Charge, ChargeState
from core.notices.engagement import OffpeakReminderNotice
from core.riders.tables import Rider

PEAK = (time(16, 30), time(19, 30))
MIN_PEAK_CHARGES = 3  # in the last 30 days: a habit, not a one-off
WINDOW_DAYS = 30


def at_peak(ts: datetime, tz: str) -> bool:
    local = ts.astimezone(ZoneInfo(tz)).time()
    return PEAK[0] <= local <= PEAK[1]


async def offpeak_reminders(session: AsyncSession, now: datetime, tz: str,
                            discount_percent: int) -> int:
    """Today's reminder (once per rider and day) to opted-in riders with a peak habit."""
    since = now - timedelta(days=WINDOW_DAYS)
    riders = [i for i in (await session.execute(select(col(Rider.id)).where(
        col(Rider.offpeak_reminders).is_(True)))).scalars()
              if i is not None]  # a stored row always has its id
    day = now.astimezone(ZoneInfo(tz)).date().isoformat()
    sent = 0
    for rider_id in riders:
        starts = (await session.execute(select(col(Charge.started_at)).where(
            col(Charge.rider_id) == rider_id, col(Charge.started_at) >= since,
            col(Charge.state).in_((ChargeState.ended, ChargeState.settled))))).scalars().all()
        if sum(1 for ts in starts if ts and at_peak(ts, tz)) < MIN_PEAK_CHARGES:
            continue
        await outbox.enqueue(session, rider_id, OffpeakReminderNotice(percent=discount_percent),
                             f"offpeak:{day}:{rider_id}", now=now)
        sent += 1
    return sent
