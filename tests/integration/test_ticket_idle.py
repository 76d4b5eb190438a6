"""Conversations nobody wrote in for `support.idle_close_h` close themselves, with a note to the
rider (issue 18 finding 1); emergencies never do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import transaction
from core.outbox import OutboxMessage
from core.riders.tables import Rider
from core.support import tickets
from core.support.tables import Ticket

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


async def _ticket(s: AsyncSession, name: str, kind: str, at: datetime) -> Ticket:
    rider = Rider(display_name=name)
    s.add(rider)
    await s.flush()
    ticket, _ = await tickets.open_ticket(s, rider, kind=kind, now=at, text=f"{name} asks")
    return ticket


async def test_idle_conversations_close_with_a_note_and_emergencies_stay(
        sm: async_sessionmaker[AsyncSession]) -> None:
    async with transaction(sm) as s:
        quiet = await _ticket(s, "quiet", "question", T0)
        answered = await _ticket(s, "answered", "question", T0)
        await tickets.add_message(s, answered, "staff", 1, "we are on it", None,
                                  T0 + timedelta(hours=20))
        sos = await _ticket(s, "sos", "emergency", T0)
        ids = (quiet.id, answered.id, sos.id)
    async with transaction(sm) as s:
        assert await tickets.close_idle(s, T0 + timedelta(hours=23), 24) == []
    async with transaction(sm) as s:
        assert await tickets.close_idle(s, T0 + timedelta(hours=25), 24) == [ids[0]]
    async with transaction(sm) as s:
        assert await tickets.close_idle(s, T0 + timedelta(hours=45), 24) == [ids[1]]
        assert await tickets.close_idle(s, T0 + timedelta(days=30), 0) == []  # 0: never
    async with sm() as s:
        states = {t.id: t.state for t in (await s.execute(select(Ticket))).scalars()}
        notes = [(m.payload["ticket_id"], m.payload["hours"]) for m in (await s.execute(
            select(OutboxMessage).where(OutboxMessage.kind == "ticket_idle_closed")
            .order_by(OutboxMessage.id))).scalars()]
    assert states == {ids[0]: "closed", ids[1]: "closed", ids[2]: "open"}
    assert notes == [(ids[0], 24), (ids[1], 24)]
    async with transaction(sm) as s:  # a second sweep changes nothing
        assert await tickets.close_idle(s, T0 + timedelta(days=3), 24) == []
