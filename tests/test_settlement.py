"""Settlement: automatic fault refunds, coupons, plans, the metering promise, disputes, auto
top-up and reserved ports — each visible on the bill and in the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.scheduler import sweep_disputes
from core import charging, wallet
from core.billing import coupons, disputes, plans
from core.charging import Charge
from core.db import transaction
from core.errors import PortUnavailable
from core.outbox import OutboxMessage
from core.riders import Rider, rider_for
from core.wallet import LedgerEntry
from tests.conftest import PILE_SECRET, Running, make_settings, seed_city, start_server
from tests.journey import PileClient

TARIFFS = {
    "minute": {"mode": "time", "fen_per_hour": 60, "unit_minutes": 1, "free_minutes": 0},
    "minute_min_fee": {"mode": "time", "fen_per_hour": 60, "unit_minutes": 1,
                       "free_minutes": 0, "min_fee_fen": 100},
    "energy": {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80,
               "free_minutes": 0},
}


@asynccontextmanager
async def _server(db_url: str, tariff: str) -> AsyncIterator[Running]:
    settings = make_settings(db_url, billing={"tariffs": TARIFFS, "default_tariff": "minute"})
    async with start_server(settings, notifier=False) as server:
        await seed_city(server.ctx, ports=4, tariff=tariff)
        yield server


async def _rider(server: Running, name: str, balance: int = 0) -> int:
    async with transaction(server.ctx.sm) as s:
        rider = await rider_for(s, "webchat", name)
        await s.flush()
        if balance:
            await wallet.post(s, rider.id, "topup", balance, f"seed:{name}")  # type: ignore[arg-type]
        return rider.id  # type: ignore[return-value]


async def _charge(server: Running, rider_id: int, port: int, minutes: int = 60, **kw) -> Charge:  # type: ignore[no-untyped-def]
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
    now = datetime.now(UTC)
    await pile.post([pile.event("heartbeat", now)])
    async with transaction(server.ctx.sm) as s:
        rider = await s.get(Rider, rider_id)
        charge = await charging.start_charge(s, rider, f"P0001-{port:02d}",  # type: ignore[arg-type]
                                             server.ctx.settings, now)
        ref, cid = charge.session_ref, charge.id
    await pile.run_charge(port, ref, now - timedelta(minutes=minutes + 1), minutes, **kw)  # type: ignore[arg-type]
    async with server.ctx.sm() as s:
        return await s.get(Charge, cid)  # type: ignore[return-value]


async def _ledger(server: Running, rider_id: int) -> list[tuple[str, int]]:
    async with server.ctx.sm() as s:
        rows = await s.execute(select(LedgerEntry.kind, LedgerEntry.amount_fen)
                               .where(LedgerEntry.rider_id == rider_id).order_by(LedgerEntry.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def _reconciled(server: Running, rider_id: int) -> int:
    async with server.ctx.sm() as s:
        bal, total = await wallet.balance(s, rider_id), await wallet.ledger_sum(s, rider_id)
    assert bal == total >= 0
    return bal


async def test_a_fault_refunds_what_was_charged_after_it_began_and_the_minimum_fee(
    db_url: str,
) -> None:
    async with _server(db_url, "minute_min_fee") as server:
        rider = await _rider(server, "fault-rider", 500)
        charge = await _charge(server, rider, 1, 60, reason="fault", fault_at_minute=20)
        b = charge.bill or {}
        # 60 min at 1 fen/min = 60, raised to the 100 minimum; fair = 20 min, no minimum = 20.
        assert (b["gross_fen"], b["refund_fen"], charge.amount_fen) == (100, 80, 20)
        assert charge.state == "settled"
        assert await _ledger(server, rider) == [("topup", 500), ("refund", 80), ("charge", -100)]
        assert await _reconciled(server, rider) == 480


async def test_the_best_coupon_is_applied_once_and_shown_on_the_bill(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        rider = await _rider(server, "coupon-rider", 500)
        async with transaction(server.ctx.sm) as s:
            small = await coupons.issue(s, rider, amount_fen=20, reason="test")
            half = await coupons.issue(s, rider, percent_off=50, reason="test")
            await coupons.issue(s, rider, amount_fen=50, days=-1, reason="expired")
        charge = await _charge(server, rider, 1, 60)
        b = charge.bill or {}
        assert (b["gross_fen"], b["coupon_fen"], charge.amount_fen) == (60, 30, 30)
        assert b["coupon_ids"] == [half.id]
        async with server.ctx.sm() as s:
            assert (await s.get(coupons.Coupon, small.id)).used_at is None  # type: ignore[union-attr]
            bill = (await s.execute(select(OutboxMessage).where(
                OutboxMessage.kind == "bill"))).scalars().one()
        assert bill.payload["bill"]["coupon_fen"] == 30
        assert await _ledger(server, rider) == [("topup", 500), ("coupon", 30), ("charge", -60)]
        assert await _reconciled(server, rider) == 470


async def test_plan_minutes_pay_for_the_charge_first(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        rider = await _rider(server, "plan-rider", 10_000)
        async with transaction(server.ctx.sm) as s:
            plan = await plans.buy(s, rider, "family_pack", server.ctx.settings,
                                   datetime.now(UTC), "k1")
            again = await plans.buy(s, rider, "family_pack", server.ctx.settings,
                                    datetime.now(UTC), "k1")
        assert again.id == plan.id  # the same purchase replayed buys nothing more
        charge = await _charge(server, rider, 2, 45)
        b = charge.bill or {}
        assert (b["plan_minutes"], b["plan_fen"], charge.amount_fen) == (45, 45, 0)
        async with server.ctx.sm() as s:
            assert (await s.get(plans.RiderPlan, plan.id)).minutes_used == 45  # type: ignore[union-attr]
        assert await _ledger(server, rider) == [("topup", 10_000), ("charge", -8200)]


async def test_a_meter_running_ahead_pays_ten_times_the_overcharge_and_a_dispute_refunds(
    db_url: str,
) -> None:
    async with _server(db_url, "energy") as server:
        rider = await _rider(server, "meter-rider", 500)
        # 250 W for an hour is ~250 Wh by the samples; the pile's counter says 300 Wh.
        charge = await _charge(server, rider, 1, 60, reported_wh=300)
        b = charge.bill or {}
        assert b["metered_wh"] == 250 and b["metering_gap_percent"] == 20.0
        honest = round((b["metered_wh"]) * 180 / 1000)
        assert b["gross_fen"] == 54 and b["compensation_fen"] == 10 * (54 - honest)
        kinds = [k for k, _ in await _ledger(server, rider)]
        assert kinds == ["topup", "compensation", "charge"]
        async with transaction(server.ctx.sm) as s:
            c = await s.get(Charge, charge.id)
            d = await disputes.open_dispute(s, c, rider, "rider", server.ctx.settings,
                                            datetime.now(UTC))
        assert d.state == "resolved" and d.refund_fen == 54  # evident: refunded at once
        await _reconciled(server, rider)


async def test_an_unanswered_dispute_is_escalated_after_its_deadline(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        rider = await _rider(server, "dispute-rider", 500)
        charge = await _charge(server, rider, 3, 30)
        async with transaction(server.ctx.sm) as s:
            d = await disputes.open_dispute(s, await s.get(Charge, charge.id), rider, "rider",
                                            server.ctx.settings, datetime.now(UTC))
        assert d.state == "open"
        await sweep_disputes(server.ctx)
        async with server.ctx.sm() as s:
            assert (await s.get(disputes.Dispute, d.id)).state == "open"  # type: ignore[union-attr]
        later = datetime.now(UTC) + timedelta(hours=25)
        server.ctx.clock = lambda later=later: later
        await sweep_disputes(server.ctx)
        await sweep_disputes(server.ctx)  # once only
        async with server.ctx.sm() as s:
            assert (await s.get(disputes.Dispute, d.id)).state == "escalated"  # type: ignore[union-attr]
            told = (await s.execute(select(OutboxMessage).where(
                OutboxMessage.kind == "dispute_escalated"))).scalars().all()
        assert len(told) == 1


async def test_staff_partial_refund_is_a_ledger_entry_once(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        rider = await _rider(server, "refund-rider", 500)
        charge = await _charge(server, rider, 1, 60)
        now = datetime.now(UTC)
        async with transaction(server.ctx.sm) as s:
            c = await s.get(Charge, charge.id)
            assert await disputes.refund(s, c, 20, "staff-1", "socket was loose", now) == 20
            assert await disputes.refund(s, c, 20, "staff-1", "socket was loose", now) == 0
        async with transaction(server.ctx.sm) as s:
            c = await s.get(Charge, charge.id)
            with pytest.raises(disputes.RefundTooLarge):
                await disputes.refund(s, c, 41, "staff-2", "too much", now)
        assert await _reconciled(server, rider) == 500 - 60 + 20


async def test_auto_topup_pays_a_bill_the_wallet_could_not(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        rider = await _rider(server, "auto-rider", 0)
        async with transaction(server.ctx.sm) as s:
            r = await s.get(Rider, rider)
            r.auto_topup_fen, r.auto_topup_below_fen = 2000, 500  # type: ignore[union-attr]
        charge = await _charge(server, rider, 1, 60)
        assert charge.state == "settled"
        assert await _ledger(server, rider) == [("topup", 2000), ("charge", -60)]
        async with server.ctx.sm() as s:
            kinds = set((await s.execute(select(OutboxMessage.kind))).scalars())
        assert "auto_topup" in kinds


async def test_a_reserved_port_starts_only_for_its_courier(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        courier = await _rider(server, "courier", 20_000)
        other = await _rider(server, "other", 500)
        await _charge(server, courier, 4, 30)
        async with transaction(server.ctx.sm) as s:
            port_id = (await s.execute(select(Charge.port_id))).scalars().first()
            await plans.buy(s, courier, "courier_fast", server.ctx.settings, datetime.now(UTC),
                            "c1", port_id=port_id)
        async with transaction(server.ctx.sm) as s:
            with pytest.raises(PortUnavailable):
                await charging.start_charge(s, await s.get(Rider, other), "P0001-04",  # type: ignore[arg-type]
                                            server.ctx.settings, datetime.now(UTC))
        async with transaction(server.ctx.sm) as s:
            ok = await charging.start_charge(s, await s.get(Rider, courier), "P0001-04",  # type: ignore[arg-type]
                                             server.ctx.settings, datetime.now(UTC))
        assert ok.state == "requested"
