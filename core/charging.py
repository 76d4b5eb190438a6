"""Charge sessions: requested → started → ended → settled (+ failed, refunded).

A charge is billed from the pile's own record (its timestamps, its energy counter, its meter
samples), never from arrival times, so a late, repeated or reordered event cannot change a bill.
`ended` means the bill is made but still due; `settled` means it is paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from core import commands, outbox, wallet
from core.billing import compute_bill, family, plans, settlement, tariff_snapshot
from core.config import Settings
from core.db import aware, utcnow
from core.errors import (
    BalanceTooLow,
    BillDue,
    InsufficientBalance,
    NoOpenCharge,
    PortBusy,
    PortUnavailable,
    TooManyOpenCharges,
)
from core.heat import heat_coefficient  # not core.wear: no scipy on the settling path
from core.piles import Pile, Port, Site, find_port
from core.riders import Rider

OPEN_STATES = ("requested", "started")
END_REASONS = ("full", "user", "unplugged", "no_load", "fault", "power_loss", "limit")


class Charge(SQLModel, table=True):
    __tablename__ = "charges"
    __table_args__ = (
        # The database, not the code, guarantees one open charge per port: concurrent starts on
        # both SQLite and PostgreSQL end with exactly one row here.
        Index(
            "uq_charges_open_port", "port_id", unique=True,
            sqlite_where=text("state IN ('requested', 'started')"),
            postgresql_where=text("state IN ('requested', 'started')"),
        ),
        UniqueConstraint("pile_id", "session_ref"),
        Index("ix_charges_rider_state", "rider_id", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id")
    port_id: int = Field(foreign_key="ports.id")
    pile_id: str = Field(foreign_key="piles.id")
    port_number: int
    port_code: str
    site_id: str
    session_ref: str | None = Field(default=None, max_length=40)
    state: str = "requested"
    tariff: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    requested_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None  # the pile's clock
    ended_at: datetime | None = None
    end_reason: str | None = None
    failure: str | None = None
    duration_s: int | None = None
    energy_wh: float | None = None  # the pile's own counter, at its resolution (0.1 Wh)
    band_w: int | None = None
    bill: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    amount_fen: int = 0  # what the rider owes after plan, coupons and automatic refunds
    paid_fen: int = 0
    refunded_fen: int = 0
    payer_rider_id: int | None = None  # the family owner when a family wallet pays
    settled_at: datetime | None = None
    last_power_w: float | None = None
    last_energy_wh: float | None = None
    last_meter_at: datetime | None = None
    # Power fell from charging to nothing at this pile time (and we saw it then): without a
    # session_ended within the grace period the charge was interrupted (core.faults).
    power_dropped_at: datetime | None = None
    power_dropped_seen_at: datetime | None = Field(default=None, index=True)
    # Terminal heating per 100 W over the charge: the wear trend predictive maintenance reads.
    heat_per_100w: float | None = None


class MeterSample(SQLModel, table=True):
    __tablename__ = "meter_samples"
    __table_args__ = (Index("ix_meter_samples_charge_ts", "charge_id", "ts"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_id: int = Field(foreign_key="charges.id")
    ts: datetime
    power_w: float
    energy_wh: float
    current_a: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True)
class Live:
    """What `/status` shows: minutes so far, power, energy and the cost if it stopped now."""

    charge: Charge
    minutes: int
    power_w: float | None
    energy_wh: float
    cost_fen: int


async def due_charges(session: AsyncSession, rider_id: int) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(Charge.rider_id == rider_id, Charge.state == "ended")
        .order_by(Charge.id)
    )
    return [c for c in rows.scalars() if c.amount_fen > c.paid_fen]


async def open_charges(session: AsyncSession, rider_id: int) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(Charge.rider_id == rider_id, Charge.state.in_(OPEN_STATES))
        .order_by(Charge.id)
    )
    return list(rows.scalars())


async def open_charge_on_port(session: AsyncSession, port_id: int) -> Charge | None:
    return (
        await session.execute(
            select(Charge).where(Charge.port_id == port_id, Charge.state.in_(OPEN_STATES))
        )
    ).scalars().first()


def port_is_free_for_start(port: Port, pile: Pile) -> bool:
    """A plugged port is fine: riders plug in first, then scan."""
    return (
        pile.online and pile.in_service and not pile.maintenance and not port.maintenance
        and port.status in ("idle", "plugged")
    )


def tariff_for(settings: Settings, site: Site) -> dict[str, Any]:
    name = site.tariff if site.tariff in settings.billing.tariffs else (
        settings.billing.default_tariff)
    return tariff_snapshot(settings.billing.tariffs[name], name)


async def _check_floor(session: AsyncSession, rider: Rider, settings: Settings,
                       now: datetime) -> None:
    """A start needs the floor in the wallet that will pay (the rider's, or their family's),
    an active plan, or an auto top-up that can actually take money."""
    floor = settings.billing.start_min_balance_fen
    rider_id: int = rider.id  # type: ignore[assignment]
    if floor <= 0 or (rider.auto_topup_fen > 0 and auto_topup_available(settings)):
        return
    balance = await wallet.balance(session, rider_id)
    if balance >= floor or await plans.active(session, rider_id, now):
        return
    payer = await family.family_payer(session, rider_id, floor, now)
    if payer is not None and await wallet.balance(session, payer) >= floor:
        return
    raise BalanceTooLow(floor=floor, balance=balance)


async def start_charge(
    session: AsyncSession, rider: Rider, code: str, settings: Settings, now: datetime,
) -> Charge:
    """Ask the pile to start; the rider pays afterwards (post-pay) but never with a bill due."""
    port, pile, site = await find_port(session, code)
    due = await due_charges(session, rider.id)  # type: ignore[arg-type]
    if due:
        raise BillDue(charge_id=due[0].id, amount=sum(c.amount_fen - c.paid_fen for c in due))
    # The rider's row locked (PostgreSQL) so that two starts at once count each other.
    await session.execute(select(Rider.id).where(Rider.id == rider.id).with_for_update())  # type: ignore[arg-type]
    if len(await open_charges(session, rider.id)) >= settings.billing.max_open_charges:  # type: ignore[arg-type]
        raise TooManyOpenCharges(limit=settings.billing.max_open_charges)
    await _check_floor(session, rider, settings, now)
    if not port_is_free_for_start(port, pile) and port.status not in ("charging", "full"):
        raise PortUnavailable(code=port.code)
    if port.status in ("charging", "full") or await open_charge_on_port(session, port.id):  # type: ignore[arg-type]
        raise PortBusy(code=port.code)
    if await plans.reserved_for(session, port.id, now) not in (None, rider.id):  # type: ignore[arg-type]
        raise PortUnavailable(code=port.code, reserved=True)
    charge = Charge(
        rider_id=rider.id, port_id=port.id, pile_id=pile.id, port_number=port.number,  # type: ignore[arg-type]
        port_code=port.code, site_id=site.id, tariff=tariff_for(settings, site), requested_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(charge)
    except IntegrityError as exc:
        raise PortBusy(code=port.code) from exc
    charge.session_ref = f"S{charge.id}"
    await commands.queue(
        session, pile.id, "start", port.number, charge_id=charge.id, session=charge.session_ref,
        max_minutes=settings.piles.max_minutes, max_energy_wh=settings.piles.max_energy_wh,
        now=now,
    )
    return charge


async def stop_charge(
    session: AsyncSession, rider: Rider, charge_id: int | None, now: datetime,
) -> Charge:
    """The rider asks to stop; the bill follows when the pile reports the end."""
    charges = await open_charges(session, rider.id)  # type: ignore[arg-type]
    if charge_id is not None:
        charges = [c for c in charges if c.id == charge_id]
    if not charges:
        raise NoOpenCharge()
    charge = charges[-1]
    await commands.queue(
        session, charge.pile_id, "stop", charge.port_number, charge_id=charge.id,
        session=charge.session_ref, now=now,
    )
    return charge


async def live(session: AsyncSession, charge: Charge, settings: Settings, now: datetime) -> Live:
    started = charge.started_at or charge.requested_at
    seconds = max(0, int((now - started).total_seconds()))
    if charge.last_meter_at is not None and charge.started_at is not None:
        # The pile's clock may run ahead of ours (or a simulator's compressed clock).
        seconds = max(seconds, int((charge.last_meter_at - charge.started_at).total_seconds()))
    energy = charge.last_energy_wh or 0
    samples = await _samples(session, charge.id, None)  # type: ignore[arg-type]
    bill = compute_bill(
        charge.tariff, started_at=aware(started), duration_s=seconds, energy_wh=energy,
        samples=samples, tz=settings.server.timezone, port_limit_w=settings.piles.port_limit_w,
    )
    return Live(charge, seconds // 60, charge.last_power_w, energy, bill.amount_fen)


async def _samples(
    session: AsyncSession, charge_id: int, until: datetime | None,
) -> list[tuple[datetime, float]]:
    stmt = select(MeterSample.ts, MeterSample.power_w).where(MeterSample.charge_id == charge_id)
    if until is not None:
        stmt = stmt.where(MeterSample.ts <= until)
    rows = await session.execute(stmt.order_by(MeterSample.ts))
    return [(aware(ts), p) for ts, p in rows]


async def _heat(session: AsyncSession, charge: Charge) -> float | None:
    """The charge's terminal heating per 100 W (core.wear): the trend that warns of wear-out.
    Ambient is the pile's own last temperature reading, else a mild 25 °C."""
    rows = (await session.execute(
        select(MeterSample.power_w, MeterSample.temperature_c).where(
            MeterSample.charge_id == charge.id, MeterSample.temperature_c.is_not(None)))).all()
    if not rows:
        return None
    pile = await session.get(Pile, charge.pile_id)
    ambient = pile.temperature_c if pile and pile.temperature_c is not None else 25.0
    return heat_coefficient([(p, t) for p, t in rows], ambient_c=ambient)


