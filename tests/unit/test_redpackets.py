"""Holiday red packets: every active rider is credited and greeted once per festival — through a
crash mid-run and a second worker running the same job — and nobody else is."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.billing import wallet
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.db import make_engine, make_sessionmaker, transaction
from core.outbox import OutboxMessage
from core.piles import fleet as piles
from core.riders.tables import Identity, Rider

SHANGHAI = ZoneInfo("Asia/Shanghai")
SPRING_2027 = date(2027, 2, 6)
FESTIVAL_MORNING = datetime(2027, 2, 6, 10, 0, tzinfo=SHANGHAI)
JUST_AFTER_MIDNIGHT = datetime(2027, 2, 6, 0, 5, tzinfo=SHANGHAI)  # when the daily job runs


def _red_packets() -> ModuleType:
    # Imported lazily: importing registers its tables in the shared metadata, which the PG
    # fixture truncates, and until the lead's migration creates them they exist only once
    # `_tables` has made them.
    return importlib.import_module("core.engagement.redpackets")


def _create_tables(connection: Any) -> None:
    rp = _red_packets()
    for model in (rp.RedPacketCampaign, rp.RedPacket):
        model.__table__.create(connection, checkfirst=True)


@pytest.fixture(autouse=True)
def _tables(request: pytest.FixtureRequest) -> None:
    """On PostgreSQL the tables must exist before `db_url` truncates every known table."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("db_url") != "postgresql":
        return

    async def create(url: str) -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_create_tables)
        finally:
            await engine.dispose()

    asyncio.run(create(request.getfixturevalue("pg_database")))


@pytest.fixture
def rp() -> ModuleType:
    return _red_packets()


