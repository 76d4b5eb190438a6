"""What the OCPP gateway reads from the database: the charge point behind a Basic-auth login,
the charge behind an idTag or a transaction id, faults a connector may clear, ports under repair.

Reads only (`ctx.reader()`): every write goes through the pile events and the group commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlmodel import col

from bot.context import Context
from core.charging.tables import Charge, ChargeState
from core.faults.tables import Fault
from core.piles.appliers import stored_time
from core.piles.fleet import pile_on_wire
from core.piles.tables import Pile, PileEvent, PileProtocol, Port


@dataclass(frozen=True)
class ChargePointRow:
    pile_id: str
    secret: str
    ports: int


@dataclass
class TxInfo:
    """One OCPP transaction = one of our charges (transactionId = the charge's id)."""

    session: str  # our session ref, the idTag we gave in RemoteStartTransaction
    port: int
    meter_start_wh: int | None  # StartTransaction.meterStart: the register at the start
    started: datetime | None
    last_ts: datetime | None = None  # the newest reading seen, to derive power when not sent
    last_energy: Decimal | None = None  # session energy at last_ts (Wh)


def start_event_id(tx: int) -> str:
    return f"tx{tx}:start"


async def charge_point(ctx: Context, cp_id: str) -> ChargePointRow | None:
    async with ctx.reader()() as session:
        pile = await pile_on_wire(session, PileProtocol.ocpp16, cp_id)
        return None if pile is None else ChargePointRow(pile.id, pile.secret, pile.ports)


async def charge_by_ref(ctx: Context, pile_id: str, ref: str) -> tuple[int, ChargeState] | None:
    async with ctx.reader()() as session:
        row = (await session.execute(
            select(col(Charge.id), col(Charge.state)).where(
                col(Charge.pile_id) == pile_id, col(Charge.session_ref) == ref))).first()
    return None if row is None or row[0] is None else (int(row[0]), ChargeState(row[1]))


async def transaction(ctx: Context, pile_id: str, tx: int) -> TxInfo | None:
    """A transaction this gateway started before (another worker, or before a restart)."""
    if not 0 < tx < 2**31:
        return None
    async with ctx.reader()() as session:
        charge = await session.get(Charge, tx)
        if charge is None or charge.pile_id != pile_id or charge.session_ref is None:
            return None
        start = (await session.execute(select(PileEvent).where(
            col(PileEvent.pile_id) == pile_id,
            col(PileEvent.event_id) == start_event_id(tx)))).scalars().first()
    meter_start = start.payload.get("meter_start_wh") if start is not None else None
    started = stored_time(start.ts) if start is not None else (
        stored_time(charge.started_at) if charge.started_at else None)
    last = charge.last_energy_wh
    return TxInfo(
        session=charge.session_ref, port=charge.port_number,
        meter_start_wh=meter_start if isinstance(meter_start, int) else None, started=started,
        last_ts=stored_time(charge.last_meter_at) if charge.last_meter_at else None,
        last_energy=Decimal(str(last)) if last is not None else None)


async def open_faults(ctx: Context, pile_id: str, port: int) -> list[str]:
    """Causes the charge point reported at this place that it has not cleared yet."""
    async with ctx.reader()() as session:
        rows = await session.execute(select(col(Fault.cause)).where(
            col(Fault.pile_id) == pile_id, col(Fault.port) == port,
            col(Fault.source) == "pile", col(Fault.resolved_at).is_(None),
            col(Fault.cleared_at).is_(None)))
        return sorted(set(rows.scalars()))


async def out_of_service(ctx: Context, pile_ids: set[str]) -> dict[str, set[int]]:
    """Connectors that should be Inoperative, per pile: ports under repair (0 = the whole pile).
    Few rows fleet-wide, so they are read whole and matched here."""
    out: dict[str, set[int]] = {}
    if not pile_ids:
        return out
    async with ctx.reader()() as session:
        ports = await session.execute(select(col(Port.pile_id), col(Port.number)).where(
            col(Port.maintenance).is_(True)))
        piles = await session.execute(select(col(Pile.id)).where(
            col(Pile.maintenance).is_(True)))
        for pile_id, number in ports:
            if pile_id in pile_ids:
                out.setdefault(pile_id, set()).add(number)
        for (pile_id,) in piles:
            if pile_id in pile_ids:
                out.setdefault(pile_id, set()).add(0)
    return out


async def transaction_of(ctx: Context, pile_id: str, ref: str | None) -> int | None:
    """The transactionId a stop command means: its charge's id."""
    if not ref:
        return None
    found = await charge_by_ref(ctx, pile_id, ref)
    return found[0] if found else None