# --- what the pile tells us -------------------------------------------------------------------


async def on_started(session: AsyncSession, charge: Charge, ts: datetime) -> None:
    # A meter that overtook this event already marked the charge started, without a start
    # time (a meter's time is not the start) and without telling the rider: both happen here.
    if charge.state != "requested" and not (charge.state == "started"
                                            and charge.started_at is None):
        return
    charge.state = "started"
    charge.started_at = ts
    await outbox.enqueue(
        session, charge.rider_id, "charge_started",
        {"charge_id": charge.id, "port": charge.port_code, "tariff": charge.tariff},
        f"started:{charge.id}",
    )


def on_meter(charge: Charge, ts: datetime, power_w: float, energy_wh: float) -> None:
    if charge.state == "requested":
        # A meter sample proves the charge runs even if session_started is still on its way.
        charge.state = "started"
    if charge.state != "started":
        return
    if charge.last_meter_at is None or ts >= charge.last_meter_at:
        charge.last_meter_at = ts
        charge.last_power_w = power_w
        charge.last_energy_wh = energy_wh


async def on_ended(
    session: AsyncSession, charge: Charge, ts: datetime, reason: str, energy_wh: float,
    duration_s: float, settings: Settings, now: datetime,
) -> bool:
    """Close and bill the charge once; returns False when it was already closed."""
    if charge.ended_at is not None or charge.state in ("ended", "settled", "refunded"):
        return False
    if charge.state == "failed" and charge.failure == "rejected":
        return False
    # A start we gave up on (timeout, cancel) that the pile did run is still billed honestly:
    # energy flowed, and losing a charge is as wrong as billing one twice.
    if charge.started_at is not None:
        duration_s = max(0, int((ts - charge.started_at).total_seconds()))
    started = charge.started_at or (ts - timedelta(seconds=duration_s))
    samples = await _samples(session, charge.id, ts)  # type: ignore[arg-type]
    bill = compute_bill(
        charge.tariff, started_at=aware(started), duration_s=duration_s, energy_wh=energy_wh,
        samples=samples, tz=settings.server.timezone, port_limit_w=settings.piles.port_limit_w,
        reason=reason,
    )
    breakdown = await settlement.adjust(
        session, rider_id=charge.rider_id, charge_id=charge.id, pile_id=charge.pile_id,  # type: ignore[arg-type]
        port=charge.port_number, tariff=charge.tariff, bill=bill, started=aware(started),
        ended=aware(ts), reason=reason, energy_wh=energy_wh, samples=samples,
        settings=settings, now=now,
    )
    charge.state = "ended"
    charge.started_at = started
    charge.ended_at = ts
    charge.end_reason = reason
    charge.duration_s = bill.duration_s
    charge.energy_wh = bill.energy_wh
    charge.band_w = bill.band_w
    charge.bill = {**bill.as_dict(), **breakdown.as_dict()}
    charge.heat_per_100w = await _heat(session, charge)
    charge.amount_fen = breakdown.net_fen
    charge.refunded_fen = breakdown.refund_fen
    if breakdown.compensation_fen:
        # Paid whatever happens to the bill: the promise is about the meter, not the payment.
        await wallet.post(session, charge.rider_id, "compensation", breakdown.compensation_fen,
                          f"metering:{charge.id}", charge_id=charge.id,
                          memo=f"meter {breakdown.metering_gap_percent}% over samples")
    paid = await settle(session, charge, now, settings)
    balance = await wallet.balance(session, charge.payer_rider_id or charge.rider_id)
    from core import services  # services → commands, piles; charging is imported lazily there

    await services.lock_after_charge(session, charge, now)
    await outbox.enqueue(
        session, charge.rider_id, "bill",
        {
            "charge_id": charge.id, "port": charge.port_code, "pile": charge.pile_id,
            "reason": reason,
            "bill": charge.bill, "paid": paid, "balance_fen": balance,
            "tariff": charge.tariff, "family": bool(charge.payer_rider_id
                                                    and charge.payer_rider_id != charge.rider_id),
        },
        f"bill:{charge.id}",
    )
    if paid:
        from core import surveys, vouchers

        await surveys.maybe_prompt(session, charge, now, **surveys.prompt_rules(settings))
        site = await session.get(Site, charge.site_id)
        if site is not None:
            await vouchers.on_charge_settled(session, charge, site, now)
    return True


