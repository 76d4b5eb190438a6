"""Predictive maintenance on the real tables: a simulated fleet's history (hidden hazard, ground
truth kept aside) goes into the database; the daily job fits the wear model and plans visits
ahead of the failures the ground truth says are coming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select

from bot.scheduler import plan_maintenance
from core.charging.tables import Charge
from core.db import transaction
from core.faults.tables import Fault, WorkOrder
from core.outbox import OutboxMessage
from core.piles.fleet import add_pile, add_site
from core.piles.tables import Pile, Port
from core.riders.identities import rider_for
from simulator.wear import HiddenHazard, load_truth, simulate
from tests.support.journey import WebRider, web_staff
from tests.support.server import start_server
from tests.support.settings import make_settings

PORTS, DAYS, SEED, NOW = 40, 200, 7, 160  # history up to day 160; the rest is hidden
HAZARD = {"generic-10": HiddenHazard(shape=3.0, scale=420.0)}
START = datetime(2030, 1, 1, tzinfo=UTC)


def _at(days: float) -> datetime:
    return START + timedelta(days=days)


async def _load_history(server, tmp_path: Path) -> list:  # type: ignore[no-untyped-def]
    """The simulator's observed history as rows: charges with their heating, wear faults."""
    truth_file = tmp_path / "truth.json"
    history = simulate(PORTS, DAYS, SEED, ground_truth=truth_file, hazards=HAZARD)
    async with transaction(server.ctx.sm) as s:
        await add_site(s, "W01", "维修测试车棚", 30.28, 120.11, address="测试路2号")
        await s.flush()
        for p in range(PORTS // 10):
            await add_pile(s, "W01", f"P{p + 1:04d}", 10, secret=f"s{p}", lat=30.28, lon=120.11)
        rider = await rider_for(s, "webchat", "history-rider")
        ports = {(pid, n): i for i, pid, n in await s.execute(
            select(Port.id, Port.pile_id, Port.number))}

        def place(port: int) -> tuple[str, int]:
            return f"P{port // 10 + 1:04d}", port % 10 + 1

        rows = []
        for c in (c for c in history.charges if c.at < NOW):
            pile_id, number = place(c.port)
            rows.append({
                "rider_id": rider.id, "port_id": ports[(pile_id, number)], "pile_id": pile_id,
                "port_number": number, "port_code": f"{pile_id}-{number:02d}", "site_id": "W01",
                "state": "settled", "tariff": {}, "requested_at": _at(c.at),
                "started_at": _at(c.at), "ended_at": _at(c.at + 0.2), "amount_fen": 0,
                "paid_fen": 0, "refunded_fen": 0, "heat_per_100w": c.heat,
            })
        await s.execute(insert(Charge), rows)
        await s.execute(insert(Fault), [{
            "pile_id": place(f.port)[0], "port": place(f.port)[1], "site_id": "W01",
            "cause": f.code, "source": "pile", "severity": "critical", "detail": "",
            "opened_at": _at(f.at), "detected_at": _at(f.at), "occurrences": 1,
            "resolved_at": _at(f.at + 0.5),
        } for f in history.faults if f.at < NOW])
    return load_truth(truth_file)


async def test_planned_visits_come_before_the_failures_the_model_did_not_see(
        db_url: str, tmp_path: Path) -> None:
    now = _at(NOW)
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=lambda: now) as server:
        truth = await _load_history(server, tmp_path)
        web = await web_staff(server, "technician", name="Zhao", sites=("W01",))
        await plan_maintenance(server.ctx)
        async with server.ctx.sm() as s:
            orders = list((await s.execute(select(WorkOrder))).scalars())
        assert orders, "the model planned nothing"
        assert all(o.kind == "preventive" and o.state == "open" for o in orders)
        assert all(o.predicted_failure_at is not None and o.planned_for is not None
                   for o in orders)
        # Judged on the hidden truth: when each port's running life really fails.
        left = {}
        for life in truth:
            if life.start <= NOW and life.fails_at is not None and life.fails_at > NOW:
                left[life.port] = min(left.get(life.port, 1e9), life.fails_at - NOW)
        planned = {(int(o.pile_id[1:]) - 1) * 10 + o.port - 1 for o in orders}
        assert all(left[p] <= 11 for p in planned), {p: left[p] for p in planned}
        others = [d for p, d in left.items() if p not in planned]
        assert max(left[p] for p in planned) < sorted(others)[len(others) // 4]

        # Running the job again plans nothing twice; the technician got each order once.
        await plan_maintenance(server.ctx)
        async with server.ctx.sm() as s:
            assert len((await s.execute(select(WorkOrder))).scalars().all()) == len(orders)
            sent = (await s.execute(select(OutboxMessage).where(
                OutboxMessage.kind == "work_order"))).scalars().all()
        assert len(sent) == len(orders)
        msg = await web.wait_message("Planned service")
        assert "Predicted wear-out" in msg["text"]

        # The port card shows the planned visit as the pile's next service.
        first = orders[0]
        async with server.ctx.sm() as s:
            pile = await s.get(Pile, first.pile_id)
        assert pile is not None
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        card = await rider.say(f"{first.pile_id}-{first.port:02d}")
        soonest = min(o.planned_for for o in orders if o.pile_id == first.pile_id)  # type: ignore[type-var]
        day = soonest.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d")
        assert f"next: {day}" in card[0]["text"]
