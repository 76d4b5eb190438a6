"""What riders ask: a log of free-text questions, staff-added FAQ entries, the weekly digest.

The FAQ itself (retrieval, the shipped entries) is `core.faq`; this module keeps what changes
with use, in the database, so every worker answers from the same entries.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow
from core.support import faq
from core.support.tables import Ticket, TicketMessage


class QuestionLog(SQLModel, table=True):
    __tablename__ = "question_log"

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id")
    text: str = Field(sa_column=Column(String(500), nullable=False))
    lang: str = Field(max_length=8)
    key: str | None = Field(default=None, max_length=24)  # the FAQ entry answered, if any
    asked_at: datetime = Field(default_factory=utcnow, index=True)


class FaqEntry(SQLModel, table=True):
    """An FAQ entry staff made from a ticket's answer."""

    __tablename__ = "faq_entries"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(String(24), unique=True, nullable=False))
    question: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    answer: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    phrasings: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ticket_id: int | None = None
    created_by: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


class FaqDigest(SQLModel, table=True):
    """The week's most asked topics, newest week first: the menu's top FAQ entries."""

    __tablename__ = "faq_digest"

    id: int | None = Field(default=None, primary_key=True)
    week: str = Field(max_length=10, index=True)  # ISO date of the week's Monday
    rank: int
    key: str | None = Field(default=None, max_length=24)  # None: a gap in the FAQ
    question: str = Field(sa_column=Column(String(500), nullable=False))
    count: int


_cache: dict[str, Any] = {"version": None, "index": None}


async def index(session: AsyncSession) -> faq.Index:
    """The shipped entries plus staff-added ones; rebuilt when the table changes (~ms)."""
    version = tuple((await session.execute(
        select(func.count(), func.max(col(FaqEntry.id))).select_from(FaqEntry))).one())
    built: faq.Index | None = _cache["index"]
    if _cache["version"] != version or built is None:
        rows = (await session.execute(select(FaqEntry).order_by(col(FaqEntry.id)))).scalars()
        extra = [faq.Entry(key=r.key, question=dict(r.question), answer=dict(r.answer),
                           phrasings=tuple(r.phrasings)) for r in rows]
        # Reading the shipped file and tokenizing every entry (jieba) is ~30 ms of CPU: off
        # the event loop.
        built = _cache["index"] = await asyncio.to_thread(_build, extra)
        _cache["version"] = version
    return built


def _build(extra: list[faq.Entry]) -> faq.Index:
    return faq.Index([*faq.load_entries(), *extra])


async def log(session: AsyncSession, rider_id: int, text: str, lang: str, key: str | None,
              now: datetime) -> None:
    session.add(QuestionLog(rider_id=rider_id, text=text[:500], lang=lang, key=key,
                            asked_at=now))


async def last_question(session: AsyncSession, rider_id: int, since: datetime) -> str | None:
    """The rider's latest question since `since`: what "not solved, a person please" hands on."""
    return (await session.execute(
        select(col(QuestionLog.text)).where(col(QuestionLog.rider_id) == rider_id,
                                            col(QuestionLog.asked_at) >= since)
        .order_by(col(QuestionLog.id).desc()).limit(1))).scalar_one_or_none()


async def save_from_ticket(session: AsyncSession, ticket_id: int, question: str, answer: str,
                           lang: str, staff_id: int, now: datetime) -> FaqEntry:
    key = f"t{ticket_id}"
    found = (await session.execute(
        select(FaqEntry).where(col(FaqEntry.key) == key))).scalars().first()
    if found is not None:
        return found
    e = faq.entry_from_ticket(key, question, answer, lang)
    row = FaqEntry(key=key, question=dict(e.question), answer=dict(e.answer),
                   phrasings=list(e.phrasings), ticket_id=ticket_id, created_by=staff_id,
                   created_at=now)
    session.add(row)
    await session.flush()
    return row


def week_of(now: datetime) -> str:
    return (now.date() - timedelta(days=now.weekday())).isoformat()


async def weekly_digest(session: AsyncSession, now: datetime, top: int = 10) -> list[faq.Topic]:
    """Group the last 7 days' questions (and question tickets) into topics; store them."""
    since = now - timedelta(days=7)
    texts = list((await session.execute(select(col(QuestionLog.text)).where(
        col(QuestionLog.asked_at) >= since))).scalars())
    first = (select(func.min(col(TicketMessage.id))).where(col(TicketMessage.author) == "rider")
             .group_by(col(TicketMessage.ticket_id)))
    texts += list((await session.execute(
        select(col(TicketMessage.text))
        .join(Ticket, col(Ticket.id) == col(TicketMessage.ticket_id)).where(
            col(Ticket.created_at) >= since, col(TicketMessage.id).in_(first),
            col(TicketMessage.text) != ""))).scalars())
    # A week of questions is thousands of texts to tokenize and group: in a worker thread.
    topics = await asyncio.to_thread(faq.frequent, texts, top, index=await index(session))
    week = week_of(now)
    if not (await session.execute(
            select(col(FaqDigest.id)).where(col(FaqDigest.week) == week))).first():
        for rank, t in enumerate(topics, 1):
            session.add(FaqDigest(week=week, rank=rank, key=t.key, question=t.question[:500],
                                  count=t.count))
    return topics


async def top_entries(session: AsyncSession, n: int = 5) -> list[faq.Entry]:
    """The FAQ entries riders asked most in the last digest (shipped order when none yet)."""
    idx = await index(session)
    week = (await session.execute(select(func.max(col(FaqDigest.week))))).scalar()
    keys: list[str] = []
    if week:
        keys = [k for (k,) in await session.execute(
            select(col(FaqDigest.key)).where(col(FaqDigest.week) == week,
                                             col(FaqDigest.key).is_not(None))
            .order_by(col(FaqDigest.rank))) if k is not None]
    picked = [e for k in keys if (e := idx.get(k)) is not None]
    rest = [e for e in idx.entries if e not in picked and not e.key.startswith("t")]
    return (picked + rest)[:n]