async def end_on_fault(session: AsyncSession, charge: Charge, at: datetime, settings: Settings,
                       now: datetime) -> bool:
    """Close an open charge the pile did not end itself (a fault we detected, a pile gone
    silent): billed from its last reading and only up to the fault. The pile's own end, if it
    ever comes, finds the charge closed and changes nothing."""
    if charge.state not in OPEN_STATES:
        return False
    at = aware(at)
    last = aware(charge.last_meter_at) if charge.last_meter_at else None
    end = max(at, last) if last else at
    if charge.started_at is None:
        first = (await session.execute(select(MeterSample.ts).where(
            MeterSample.charge_id == charge.id).order_by(MeterSample.ts).limit(1))).scalar()
        charge.started_at = aware(first) if first else end
    duration = max(0, int((end - aware(charge.started_at)).total_seconds()))
    return await on_ended(session, charge, end, "fault", charge.last_energy_wh or 0, duration,
                          settings, now)


async def settle(
    session: AsyncSession, charge: Charge, now: datetime, settings: Settings | None = None,
) -> bool:
    """Pay an ended charge if its payer can; otherwise it stays due.

    The payer is the rider's family wallet while the member's monthly limit allows, else the
    rider. The gross charge is one ledger entry; the automatic refund and each coupon are their
    own entries, all in one savepoint so a wallet that cannot pay moves nothing.
    """
    if charge.state != "ended":
        return charge.state == "settled"
    owed = charge.amount_fen - charge.paid_fen
    if owed > 0:
        b = charge.bill or {}
        gross = int(b.get("gross_fen", charge.amount_fen)) - int(b.get("plan_fen", 0))
        payer = await family.family_payer(session, charge.rider_id, owed, now) or charge.rider_id
        if not await _debit(session, charge, payer, gross, b):
            if payer != charge.rider_id:
                payer = charge.rider_id
                if await _debit(session, charge, payer, gross, b):
                    return _settled(charge, payer, now)
            if settings is None or not await auto_topup(session, charge.rider_id, owed,
                                                       settings, now, f"c{charge.id}"):
                return False
            if not await _debit(session, charge, charge.rider_id, gross, b):
                return False
            payer = charge.rider_id
        return _settled(charge, payer, now)
    return _settled(charge, charge.payer_rider_id or charge.rider_id, now)


