"""Group-buy top-ups: a full group nets each member the discount, an expired one nets zero.

Money is checked the same way in every story: each rider's balance cache equals their ledger,
and the group-buy entries of a deal sum to members × (top-up − price) when it filled and to 0
when it expired.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.billing import wallet
from core.db import transaction
from core.outbox import OutboxMessage
from core.riders.tables import Rider

NOW = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
GB_KINDS = ("groupbuy_hold", "groupbuy_topup", "groupbuy_refund")


@pytest.fixture
def gb() -> ModuleType:
    from core.engagement import groupbuy

    return groupbuy




async def add_riders(sm: async_sessionmaker[AsyncSession], *balances_fen: int) -> list[int]:
    ids = []
    async with transaction(sm) as s:
        for i, fen in enumerate(balances_fen):
            rider = Rider(display_name=f"rider {i}")
            s.add(rider)
            await s.flush()
            assert rider.id is not None
            if fen:
                await wallet.post(s, rider.id, "topup", fen, f"topup:{rider.id}:seed")
            ids.append(rider.id)
    return ids


async def new_deal(sm: async_sessionmaker[AsyncSession], gb: ModuleType, creator: int,
                   **terms: int) -> Any:
    async with transaction(sm) as s:
        return await gb.create(s, creator, NOW, gb.DealTerms(**terms))


async def try_join(sm: async_sessionmaker[AsyncSession], gb: ModuleType, deal_id: int | str,
                   rider_id: int, at: datetime = NOW) -> Any:
    """The join's result, or the domain error that refused it (its transaction rolled back)."""
    try:
        async with transaction(sm) as s:
            return await gb.join(s, deal_id, rider_id, at)
    except gb.DomainError as exc:
        return exc


async def assert_books_balance(sm: async_sessionmaker[AsyncSession], riders: list[int]) -> None:
    async with sm() as s:
        for rid in riders:
            assert await wallet.balance(s, rid) == await wallet.ledger_sum(s, rid)


async def groupbuy_sum(sm: async_sessionmaker[AsyncSession], deal_id: int) -> int:
    async with sm() as s:
        return int(await s.scalar(
            select(func.coalesce(func.sum(wallet.LedgerEntry.amount_fen), 0))
            .where(wallet.LedgerEntry.idempotency_key.like(f"gb:{deal_id}:%"))) or 0)


async def entries(sm: async_sessionmaker[AsyncSession], kind: str) -> list[Any]:
    async with sm() as s:
        return list((await s.execute(select(wallet.LedgerEntry)
                                     .where(wallet.LedgerEntry.kind == kind))).scalars())


async def notices(sm: async_sessionmaker[AsyncSession], kind: str) -> list[OutboxMessage]:
    async with sm() as s:
        return list((await s.execute(select(OutboxMessage)
                                     .where(OutboxMessage.kind == kind))).scalars())