@pytest.fixture
async def sm(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(_create_tables)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _seed(sm: async_sessionmaker[AsyncSession],
                riders: list[tuple[int, datetime | None, str | None]]) -> None:
    """Riders as (id, when their last charge ended or None, platform or None), in bulk."""
    now = datetime.now(UTC)
    async with transaction(sm) as s:
        await piles.add_site(s, "T01", "测试小区车棚", 30.278, 120.114)
        await s.flush()
        await piles.add_pile(s, "T01", "P0001", 1)
        port_id = await s.scalar(select(piles.Port.id))
        await s.execute(insert(Rider.__table__), [
            {"id": rid, "display_name": f"r{rid}", "language": "zh_CN", "balance_fen": 0,
             "last_platform": platform, "auto_topup_fen": 0, "auto_topup_below_fen": 0,
             "created_at": now} for rid, _, platform in riders
        ])
        identities = [
            {"rider_id": rid, "platform": platform, "external_id": f"x{rid}",
             "chat_id": f"x{rid}", "created_at": now}
            for rid, _, platform in riders if platform
        ]
        if identities:
            await s.execute(insert(Identity.__table__), identities)
        charges = [
            {"rider_id": rid, "port_id": port_id, "pile_id": "P0001", "port_number": 1,
             "port_code": "P0001-01", "site_id": "T01", "state": "settled", "tariff": {},
             "requested_at": ended - timedelta(hours=2), "started_at": ended - timedelta(hours=2),
             "ended_at": ended, "amount_fen": 150, "paid_fen": 150, "refunded_fen": 0}
            for rid, ended, _ in riders if ended is not None
        ]
        if charges:
            await s.execute(insert(Charge.__table__), charges)


def _days_before_festival(days: float) -> datetime:
    return datetime.combine(SPRING_2027, datetime.min.time(), SHANGHAI) - timedelta(days=days)


async def _per_rider(s: AsyncSession, column: Any, *where: Any) -> dict[int, int]:
    rows = await s.execute(select(column, func.count()).where(*where).group_by(column))
    return {int(rider): int(n) for rider, n in rows}


# --- festivals, amounts and hours -----------------------------------------------------------

def test_spring_festival_2027_is_greeted_on_its_first_day_and_tomb_sweeping_is_not(
    rp: ModuleType,
) -> None:
    by_slug = {f.slug: f for f in rp.festivals(2027)}
    assert by_slug["spring_festival"].day == SPRING_2027
    assert by_slug["spring_festival"].key == "spring_festival-2027"
    assert by_slug["mid_autumn"].day == date(2027, 9, 15)
    assert by_slug["national_day"].day == date(2027, 10, 1)
    assert by_slug["new_year"].day == date(2027, 1, 1)
    assert set(by_slug) == {"new_year", "spring_festival", "labor_day", "dragon_boat",
                            "mid_autumn", "national_day"}


def test_two_festivals_on_one_day_make_one_greeting(rp: ModuleType) -> None:
    # 1 October 2020 was both National Day and Mid-Autumn: one greeting, for Mid-Autumn.
    on_oct_1 = [f for f in rp.festivals(2020) if f.day == date(2020, 10, 1)]
    assert [f.slug for f in on_oct_1] == ["mid_autumn"]
    assert "national_day" not in {f.slug for f in rp.festivals(2020)}


def test_each_rider_gets_the_same_one_to_two_yuan_every_time(rp: ModuleType) -> None:
    amounts = [rp.amount_for("spring_festival-2027", r, rp.DEFAULT_AMOUNTS_FEN)
               for r in range(1, 2001)]
    assert all(100 <= a <= 200 for a in amounts)
    assert len(set(amounts)) == len(rp.DEFAULT_AMOUNTS_FEN)  # spread, not one value
    assert amounts == [rp.amount_for("spring_festival-2027", r, rp.DEFAULT_AMOUNTS_FEN)
                       for r in range(1, 2001)]


def test_greetings_go_out_at_a_sane_local_hour(rp: ModuleType) -> None:
    def due(local: datetime) -> datetime:
        return rp.greeting_due(SPRING_2027, local.astimezone(UTC), tz="Asia/Shanghai")

    assert due(JUST_AFTER_MIDNIGHT) == FESTIVAL_MORNING
    afternoon = datetime(2027, 2, 6, 15, 30, tzinfo=SHANGHAI)
    assert due(afternoon) == afternoon
    # A run resumed late in the evening or in the small hours waits for the next morning.
    assert due(datetime(2027, 2, 6, 23, 0, tzinfo=SHANGHAI)) == FESTIVAL_MORNING + timedelta(1)
    assert due(datetime(2027, 2, 7, 2, 0, tzinfo=SHANGHAI)) == FESTIVAL_MORNING + timedelta(1)


# --- eligibility and the daily job ----------------------------------------------------------

async def test_only_riders_active_in_the_last_90_days_get_a_red_packet(
    rp: ModuleType, sm: async_sessionmaker[AsyncSession],
) -> None:
    await _seed(sm, [
        (1, _days_before_festival(30), "telegram"),  # active: yes
        (2, _days_before_festival(89.9), "wechat"),  # just inside the window: yes
        (3, _days_before_festival(100), "telegram"),  # inactive: no
        (4, None, "webchat"),  # never charged: no
        (5, _days_before_festival(10), None),  # no chat identity to greet: no
        (6, _days_before_festival(-0.2), "telegram"),  # first charge on the festival: no
    ])
    async with transaction(sm) as s:
        await wallet.post(s, 1, "topup", 1000, "topup:1:test")

    # The daily job on a plain day does nothing.
    assert await rp.daily(sm, now=JUST_AFTER_MIDNIGHT - timedelta(days=1)) == []

    [stats] = await rp.daily(sm, now=JUST_AFTER_MIDNIGHT.astimezone(UTC))
    assert (stats.campaign, stats.credited, stats.finished) == ("spring_festival-2027", 2, True)

    async with sm() as s:
        packets = {p.rider_id: p for p in (await s.execute(select(rp.RedPacket))).scalars()}
        greetings = {m.rider_id: m for m in (await s.execute(select(OutboxMessage))).scalars()}
        assert set(packets) == set(greetings) == {1, 2}
        assert await wallet.balance(s, 1) == await wallet.ledger_sum(s, 1) == (
            1000 + packets[1].amount_fen)
        assert await wallet.balance(s, 3) == 0
    hello = greetings[1]
    assert (hello.kind, hello.dedupe_key) == ("red_packet", "redpacket:spring_festival-2027:1")
    assert hello.payload == {"festival": "spring_festival", "campaign": "spring_festival-2027",
                             "amount_fen": packets[1].amount_fen,
                             "balance_fen": 1000 + packets[1].amount_fen}
    assert hello.due_at.astimezone(UTC) == FESTIVAL_MORNING.astimezone(UTC)

    # The job again that day (a second scheduler, a restart) finds nothing left to do.
    assert await rp.daily(sm, now=JUST_AFTER_MIDNIGHT + timedelta(hours=3)) == []
    async with sm() as s:
        assert await s.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.kind == "red_packet")) == 2