def _settled(charge: Charge, payer: int, now: datetime) -> bool:
    charge.paid_fen = charge.amount_fen
    charge.payer_rider_id = payer
    charge.state = "settled"
    charge.settled_at = now
    return True


async def _debit(session: AsyncSession, charge: Charge, payer: int, gross: int,
                 b: dict[str, Any]) -> bool:
    if not b.get("refund_fen") and not b.get("coupon_fen"):
        # A single conditional debit is all-or-nothing by itself: no savepoint needed.
        if gross <= 0:
            return True
        try:
            await wallet.post(session, payer, "charge", -gross, f"charge:{charge.id}",
                              charge_id=charge.id, memo=charge.port_code)
        except InsufficientBalance:
            return False
        return True
    try:
        async with session.begin_nested():
            if b.get("refund_fen"):
                await wallet.post(session, payer, "refund", int(b["refund_fen"]),
                                  f"refund:{charge.id}:auto", charge_id=charge.id,
                                  memo=f"port fault at {charge.port_code}")
            if b.get("coupon_fen"):
                await wallet.post(session, payer, "coupon", int(b["coupon_fen"]),
                                  f"coupon:{charge.id}", charge_id=charge.id,
                                  memo=",".join(str(i) for i in b.get("coupon_ids", [])))
            if gross > 0:
                await wallet.post(session, payer, "charge", -gross, f"charge:{charge.id}",
                                  charge_id=charge.id, memo=charge.port_code)
    except InsufficientBalance:
        return False
    return True


