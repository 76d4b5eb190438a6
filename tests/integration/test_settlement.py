"""Settlement: automatic fault refunds, coupons, plans, the metering promise, disputes, auto
top-up and reserved ports — each visible on the bill and in the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.scheduler import sweep_disputes
from core.billing import coupons, disputes, plans, wallet
from core.billing.wallet import LedgerEntry
from core.charging import sessions as charging
from core.charging.tables import Charge
from core.db import transaction
from core.errors import PortUnavailable
from core.outbox import OutboxMessage
from core.riders.identities import rider_for
from core.riders.tables import Rider
from tests.support.journey import PileClient
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings

TARIFFS = {
    "minute": {"mode": "time", "fen_per_hour": 60, "unit_minutes": 1, "free_minutes": 0},
    "minute_min_fee": {"mode": "time", "fen_per_hour": 60, "unit_minutes": 1,
                       "free_minutes": 0, "min_fee_fen": 100},
    "energy": {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80,
               "free_minutes": 0},
    # bot.toml's `by_time` (issue 14's site): ¥0.25/h in started 30-minute blocks, 1 min free.
    "by_time": {"mode": "time", "fen_per_hour": 25, "unit_minutes": 30, "free_minutes": 1},
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


async def _start(server: Running, rider_id: int, port: int
                 ) -> tuple[PileClient, datetime, str, int]:
    """The pile is online and the rider has started a charge on `port`: (pile, now, ref, id)."""
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
    now = datetime.now(UTC)
    await pile.post([pile.event("heartbeat", now)])
    async with transaction(server.ctx.sm) as s:
        rider = await s.get(Rider, rider_id)
        charge = await charging.start_charge(s, rider, f"P0001-{port:02d}",  # type: ignore[arg-type]
                                             server.ctx.settings, now)
        return pile, now, charge.session_ref, charge.id  # type: ignore[return-value]


async def _charge(server: Running, rider_id: int, port: int, minutes: int = 60, **kw) -> Charge:  # type: ignore[no-untyped-def]
    pile, now, ref, cid = await _start(server, rider_id, port)
    await pile.run_charge(port, ref, now - timedelta(minutes=minutes + 1), minutes, **kw)  # type: ignore[arg-type]
    async with server.ctx.sm() as s:
        return await s.get(Charge, cid)  # type: ignore[return-value]


async def _short_charge(server: Running, rider_id: int, port: int, seconds: int, *,
                        reason: str, energy_wh: int, fault_at_s: int | None = None) -> Charge:
    """A charge the pile reports second by second: started, a meter reading, maybe a fault
    event, then its end `seconds` after the start."""
    pile, now, ref, cid = await _start(server, rider_id, port)
    t0 = now - timedelta(minutes=10)
    events = [pile.event("session_started", t0, port=port, session=ref),
              pile.event("meter", t0 + timedelta(seconds=min(5, seconds)), port=port,
                         session=ref, power_w=250.0 if energy_wh else 0.0, energy_wh=0)]
    if fault_at_s is not None:
        events.append(pile.event("fault", t0 + timedelta(seconds=fault_at_s), port=port,
                                 code="overload"))
    events.append(pile.event("session_ended", t0 + timedelta(seconds=seconds), port=port,
                             session=ref, reason=reason, duration_s=seconds,
                             energy_wh=energy_wh))
    await pile.post(events)
    async with server.ctx.sm() as s:
        return await s.get(Charge, cid)  # type: ignore[return-value]


async def _starts_again(server: Running, rider_id: int, port: int) -> bool:
    """A due bill would block the next start (BillDue); a free charge must not."""
    async with transaction(server.ctx.sm) as s:
        charge = await charging.start_charge(s, await s.get(Rider, rider_id),  # type: ignore[arg-type]
                                             f"P0001-{port:02d}", server.ctx.settings,
                                             datetime.now(UTC))
    return charge.state == "requested"


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


async def test_a_charge_cut_by_a_fault_within_the_free_minute_bills_and_refunds_nothing(
    db_url: str,
) -> None:
    async with _server(db_url, "by_time") as server:
        rider = await _rider(server, "cut-rider", 0)
        # Overload 10 s in, the pile ends the session at 12 s: 12 s ≤ 60 s free → ¥0, so the
        # message's "you pay only up to the fault" holds with nothing to refund either.
        charge = await _short_charge(server, rider, 1, 12, reason="fault", energy_wh=1,
                                     fault_at_s=10)
        b = charge.bill or {}
        assert (b["amount_fen"], b["gross_fen"], b["refund_fen"], b["net_fen"]) == (0, 0, 0, 0)
        assert (charge.amount_fen, charge.refunded_fen, charge.state) == (0, 0, "settled")
        assert b["fault_code"] == "overload"
        assert await _ledger(server, rider) == []  # no ¥0.12 charged, nothing to refund
        assert await _starts_again(server, rider, 2)


async def test_a_fault_in_the_free_minute_refunds_a_charge_that_ran_on(db_url: str) -> None:
    async with _server(db_url, "by_time") as server:
        rider = await _rider(server, "ran-on-rider", 100)
        # The fault began at 40 s but the pile ended the session only at 5 min: the bill for
        # 5 min is 1 block (300 − 60 = 240 s → 30 min × 25/60 = 12.5 → 13), the fair bill up to
        # the fault is 40 s ≤ 60 s free → 0, so all 13 fen come back.
        charge = await _short_charge(server, rider, 1, 300, reason="fault", energy_wh=4,
                                     fault_at_s=40)
        b = charge.bill or {}
        assert (b["gross_fen"], b["refund_fen"], charge.amount_fen) == (13, 13, 0)
        # Refunded in full before any money moved: the wallet sees nothing at all.
        assert await _ledger(server, rider) == [("topup", 100)]
        assert await _reconciled(server, rider) == 100


@pytest.mark.parametrize(("reason", "energy_wh"), [("no_load", 0), ("no_load", 2),
                                                   ("fault", 0), ("user", 0)])
async def test_a_charge_that_delivered_no_energy_costs_nothing_and_blocks_nothing(
    db_url: str, reason: str, energy_wh: int,
) -> None:
    async with _server(db_url, "by_time") as server:
        rider = await _rider(server, "no-load-rider", 0)
        # "No charger detected" after 3 min (or a relay that never closed): 3 min would be one
        # block (13 fen), but nothing flowed, so nothing is due and the next start is not held.
        charge = await _short_charge(server, rider, 1, 180, reason=reason, energy_wh=energy_wh)
        b = charge.bill or {}
        assert (b["gross_fen"], b["net_fen"], b["plan_minutes"]) == (0, 0, 0)
        assert (charge.amount_fen, charge.state) == (0, "settled")
        assert await _ledger(server, rider) == []
        assert await _starts_again(server, rider, 2)


async def test_a_decimal_energy_counter_is_billed_and_judged_exactly(db_url: str) -> None:
    from core.billing import settlement
    from core.billing.tariffs import compute_bill

    async with _server(db_url, "energy") as server:
        rider = await _rider(server, "decimal-rider", 500)
        t0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
        # 250 W held for 2 h by the samples = 500 Wh; the counter says 512.5 Wh (2.5 % ahead).
        samples = [(t0 + timedelta(minutes=m, seconds=30), 250.0) for m in range(120)]
        tariff = TARIFFS["energy"]
        bill = compute_bill(tariff, started_at=t0, duration_s=7200, energy_wh=512.5,
                            samples=samples)
        assert (bill.amount_fen, bill.energy_wh) == (92, 512.5)  # 0.5125 × 180 = 92.25 → 92
        async with transaction(server.ctx.sm) as s:
            b = await settlement.adjust(
                s, rider_id=rider, charge_id=0, pile_id="P0001", port=1, tariff=tariff,
                bill=bill, started=t0, ended=t0 + timedelta(hours=2), reason="full",
                energy_wh=512.5, samples=samples, settings=server.ctx.settings,
                now=datetime.now(UTC))
        # metered 500 Wh; gap (512.5 − 500) / 500 = 2.5 %; honest 0.5 × 180 = 90;
        # 10 × (92 − 90) = 20 fen.
        assert (b.metered_wh, b.metering_gap_percent, b.compensation_fen) == (500, 2.5, 20)
        assert settlement.integrate_wh([(t0, 183.4), (t0 + timedelta(hours=1), 183.4)], t0,
                                       t0 + timedelta(hours=1)) == 183.4


async def test_the_best_coupon_is_applied_once_and_shown_on_the_bill(db_url: str) -> None:
    async with _server(db_url, "minute") as server:
        rider = await _rider(server, "coupon-rider", 500)
        async with transaction(server.ctx.sm) as s:
            now = server.ctx.clock()
            small = await coupons.issue(s, rider, amount_fen=20, reason="test", now=now)
            half = await coupons.issue(s, rider, percent_off=50, reason="test", now=now)
            await coupons.issue(s, rider, amount_fen=50, days=-1, reason="expired", now=now)
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