async def test_an_unfinished_campaign_is_resumed_the_next_day_but_a_missed_one_is_not_started(
    rp: ModuleType, sm: async_sessionmaker[AsyncSession],
) -> None:
    next_day = SPRING_2027 + timedelta(days=1)
    async with transaction(sm) as s:
        assert await rp.due_campaigns(s, next_day, now=JUST_AFTER_MIDNIGHT) == []
    async with transaction(sm) as s:
        assert await rp.due_campaigns(s, SPRING_2027, now=JUST_AFTER_MIDNIGHT) == [
            "spring_festival-2027"]
    async with transaction(sm) as s:
        assert await rp.due_campaigns(s, next_day, now=JUST_AFTER_MIDNIGHT) == [
            "spring_festival-2027"]
        assert await rp.due_campaigns(s, next_day + timedelta(days=5),
                                      now=JUST_AFTER_MIDNIGHT) == []


# --- the acceptance: 10,000 riders, a crash, two workers ------------------------------------

RIDERS = 10_000
BATCH = 500


def _population() -> list[tuple[int, datetime | None, str | None]]:
    """Half the riders are eligible (ids ≡ 0, 1 mod 4); the rest are inactive, never charged
    or unreachable."""
    platforms = ("telegram", "wechat", "webchat")
    out: list[tuple[int, datetime | None, str | None]] = []
    for rid in range(1, RIDERS + 1):
        platform = platforms[rid % 3]
        match rid % 8:
            case 0 | 4:
                out.append((rid, _days_before_festival(30 + rid % 50), platform))
            case 1 | 5:
                out.append((rid, _days_before_festival(1 + rid % 7), platform))
            case 2 | 6:
                out.append((rid, _days_before_festival(91 + rid % 200), platform))
            case 3:
                out.append((rid, None, platform))
            case _:
                out.append((rid, _days_before_festival(5), None))
    return out


class Crash(Exception):
    pass


