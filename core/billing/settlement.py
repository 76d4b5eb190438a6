"""From a finished charge to what the rider owes: plan minutes, automatic refunds, coupons and
the metering promise — each shown on the bill, each a ledger entry when money moves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.billing import coupons, plans
from core.billing.tariffs import (
    Bill,
    Reading,
    compute_bill,
    delivered_no_energy,
    exact,
    round_half_up,
)
from core.config import Settings
from core.db import saved_id
from core.faults.lookup import first_during, hit_at

FAULT_ENDS = ("fault", "power_loss")


@dataclass
class Breakdown:
    gross_fen: int
    plan_minutes: int = 0
    plan_fen: int = 0
    refund_fen: int = 0  # automatic: what was charged after a fault began, and the minimum fee
    fault_at: str | None = None
    fault_code: str | None = None
    coupon_fen: int = 0
    coupon_ids: list[int] = field(default_factory=list)
    metered_wh: int | None = None  # energy from the meter samples
    metering_gap_percent: float = 0.0
    compensation_fen: int = 0
    net_fen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def integrate_wh(samples: list[tuple[datetime, float]], start: datetime, end: datetime) -> float:
    """Energy from the power samples (trapezoids between readings; the first reading held back
    to the start and the last one on to the end), as an independent check of the pile's own
    energy counter."""
    return float(_integrate(samples, start, end))


def _integrate(samples: list[tuple[datetime, float]], start: datetime, end: datetime) -> Fraction:
    # Exact, like the bill: a 183.4 W reading is 1834/10 W and time is whole microseconds, so
    # the metered energy, the gap and the honest bill it implies carry no float noise.
    pts = [(ts, exact(p)) for ts, p in samples if start <= ts <= end]
    if len(pts) < 2:
        return Fraction(0)

    def hours(a: datetime, b: datetime) -> Fraction:
        d = b - a
        return Fraction((d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds,
                        3_600_000_000)

    wh = pts[0][1] * hours(start, pts[0][0])
    for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False):
        wh += (p0 + p1) / 2 * hours(t0, t1)
    return wh + pts[-1][1] * hours(pts[-1][0], end)


async def fault_start(session: AsyncSession, pile_id: str, port: int, start: datetime,
                      end: datetime) -> tuple[datetime, str] | None:
    """When the fault that ended a charge began, and its cause (core.faults keeps one row per
    fault, from the pile's reports and from our own detection)."""
    fault = await first_during(session, pile_id, port, start, end)
    if fault is None:
        return None
    hit = hit_at(fault, start)
    return min(hit or start, end), fault.cause  # first_during found it hitting [start, end]


async def adjust(
    session: AsyncSession, *, rider_id: int, charge_id: int, pile_id: str, port: int,
    tariff: dict[str, Any], bill: Bill, started: datetime, ended: datetime, reason: str,
    energy_wh: Reading, samples: list[tuple[datetime, float]], settings: Settings, now: datetime,
) -> Breakdown:
    # A charge that delivered nothing is free (DESIGN §5), judged here with the pile's end
    # reason too: a `no_load` end is free even when the counter crept up a watt-hour and the bill
    # was computed without the reason.
    gross = 0 if delivered_no_energy(energy_wh, reason) else bill.amount_fen
    b = Breakdown(gross_fen=gross)
    tz, limit = settings.server.timezone, settings.piles.port_limit_w

    # A fault ends the charge early: the rider pays only up to the fault, without a minimum.
    if reason in FAULT_ENDS:
        found = await fault_start(session, pile_id, port, started, ended)
        at, b.fault_code = found if found else (ended, None)
        upto = max(0, int((at - started).total_seconds()))
        fair = compute_bill({**tariff, "min_fee_fen": 0}, started_at=started, duration_s=upto,
                            energy_wh=energy_wh, samples=[s for s in samples if s[0] <= at],
                            tz=tz, port_limit_w=limit, reason=reason)
        b.refund_fen = max(0, gross - fair.amount_fen)
        b.fault_at = at.isoformat()

    # Prepaid plan minutes pay for the part of the charge they cover.
    after_refund = gross - b.refund_fen
    if bill.billable_minutes and after_refund > 0:
        covered, _ = await plans.cover(session, rider_id, bill.billable_minutes, now)
        if covered:
            b.plan_minutes = covered
            b.plan_fen = min(after_refund, (after_refund * covered + bill.billable_minutes // 2)
                             // bill.billable_minutes)

    # The best coupon (stackable ones only together), reserved for this charge.
    owed = after_refund - b.plan_fen
    if owed > 0:
        for c in coupons.choose(await coupons.usable(session, rider_id, now), owed):
            off = coupons.discount(c, owed - b.coupon_fen)
            if off <= 0:
                continue
            c.used_at, c.charge_id = now, charge_id
            b.coupon_fen += off
            b.coupon_ids.append(saved_id(c))
    b.net_fen = max(0, owed - b.coupon_fen)

    # The metering promise: the pile's counter may not run more than 1 % ahead of its samples.
    metered = _integrate(samples, started, ended)
    if metered > 0:
        b.metered_wh = round_half_up(metered)
        b.metering_gap_percent = round(float((exact(energy_wh) - metered) * 100 / metered), 2)
        if b.metering_gap_percent > settings.billing.metering_tolerance_percent:
            honest = compute_bill(tariff, started_at=started,
                                  duration_s=bill.duration_s, energy_wh=metered,
                                  samples=samples, tz=tz, port_limit_w=limit, reason=reason)
            over = max(0, gross - honest.amount_fen)
            b.compensation_fen = over * settings.billing.metering_compensation_factor
    return b


async def during_fault(session: AsyncSession, pile_id: str, port: int, start: datetime,
                       end: datetime) -> bool:
    """Was a fault reported on this port (or the whole pile) while the charge ran?"""
    return await first_during(session, pile_id, port, start - timedelta(minutes=1),
                                     end) is not None


__all__ = ["Breakdown", "adjust", "during_fault", "integrate_wh"]
