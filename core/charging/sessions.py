"""Charge sessions: requested → started → ended → settled (+ failed, refunded).

A charge is billed from the pile's own record (its timestamps, its energy counter, its meter
samples), never from arrival times, so a late, repeated or reordered event cannot change a bill.
`ended` means the bill is made but still due; `settled` means it is paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core import outbox
from core.billing import family, plans, settlement, wallet
from core.billing.tariffs import compute_bill, tariff_snapshot
from core.charging.lifecycle import ChargeBilled, billed
from core.charging.paying import auto_topup_available, settle
from core.charging.queries import due_charges, meter_samples, open_charge_on_port, open_charges
from core.charging.tables import OPEN_STATES, Charge, ChargeState, MeterSample
from core.config import Settings
from core.db import aware, saved_id
from core.errors import (
    BalanceTooLow,
    BillDue,
    NoOpenCharge,
    PortBusy,
    PortUnavailable,
    TooManyOpenCharges,
)
from core.faults.heat import heat_coefficient  # not core.faults.wear: no scipy on the settling path
from core.notices.charging import BillNotice, ChargeStartedNotice, StartFailedNotice
from core.piles import commands
from core.piles.fleet import find_port
from core.piles.tables import Pile, Port, PortStatusValue, Site
from core.riders.tables import Rider


@dataclass(frozen=True)
class Live:
    """What `/status` shows: minutes so far, power, energy and the cost if it stopped now."""

    charge: Charge
    minutes: int
    power_w: float | None
    energy_wh: float
    cost_fen: int


def port_is_free_for_start(port: Port, pile: Pile) -> bool:
    """A plugged port is fine: riders plug in first, then scan."""
    return (
        pile.online and pile.in_service and not pile.maintenance and not port.maintenance
        and port.status in (PortStatusValue.idle, PortStatusValue.plugged)
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
    rider_id = saved_id(rider)
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
    rider_id, port_id = saved_id(rider), saved_id(port)
    due = await due_charges(session, rider_id)
    if due:
        raise BillDue(charge_id=due[0].id, amount=sum(c.amount_fen - c.paid_fen for c in due))
    # The rider's row locked (PostgreSQL) so that two starts at once count each other.
    await session.execute(
        select(col(Rider.id)).where(col(Rider.id) == rider_id).with_for_update())
    if len(await open_charges(session, rider_id)) >= settings.billing.max_open_charges:
        raise TooManyOpenCharges(limit=settings.billing.max_open_charges)
    await _check_floor(session, rider, settings, now)
    in_use = port.status in (PortStatusValue.charging, PortStatusValue.full)
    if not port_is_free_for_start(port, pile) and not in_use:
        raise PortUnavailable(code=port.code)
    if in_use or await open_charge_on_port(session, port_id):
        raise PortBusy(code=port.code)
    if await plans.reserved_for(session, port_id, now) not in (None, rider_id):
        raise PortUnavailable(code=port.code, reserved=True)
    charge = Charge(
        rider_id=rider_id, port_id=port_id, pile_id=pile.id, port_number=port.number,
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
    charges = await open_charges(session, saved_id(rider))
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
    samples = await meter_samples(session, saved_id(charge), None)
    bill = compute_bill(
        charge.tariff, started_at=aware(started), duration_s=seconds, energy_wh=energy,
        samples=samples, tz=settings.server.timezone, port_limit_w=settings.piles.port_limit_w,
    )
    return Live(charge, seconds // 60, charge.last_power_w, energy, bill.amount_fen)


async def _heat(session: AsyncSession, charge: Charge) -> float | None:
    """The charge's terminal heating per 100 W (core.wear): the trend that warns of wear-out.
    Ambient is the pile's own last temperature reading, else a mild 25 °C."""
    rows = (await session.execute(
        select(col(MeterSample.power_w), col(MeterSample.temperature_c)).where(
            col(MeterSample.charge_id) == charge.id,
            col(MeterSample.temperature_c).is_not(None)))).all()
    if not rows:
        return None
    pile = await session.get(Pile, charge.pile_id)
    ambient = pile.temperature_c if pile and pile.temperature_c is not None else 25.0
    return heat_coefficient([(p, t) for p, t in rows if t is not None], ambient_c=ambient)


# --- what the pile tells us -------------------------------------------------------------------


async def on_started(session: AsyncSession, charge: Charge, ts: datetime, now: datetime) -> None:
    # A meter that overtook this event already marked the charge started, without a start
    # time (a meter's time is not the start) and without telling the rider: both happen here.
    if charge.state != ChargeState.requested and not (charge.state == ChargeState.started
                                                      and charge.started_at is None):
        return
    charge.state = ChargeState.started
    charge.started_at = ts
    await outbox.enqueue(
        session, charge.rider_id,
        ChargeStartedNotice(charge_id=charge.id, port=charge.port_code, tariff=charge.tariff),
        f"started:{charge.id}", now=now,
    )