async def test_a_crash_and_a_second_worker_still_credit_and_greet_every_rider_exactly_once(
    rp: ModuleType, db_url: str, sm: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = time.perf_counter()
    population = _population()
    eligible = {rid for rid, _, _ in population if rid % 4 in (0, 1)}
    assert len(eligible) == RIDERS // 2
    await _seed(sm, population)
    topped_up = sorted(eligible)[::250]
    async with transaction(sm) as s:
        for rid in topped_up:
            await wallet.post(s, rid, "topup", 1000, f"topup:{rid}:test")
        [key] = await rp.due_campaigns(s, SPRING_2027, now=JUST_AFTER_MIDNIGHT)
    seeded = time.perf_counter()

    # The first worker dies in its third batch, after crediting it and before the commit.
    real_credit = rp._credit
    batches = 0

    async def dying_credit(*args: Any, **kwargs: Any) -> Any:
        nonlocal batches
        balances = await real_credit(*args, **kwargs)
        batches += 1
        if batches == 3:
            raise Crash
        return balances

    monkeypatch.setattr(rp, "_credit", dying_credit)
    with pytest.raises(Crash):
        await rp.run(sm, key, now=JUST_AFTER_MIDNIGHT, batch=BATCH)
    monkeypatch.setattr(rp, "_credit", real_credit)
    crashed = time.perf_counter()

    async with sm() as s:
        campaign = await s.get(rp.RedPacketCampaign, key)
        assert campaign.finished_at is None
        assert campaign.cursor == sorted(eligible)[2 * BATCH - 1]
        assert await s.scalar(select(func.count()).select_from(rp.RedPacket)) == 2 * BATCH
        assert await s.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.kind == "red_packet")) == 2 * BATCH

    # The restarted job and a second worker (its own engine) run it to the end together.
    other = make_engine(db_url)
    try:
        restarted, second = await asyncio.gather(
            rp.run(sm, key, now=JUST_AFTER_MIDNIGHT, batch=BATCH),
            rp.run(make_sessionmaker(other), key, now=JUST_AFTER_MIDNIGHT, batch=BATCH),
        )
    finally:
        await other.dispose()
    assert restarted.finished and second.finished
    assert restarted.credited + second.credited == len(eligible) - 2 * BATCH
    finished = time.perf_counter()

    # Rewinding the cursor (an operator, a bug) re-processes everyone and changes nothing.
    async with transaction(sm) as s:
        await s.execute(update(rp.RedPacketCampaign).where(rp.RedPacketCampaign.key == key)
                        .values(cursor=0, finished_at=None))
    again = await rp.run(sm, key, now=JUST_AFTER_MIDNIGHT, batch=BATCH)
    assert (again.credited, again.skipped) == (0, len(eligible))

    async with sm() as s:
        packets = await _per_rider(s, rp.RedPacket.rider_id)
        credits = await _per_rider(s, LedgerEntry.rider_id, LedgerEntry.kind == "red_packet")
        greetings = await _per_rider(s, OutboxMessage.rider_id, OutboxMessage.kind == "red_packet")
        assert set(packets) == set(credits) == set(greetings) == eligible
        assert set(packets.values()) == set(credits.values()) == set(greetings.values()) == {1}

        # The credit is the packet's amount, and every balance cache equals its ledger.
        packet_fen = dict((await s.execute(
            select(rp.RedPacket.rider_id, rp.RedPacket.amount_fen))).all())
        credit_fen = dict((await s.execute(
            select(LedgerEntry.rider_id, LedgerEntry.amount_fen)
            .where(LedgerEntry.kind == "red_packet"))).all())
        assert credit_fen == packet_fen
        ledger = select(LedgerEntry.rider_id, func.sum(LedgerEntry.amount_fen).label("total")
                        ).group_by(LedgerEntry.rider_id).subquery()
        balances = dict((await s.execute(
            select(Rider.id, Rider.balance_fen - func.coalesce(ledger.c.total, 0))
            .outerjoin(ledger, ledger.c.rider_id == Rider.id)
        )).all())
        assert len(balances) == RIDERS and set(balances.values()) == {0}

        for rid in topped_up[:5]:
            message = (await s.execute(select(OutboxMessage).where(
                OutboxMessage.dedupe_key == f"redpacket:{key}:{rid}"))).scalars().one()
            amount = message.payload["amount_fen"]
            assert 100 <= amount <= 200
            assert message.payload["balance_fen"] == 1000 + amount == await wallet.balance(s, rid)
    print(f"\n[{db_url.split(':')[0]}] seed {seeded - t0:.1f}s, "
          f"crashed run {crashed - seeded:.1f}s, two workers {finished - crashed:.1f}s, "
          f"rewound rerun {time.perf_counter() - finished:.1f}s")
