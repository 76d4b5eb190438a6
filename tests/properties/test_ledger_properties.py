"""For any interleaving of top-ups, charges, refunds and coupon uses — each possibly replayed —
the ledger balances, no wallet goes below zero (a bill it cannot pay stays due), and replaying
any payment, refund or notification changes nothing."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from core import outbox
from core.billing import coupons, disputes, payments, wallet
from core.charging import paying as charging
from core.charging.tables import Charge
from core.config import Settings
from core.db import make_engine, make_sessionmaker, transaction
from core.notices.chat import TextNotice
from core.outbox import OutboxMessage
from core.piles.fleet import add_pile, add_site
from core.piles.tables import Port
from core.riders.tables import Rider

Op = tuple[str, int, int]  # (kind, amount or index, replay-of index)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.integers(1, 3000), st.integers(0, 3)),
        st.tuples(st.just("charge"), st.integers(0, 900), st.integers(0, 3)),
        st.tuples(st.just("refund"), st.integers(1, 400), st.integers(0, 3)),
        st.tuples(st.just("coupon"), st.integers(1, 300), st.integers(0, 3)),
        st.tuples(st.just("pay_due"), st.integers(0, 0), st.integers(0, 3)),
        st.tuples(st.just("notify"), st.integers(0, 0), st.integers(0, 3)),
    ),
    min_size=1, max_size=25,
)


async def _setup(url: str) -> tuple[Any, Any, int]:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    async with transaction(sm) as s:
        await add_site(s, "PT", "prop", 30.0, 120.0)
        await s.flush()
        await add_pile(s, "PT", "P0999", 20, secret="x")
        rider = Rider(display_name="p")
        s.add(rider)
        await s.flush()
        return engine, sm, rider.id  # type: ignore[return-value]


async def _run(url: str, plan: list[Op]) -> None:
    engine, sm, rider_id = await _setup(url)
    settings = Settings()
    now = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
    done: list[tuple[str, str, int]] = []  # replayable operations: (kind, key, amount)
    charges: list[int] = []
    try:
        for i, (kind, amount, replay) in enumerate(plan):
            now += timedelta(minutes=5)
            if replay == 0 and done:  # replay an earlier payment/refund/notification as-is
                kind, key, amount = done[(i * 7) % len(done)]
            else:
                key = f"{kind}-{i}"
            async with transaction(sm) as s:
                if kind == "topup":
                    pay = await payments.find(s, key)
                    if pay is None:
                        pay = payments.Payment(rider_id=rider_id, provider="sandbox",
                                               out_trade_no=key, amount_fen=amount)
                        s.add(pay)
                        await s.flush()
                    await payments.confirm(s, key, amount, f"txn-{key}", settings, now)
                    await charging.pay_due(s, rider_id, now)
                elif kind == "charge" and key not in {k for _, k, _ in done}:
                    port = (await s.execute(select(Port).where(
                        Port.number == len(charges) % 20 + 1))).scalars().one()
                    c = Charge(rider_id=rider_id, port_id=port.id, pile_id="P0999",
                               port_number=port.number, port_code=port.code, site_id="PT",
                               state="ended", tariff={}, amount_fen=amount, ended_at=now,
                               bill={"gross_fen": amount, "net_fen": amount})
                    s.add(c)
                    await s.flush()
                    charges.append(c.id)  # type: ignore[arg-type]
                    await charging.settle(s, c, now)
                elif kind == "refund" and charges:
                    c = await s.get(Charge, charges[amount % len(charges)])
                    try:
                        await disputes.refund(s, c, amount, key, "prop", now)
                    except (disputes.RefundTooLarge, disputes.NothingToDispute):
                        pass
                elif kind == "coupon":
                    await coupons.issue(s, rider_id, amount_fen=amount, cause=key, now=now)
                elif kind == "pay_due":
                    await charging.pay_due(s, rider_id, now)
                elif kind == "notify":
                    await outbox.enqueue(s, rider_id, TextNotice(text=key), f"n:{key}",
                                         now=now)
            if kind in ("topup", "refund", "coupon", "notify"):
                done.append((kind, key, amount))
            async with sm() as s:
                bal = await wallet.balance(s, rider_id)
                assert bal == await wallet.ledger_sum(s, rider_id)
                assert bal >= 0
                for c in (await s.execute(select(Charge))).scalars():
                    assert c.paid_fen in (0, c.amount_fen)
                    # A wallet is short only while a bill says so.
                    if c.state == "ended":
                        assert c.amount_fen > c.paid_fen
        async with sm() as s:
            # Every notification appears once however often it was sent.
            keys = list((await s.execute(select(OutboxMessage.dedupe_key))).scalars())
            assert len(keys) == len(set(keys))
            topups = [e for e in await wallet.history(s, rider_id, 1000) if e.kind == "topup"]
            paid = {p.out_trade_no for p in (await s.execute(
                select(payments.Payment).where(payments.Payment.state == "paid"))).scalars()}
            assert len(topups) == len(paid)
    finally:
        await engine.dispose()


@pytest.fixture
def fresh_db(db_url: str, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A database factory: a new SQLite file, or the truncated PostgreSQL test database."""
    if db_url.startswith("sqlite"):
        template = request.getfixturevalue("sqlite_template")
        counter = iter(range(10_000))

        def make() -> str:
            path = tmp_path / f"p{next(counter)}.db"
            shutil.copy(template, path)
            return f"sqlite+aiosqlite:///{path}"
        return make
    from tests.support.databases import truncate_all

    def make_pg() -> str:
        truncate_all(db_url)
        return db_url
    return make_pg


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=ops)
def test_any_interleaving_keeps_the_ledger_whole(fresh_db, plan: list[Op]) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(_run(fresh_db(), plan))
