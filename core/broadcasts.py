"""Community broadcasts to riders' groups: scheduled safety tips and maintenance notices, each
sent once (claimed by a conditional update, so two workers never post it twice)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Column, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from core import outbox
from core.riders import chat_rider

# Rotating weekly safety tips (fire-safety guidance for e-bike charging in residential areas).
SAFETY_TIPS = [
    ("充电别超过 8 小时，充满自动断电后请及时拔插头。",
     "Don't charge longer than 8 hours; unplug once it has stopped when full."),
    ("不要把电瓶带进楼道或家里充电，请到充电桩充。",
     "Never charge your battery indoors or in stairwells: use the charging piles."),
    ("电池鼓包、外壳破损、有焦味时停止使用，并联系客服。",
     "A swollen, cracked or burnt-smelling battery must not be charged: contact us."),
    ("使用原装或合格充电器，不要私自改装电瓶和线路。",
     "Use the original or a certified charger; never modify the battery or wiring."),
]


class Broadcast(SQLModel, table=True):
    __tablename__ = "broadcasts"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(default="safety", max_length=16)  # safety | maintenance | notice
    text_zh: str = Field(sa_column=Column(String(1000), nullable=False))
    text_en: str = Field(default="", sa_column=Column(String(1000), nullable=False, default=""))
    send_at: datetime
    sent_at: datetime | None = None
    cause: str | None = Field(default=None, sa_column=Column(String(80), unique=True))


async def schedule(session: AsyncSession, text_zh: str, text_en: str, send_at: datetime, *,
                   kind: str = "notice", cause: str | None = None) -> Broadcast:
    """Queue a broadcast; with `cause`, once per cause (e.g. one notice per planned visit)."""
    if cause is not None:
        found = (await session.execute(select(Broadcast).where(
            Broadcast.cause == cause))).scalars().first()
        if found is not None:
            return found
    b = Broadcast(kind=kind, text_zh=text_zh[:1000], text_en=text_en[:1000], send_at=send_at,
                  cause=cause)
    session.add(b)
    await session.flush()
    return b


async def weekly_tip(session: AsyncSession, now: datetime) -> Broadcast:
    """This ISO week's safety tip, queued once."""
    year, week, _ = now.isocalendar()
    zh, en = SAFETY_TIPS[week % len(SAFETY_TIPS)]
    return await schedule(session, "🛡 " + zh, "🛡 " + en, now, kind="safety",
                          cause=f"tip:{year}-W{week:02d}")


async def send_due(session: AsyncSession, now: datetime, groups: list[int]) -> int:
    """Claim the due broadcasts and queue each for every riders' group, in this transaction:
    the notifier delivers them (retries, Telegram's per-group limits), once per group."""
    sent = 0
    for b in await claim_due(session, now):
        for chat in groups:
            rid = await chat_rider(session, "telegram", chat, "riders' group", "zh_CN")
            await outbox.enqueue(session, rid, "broadcast",
                                 {"zh_CN": b.text_zh, "en": b.text_en or b.text_zh},
                                 f"broadcast:{b.id}:{chat}", now=now)
            sent += 1
    return sent


async def claim_due(session: AsyncSession, now: datetime) -> list[Broadcast]:
    """Broadcasts due now, each claimed by this caller only."""
    due = [b.id for b in (await session.execute(select(Broadcast).where(
        Broadcast.sent_at.is_(None), Broadcast.send_at <= now,
        Broadcast.send_at >= now - timedelta(days=2)))).scalars()]
    claimed = []
    for bid in due:
        result = await session.execute(
            update(Broadcast).where(Broadcast.id == bid, Broadcast.sent_at.is_(None))
            .values(sent_at=now).execution_options(synchronize_session=False))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            b = await session.get(Broadcast, bid)
            assert b is not None
            await session.refresh(b)
            claimed.append(b)
    return claimed
