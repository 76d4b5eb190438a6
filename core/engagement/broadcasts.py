"""Community broadcasts to riders' groups: scheduled safety tips and maintenance notices, each
sent once (claimed by a conditional update, so two workers never post it twice). A broadcast can
also go to every rider in their own chat: one outbox row per rider, keyed by the broadcast's cause
and the rider, so queueing it again (after a crash, or by mistake) adds nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Column, CursorResult, String, func, literal, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel, col

from core import outbox
from core.db import insert_ignore, saved_id, table_of, transaction
from core.notices.engagement import BroadcastNotice
from core.outbox import OutboxMessage
from core.riders.identities import chat_rider
from core.riders.tables import Identity

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
            col(Broadcast.cause) == cause))).scalars().first()
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
            await outbox.enqueue(session, rid,
                                 BroadcastNotice(zh_CN=b.text_zh, en=b.text_en or b.text_zh),
                                 f"broadcast:{b.id}:{chat}", now=now)
            sent += 1
    return sent


async def claim_due(session: AsyncSession, now: datetime) -> list[Broadcast]:
    """Broadcasts due now, each claimed by this caller only."""
    due = [b.id for b in (await session.execute(select(Broadcast).where(
        col(Broadcast.sent_at).is_(None), col(Broadcast.send_at) <= now,
        col(Broadcast.send_at) >= now - timedelta(days=2)))).scalars()]
    claimed = []
    for bid in due:
        # An UPDATE's result is a CursorResult (SQLAlchemy's stubs say only Result): rowcount.
        result = cast(CursorResult[Any], await session.execute(
            update(Broadcast).where(col(Broadcast.id) == bid, col(Broadcast.sent_at).is_(None))
            .values(sent_at=now).execution_options(synchronize_session=False)))
        if result.rowcount == 1:
            b = await session.get(Broadcast, bid)
            assert b is not None
            await session.refresh(b)
            claimed.append(b)
    return claimed


# Rider broadcasts are recorded with this cause prefix and sent_at already set, so the group
# sweep (claim_due) never posts them to the riders' groups as well.
RIDERS_CAUSE = "riders:"


class BroadcastError(ValueError):
    pass


@dataclass
class RidersQueued:
    broadcast_id: int
    cause: str
    queued: int  # rows added by this call; 0 when every rider already had it
    riders: int  # riders the broadcast is for


def riders_cause(text_zh: str, text_en: str, when: str) -> str:
    """A stable cause for a command line without --cause: the same texts for the same `when`
    (the --at given, or today's date) are the same broadcast, so re-running the command
    resumes it instead of sending it again."""
    digest = hashlib.sha256(f"{when}\n{text_zh.strip()}\n{text_en.strip()}".encode())
    return digest.hexdigest()[:20]


async def queue_for_riders(
    sm: async_sessionmaker[AsyncSession], text_zh: str, text_en: str, send_at: datetime, *,
    cause: str | None = None, now: datetime, chunk: int = 5000,
) -> RidersQueued:
    """One outbox message per rider (not group chats), due at `send_at`, in the rider's
    language when the notifier renders it. Rows go in with one INSERT … SELECT per `chunk`
    riders, each chunk its own transaction: a stop half-way keeps what was queued and the
    next run adds only the rest (the dedupe key is per cause and rider)."""
    # Long because the INSERT … SELECT is one statement built inline: its columns and the
    # per-rider dedupe key must stay side by side to be checked against the outbox table.
    text_zh, text_en = text_zh.strip(), text_en.strip()
    if not text_zh:
        raise BroadcastError("the Chinese text must not be empty")
    if len(text_zh) > 1000 or len(text_en) > 1000:
        raise BroadcastError("a broadcast is at most 1000 characters per language")
    cause = cause or riders_cause(text_zh, text_en, send_at.isoformat())
    if len(cause) > 80 - len(RIDERS_CAUSE):
        raise BroadcastError("the cause is at most 72 characters")
    async with transaction(sm) as session:
        b = (await session.execute(select(Broadcast).where(
            col(Broadcast.cause) == RIDERS_CAUSE + cause))).scalars().first()
        if b is None:
            b = Broadcast(kind="notice", text_zh=text_zh, text_en=text_en, send_at=send_at,
                          sent_at=now, cause=RIDERS_CAUSE + cause)
            session.add(b)
            await session.flush()
        elif (b.text_zh, b.text_en) != (text_zh, text_en):
            raise BroadcastError(f"cause {cause!r} was already used for a different message")
        bid, send_at = saved_id(b), b.send_at
    notice = BroadcastNotice(zh_CN=text_zh, en=text_en or text_zh)
    payload = notice.to_payload()
    prefix = f"broadcast:{RIDERS_CAUSE}{bid}:"
    # Riders, not the group chats that are outbox recipients too (external id "chat:…").
    rid = col(Identity.rider_id)
    riders = select(rid).where(~col(Identity.external_id).like("chat:%")).group_by(rid)
    queued = total = 0
    last = 0
    while True:
        async with sm() as session:
            ids = list((await session.execute(
                riders.where(rid > last).order_by(rid).limit(chunk)
            )).scalars())
        if not ids:
            break
        total += len(ids)
        async with transaction(sm) as session:
            dialect = session.get_bind().dialect.name
            outbox_table = table_of(OutboxMessage)
            out = outbox_table.c
            # Bound with the columns' own types: SQLite compares stored times as text, so they
            # must be written exactly as the ORM writes them.
            rows = (
                select(
                    rid, literal(notice.kind), literal(payload, out.payload.type),
                    literal(prefix) + sql_cast(rid, String), literal("pending"), literal(0),
                    literal(send_at, out.due_at.type), literal(now, out.created_at.type),
                )
                .where(rid >= ids[0], rid <= ids[-1], ~col(Identity.external_id).like("chat:%"))
                .group_by(rid)
            )
            # An INSERT's result is a CursorResult (SQLAlchemy's stubs say only Result).
            result = cast(CursorResult[Any], await session.execute(
                insert_ignore(dialect, outbox_table).from_select(
                    ["rider_id", "kind", "payload", "dedupe_key", "state", "attempts",
                     "due_at", "created_at"], rows)))
            queued += max(0, result.rowcount or 0)
        last = ids[-1]
    return RidersQueued(bid, cause, queued, total)


async def riders_progress(session: AsyncSession, broadcast_id: int) -> dict[str, int]:
    """How a rider broadcast is going: outbox rows by state."""
    prefix = f"broadcast:{RIDERS_CAUSE}{broadcast_id}:"
    rows = await session.execute(
        select(col(OutboxMessage.state), func.count()).where(
            col(OutboxMessage.dedupe_key).like(prefix + "%")).group_by(col(OutboxMessage.state)))
    return {state: n for state, n in rows.all()}
