"""Holiday care: a festival greeting with a small red packet (红包) for riders who charge with us.

Exactly once per rider per festival, however often the job is started, crashed or run by two
workers at once:
- a `red_packets` row per (campaign, rider) is the claim: a batch inserts its rows with
  `ON CONFLICT DO NOTHING RETURNING rider_id` and credits and greets only the riders it returned;
- the ledger entry (`redpacket:{campaign}:{rider}`) and the outbox greeting (same dedupe key) are
  written in the same transaction as the claim, so a crash rolls back all three together;
- the campaign row is locked for each batch (`FOR UPDATE` on PostgreSQL, the writer lock on
  SQLite) and carries the cursor, the last rider id done: a second worker waits for the batch in
  flight and then continues after it, and a restarted job resumes where the last commit left it.

Which festivals: the first day of Spring Festival, Dragon Boat, Mid-Autumn, National Day, Labor
Day and New Year's Day from the `holidays` package. Tomb-Sweeping Day (清明) is for mourning
ancestors and gets no festive greeting; Spring Festival's Eve and the extra days off are not
festivals of their own. When two festivals fall on one day (Mid-Autumn on 1 October 2020) the
rider gets one greeting, for the festival earlier in `GREETED`.

Eligibility is fixed by the festival day, not by when the job runs (so a rerun cannot change who
is in): a charge ended in the `active_days` before the festival day began (local time), and at
least one chat identity to greet on.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import holidays
from sqlalchemy import (
    JSON,
    Column,
    ForeignKey,
    String,
    UniqueConstraint,
    exists,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel, col

from core.billing.wallet import ENTRY_KINDS, LedgerEntry
from core.charging.tables import Charge
from core.db import insert_ignore, table_of, transaction, utcnow
from core.notices.engagement import RedPacketNotice
from core.outbox import OutboxMessage, OutboxState
from core.riders.tables import PLATFORMS, Identity, Rider

# Holiday names as the `holidays` package spells them in en_US → our festival slugs (the i18n
# keys for the greeting). Order is priority when two fall on one day.
GREETED: dict[str, str] = {
    "Chinese New Year (Spring Festival)": "spring_festival",
    "Mid-Autumn Festival": "mid_autumn",
    "Dragon Boat Festival": "dragon_boat",
    "National Day": "national_day",
    "Labor Day": "labor_day",
    "New Year's Day": "new_year",
}

# ¥1–2, with the lucky numbers riders expect in a 红包 (1.28, 1.66, 1.68, 1.88).
DEFAULT_AMOUNTS_FEN: tuple[int, ...] = (100, 128, 166, 168, 188, 200)

KIND = "red_packet"  # ledger entry kind and outbox message kind
assert KIND in ENTRY_KINDS and RedPacketNotice.kind == KIND


@dataclass(frozen=True)
class Festival:
    slug: str
    name: str  # the holiday's English name in the `holidays` package
    day: date

    @property
    def key(self) -> str:
        return f"{self.slug}-{self.day.year}"


class RedPacketCampaign(SQLModel, table=True):
    __tablename__ = "red_packet_campaigns"

    key: str = Field(primary_key=True, max_length=48)  # spring_festival-2027
    festival: str = Field(max_length=32)  # the slug: what the greeting is rendered for
    day: date
    # Frozen when the campaign is created, so a config change mid-run cannot change amounts.
    amounts_fen: list[int] = Field(sa_column=Column(JSON, nullable=False))
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    cursor: int = 0  # the last rider id processed and committed


class RedPacket(SQLModel, table=True):
    __tablename__ = "red_packets"
    __table_args__ = (UniqueConstraint("campaign_key", "rider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_key: str = Field(sa_column=Column(
        String(48), ForeignKey("red_packet_campaigns.key"), nullable=False))
    rider_id: int = Field(foreign_key="riders.id", index=True)
    amount_fen: int
    created_at: datetime = Field(default_factory=utcnow)


@dataclass
class RunStats:
    campaign: str
    batches: int = 0
    credited: int = 0  # riders this run credited and greeted
    skipped: int = 0  # eligible riders another run had already done
    finished: bool = False
    cursor: int = 0


class UnknownCampaign(LookupError):
    pass


@lru_cache(maxsize=8)
def _festivals(year: int) -> tuple[Festival, ...]:
    by_day: dict[date, Festival] = {}
    seen: set[str] = set()
    rank = list(GREETED.values())
    for day, names in sorted(holidays.country_holidays("CN", years=year, language="en_US")
                             .items()):
        for name in names.split("; "):
            slug = GREETED.get(name)
            if slug is None or slug in seen:
                continue  # not greeted, or not the festival's first day
            seen.add(slug)
            other = by_day.get(day)
            if other is None or rank.index(slug) < rank.index(other.slug):
                by_day[day] = Festival(slug, name, day)
    return tuple(by_day[d] for d in sorted(by_day))


def festivals(year: int) -> list[Festival]:
    """The festivals greeted in `year`, one per day, in date order."""
    return list(_festivals(year))


def amount_for(campaign_key: str, rider_id: int, amounts_fen: Sequence[int]) -> int:
    """Deterministic per rider and festival (crc32, not `hash`, which changes per process)."""
    return amounts_fen[zlib.crc32(f"{campaign_key}:{rider_id}".encode()) % len(amounts_fen)]


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def greeting_due(day: date, now: datetime, *, tz: str, greet_at_local: str = "10:00",
                 quiet_after_local: str = "21:00") -> datetime:
    """When the greeting should go out: the festival morning, or now if that has passed — but
    never in the late evening or small hours (a resumed run waits for the next morning)."""
    zone = ZoneInfo(tz)
    greet, quiet = _hhmm(greet_at_local), _hhmm(quiet_after_local)
    planned = datetime.combine(day, greet, zone)
    if now <= planned:
        return planned.astimezone(UTC)
    local = now.astimezone(zone)
    if greet <= local.time() < quiet:
        return now
    morning = local.date() if local.time() < greet else local.date() + timedelta(days=1)
    return datetime.combine(morning, greet, zone).astimezone(UTC)


def active_window(day: date, *, tz: str, active_days: int) -> tuple[datetime, datetime]:
    """[start, end) in UTC: the `active_days` before the festival day began, local time."""
    end = datetime.combine(day, time(0), ZoneInfo(tz)).astimezone(UTC)
    return end - timedelta(days=active_days), end


def eligible_riders(since: datetime, until: datetime) -> Any:
    """Riders with a charge ended in [since, until) and a chat identity to greet them on."""
    charged = exists().where(col(Charge.rider_id) == col(Rider.id),
                             col(Charge.ended_at) >= since, col(Charge.ended_at) < until)
    reachable = exists().where(col(Identity.rider_id) == col(Rider.id),
                               col(Identity.platform).in_(PLATFORMS))
    return select(col(Rider.id)).where(charged, reachable)


async def create_campaign(session: AsyncSession, festival: Festival, *, now: datetime,
                          amounts_fen: Sequence[int] = DEFAULT_AMOUNTS_FEN) -> str:
    """The campaign row for a festival; creating it twice (two schedulers) is harmless."""
    if not amounts_fen or any(not 100 <= a <= 200 for a in amounts_fen):
        raise ValueError("red packet amounts must be ¥1–2 (100–200 fen)")
    dialect = session.get_bind().dialect.name
    await session.execute(insert_ignore(dialect, table_of(RedPacketCampaign)).values(
        key=festival.key, festival=festival.slug, day=festival.day,
        amounts_fen=list(amounts_fen), started_at=now, cursor=0,
    ))
    return festival.key


async def due_campaigns(session: AsyncSession, today: date, *, now: datetime,
                        amounts_fen: Sequence[int] = DEFAULT_AMOUNTS_FEN,
                        resume_days: int = 2) -> list[str]:
    """Campaigns a daily job should run on `today` (the local date): today's festival, created
    here if needed, and any campaign of the last `resume_days` days a crash left unfinished.
    A festival the job missed entirely is not started late: a Mid-Autumn greeting on the
    next day is worse than none."""
    for festival in festivals(today.year):
        if festival.day == today:
            await create_campaign(session, festival, now=now, amounts_fen=amounts_fen)
    rows = await session.execute(
        select(col(RedPacketCampaign.key)).where(
            col(RedPacketCampaign.finished_at).is_(None),
            col(RedPacketCampaign.day) >= today - timedelta(days=resume_days),
            col(RedPacketCampaign.day) <= today,
        ).order_by(col(RedPacketCampaign.day), col(RedPacketCampaign.key))
    )
    return list(rows.scalars())


async def run(
    sm: async_sessionmaker[AsyncSession], campaign_key: str, *, now: datetime, batch: int = 500,
    greet_at_local: str = "10:00", quiet_after_local: str = "21:00", tz: str = "Asia/Shanghai",
    active_days: int = 90, pause_s: float = 0.1,
) -> RunStats:
    """Credit and greet every eligible rider once, a batch per transaction, until done."""
    stats = RunStats(campaign_key)
    while True:
        async with transaction(sm) as session:
            await _batch(session, stats, now=now, batch=batch, greet_at_local=greet_at_local,
                         quiet_after_local=quiet_after_local, tz=tz, active_days=active_days)
        if stats.finished:
            return stats
        # SQLite's busy handler is not fair: without a gap, back-to-back batches could keep
        # riders' own writes (and a second worker) waiting past busy_timeout.
        await asyncio.sleep(pause_s)


async def _batch(session: AsyncSession, stats: RunStats, *, now: datetime, batch: int,
                 greet_at_local: str, quiet_after_local: str, tz: str, active_days: int) -> None:
    # The lock makes a second worker wait for this batch and then read the cursor it leaves.
    campaign = (await session.execute(
        select(RedPacketCampaign).where(col(RedPacketCampaign.key) == stats.campaign)
        .with_for_update()
    )).scalars().first()
    if campaign is None:
        raise UnknownCampaign(stats.campaign)
    stats.cursor = campaign.cursor
    if campaign.finished_at is not None:
        stats.finished = True
        return
    since, until = active_window(campaign.day, tz=tz, active_days=active_days)
    ids = list((await session.execute(
        eligible_riders(since, until).where(col(Rider.id) > campaign.cursor)
        .order_by(col(Rider.id)).limit(batch)
    )).scalars())
    if not ids:
        campaign.finished_at = now
        stats.finished = True
        return
    stats.batches += 1
    amounts = {rid: amount_for(campaign.key, rid, campaign.amounts_fen) for rid in ids}
    dialect = session.get_bind().dialect.name
    packets = table_of(RedPacket)
    claimed = set((await session.execute(
        insert_ignore(dialect, packets).values([
            {"campaign_key": campaign.key, "rider_id": rid, "amount_fen": amounts[rid],
             "created_at": now} for rid in ids
        ]).returning(packets.c.rider_id)
    )).scalars())
    due_at = greeting_due(campaign.day, now, tz=tz, greet_at_local=greet_at_local,
                          quiet_after_local=quiet_after_local)
    fresh = [rid for rid in ids if rid in claimed]
    stats.skipped += len(ids) - len(fresh)
    if fresh:
        keys = {rid: f"redpacket:{campaign.key}:{rid}" for rid in fresh}
        balances = await _credit(session, keys, amounts, memo=campaign.festival, now=now)
        await session.execute(insert_ignore(dialect, table_of(OutboxMessage)).values([
            {"rider_id": rid, "kind": RedPacketNotice.kind, "dedupe_key": keys[rid],
             "state": OutboxState.pending, "attempts": 0, "due_at": due_at, "created_at": now,
             "payload": RedPacketNotice(festival=campaign.festival, campaign=campaign.key,
                                        amount_fen=amounts[rid],
                                        balance_fen=balances[rid]).to_payload()}
            for rid in fresh
        ]))
        stats.credited += len(fresh)
    campaign.cursor = ids[-1]
    stats.cursor = ids[-1]


async def _credit(session: AsyncSession, keys: dict[int, str], amounts: dict[int, int], *,
                  memo: str, now: datetime) -> dict[int, int]:
    """`wallet.post` for a batch of credits: the same rules (an entry per movement, the balance
    cache changed in the same transaction, a replayed key moves nothing) in a handful of
    statements instead of four per rider — 5,000 riders take seconds, not minutes.
    Returns each rider's balance after the credit."""
    found: dict[str, int] = dict((await session.execute(
        select(col(LedgerEntry.idempotency_key), col(LedgerEntry.balance_after_fen))
        .where(col(LedgerEntry.idempotency_key).in_(list(keys.values())))
    )).all())
    balances = {rid: found[key] for rid, key in keys.items() if key in found}
    by_amount: dict[int, list[int]] = defaultdict(list)
    for rid in keys:
        if rid not in balances:
            by_amount[amounts[rid]].append(rid)
    riders = table_of(Rider)
    for amount, group in sorted(by_amount.items()):
        rows = await session.execute(
            update(riders).where(riders.c.id.in_(group))
            .values(balance_fen=riders.c.balance_fen + amount)
            .returning(riders.c.id, riders.c.balance_fen)
        )
        balances.update(rows.all())
    new = [
        {"rider_id": rid, "kind": KIND, "amount_fen": amounts[rid],
         "balance_after_fen": balances[rid], "idempotency_key": key, "charge_id": None,
         "memo": memo, "created_at": now}
        for rid, key in keys.items() if key not in found
    ]
    if new:
        # A race on a key fails the unique constraint and the whole batch with it.
        await session.execute(insert(table_of(LedgerEntry)), new)
    return balances


async def daily(sm: async_sessionmaker[AsyncSession], *, now: datetime, tz: str = "Asia/Shanghai",
                amounts_fen: Sequence[int] = DEFAULT_AMOUNTS_FEN, **run_options: Any
                ) -> list[RunStats]:
    """The scheduler job: start today's festival campaign (if any) and run every due one."""
    today = now.astimezone(ZoneInfo(tz)).date()
    async with transaction(sm) as session:
        keys = await due_campaigns(session, today, now=now, amounts_fen=amounts_fen)
    return [await run(sm, key, now=now, tz=tz, **run_options) for key in keys]
