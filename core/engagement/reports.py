"""The monthly satisfaction report: NPS, complaints, faults, repairs and broken promises.

A month is a calendar month in the service's time zone. What counts in it:
- charges: ended (the pile's end time) in the month, state ended, settled or refunded;
- NPS: answers given in the month (`answered_at`), one per charge;
- tickets: created in the month; faults: opened in the month (the pile's clock);
- time to repair: repair work orders resolved in the month, created → resolved;
- promise breaches: work orders whose acknowledgement promise was broken (escalated) in it.

`write` puts `figures.csv` and two PNG charts in a folder. The CSV (UTF-8 with a byte-order
mark, so spreadsheet programs read Chinese site names) has the columns
`metric,key,name,value,responses`:
- one row per summary figure (`key`, `name`, `responses` empty, except `nps`, whose
  `responses` is the number of answers): month, nps, responses, promoters, passives,
  detractors, charges, tickets, tickets_per_1000_charges, faults, faults_per_1000_charges,
  repairs_resolved, mttr_hours, promise_breaches;
- `site_nps` rows: key = site id, name = site name, value = NPS, responses = answers there;
- `detractor_reason` rows, most given first: key = reason, value = how many detractors gave it.
A figure with no data (NPS without answers, a rate without charges) has an empty value.
Fractional values are rounded to two decimals.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core import outbox
from core.charging.tables import Charge, ChargeState
from core.db import aware
from core.engagement.surveys import NpsResponse, category, nps
from core.faults.tables import Fault, WorkOrder, WorkOrderState
from core.notices.engagement import MonthlyReportNotice
from core.piles.tables import Site
from core.support.tables import Ticket

CHARGED_STATES = (ChargeState.ended, ChargeState.settled, ChargeState.refunded)
CSV_COLUMNS = ("metric", "key", "name", "value", "responses")
SUMMARY = ("month", "nps", "responses", "promoters", "passives", "detractors", "charges",
           "tickets", "tickets_per_1000_charges", "faults", "faults_per_1000_charges",
           "repairs_resolved", "mttr_hours", "promise_breaches")
# Families that can draw Chinese site names, in order of preference.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", "SimHei", "Heiti SC",
             "AR PL UMing CN", "Droid Sans Fallback")


@dataclass(frozen=True)
class SiteNps:
    site_id: str
    name: str
    nps: float | None
    responses: int


@dataclass(frozen=True)
class MonthlyReport:
    month: str  # YYYY-MM
    tz: str
    nps: float | None
    responses: int
    promoters: int
    passives: int
    detractors: int
    by_site: list[SiteNps] = field(default_factory=list)
    reasons: list[tuple[str, int]] = field(default_factory=list)  # most given first
    charges: int = 0
    tickets: int = 0
    tickets_per_1000_charges: float | None = None
    faults: int = 0
    faults_per_1000_charges: float | None = None
    repairs_resolved: int = 0
    mttr_hours: float | None = None
    promise_breaches: int = 0


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of a YYYY-MM month in the zone, as aware datetimes."""
    try:
        year, mon = (int(p) for p in month.split("-"))
        start = datetime(year, mon, 1, tzinfo=ZoneInfo(tz))
    except ValueError as exc:
        raise ValueError(f"a month is written YYYY-MM, not {month!r}") from exc
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=ZoneInfo(tz))
    return start, end


def per_1000(count: int, charges: int) -> float | None:
    return 1000.0 * count / charges if charges else None


async def _count(session: AsyncSession, stmt: Any) -> int:
    return int((await session.execute(stmt)).scalar_one())


async def monthly(session: AsyncSession, month: str, tz: str) -> MonthlyReport:
    start, end = month_bounds(month, tz)

    answers = [(site_id, score, reason) for site_id, score, reason in await session.execute(
        select(col(NpsResponse.site_id), col(NpsResponse.score), col(NpsResponse.reason)).where(
            col(NpsResponse.score).is_not(None),
            col(NpsResponse.answered_at) >= start, col(NpsResponse.answered_at) < end))
        if score is not None]  # as the query asked: the type cannot see its WHERE
    scores = [int(s) for _, s, _ in answers]
    kinds = [category(s) for s in scores]
    per_site: dict[str, list[int]] = {}
    for site_id, score, _ in answers:
        per_site.setdefault(site_id, []).append(int(score))
    names = {s.id: s.name for s in (await session.execute(
        select(Site).where(col(Site.id).in_(list(per_site))))).scalars()} if per_site else {}
    by_site = [SiteNps(sid, names.get(sid, sid), nps(per_site[sid]), len(per_site[sid]))
               for sid in sorted(per_site)]
    counted: dict[str, int] = {}
    for _, score, reason in answers:
        if reason and category(int(score)) == "detractor":
            counted[reason] = counted.get(reason, 0) + 1
    reasons = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))

    charges = await _count(session, select(func.count()).select_from(Charge).where(
        col(Charge.state).in_(CHARGED_STATES), col(Charge.ended_at) >= start,
        col(Charge.ended_at) < end))
    tickets = await _count(session, select(func.count()).select_from(Ticket).where(
        col(Ticket.created_at) >= start, col(Ticket.created_at) < end))
    faults = await _count(session, select(func.count()).select_from(Fault).where(
        col(Fault.opened_at) >= start, col(Fault.opened_at) < end))
    breaches = await _count(session, select(func.count()).select_from(WorkOrder).where(
        col(WorkOrder.escalated_at) >= start, col(WorkOrder.escalated_at) < end))
    # Differences of timestamps are computed here, not in SQL: the two databases disagree.
    repairs = list(await session.execute(
        select(col(WorkOrder.created_at), col(WorkOrder.resolved_at)).where(
            col(WorkOrder.kind) == "repair", col(WorkOrder.state) == WorkOrderState.resolved,
            col(WorkOrder.resolved_at) >= start, col(WorkOrder.resolved_at) < end)))
    hours = [(aware(done) - aware(made)).total_seconds() / 3600
             for made, done in repairs if done is not None]  # resolved, as the query asked

    return MonthlyReport(
        month=month, tz=tz, nps=nps(scores), responses=len(scores),
        promoters=kinds.count("promoter"), passives=kinds.count("passive"),
        detractors=kinds.count("detractor"), by_site=by_site, reasons=reasons,
        charges=charges, tickets=tickets, tickets_per_1000_charges=per_1000(tickets, charges),
        faults=faults, faults_per_1000_charges=per_1000(faults, charges),
        repairs_resolved=len(hours), mttr_hours=sum(hours) / len(hours) if hours else None,
        promise_breaches=breaches,
    )


