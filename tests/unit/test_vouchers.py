"""Partner vouchers: earned once per cause, redeemed once — even by twenty shops at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.charging.tables import Charge
from core.db import transaction
from core.outbox import OutboxMessage
from core.piles.tables import Site
from core.riders.tables import Rider

NOW = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
MALL = Site(id="M01", name="万象城 B2", lat=30.0, lon=120.0, kind="mall")
COMMUNITY = Site(id="C01", name="翠苑小区", lat=30.0, lon=120.0, kind="community")


@pytest.fixture
def vc() -> ModuleType:
    from core.engagement import vouchers

    return vouchers




@pytest.fixture
async def rider_id(sm: async_sessionmaker[AsyncSession]) -> int:
    async with transaction(sm) as s:
        rider = Rider(display_name="小王")
        s.add(rider)
        await s.flush()
        assert rider.id is not None
        return rider.id


def charge(rider_id: int, minutes: int, charge_id: int = 7) -> Charge:
    return Charge(id=charge_id, rider_id=rider_id, port_id=1, pile_id="P0001", port_number=1,
                  port_code="P0001-01", site_id="M01", state="settled", duration_s=minutes * 60)


async def issued_for_charge(sm: async_sessionmaker[AsyncSession], vc: ModuleType, c: Charge,
                            site: Site) -> list[Any]:
    async with transaction(sm) as s:
        return await vc.on_charge_settled(s, c, site, NOW)


async def try_redeem(sm: async_sessionmaker[AsyncSession], vc: ModuleType, code: str,
                     merchant: str | None, at: datetime = NOW) -> Any:
    try:
        async with transaction(sm) as s:
            return await vc.redeem(s, code, merchant, at)
    except vc.VoucherError as exc:
        return exc


async def test_an_hour_at_a_mall_earns_one_cafe_voucher_per_charge(
        sm: async_sessionmaker[AsyncSession], vc: ModuleType, rider_id: int) -> None:
    assert await issued_for_charge(sm, vc, charge(rider_id, 59), MALL) == []
    assert await issued_for_charge(sm, vc, charge(rider_id, 90), COMMUNITY) == []

    [first] = await issued_for_charge(sm, vc, charge(rider_id, 60), MALL)
    [replay] = await issued_for_charge(sm, vc, charge(rider_id, 60), MALL)
    assert replay.code == first.code and first.merchant == "mall-cafe"
    assert first.value_fen == 500 and first.expires_at == NOW + timedelta(days=30)
    [other] = await issued_for_charge(sm, vc, charge(rider_id, 75, charge_id=8), MALL)
    assert other.code != first.code

    async with sm() as s:
        found = await vc.of_rider(s, rider_id, NOW)
        sent = (await s.execute(select(OutboxMessage)
                                .where(OutboxMessage.kind == "voucher_issued"))).scalars().all()
    assert {v.code for v in found} == {first.code, other.code}
    assert sorted(m.payload["code"] for m in sent) == sorted([first.code, other.code])


async def test_a_fifty_yuan_topup_at_a_community_site_earns_the_property_discount(
        sm: async_sessionmaker[AsyncSession], vc: ModuleType, rider_id: int) -> None:
    async with transaction(sm) as s:
        assert await vc.on_topup(s, rider_id, 4999, "community", NOW, topup_ref="CB1") == []
        assert await vc.on_topup(s, rider_id, 5000, "mall", NOW, topup_ref="CB2") == []
        [v] = await vc.on_topup(s, rider_id, 5000, "community", NOW, topup_ref="CB3")
        [same] = await vc.on_topup(s, rider_id, 5000, "community", NOW, topup_ref="CB3")
        assert same.id == v.id and v.merchant == "property" and v.value_fen == 1000
        # Where a top-up counts: the kind of site the rider last charged at.
        assert await vc.home_site_kind(s, rider_id) is None


async def test_a_voucher_is_redeemed_once_with_clear_refusals(
        sm: async_sessionmaker[AsyncSession], vc: ModuleType, rider_id: int) -> None:
    [v] = await issued_for_charge(sm, vc, charge(rider_id, 61), MALL)
    typed = vc.display_code(v.code).lower()  # "abcd-efgh-jk" as a shop assistant types it

    wrong = await try_redeem(sm, vc, typed, "property")
    assert isinstance(wrong, vc.WrongMerchant) and "mall-cafe" in wrong.explain()
    assert isinstance(await try_redeem(sm, vc, "ZZZZ-ZZZZ-ZZ", "mall-cafe"), vc.UnknownVoucher)

    done = await try_redeem(sm, vc, typed, "mall-cafe", NOW + timedelta(hours=2))
    assert isinstance(done, vc.Voucher) and done.redeemed_by == "mall-cafe"
    assert done.redeemed_at == NOW + timedelta(hours=2)
    line = vc.redeemed_line(done)
    assert line.startswith(f"voucher {vc.display_code(v.code)} redeemed: 500 fen at mall-cafe")

    twice = await try_redeem(sm, vc, v.code, "mall-cafe", NOW + timedelta(hours=3))
    assert isinstance(twice, vc.VoucherAlreadyRedeemed)
    assert twice.params["at"] == NOW + timedelta(hours=2)
    assert "already redeemed" in twice.explain() and "12:00 UTC" in twice.explain()
    async with sm() as s:
        assert await vc.of_rider(s, rider_id, NOW) == []
        told = (await s.execute(select(OutboxMessage).where(
            OutboxMessage.kind == "voucher_redeemed"))).scalars().all()
    assert len(told) == 1 and told[0].rider_id == rider_id


async def test_an_expired_voucher_cannot_be_redeemed(
        sm: async_sessionmaker[AsyncSession], vc: ModuleType, rider_id: int) -> None:
    [v] = await issued_for_charge(sm, vc, charge(rider_id, 61), MALL)
    late = await try_redeem(sm, vc, v.code, "mall-cafe", NOW + timedelta(days=30))
    assert isinstance(late, vc.VoucherExpired) and "expired" in late.explain()
    async with sm() as s:
        fresh = await s.get(vc.Voucher, v.id)
        assert fresh is not None and fresh.redeemed_at is None


async def test_twenty_concurrent_redeems_of_one_code_succeed_exactly_once(
        sm: async_sessionmaker[AsyncSession], vc: ModuleType, rider_id: int) -> None:
    [v] = await issued_for_charge(sm, vc, charge(rider_id, 61), MALL)

    results = await asyncio.gather(*(
        try_redeem(sm, vc, v.code, "mall-cafe", NOW + timedelta(seconds=i)) for i in range(20)))

    won = [r for r in results if isinstance(r, vc.Voucher)]
    lost = [r for r in results if isinstance(r, vc.VoucherAlreadyRedeemed)]
    assert len(won) == 1 and len(lost) == 19
    assert {r.params["at"] for r in lost} == {won[0].redeemed_at}
    async with sm() as s:
        stored = await s.get(vc.Voucher, v.id)
        told = (await s.execute(select(OutboxMessage).where(
            OutboxMessage.kind == "voucher_redeemed"))).scalars().all()
    assert stored is not None and stored.redeemed_at == won[0].redeemed_at
    assert len(told) == 1


def test_codes_are_random_typable_and_distinct(vc: ModuleType) -> None:
    codes = {vc.new_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(len(c) == 10 and set(c) <= set(vc.CODE_ALPHABET) for c in codes)
    assert vc.normalise_code(" abcd-efgh jk ") == "ABCDEFGHJK"


def test_voucher_notices_render_in_both_languages(vc: ModuleType) -> None:
    from bot.handlers import groupbuy as handler

    payload = {"voucher_id": 1, "code": "ABCDEFGHJK", "merchant": "mall-cafe", "value_fen": 500,
               "title": {"zh_CN": "商场咖啡店 ¥5 代金券", "en": "¥5 voucher at the mall café"},
               "expires_at": (NOW + timedelta(days=30)).isoformat(), "redeemed_at": None}
    en = handler.render("voucher_issued", payload, "en")
    zh = handler.render("voucher_issued", payload, "zh_CN")
    assert en and "ABCD-EFGH-JK" in en[0].text and "mall café" in en[0].text
    assert zh and "商场咖啡店" in zh[0].text
    used = handler.render("voucher_redeemed", payload, "en")
    assert used and "ABCD-EFGH-JK" in used[0].text