def auto_topup_available(settings: Settings) -> bool:
    """Whether a provider here can take money with nobody present. Only the demo's sandbox can:
    Telegram Payments needs the rider at an invoice, and WeChat Pay's 委托代扣 (papay) contract
    is not built, so production offers no auto top-up rather than one that never pays."""
    return "sandbox" in settings.payments.providers


async def auto_topup(session: AsyncSession, rider_id: int, needed_fen: int, settings: Settings,
                     now: datetime, key: str) -> bool:
    """自动续费: a rider who opted in is topped up by their chosen amount (or what the bill
    needs, if more) before a bill would stay due."""
    rider = await session.get(Rider, rider_id)
    if rider is None or rider.auto_topup_fen <= 0 or not auto_topup_available(settings):
        return False
    from core.billing import payments

    short = needed_fen - rider.balance_fen
    amount = max(rider.auto_topup_fen, short)
    payment = await payments.find(session, f"AUTO-{rider_id}-{key}")
    if payment is None:
        payment = payments.Payment(
            rider_id=rider_id, provider="sandbox", out_trade_no=f"AUTO-{rider_id}-{key}",
            amount_fen=amount, purpose="auto_topup", created_at=now)
        session.add(payment)
        await session.flush()
    _, first = await payments.confirm(session, payment.out_trade_no, payment.amount_fen,
                                      f"sandbox-auto-{key}", settings, now)
    if first:
        await outbox.enqueue(session, rider_id, "auto_topup",
                             {"amount_fen": payment.amount_fen,
                              "balance_fen": await wallet.balance(session, rider_id)},
                             f"auto_topup:{payment.out_trade_no}")
    return True


async def pay_due(session: AsyncSession, rider_id: int, now: datetime,
                  settings: Settings | None = None) -> tuple[int, int]:
    """Pay what the wallet can of the rider's due bills, oldest first: (paid count, still due)."""
    paid = 0
    for charge in await due_charges(session, rider_id):
        if await settle(session, charge, now, settings):
            paid += 1
    remaining = sum(c.amount_fen - c.paid_fen for c in await due_charges(session, rider_id))
    return paid, remaining


async def on_start_rejected(session: AsyncSession, charge: Charge, error: str | None) -> None:
    if charge.state != "requested":
        return
    charge.state = "failed"
    charge.failure = "rejected"
    await outbox.enqueue(
        session, charge.rider_id, "start_failed",
        {"charge_id": charge.id, "port": charge.port_code, "error": (error or "")[:60]},
        f"start_failed:{charge.id}",
    )


async def expire_requests(
    session: AsyncSession, now: datetime, timeout_s: float,
) -> list[int]:
    """Starts the pile never confirmed: tell the rider, and tell the pile to stand down."""
    rows = await session.execute(
        select(Charge).where(
            Charge.state == "requested",
            Charge.requested_at < now - timedelta(seconds=timeout_s),
        )
    )
    expired = []
    for charge in rows.scalars():
        charge.state = "failed"
        charge.failure = "timeout"
        await commands.queue(
            session, charge.pile_id, "stop", charge.port_number, charge_id=charge.id,
            session=charge.session_ref, now=now,
        )
        await outbox.enqueue(
            session, charge.rider_id, "start_failed",
            {"charge_id": charge.id, "port": charge.port_code, "error": "timeout"},
            f"start_failed:{charge.id}",
        )
        expired.append(charge.id)  # type: ignore[arg-type]
    return expired


async def recent(session: AsyncSession, rider_id: int, limit: int = 5) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(Charge.rider_id == rider_id, Charge.state != "failed")
        .order_by(Charge.id.desc()).limit(limit)
    )
    return list(rows.scalars())


async def port_view(session: AsyncSession, code: str) -> tuple[Port, Pile, Site, bool]:
    port, pile, site = await find_port(session, code)
    busy = await open_charge_on_port(session, port.id) is not None  # type: ignore[arg-type]
    return port, pile, site, busy
