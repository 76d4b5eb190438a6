"""Predictive maintenance on the real tables: each port's lives from its charges, wear-out faults
and preventive services; one wear model per pile model; planned work orders ahead of failures.

The maths is `core.wear` (pure). A port life runs from a renewal (a repair after a wear-out
fault, or a preventive service) to the next wear-out fault (observed) or service (censored); the
running life is censored at now.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.charging.tables import Charge
from core.config import Settings
from core.engagement import broadcasts
from core.faults import wear, workorders
from core.faults.tables import Fault, WorkOrder, WorkOrderState
from core.piles.tables import Pile, Port, Site

log = logging.getLogger("chargebot.maintenance")

# Faults that wear ends in (DOMAIN.md): contacts and relays. Grid, link and safety faults
# (leakage, smoke) are not a port's age.
WEAR_CAUSES = ("over_temperature", "relay_stuck", "relay_open", "short_circuit", "over_current")
USAGE_DAYS = 14  # the usage rate a forecast sees: charges a day over the last two weeks


@dataclass
class PortRecord:
    port_id: int
    pile_id: str
    number: int
    model: str
    history: wear.PortHistory


def _days(ts: datetime) -> float:
    return ts.timestamp() / 86400.0


@dataclass
class _Rows:
    """What the forecasts read from the database, gathered on the event loop."""

    ports: dict[int, tuple[str, int, str]]  # port id → (pile id, number, pile model)
    charges: dict[int, list[tuple[float, float | None]]]
    ends: dict[int, list[tuple[float, bool]]]


async def _read(session: AsyncSession) -> _Rows:
    ports = {pid: (pile_id, number, model) for pid, pile_id, number, model in
             await session.execute(select(col(Port.id), col(Port.pile_id), col(Port.number),
                                          col(Pile.model))
                                   .join(Pile, col(Pile.id) == col(Port.pile_id)))
             if pid is not None}  # a stored port always has its id
    by_place = {(pile_id, number): pid for pid, (pile_id, number, _) in ports.items()}
    charges: dict[int, list[tuple[float, float | None]]] = defaultdict(list)
    for port_id, started, heat in await session.execute(
            select(col(Charge.port_id), col(Charge.started_at), col(Charge.heat_per_100w))
            .where(col(Charge.state).in_(("ended", "settled")), col(Charge.started_at).is_not(None))
            .order_by(col(Charge.port_id), col(Charge.started_at))):
        if started is not None:  # the query keeps only started charges
            charges[port_id].append((_days(started), heat))
    ends: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for pile_id, number, opened in await session.execute(
            select(col(Fault.pile_id), col(Fault.port), col(Fault.opened_at))
            .where(col(Fault.cause).in_(WEAR_CAUSES), col(Fault.port) > 0)):
        if (pid := by_place.get((pile_id, number))) is not None:
            ends[pid].append((_days(opened), True))
    for pile_id, number, done in await session.execute(
            select(col(WorkOrder.pile_id), col(WorkOrder.port), col(WorkOrder.resolved_at))
            .where(col(WorkOrder.kind) == "preventive",
                   col(WorkOrder.state) == WorkOrderState.resolved, col(WorkOrder.port) > 0)):
        if (pid := by_place.get((pile_id, number))) is not None and done is not None:
            ends[pid].append((_days(done), False))
    return _Rows(ports, charges, ends)


def _lives(rows: _Rows, now: datetime) -> list[PortRecord]:
    return [PortRecord(pid, pile_id, number, model,
                       wear.port_history(rows.charges.get(pid, []),
                                         sorted(rows.ends.get(pid, [])), _days(now), USAGE_DAYS))
            for pid, (pile_id, number, model) in sorted(rows.ports.items())]


def fit_models(found: list[PortRecord]) -> dict[str, wear.WearModel]:
    """One model per pile model with enough failures; the others get no forecasts yet."""
    grouped: dict[str, list[wear.PortHistory]] = defaultdict(list)
    for r in found:
        grouped[r.model].append(r.history)
    models = {}
    for name, group in sorted(grouped.items()):
        try:
            models[name] = wear.fit([life for h in group for life in h.lives],
                                    [x for h in group for x in h.heat],
                                    [x for h in group for x in h.warning])
        except ValueError as exc:
            log.info("no wear model for %s yet: %s", name, exc)
    return models


def _forecasts(rows: _Rows, now: datetime, lead_hours: float
               ) -> list[tuple[PortRecord, wear.Forecast]]:
    """The ports whose forecast asks for a visit now (pure CPU: run off the event loop)."""
    found = _lives(rows, now)
    models = fit_models(found)
    out = []
    for h in found:
        model = models.get(h.model)
        if model is None:
            continue
        f = wear.forecast(model, h.history.state, lead_hours=lead_hours)
        if f.service:
            out.append((h, f))
    return out


async def _announce(session: AsyncSession, order: WorkOrder, pile: Pile, now: datetime,
                    tz: str) -> None:
    """Riders' groups hear about a planned visit (the port may be busy for a while)."""
    site = await session.get(Site, pile.site_id)
    when = (order.planned_for or now).astimezone(ZoneInfo(tz)).strftime("%m-%d")
    name = site.name if site else pile.site_id
    await broadcasts.schedule(
        session, f"🛠 {name} 的 {order.where} 将于 {when} 进行预防性维护，届时可能暂停使用。",
        f"🛠 {order.where} at {name} gets preventive maintenance on {when}; it may be out of "
        "service for a while.", now, kind="maintenance", cause=f"maint:{order.id}")


async def plan(session: AsyncSession, now: datetime, settings: Settings) -> list[WorkOrder]:
    """Open a planned (preventive) work order for each port forecast to fail soon, at least
    `lead_hours` before the predicted failure; ports already in a work order are left alone."""
    lead = settings.maintenance.lead_hours
    # The fits (scipy's Weibull) and a forecast per port take seconds on a large fleet: in a
    # worker thread, so riders' requests and bills are not held up behind the daily job.
    due = await asyncio.to_thread(_forecasts, await _read(session), now, lead)
    busy = {(p, n) for p, n in await session.execute(
        select(col(WorkOrder.pile_id), col(WorkOrder.port)).where(
            col(WorkOrder.state).in_(workorders.ACTIVE)))}
    planned = []
    for h, f in due:
        if (h.pile_id, h.number) in busy:
            continue
        failure = now + timedelta(days=f.days_to_failure)
        visit = max(now, min(failure - timedelta(hours=lead), now + timedelta(days=1)))
        pile = await session.get(Pile, h.pile_id)
        assert pile is not None
        order, created = await workorders.open_order(
            session, pile=pile, port=h.number, causes=["predicted_wear"], severity="warning",
            out_of_service=False, now=now, settings=settings, kind="preventive",
            planned_for=visit, predicted_failure_at=failure)
        if created:
            await _announce(session, order, pile, now, settings.server.timezone)
            log.info("planned service %s at %s-%02d: p=%.2f, %.1f days to failure",
                     order.id, h.pile_id, h.number, f.failure_probability, f.days_to_failure)
            planned.append(order)
    return planned
