"""Billing disputes: answered within 24 h, evident cases refunded at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import AutoString, Field, SQLModel, col

from core.billing import wallet
from core.billing.settlement import during_fault
from core.charging.tables import Charge, ChargeState
from core.config import Settings
from core.db import saved_id, utcnow
from core.errors import DomainError


class DisputeState(StrEnum):
    """open → resolved | escalated → resolved"""

    open = "open"
    escalated = "escalated"
    resolved = "resolved"


class Dispute(SQLModel, table=True):
    __tablename__ = "disputes"

    id: int | None = Field(default=None, primary_key=True)
    charge_id: int = Field(foreign_key="charges.id", index=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    reason: str = ""
    state: DisputeState = Field(default=DisputeState.open, sa_type=AutoString)  # text
    due_at: datetime
    resolution: str | None = None
    refund_fen: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    resolved_at: datetime | None = None


class NothingToDispute(DomainError):
    key = "error.nothing_to_dispute"


class RefundTooLarge(DomainError):
    key = "error.refund_too_large"


async def refund(session: AsyncSession, charge: Charge, amount_fen: int, key: str,
                 reason: str, now: datetime) -> int:
    """Give back part or all of a bill, once per `key`; returns what was refunded now.

    A paid bill gets a `refund` ledger entry to whoever paid it; a due bill simply owes less.
    """
    ledger_key = f"refund:{charge.id}:{key}"
    if amount_fen <= 0 or await wallet.find_entry(session, ledger_key) is not None:
        return 0
    if charge.state in (ChargeState.settled, ChargeState.refunded):
        refundable = charge.paid_fen - (charge.refunded_fen - int(
            (charge.bill or {}).get("refund_fen", 0)))
        if amount_fen > refundable:
            raise RefundTooLarge(max=refundable)
        await wallet.post(session, charge.payer_rider_id or charge.rider_id, "refund",
                          amount_fen, ledger_key, charge_id=charge.id, memo=reason)
        charge.refunded_fen += amount_fen
        if amount_fen == refundable:
            charge.state = ChargeState.refunded
        return amount_fen
    if charge.state == ChargeState.ended:
        cut: int = min(amount_fen, charge.amount_fen - charge.paid_fen)
        # Nothing was paid, so nothing moves: the bill shrinks (and says so).
        charge.amount_fen -= cut
        charge.refunded_fen += cut
        charge.bill = {**(charge.bill or {}), "net_fen": charge.amount_fen}
        if charge.amount_fen <= charge.paid_fen:
            charge.state, charge.settled_at = ChargeState.settled, now
        return cut
    raise NothingToDispute()


async def bill_to_dispute(session: AsyncSession, rider_id: int,
                          charge_id: int | None = None) -> Charge | None:
    """The rider's bill `charge_id`, or their latest, if it is one a dispute can question."""
    stmt = select(Charge).where(col(Charge.rider_id) == rider_id,
                                col(Charge.state).in_((ChargeState.ended, ChargeState.settled)))
    if charge_id is not None:
        stmt = stmt.where(col(Charge.id) == charge_id)
    return (await session.execute(stmt.order_by(col(Charge.id).desc()).limit(1))
            ).scalars().first()


async def open_dispute(session: AsyncSession, charge: Charge, rider_id: int, reason: str,
                       settings: Settings, now: datetime) -> Dispute:
    """A rider disputes a bill. Evident cases are refunded at once; others get a 24 h deadline."""
    existing = (await session.execute(select(Dispute).where(
        col(Dispute.charge_id) == charge.id))).scalars().first()
    if existing is not None:
        return existing
    if charge.state not in (ChargeState.ended, ChargeState.settled):
        raise NothingToDispute()
    d = Dispute(charge_id=saved_id(charge), rider_id=rider_id, reason=reason[:300], created_at=now,
                due_at=now + timedelta(hours=settings.billing.dispute_hours))
    session.add(d)
    b = charge.bill or {}
    evident = None
    if float(b.get("metering_gap_percent") or 0) > settings.billing.metering_tolerance_percent:
        evident = "metering mismatch"
    elif charge.started_at and charge.ended_at and await during_fault(
            session, charge.pile_id, charge.port_number, charge.started_at, charge.ended_at):
        evident = "charged during a reported fault"
    if evident:
        whole = charge.paid_fen if charge.state == ChargeState.settled else charge.amount_fen
        d.refund_fen = await refund(session, charge, whole, "dispute", f"dispute: {evident}",
                                    now)
        d.state, d.resolution, d.resolved_at = DisputeState.resolved, evident, now
    await session.flush()
    return d


async def overdue(session: AsyncSession, now: datetime) -> list[Dispute]:
    """Open disputes past their deadline become escalated (once)."""
    rows = await session.execute(select(Dispute).where(col(Dispute.state) == DisputeState.open,
                                                       col(Dispute.due_at) < now))
    out = []
    for d in rows.scalars():
        d.state = DisputeState.escalated
        out.append(d)
    return out
