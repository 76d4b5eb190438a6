"""Family wallets on SQLite and PostgreSQL: invite, join in the web chat, members' charges paid
from the owner's wallet within monthly limits, removal, and 20 members racing one balance."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.billing import family, wallet
from core.billing.wallet import LedgerEntry
from core.charging import sessions as charging
from core.charging.tables import Charge
from core.config import Settings
from core.db import transaction
from core.piles.tables import Pile
from core.riders.tables import Identity, Rider
from tests.support.journey import PileClient, WebRider, button
from tests.support.server import Running, seed_city
from tests.support.settings import PILE_SECRET, make_settings

HOURLY_FEN = 1200  # a flat ¥12/h tariff: a 60-minute charge bills exactly ¥12.00
BILL_FEN = HOURLY_FEN


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url, billing={
        "tariffs": {"standard": {"mode": "time", "fen_per_hour": HOURLY_FEN, "unit_minutes": 1,
                                 "free_minutes": 0, "min_fee_fen": 0, "cap_fen": 0,
                                 "off_peak": None}}})


async def _online(ctx) -> None:  # type: ignore[no-untyped-def]
    async with transaction(ctx.sm) as s:
        for pile in (await s.execute(select(Pile))).scalars():
            pile.online = True
            pile.last_seen_at = ctx.clock()


async def _rider_id(ctx, rider: WebRider) -> int:  # type: ignore[no-untyped-def]
    async with ctx.sm() as s:
        rid = await s.scalar(select(Identity.rider_id).where(
            Identity.platform == "webchat", Identity.external_id == rider.client_id))
    assert rid is not None
    return int(rid)


async def _topup(ctx, rider_id: int, fen: int, key: str) -> None:  # type: ignore[no-untyped-def]
    async with transaction(ctx.sm) as s:
        await wallet.post(s, rider_id, "topup", fen, key, memo="test")


async def _charge_in_chat(server: Running, pile: PileClient, rider: WebRider, port: int,
                          minutes: int = 60) -> Charge:
    """The rider starts at P0001-0<port> in the web chat; the pile runs it for `minutes`."""
    code = f"P0001-{port:02d}"
    card = await rider.say(f"/start port_{code}")
    await rider.press(button(card, f"start:{code}"))
    async with server.ctx.sm() as s:
        charge = (await s.execute(select(Charge).where(
            Charge.port_code == code, Charge.state.in_(charging.OPEN_STATES)))).scalars().one()
    start = server.ctx.clock() - timedelta(minutes=minutes + 5)
    await pile.run_charge(port, charge.session_ref, start, minutes)  # type: ignore[arg-type]
    async with server.ctx.sm() as s:
        done = await s.get(Charge, charge.id)
    assert done is not None and done.amount_fen == HOURLY_FEN * minutes // 60, done.bill
    return done


async def _ledger(ctx, rider_id: int) -> list[LedgerEntry]:  # type: ignore[no-untyped-def]
    async with ctx.sm() as s:
        return list((await s.execute(select(LedgerEntry).where(LedgerEntry.rider_id == rider_id)
                                     .order_by(LedgerEntry.id))).scalars())


async def _balance_is_ledger(ctx, rider_id: int) -> int:  # type: ignore[no-untyped-def]
    async with ctx.sm() as s:
        bal = await wallet.balance(s, rider_id)
        assert bal == await wallet.ledger_sum(s, rider_id)
    return bal


def _code(replies: list[dict]) -> str:
    m = re.search(r"/family (\d{6})", replies[0]["text"])
    assert m, replies
    return m.group(1)


async def test_member_charges_from_the_owner_wallet_within_the_limit(server: Running) -> None:
    ctx = server.ctx
    await seed_city(ctx, ports=4)
    await _online(ctx)
    owner, member = WebRider(server.http, server.url), WebRider(server.http, server.url)
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)  # one event-id sequence

    # The owner invites with a ¥20 monthly limit; the member joins with the code.
    intro = await owner.say("/family")
    invited = await owner.press(button(intro, "family:inv:2000"))
    assert "¥20.00" in invited[0]["text"]
    code = _code(invited)
    joined = await member.say(f"/family {code}")
    assert "✅" in joined[0]["text"] and "¥20.00" in joined[0]["text"]
    again = await member.say(f"/family {code}")  # a used code does not join twice
    assert "✅" not in again[0]["text"]
    owner_id, member_id = await _rider_id(ctx, owner), await _rider_id(ctx, member)
    await _topup(ctx, owner_id, 5000, "t:owner")
    await _topup(ctx, member_id, 3000, "t:member")

    # Charge 1 (¥12, within the limit): the owner's wallet pays, the member's is untouched.
    first = await _charge_in_chat(server, pile, member, 1)
    assert first.state == "settled" and first.payer_rider_id == owner_id
    assert first.paid_fen == BILL_FEN
    owner_entries = await _ledger(ctx, owner_id)
    assert [(e.kind, e.amount_fen) for e in owner_entries if e.charge_id == first.id] == [
        ("charge", -BILL_FEN)]
    assert await _balance_is_ledger(ctx, owner_id) == 5000 - BILL_FEN
    assert await _balance_is_ledger(ctx, member_id) == 3000
    assert [e.kind for e in await _ledger(ctx, member_id)] == ["topup"]

    # Both see it on their family card.
    card = await owner.say("/family")
    assert "¥38.00" in card[0]["text"]  # the shared wallet's balance
    assert "¥12.00" in card[0]["text"] and "¥20.00" in card[0]["text"]
    mine = await member.say("/family")
    assert "¥12.00" in mine[0]["text"] and "¥20.00" in mine[0]["text"]
    assert button(mine, "family:leave")
    async with ctx.sm() as s:
        assert await family.spending(s, owner_id, ctx.clock()) == [
            (member_id, "", BILL_FEN, 2000)]

    # Charge 2 would take the month to ¥24 > ¥20: the member pays from their own wallet.
    second = await _charge_in_chat(server, pile, member, 2)
    assert second.state == "settled" and second.payer_rider_id in (None, member_id)
    assert await _balance_is_ledger(ctx, member_id) == 3000 - BILL_FEN
    assert await _balance_is_ledger(ctx, owner_id) == 5000 - BILL_FEN
    async with ctx.sm() as s:
        assert (await family.spending(s, owner_id, ctx.clock()))[0][2] == BILL_FEN

    # The owner lifts the limit, then removes the member: removal wins for the next charge.
    async with transaction(ctx.sm) as s:
        await family.set_limit(s, owner_id, member_id, 0)
    card = await owner.say("/family")
    confirm = await owner.press(button(card, f"family:rm:{member_id}"))
    removed = await owner.press(button(confirm, f"family:rmok:{member_id}"))
    assert "✅" in removed[0]["text"]
    assert not any(b.get("data", "").startswith("family:rm:")
                   for r in removed for row in r["buttons"] for b in row)
    third = await _charge_in_chat(server, pile, member, 3)
    assert third.state == "settled" and third.payer_rider_id in (None, member_id)
    assert await _balance_is_ledger(ctx, member_id) == 3000 - 2 * BILL_FEN
    assert await _balance_is_ledger(ctx, owner_id) == 5000 - BILL_FEN
    # The first charge stays the owner's: removal is not retroactive.
    async with ctx.sm() as s:
        assert (await s.get(Charge, first.id)).payer_rider_id == owner_id  # type: ignore[union-attr]
        assert await family.spending(s, owner_id, ctx.clock()) == []
    assert button(await member.say("/family"), "family:inv:")  # no longer a member


async def test_over_the_limit_with_an_empty_wallet_the_bill_stays_due(server: Running) -> None:
    ctx = server.ctx
    await seed_city(ctx, ports=4)
    await _online(ctx)
    owner, member = WebRider(server.http, server.url), WebRider(server.http, server.url)
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)  # one event-id sequence
    code = _code(await owner.press("family:inv:2000"))
    await member.say(f"/family {code}")
    owner_id, member_id = await _rider_id(ctx, owner), await _rider_id(ctx, member)
    await _topup(ctx, owner_id, 10000, "t:owner")

    # A 2-hour charge (¥24) is over the ¥20 limit on its own: the member's empty wallet owes it.
    charge = await _charge_in_chat(server, pile, member, 1, minutes=120)
    assert charge.state == "ended" and charge.paid_fen == 0
    assert await _balance_is_ledger(ctx, owner_id) == 10000
    # Paying it later still goes through the member's own wallet (the limit still says no).
    await _topup(ctx, member_id, 2400, "t:member")
    paid = await member.press("pay")
    assert "✅" in paid[0]["text"]
    assert await _balance_is_ledger(ctx, member_id) == 0
    assert await _balance_is_ledger(ctx, owner_id) == 10000


async def test_chat_refusals_and_leaving(server: Running) -> None:
    ctx = server.ctx
    await seed_city(ctx, ports=4)
    owner, member, other = (WebRider(server.http, server.url) for _ in range(3))
    code = _code(await owner.press("family:inv:0"))
    own = await owner.say(f"/family {code}")
    bad = await member.say("/family 12345x")
    assert "✅" not in own[0]["text"] and "✅" not in bad[0]["text"]
    assert own[0]["text"] != bad[0]["text"]
    joined = await member.say(f"/family {code}")
    assert "✅" in joined[0]["text"]
    # A member can't invite; the owner can't join anyone while paying for members.
    assert not re.search(r"\d{6}", (await member.press("family:inv:0"))[0]["text"])
    other_code = _code(await other.press("family:inv:5000"))
    refused = await owner.say(f"/family {other_code}")
    assert "✅" not in refused[0]["text"]
    # Leaving asks first, then takes effect.
    card = await member.say("/family")
    confirm = await member.press(button(card, "family:leave"))
    left = await member.press(button(confirm, "family:leaveok"))
    assert "✅" in left[0]["text"] and "¥0.00" in left[0]["text"]
    member_id = await _rider_id(ctx, member)
    async with ctx.sm() as s:
        assert await family.membership(s, member_id) is None
    again = await member.press("family:leaveok")
    assert "✅" not in again[0]["text"]
    # All callback data fits the 64-byte limit (Button enforces it when the reply is made).
    for data in ("family:rmok:2147483647", "family:inv:5000", "family:leaveok"):
        assert len(data.encode()) <= 64


async def test_join_refusals_and_core_rules(server: Running) -> None:
    ctx = server.ctx
    await seed_city(ctx, ports=4)
    await _online(ctx)
    now = ctx.clock()
    async with transaction(ctx.sm) as s:
        riders = [Rider(display_name=n) for n in ("owner", "a", "b", "c", "d")]
        s.add_all(riders)
        await s.flush()
        owner, a, b, c, d = (r.id for r in riders)
        fam = await family.create_family(s, owner, "home")
        assert (await family.create_family(s, owner, "other")).id == fam.id  # idempotent
        code = await family.invite(s, owner, 2000, now)
        assert re.fullmatch(r"\d{6}", code)
        old = await family.invite(s, owner, 0, now - timedelta(hours=25))
        spare = await family.invite(s, owner, 0, now)
        # Rider b has an open charge; rider c has a due bill.
        rb = await s.get(Rider, b)
        open_charge = await charging.start_charge(s, rb, "P0001-01", ctx.settings, now)  # type: ignore[arg-type]
        rc = await s.get(Rider, c)
        due = await charging.start_charge(s, rc, "P0001-02", ctx.settings, now)  # type: ignore[arg-type]
        await charging.on_started(s, due, now - timedelta(hours=1), now)
        await charging.on_ended(s, due, now, "user", 100, 3600, ctx.settings, now)
        assert due.state == "ended" and open_charge.state == "requested"

    async def refused(exc: type[Exception], code_: str, rider_id: int) -> None:
        async with transaction(ctx.sm) as s:
            with pytest.raises(exc):
                await family.join(s, code_, rider_id, now)

    await refused(family.FamilyOwnCode, code, owner)
    await refused(family.FamilyCodeInvalid, old, a)  # expired
    await refused(family.FamilyCodeInvalid, "99999a", a)
    await refused(family.FamilyCodeInvalid, "", a)
    await refused(family.FamilyJoinBusy, code, b)  # open charge
    await refused(family.FamilyJoinBusy, code, c)  # due bill
    async with transaction(ctx.sm) as s:
        member = await family.join(s, code, a, now)
        assert member.monthly_limit_fen == 2000
    await refused(family.FamilyCodeInvalid, code, d)  # used
    await refused(family.AlreadyInFamily, spare, a)
    async with transaction(ctx.sm) as s:
        with pytest.raises(family.AlreadyInFamily):
            await family.invite(s, a, 0, now)  # a member can't also be a payer
        with pytest.raises(family.NotFamilyMember):
            await family.set_limit(s, owner, d, 500)
        with pytest.raises(family.NotFamilyMember):
            await family.remove(s, owner, d)
        with pytest.raises(family.NotFamilyMember):
            await family.leave(s, d)
        await family.set_limit(s, owner, a, 500)
        assert await family.spending(s, owner, now) == [(a, "a", 0, 500)]
        assert await family.family_payer(s, a, 500, now) == owner
        assert await family.family_payer(s, a, 501, now) is None
    async with transaction(ctx.sm) as s:
        await family.leave(s, a)
        assert await family.family_payer(s, a, 1, now) is None
        assert await family.spending(s, owner, now) == []
    # The spare code still works for someone free of charges and bills.
    async with transaction(ctx.sm) as s:
        await family.join(s, spare, d, now)
        assert await family.family_payer(s, d, 10**6, now) == owner


async def test_twenty_members_end_at_once_and_exactly_the_covered_five_are_paid(
        server: Running) -> None:
    """ACCEPTANCE: 20 family members' charges end concurrently against a balance that covers 5:
    exactly 5 are paid from the family wallet, 15 stay due, and the balance never goes below 0."""
    ctx = server.ctx
    await seed_city(ctx, piles_n=5, ports=4)
    await _online(ctx)
    now = ctx.clock()
    t0 = now - timedelta(hours=2)
    async with transaction(ctx.sm) as s:
        owner = Rider(display_name="owner")
        members = [Rider(display_name=f"m{i}") for i in range(20)]
        s.add_all([owner, *members])
        await s.flush()
        owner_id, member_ids = owner.id, [m.id for m in members]
        codes = [await family.invite(s, owner_id, 0, now) for _ in member_ids]  # type: ignore[arg-type]
    for code, mid in zip(codes, member_ids, strict=True):
        async with transaction(ctx.sm) as s:
            await family.join(s, code, mid, now)  # type: ignore[arg-type]

    ports = [f"P{p:04d}-{n:02d}" for p in range(1, 6) for n in range(1, 5)]
    charge_ids = []
    for mid, port in zip(member_ids, ports, strict=True):
        async with transaction(ctx.sm) as s:
            rider = await s.get(Rider, mid)
            charge = await charging.start_charge(s, rider, port, ctx.settings, now)  # type: ignore[arg-type]
            await charging.on_started(s, charge, t0, now)
            charge_ids.append(charge.id)
    await _topup(ctx, owner_id, 5 * BILL_FEN, "t:owner")  # type: ignore[arg-type]

    async def end(cid: int) -> None:
        async with transaction(ctx.sm) as s:
            charge = await s.get(Charge, cid)
            assert charge is not None
            await charging.on_ended(s, charge, t0 + timedelta(hours=1), "user", 100, 3600,
                                    ctx.settings, ctx.clock())

    await asyncio.gather(*(end(cid) for cid in charge_ids))  # type: ignore[arg-type]

    async with ctx.sm() as s:
        charges = list((await s.execute(select(Charge).where(Charge.id.in_(charge_ids))))
                       .scalars())
        owner_bal = await wallet.balance(s, owner_id)  # type: ignore[arg-type]
        owner_sum = await wallet.ledger_sum(s, owner_id)  # type: ignore[arg-type]
        owner_entries = list((await s.execute(select(LedgerEntry).where(
            LedgerEntry.rider_id == owner_id))).scalars())
        member_entries = await s.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.rider_id.in_(member_ids)))
        member_bal = await s.scalar(select(func.coalesce(func.sum(Rider.balance_fen), 0))
                                    .where(Rider.id.in_(member_ids)))
    assert all(c.amount_fen == BILL_FEN for c in charges)
    settled = [c for c in charges if c.state == "settled"]
    due = [c for c in charges if c.state == "ended"]
    assert len(settled) == 5 and len(due) == 15
    assert all(c.payer_rider_id == owner_id and c.paid_fen == BILL_FEN for c in settled)
    assert all(c.paid_fen == 0 and c.payer_rider_id in (None, c.rider_id) for c in due)
    assert owner_bal == 0 == owner_sum
    assert all(e.balance_after_fen >= 0 for e in owner_entries)
    charged = sorted(e.charge_id for e in owner_entries if e.kind == "charge")  # type: ignore[type-var]
    assert charged == sorted(c.id for c in settled)
    assert member_entries == 0 and member_bal == 0