# --- the files --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def csv_rows(report: MonthlyReport) -> list[list[str]]:
    rows = [list(CSV_COLUMNS)]
    for metric in SUMMARY:
        responses = str(report.responses) if metric == "nps" else ""
        rows.append([metric, "", "", _cell(getattr(report, metric)), responses])
    for s in report.by_site:
        rows.append(["site_nps", s.site_id, s.name, _cell(s.nps), str(s.responses)])
    for reason, n in report.reasons:
        rows.append(["detractor_reason", reason, "", str(n), ""])
    return rows


def cjk_font() -> str | None:
    """A font family installed here that draws Chinese, or None."""
    # matplotlib (~1 s to import) only where charts are drawn: the bot imports this module for
    # the report's text. The server imports it at start-up in a worker thread (bot.warmup).
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def site_label(site: SiteNps, can_draw_cjk: bool) -> str:
    """The site's id and name, or only the id when no installed font draws the name."""
    if can_draw_cjk or site.name.isascii():
        return site.site_id if site.name == site.site_id else f"{site.site_id} {site.name}"
    return site.site_id


def write(report: MonthlyReport, out_dir: Path | str,
          reason_labels: dict[str, str] | None = None) -> list[Path]:
    """figures.csv, nps_by_site.png and detractor_reasons.png in `out_dir` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures.csv"
    with figures.open("w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows(csv_rows(report))
    return [figures, *_charts(report, out, reason_labels or {})]


def _charts(report: MonthlyReport, out: Path, reason_labels: dict[str, str]) -> list[Path]:
    # Imported here: the bot loads this module without drawing anything (see cjk_font). Drawing
    # is CPU work: the scheduler calls `write` in a worker thread, never on the event loop.
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas
    from matplotlib.ticker import MaxNLocator

    font = cjk_font()
    families = [font, "DejaVu Sans"] if font else ["DejaVu Sans"]
    paths = []
    with matplotlib.rc_context({"font.family": families}):
        sites = report.by_site
        fig = Figure(figsize=(8, 1.6 + 0.45 * max(len(sites), 1)), layout="constrained")
        ax = fig.add_subplot()
        if sites:
            labels = [site_label(s, font is not None) for s in sites]
            values = [s.nps or 0.0 for s in sites]
            ax.barh(labels, values, color=["#2e8b57" if v >= 0 else "#c0392b" for v in values])
            for i, s in enumerate(sites):
                ax.annotate(f"{_cell(s.nps)} (n={s.responses})", (values[i], i),
                            xytext=(4 if values[i] >= 0 else -4, 0),
                            textcoords="offset points", va="center",
                            ha="left" if values[i] >= 0 else "right", fontsize=8)
            ax.invert_yaxis()
        else:
            ax.text(0, 0.5, "no answers this month", ha="center", va="center")
        ax.set_xlim(-100, 100)
        ax.axvline(0, color="#555555", linewidth=0.8)
        overall = _cell(report.nps) or "–"
        ax.set_title(f"NPS by site, {report.month} (overall {overall}, n={report.responses})")
        ax.set_xlabel("NPS (% promoters − % detractors)")
        paths.append(out / "nps_by_site.png")
        fig.savefig(paths[-1], dpi=120)

        fig = Figure(figsize=(8, 4), layout="constrained")
        ax = fig.add_subplot()
        if report.reasons:
            ax.bar([reason_labels.get(r, r) for r, _ in report.reasons],
                   [n for _, n in report.reasons], color="#c0392b")
            locator = ax.yaxis.get_major_locator()  # an AutoLocator, i.e. a MaxNLocator
            if isinstance(locator, MaxNLocator):
                locator.set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "no reasons given this month", ha="center", va="center")
        ax.set_title(f"Why detractors were unhappy, {report.month} "
                     f"({report.detractors} detractors)")
        ax.set_ylabel("riders")
        paths.append(out / "detractor_reasons.png")
        fig.savefig(paths[-1], dpi=120)
    return paths


# --- the ops chat -----------------------------------------------------------------------------


def as_payload(report: MonthlyReport) -> dict[str, Any]:
    """The report as JSON for an outbox row (kind `monthly_report`)."""
    d = asdict(report)
    d["by_site"] = [asdict(s) for s in report.by_site]
    d["reasons"] = [[r, n] for r, n in report.reasons]
    return d


async def post(session: AsyncSession, report: MonthlyReport, rider_ids: list[int],
               now: datetime) -> None:
    """One outbox message per recipient (staff chats, the desk), once per month."""
    notice = MonthlyReportNotice.from_payload(as_payload(report))
    for rid in rider_ids:
        await outbox.enqueue(session, rid, notice,
                             f"monthly_report:{report.month}:{rid}", now=now)