async def test_three_riders_fill_the_group_and_each_nets_the_discount(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    riders = await add_riders(sm, 5000, 6000, 4500, 9999)
    deal = await new_deal(sm, gb, riders[0])
    assert (deal.size, deal.topup_fen, deal.price_fen, deal.percent_off) == (3, 5000, 4500, 10)

    first = await try_join(sm, gb, deal.id, riders[0])
    second = await try_join(sm, gb, deal.id, riders[1])
    assert not first.filled and not second.filled and second.deal.joined == 2
    async with sm() as s:
        assert await wallet.balance(s, riders[0]) == 500  # the price is held, not yet topped up
    third = await try_join(sm, gb, deal.id, riders[2])
    assert third.filled and third.deal.state == "filled" and third.deal.filled_at == NOW

    async with sm() as s:
        assert [await wallet.balance(s, r) for r in riders[:3]] == [5500, 6500, 5000]
    assert await groupbuy_sum(sm, deal.id) == 3 * (5000 - 4500)
    await assert_books_balance(sm, riders)
    filled = await notices(sm, "groupbuy_filled")
    assert sorted(n.rider_id for n in filled) == sorted(riders[:3])
    assert {n.payload["balance_fen"] for n in filled} == {5500, 6500, 5000}

    late = await try_join(sm, gb, deal.id, riders[3])
    assert isinstance(late, gb.DealClosed) and late.state == "filled"
    async with sm() as s:
        assert await wallet.balance(s, riders[3]) == 9999
    # A sweep after the deadline leaves a filled deal alone.
    async with transaction(sm) as s:
        assert await gb.expire(s, NOW + timedelta(days=2)) == []
    assert await groupbuy_sum(sm, deal.id) == 1500


async def test_concurrent_last_joins_fill_the_deal_exactly_once(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    riders = await add_riders(sm, *[5000] * 12)
    deal = await new_deal(sm, gb, riders[0])
    await try_join(sm, gb, deal.id, riders[0])
    await try_join(sm, gb, deal.id, riders[1])

    results = await asyncio.gather(*(try_join(sm, gb, deal.id, r) for r in riders[2:]))

    won = [r for r in results if isinstance(r, gb.Joined)]
    assert len(won) == 1 and won[0].filled
    assert all(isinstance(r, gb.DealClosed) and r.state == "filled"
               for r in results if r not in won)
    assert len(await entries(sm, "groupbuy_topup")) == 3
    assert len(await entries(sm, "groupbuy_hold")) == 3
    assert len(await notices(sm, "groupbuy_filled")) == 3
    assert await groupbuy_sum(sm, deal.id) == 3 * 500
    async with sm() as s:
        balances = sorted([await wallet.balance(s, r) for r in riders])
        d = await s.get(gb.GroupDeal, deal.id)
        assert d is not None and (d.state, d.joined) == ("filled", 3)
    assert balances == [5000] * 9 + [5500] * 3
    await assert_books_balance(sm, riders)


async def test_expired_group_gives_every_hold_back_once(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    riders = await add_riders(sm, 5000, 7000, 5000)
    deal = await new_deal(sm, gb, riders[0])
    await try_join(sm, gb, deal.id, riders[0])
    await try_join(sm, gb, deal.id, riders[1])
    async with sm() as s:
        assert await wallet.balance(s, riders[1]) == 2500

    # After the deadline nobody can join, even before the sweep has run, and nothing moves.
    late = await try_join(sm, gb, deal.id, riders[2], NOW + timedelta(hours=24))
    assert isinstance(late, gb.DealClosed) and late.state == "expired"

    async with transaction(sm) as s:
        assert await gb.expire(s, NOW + timedelta(hours=23, minutes=59)) == []
    async with transaction(sm) as s:
        assert await gb.expire(s, NOW + timedelta(hours=25)) == [deal.id]
    async with transaction(sm) as s:
        assert await gb.expire(s, NOW + timedelta(hours=26)) == []

    async with sm() as s:
        assert [await wallet.balance(s, r) for r in riders] == [5000, 7000, 5000]
        d = await s.get(gb.GroupDeal, deal.id)
        assert d is not None and d.state == "expired"
    assert await groupbuy_sum(sm, deal.id) == 0
    assert len(await entries(sm, "groupbuy_refund")) == 2
    assert not await entries(sm, "groupbuy_topup")
    expired = await notices(sm, "groupbuy_expired")
    assert sorted(n.rider_id for n in expired) == riders[:2]
    assert all(n.payload["price_fen"] == 4500 for n in expired)
    await assert_books_balance(sm, riders)
    again = await try_join(sm, gb, deal.id, riders[2], NOW + timedelta(hours=30))
    assert isinstance(again, gb.DealClosed) and again.state == "expired"


async def test_joining_twice_holds_the_price_once(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    riders = await add_riders(sm, 20000)
    deal = await new_deal(sm, gb, riders[0])
    await try_join(sm, gb, deal.id, riders[0])
    again = await try_join(sm, gb, deal.code.lower(), riders[0])  # by share code this time
    assert isinstance(again, gb.AlreadyJoined)

    # Two presses of Join at the same moment.
    other = await new_deal(sm, gb, riders[0])
    both = await asyncio.gather(*(try_join(sm, gb, other.id, riders[0]) for _ in range(4)))
    assert sum(isinstance(r, gb.Joined) for r in both) == 1
    assert all(isinstance(r, gb.Joined | gb.AlreadyJoined) for r in both)

    assert len(await entries(sm, "groupbuy_hold")) == 2
    async with sm() as s:
        assert await wallet.balance(s, riders[0]) == 20000 - 2 * 4500
        assert [(await s.get(gb.GroupDeal, d.id)).joined for d in (deal, other)] == [1, 1]
    await assert_books_balance(sm, riders)


async def test_a_short_wallet_is_refused_and_nothing_moves(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    riders = await add_riders(sm, 4499)
    deal = await new_deal(sm, gb, riders[0])
    refused = await try_join(sm, gb, deal.id, riders[0])
    assert isinstance(refused, gb.NotEnoughForDeal)
    assert (refused.balance_fen, refused.short_fen) == (4499, 1)
    async with sm() as s:
        assert await wallet.balance(s, riders[0]) == 4499
        assert await gb.member(s, deal.id, riders[0]) is None
        assert (await s.get(gb.GroupDeal, deal.id)).joined == 0
    assert not await entries(sm, "groupbuy_hold")

    unknown = await try_join(sm, gb, "NOSUCH", riders[0])
    assert isinstance(unknown, gb.UnknownDeal)


async def test_random_joins_and_sweeps_always_balance(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    rng = random.Random(8)
    riders = await add_riders(sm, *[rng.choice([0, 3000, 4500, 9000, 20000]) for _ in range(10)])
    start = {}
    async with sm() as s:
        for r in riders:
            start[r] = await wallet.balance(s, r)
    deals = [await new_deal(sm, gb, riders[0], size=rng.randint(2, 4), topup_fen=5000,
                            percent_off=rng.choice([5, 10, 20]), hours=rng.randint(1, 5))
             for _ in range(6)]
    for step in range(60):
        at = NOW + timedelta(minutes=6 * step)
        if step % 10 == 9:
            async with transaction(sm) as s:
                await gb.expire(s, at)
        else:
            await try_join(sm, gb, rng.choice(deals).id, rng.choice(riders), at)
    async with transaction(sm) as s:
        await gb.expire(s, NOW + timedelta(days=1))

    await assert_books_balance(sm, riders)
    gained, states = 0, set()
    for d in deals:
        async with sm() as s:
            deal = await s.get(gb.GroupDeal, d.id)
            members = await gb.member_ids(s, d.id)
        assert deal.state in ("filled", "expired") and deal.joined == len(members)
        expected = len(members) * (deal.topup_fen - deal.price_fen)
        assert await groupbuy_sum(sm, d.id) == (expected if deal.state == "filled" else 0)
        gained += expected if deal.state == "filled" else 0
        states.add(deal.state)
    async with sm() as s:
        now_total = sum([await wallet.balance(s, r) for r in riders])
    assert now_total == sum(start.values()) + gained
    assert states == {"filled", "expired"}  # the story has both endings


# --- the chat side ------------------------------------------------------------------------------


def test_deal_card_and_notices_render_in_both_languages(gb: ModuleType) -> None:
    from bot.handlers import groupbuy as handler
    from notifications.replies import MAX_CALLBACK_BYTES

    payload = {"deal_id": 2**31, "code": "ABC234", "size": 3, "topup_fen": 5000,
               "price_fen": 4500, "percent_off": 10, "joined": 1, "state": "open",
               "expires_at": (NOW + timedelta(hours=24)).isoformat(), "balance_fen": 5500}
    for lang in ("zh_CN", "en"):
        card = handler.deal_card(lang, payload)
        assert "ABC234" in card.text and "¥45.00" in card.text and "1/3" in card.text
        data = card.buttons[0][0].data
        assert data == f"gb:join:{2**31}" and len(data.encode()) <= MAX_CALLBACK_BYTES
        assert not handler.deal_card(lang, {**payload, "state": "filled"}).buttons
        filled = handler.render("groupbuy_filled", payload, lang)
        assert filled and "¥50.00" in filled[0].text and "¥55.00" in filled[0].text
        expired = handler.render("groupbuy_expired", {**payload, "balance_fen": 5000}, lang)
        assert expired and "¥45.00" in expired[0].text
    assert handler.render("bill", payload, "en") is None
    en = handler.deal_card("en", payload).text
    assert "06-02 18:00" in en  # Beijing time, not UTC


async def test_riders_start_and_join_a_deal_by_code_in_private_chat(
        db_url: str, sm: async_sessionmaker[AsyncSession], gb: ModuleType) -> None:
    from bot.context import Context
    from bot.handlers import groupbuy as handler
    from bot.handlers.turn import Turn
    from notifications.replies import Incoming
    from tests.support.settings import make_settings

    riders = await add_riders(sm, 0, 5000, 5000)
    ctx = Context(make_settings(db_url), sm.kw["bind"], sm, clock=lambda: NOW)

    async def say(rider_id: int, text: str = "", data: str | None = None) -> list[Any]:
        async with transaction(sm) as s:
            rider = await s.get(Rider, rider_id)
            inc = Incoming("webchat", f"u{rider_id}", f"u{rider_id}", text=text, data=data)
            turn = Turn(ctx, s, rider, inc)
            if data:
                return await handler.button(turn, data.removeprefix("gb:"))
            command, _, arg = text[1:].partition(" ")
            return await handler.command(turn, arg)

    card, share = await say(riders[0], "/groupbuy")
    async with sm() as s:
        deal = (await s.execute(select(gb.GroupDeal))).scalars().one()
    assert deal.code in share.text and card.buttons[0][0].data == f"gb:join:{deal.id}"

    offer = (await say(riders[0], data=f"gb:join:{deal.id}"))[0]
    assert offer.buttons[0][0].data == "wallet"  # the creator's wallet is empty: top up first
    refused = (await say(riders[0], data=f"gb:pay:{deal.id}"))[0]
    assert refused.buttons[0][0].data == "wallet"

    offer = (await say(riders[1], f"/groupbuy {deal.code.lower()}"))[0]
    assert offer.buttons[0][0].data == f"gb:pay:{deal.id}" and "¥45.00" in offer.text
    joined = (await say(riders[1], data=f"gb:pay:{deal.id}"))[0]
    assert "1/3" in joined.text
    again = (await say(riders[1], f"/groupbuy {deal.code}"))[0]
    assert not again.buttons and "1/3" in again.text
    assert "NOPE22" in (await say(riders[2], "/groupbuy nope22"))[0].text
    assert not (await say(riders[2], data="gb:pay:x"))[0].buttons
    await assert_books_balance(sm, riders)


async def test_group_buy_in_a_telegram_group_fills_through_private_chats(
        db_url: str, fakes: tuple) -> None:
    """/groupbuy in a riders' group posts the card; Join answers each rider privately (their
    balance is nobody else's business); the third payment fills the group for everyone."""
    from tests.fakes.telegram_updates import TelegramUser
    from tests.support.journey import wait_until
    from tests.support.riders import TG_SECRET
    from tests.support.server import start_server
    from tests.support.settings import all_skins_settings

    tg, wx = fakes
    group = -1_003_000_000_111
    settings = all_skins_settings(db_url, tg, wx, scheduler={"enabled": False})
    async with start_server(settings) as server:
        async def post(update: dict) -> None:
            async with server.http.post(f"{server.url}/telegram/webhook", json=update,
                                        headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
                                        ) as r:
                assert r.status == 200

        users = [TelegramUser(880_000 + i, first_name=f"R{i}") for i in range(3)]
        for u in users:  # each has talked to the bot privately and has money
            await post(u.text("/start"))
        await wait_until(lambda: all(tg.messages_to(u.user_id) for u in users))
        async with transaction(server.ctx.sm) as s:
            from core.riders.identities import rider_for

            for u in users:
                r = await rider_for(s, "telegram", str(u.user_id))
                await wallet.post(s, r.id, "topup", 5000, f"seed:{u.user_id}")  # type: ignore[arg-type]
        await post(users[0].group_text(group, "/groupbuy"))
        await wait_until(lambda: any("gb:join" in str(m.get("reply_markup"))
                                     for m in tg.messages_to(group)))
        card = next(m for m in tg.messages_to(group) if "reply_markup" in m)
        join = card["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        for u in users:
            await post(u.press(card, join))
            # Wait for the offer's Pay button itself, not for any first message.
            await wait_until(lambda u=u: any("gb:pay:" in str(m.get("reply_markup"))
                                             for m in tg.messages_to(u.user_id)))
            offer = next(m for m in tg.messages_to(u.user_id)
                         if "gb:pay:" in str(m.get("reply_markup")))
            pay = offer["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
            assert pay.startswith("gb:pay:")
            await post(u.press(offer, pay))
        await wait_until(lambda: all(any("已成团" in (m.get("text") or "")
                                         for m in tg.messages_to(u.user_id)) for u in users))
        # The group only ever saw the card and "check your private chat" notes, no balances.
        assert not any("Balance" in (m.get("text") or "") or "余额" in (m.get("text") or "")
                       for m in tg.messages_to(group))
        async with server.ctx.sm() as s:
            from core.riders.identities import rider_for

            for u in users:
                r = await rider_for(s, "telegram", str(u.user_id))
                assert await wallet.balance(s, r.id) == 5500  # type: ignore[arg-type]


async def test_a_code_of_digits_only_is_a_code_not_a_deal_id(
        sm: async_sessionmaker[AsyncSession], gb: ModuleType,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # One code in 4,096 is all digits; typed, it was looked up as an id and "not found".
    creator, rider = await add_riders(sm, 0, 5000)
    first = await new_deal(sm, gb, creator)
    monkeypatch.setattr(gb, "new_code", lambda: "234567")
    deal = await new_deal(sm, gb, creator)
    async with sm() as s:
        assert (await gb.find(s, "234567")).id == deal.id
        assert (await gb.find(s, " 234-567 ")).id == deal.id
        assert (await gb.find(s, first.id)).id == first.id
        with pytest.raises(gb.UnknownDeal):
            await gb.find(s, str(first.id))  # typed digits are never taken for an id
    assert not isinstance(await try_join(sm, gb, "234567", rider), gb.DomainError)
