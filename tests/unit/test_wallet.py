"""The wallet ledger: concurrent debits never overdraw, replays move nothing, cache == ledger."""

from __future__ import annotations

import asyncio
import random

import pytest

from core.billing import wallet
from core.db import make_engine, make_sessionmaker, transaction
from core.errors import InsufficientBalance
from core.riders.tables import Rider


async def test_concurrent_debits_and_replays_keep_balance_equal_to_the_ledger(db_url: str) -> None:
    engine = make_engine(db_url)
    sm = make_sessionmaker(engine)
    try:
        async with transaction(sm) as s:
            rider = Rider(display_name="r")
            s.add(rider)
            await s.flush()
            rid = rider.id
            await wallet.post(s, rid, "topup", 1000, "topup:1")

        async def debit(i: int) -> bool:
            try:
                async with transaction(sm) as s:
                    await wallet.post(s, rid, "charge", -70, f"charge:{i % 20}")
                return True
            except InsufficientBalance:
                return False
            except Exception as exc:  # a lost race on the same key rolls back whole
                assert "unique" in str(exc).lower() or "duplicate" in str(exc).lower()
                return False

        rng = random.Random(5)
        keys = [rng.randrange(40) for _ in range(60)]
        await asyncio.gather(*(debit(i) for i in keys))
        async with sm() as s:
            bal = await wallet.balance(s, rid)
            total = await wallet.ledger_sum(s, rid)
            entries = await wallet.history(s, rid, 100)
        assert bal == total >= 0
        charged = [e for e in entries if e.kind == "charge"]
        assert len({e.idempotency_key for e in charged}) == len(charged) <= 14  # 1000 // 70
        assert bal == 1000 - 70 * len(charged)

        # A replay returns the first entry and moves no money.
        async with transaction(sm) as s:
            again = await wallet.post(s, rid, "topup", 1000, "topup:1")
        assert again.amount_fen == 1000
        async with sm() as s:
            assert await wallet.balance(s, rid) == bal
    finally:
        await engine.dispose()


def test_yuan_formatting() -> None:
    assert wallet.yuan(0) == "¥0.00"
    assert wallet.yuan(1234) == "¥12.34"
    assert wallet.yuan(-5) == "-¥0.05"
    with pytest.raises(ValueError):
        wallet.ENTRY_KINDS.index("nonsense")