def on_meter(charge: Charge, ts: datetime, power_w: float, energy_wh: float) -> None:
    if charge.state == ChargeState.requested:
        # A meter sample proves the charge runs even if session_started is still on its way.
        charge.state = ChargeState.started
    if charge.state != ChargeState.started:
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
    if charge.ended_at is not None or charge.state in (
            ChargeState.ended, ChargeState.settled, ChargeState.refunded):
        return False
    if charge.state == ChargeState.failed and charge.failure == "rejected":
        return False
    # A start we gave up on (timeout, cancel) that the pile did run is still billed honestly:
    # energy flowed, and losing a charge is as wrong as billing one twice.
    if charge.started_at is not None:
        duration_s = max(0, int((ts - charge.started_at).total_seconds()))
    started = charge.started_at or (ts - timedelta(seconds=duration_s))
    samples = await meter_samples(session, saved_id(charge), ts)
    bill = compute_bill(
        charge.tariff, started_at=aware(started), duration_s=duration_s, energy_wh=energy_wh,
        samples=samples, tz=settings.server.timezone, port_limit_w=settings.piles.port_limit_w,
        reason=reason,
    )
    breakdown = await settlement.adjust(
        session, rider_id=charge.rider_id, charge_id=saved_id(charge), pile_id=charge.pile_id,
        port=charge.port_number, tariff=charge.tariff, bill=bill, started=aware(started),
        ended=aware(ts), reason=reason, energy_wh=energy_wh, samples=samples,
        settings=settings, now=now,
    )
    charge.state = ChargeState.ended
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
    await _announce_bill(session, charge, reason, paid, settings, now)
    return True


async def _announce_bill(session: AsyncSession, charge: Charge, reason: str, paid: bool,
                         settings: Settings, now: datetime) -> None:
    """The bill message, then whatever listens for billed charges (core.charging.lifecycle)."""
    balance = await wallet.balance(session, charge.payer_rider_id or charge.rider_id)
    await outbox.enqueue(
        session, charge.rider_id,
        BillNotice(
            charge_id=charge.id, port=charge.port_code, pile=charge.pile_id,
            reason=reason, bill=charge.bill, paid=paid, balance_fen=balance,
            tariff=charge.tariff, family=bool(charge.payer_rider_id
                                              and charge.payer_rider_id != charge.rider_id),
        ),
        f"bill:{charge.id}", now=now,
    )
    await billed(session, ChargeBilled(charge=charge, paid=paid, settings=settings, now=now))


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
        first = (await session.execute(select(col(MeterSample.ts)).where(
            col(MeterSample.charge_id) == charge.id).order_by(col(MeterSample.ts)).limit(1)
        )).scalar()
        charge.started_at = aware(first) if first else end
    duration = max(0, int((end - aware(charge.started_at)).total_seconds()))
    return await on_ended(session, charge, end, "fault", charge.last_energy_wh or 0, duration,
                          settings, now)


async def on_start_rejected(session: AsyncSession, charge: Charge, error: str | None,
                            now: datetime) -> None:
    if charge.state != ChargeState.requested:
        return
    charge.state = ChargeState.failed
    charge.failure = "rejected"
    await outbox.enqueue(
        session, charge.rider_id,
        StartFailedNotice(charge_id=charge.id, port=charge.port_code, error=(error or "")[:60]),
        f"start_failed:{charge.id}", now=now,
    )


async def expire_requests(
    session: AsyncSession, now: datetime, timeout_s: float,
) -> list[int]:
    """Starts the pile never confirmed: tell the rider, and tell the pile to stand down."""
    rows = await session.execute(
        select(Charge).where(
            col(Charge.state) == ChargeState.requested,
            col(Charge.requested_at) < now - timedelta(seconds=timeout_s),
        )
    )
    expired: list[int] = []
    for charge in rows.scalars():
        charge.state = ChargeState.failed
        charge.failure = "timeout"
        await commands.queue(
            session, charge.pile_id, "stop", charge.port_number, charge_id=charge.id,
            session=charge.session_ref, now=now,
        )
        await outbox.enqueue(
            session, charge.rider_id,
            StartFailedNotice(charge_id=charge.id, port=charge.port_code, error="timeout"),
            f"start_failed:{charge.id}", now=now,
        )
        expired.append(saved_id(charge))
    return expired


async def recent(session: AsyncSession, rider_id: int, limit: int = 5) -> list[Charge]:
    rows = await session.execute(
        select(Charge).where(col(Charge.rider_id) == rider_id,
                             col(Charge.state) != ChargeState.failed)
        .order_by(col(Charge.id).desc()).limit(limit)
    )
    return list(rows.scalars())


async def port_view(session: AsyncSession, code: str) -> tuple[Port, Pile, Site, bool]:
    port, pile, site = await find_port(session, code)
    busy = await open_charge_on_port(session, saved_id(port)) is not None
    return port, pile, site, busy
