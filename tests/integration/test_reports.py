"""The monthly satisfaction report (ISSUE 7) over a seeded March: every figure checked, the
charts open as PNGs and the CSV reads back to the same numbers.

Survey modules are imported inside the tests (see tests/support/surveys.py for why).
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from PIL import Image
from sqlalchemy import select

from core.charging.tables import Charge
from core.db import transaction
from core.faults.tables import Fault, WorkOrder
from core.outbox import OutboxMessage
from core.piles import fleet as piles
from core.piles.tables import Port
from core.riders.identities import rider_for
from core.support.tables import Ticket
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings
from tests.support.surveys import create_survey_tables, survey_tables  # noqa: F401

TZ = "Asia/Shanghai"


def local(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time in Shanghai, stored as UTC like everything else."""
    return datetime(2031, month, day, hour, minute, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


@pytest.fixture
async def running(db_url: str) -> AsyncIterator[Running]:
    async with start_server(make_settings(db_url, scheduler={"enabled": False})) as server:
        await create_survey_tables(server.ctx.engine)
        await seed_city(server.ctx, ports=4)  # T01 测试小区车棚, pile P0001
        async with transaction(server.ctx.sm) as s:
            await piles.add_site(s, "T02", "Riverside", 30.28, 120.12)
            await s.flush()
            await piles.add_pile(s, "T02", "P0002", 2)
        yield server


async def seed_march(server: Running) -> None:
    from core.engagement.surveys import NpsResponse

    async with transaction(server.ctx.sm) as s:
        rider = await rider_for(s, "webchat", "report-rider")
        staff = await rider_for(s, "webchat", "report-tech")
        ports = {(p.pile_id, p.number): p for p in (await s.execute(select(Port))).scalars()}

        def charge(pile: str, site: str, ended: datetime, state: str = "settled") -> Charge:
            p = ports[(pile, 1)]
            c = Charge(rider_id=rider.id, port_id=p.id, pile_id=pile, port_number=1,  # type: ignore[arg-type]
                       port_code=p.code, site_id=site, state=state, requested_at=ended,
                       started_at=ended, ended_at=ended)
            s.add(c)
            return c

        # 20 charges ended in March (local time): 17 at T01 (one just after midnight on the
        # 1st, one refunded) and 3 at T02; around them, ones that must not count.
        t01 = [charge("P0001", "T01", local(3, day, 12)) for day in range(2, 17)]
        t01 += [charge("P0001", "T01", local(3, 1, 0, 30)),
                charge("P0001", "T01", local(3, 20, 9), state="refunded")]
        t02 = [charge("P0002", "T02", local(3, day, 18)) for day in (3, 4, 5)]
        charge("P0001", "T01", local(2, 28, 23, 30))  # still February here
        charge("P0001", "T01", local(4, 1, 0, 30))  # already April here
        charge("P0001", "T01", local(3, 8, 8), state="failed")
        await s.flush()

        def answer(c: Charge, score: int | None, at: datetime | None,
                   reason: str | None = None) -> None:
            s.add(NpsResponse(rider_id=rider.id, charge_id=c.id, site_id=c.site_id,  # type: ignore[arg-type]
                              score=score, reason=reason, prompted_at=c.ended_at,
                              answered_at=at))

        # T01: 10 9 9 8 3 → 3 promoters, 1 detractor of 5 = 40; T02: 10 6 4 → 1 − 2 of 3.
        answer(t01[0], 10, local(3, 1, 0, 10))  # the first minutes of March count
        answer(t01[1], 9, local(3, 4, 9))
        answer(t01[2], 9, local(3, 5, 9))
        answer(t01[3], 8, local(3, 6, 9))
        answer(t01[4], 3, local(3, 7, 9), "price")
        answer(t02[0], 10, local(3, 4, 9))
        answer(t02[1], 6, local(3, 5, 9), "price")
        answer(t02[2], 4, local(3, 6, 9), "fault")
        answer(t01[5], 0, local(4, 1, 0, 5), "payment")  # answered in April
        answer(t01[6], None, None)  # asked, never answered

        def ticket(at: datetime) -> None:
            s.add(Ticket(rider_id=rider.id, platform="webchat", state="closed",  # type: ignore[arg-type]
                         created_at=at, closed_at=at))

        for at in (local(3, 2, 10), local(3, 15, 10), local(3, 31, 23, 59),
                   local(2, 28, 23), local(4, 1, 0, 1)):
            ticket(at)

        for port, at in ((1, local(3, 3, 3)), (2, local(3, 30, 3)), (3, local(2, 27, 3))):
            s.add(Fault(pile_id="P0001", port=port, site_id="T01", cause="overload",
                        opened_at=at, detected_at=at, resolved_at=at))

        def order(port: int, created: datetime, resolved: datetime | None, *,
                  kind: str = "repair", state: str = "resolved",
                  escalated: datetime | None = None) -> None:
            s.add(WorkOrder(kind=kind, pile_id="P0001", port=port, site_id="T01", state=state,
                            created_at=created, resolved_at=resolved, escalated_at=escalated,
                            resolved_by=staff.id))

        # Resolved repairs in March: 2 h and 4 h (created in February) → 3 h on average.
        order(1, local(3, 10, 10), local(3, 10, 12), escalated=local(3, 10, 10, 35))
        order(2, local(2, 28, 20), local(3, 1, 0), escalated=local(2, 28, 20, 35))
        order(1, local(3, 31, 22), local(4, 1, 2))  # resolved in April
        order(3, local(3, 12, 8), local(3, 12, 18), kind="preventive")
        order(4, local(3, 12, 8), local(3, 12, 9), state="closed")  # cleared by itself
        order(3, local(3, 5, 8), None, state="open", escalated=local(3, 5, 8, 31))


async def test_the_march_report_counts_exactly_what_happened_in_march(
        running: Running, tmp_path: Path) -> None:
    from bot.handlers.surveys import text_summary
    from core.engagement import reports

    await seed_march(running)
    async with running.ctx.sm() as s:
        report = await reports.monthly(s, "2031-03", TZ)

    assert report.nps == 12.5  # 4 promoters, 3 detractors of 8
    assert (report.responses, report.promoters, report.passives, report.detractors) == (
        8, 4, 1, 3)
    assert [(b.site_id, b.name, b.responses) for b in report.by_site] == [
        ("T01", "测试小区车棚", 5), ("T02", "Riverside", 3)]
    assert report.by_site[0].nps == 40.0
    assert report.by_site[1].nps == pytest.approx(-100 / 3)
    assert report.reasons == [("price", 2), ("fault", 1)]
    assert report.charges == 20
    assert report.tickets == 3 and report.tickets_per_1000_charges == 150.0
    assert report.faults == 2 and report.faults_per_1000_charges == 100.0
    assert report.repairs_resolved == 2 and report.mttr_hours == 3.0
    assert report.promise_breaches == 2

    paths = reports.write(report, tmp_path / "out")
    assert [p.name for p in paths] == ["figures.csv", "nps_by_site.png", "detractor_reasons.png"]
    for png in paths[1:]:
        with Image.open(png) as img:
            img.verify()
            assert img.format == "PNG"

    with paths[0].open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["metric", "key", "name", "value", "responses"]
    summary = {r["metric"]: r for r in rows if not r["key"]}
    assert summary["month"]["value"] == "2031-03"
    assert float(summary["nps"]["value"]) == report.nps
    assert int(summary["nps"]["responses"]) == report.responses
    for metric in ("responses", "promoters", "passives", "detractors", "charges", "tickets",
                   "faults", "repairs_resolved", "promise_breaches"):
        assert int(summary[metric]["value"]) == getattr(report, metric), metric
    for metric in ("tickets_per_1000_charges", "faults_per_1000_charges", "mttr_hours"):
        assert float(summary[metric]["value"]) == getattr(report, metric), metric
    sites = [(r["key"], r["name"], float(r["value"]), int(r["responses"]))
             for r in rows if r["metric"] == "site_nps"]
    assert sites == [("T01", "测试小区车棚", 40.0, 5), ("T02", "Riverside", -33.33, 3)]
    assert [(r["key"], int(r["value"])) for r in rows
            if r["metric"] == "detractor_reason"] == report.reasons

    text = text_summary(report, "en")
    assert "NPS 12.5 from 8 answers (4 promoters, 1 passives, 3 detractors)" in text
    assert "测试小区车棚: NPS 40.0 (n=5)" in text and "Riverside: NPS -33.3 (n=3)" in text
    assert "price 2, a fault 1" in text
    assert "Tickets: 3 (150.0 per 1,000 charges)" in text
    assert "Mean time to repair: 3.0 h over 2 repairs" in text


async def test_an_empty_month_has_no_nps_and_no_rates_but_still_makes_its_files(
        running: Running, tmp_path: Path) -> None:
    from core.engagement import reports

    async with running.ctx.sm() as s:
        report = await reports.monthly(s, "2031-06", TZ)
    assert report.nps is None and report.responses == 0 and report.by_site == []
    assert report.charges == 0 and report.tickets_per_1000_charges is None
    assert report.mttr_hours is None and report.promise_breaches == 0
    paths = reports.write(report, tmp_path)
    for png in paths[1:]:
        with Image.open(png) as img:
            img.verify()
    with paths[0].open(encoding="utf-8-sig", newline="") as f:
        summary = {r["metric"]: r["value"] for r in csv.DictReader(f)}
    assert summary["nps"] == "" and summary["charges"] == "0"
    assert summary["mttr_hours"] == ""


async def test_the_report_reaches_staff_once_per_month(running: Running) -> None:
    from bot.handlers.surveys import render_report
    from core.engagement import reports

    async with transaction(running.ctx.sm) as s:
        staff = await rider_for(s, "webchat", "report-staff")
        report = await reports.monthly(s, "2031-03", TZ)
        await reports.post(s, report, [staff.id], datetime(2031, 4, 1, 2, tzinfo=UTC))  # type: ignore[list-item]
        await reports.post(s, report, [staff.id], datetime(2031, 4, 1, 3, tzinfo=UTC))  # type: ignore[list-item]
    async with running.ctx.sm() as s:
        [msg] = (await s.execute(select(OutboxMessage).where(
            OutboxMessage.kind == "monthly_report"))).scalars()
    assert msg.dedupe_key == f"monthly_report:2031-03:{staff.id}"
    [reply] = render_report(msg.payload, "en")
    assert "2031-03" in reply.text and "Charges: 0" in reply.text


def test_month_bounds_follow_the_local_calendar_and_reject_bad_months() -> None:
    from core.engagement.reports import month_bounds

    start, end = month_bounds("2031-12", TZ)
    assert start.astimezone(UTC) == datetime(2031, 11, 30, 16, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2031, 12, 31, 16, tzinfo=UTC)
    for bad in ("2031-13", "March", "2031", ""):
        with pytest.raises(ValueError):
            month_bounds(bad, TZ)


def test_site_labels_fall_back_to_the_id_when_no_font_draws_chinese() -> None:
    from core.engagement.reports import SiteNps, site_label

    chinese = SiteNps("T01", "测试小区车棚", 40.0, 5)
    assert site_label(chinese, can_draw_cjk=False) == "T01"
    assert site_label(chinese, can_draw_cjk=True) == "T01 测试小区车棚"
    assert site_label(SiteNps("T02", "Riverside", None, 0), can_draw_cjk=False) == "T02 Riverside"
