"""The NPS question after a charge, its "why?" for a low score, and the monthly report's text.

Buttons: `nps:<charge>:<score>` (0–10), `nps:<charge>:off` (no more surveys) and
`nps:<charge>:r:<reason>`; "other" asks for a few words (chat prompt `nps_comment`).
"""

from __future__ import annotations

from typing import Any

from bot.handlers.payloads import Nps
from bot.handlers.rendering import renders
from bot.handlers.routing import Router
from bot.handlers.turn import Turn
from bot.i18n import tr
from core.db import row_id
from core.engagement import prompts, surveys
from core.engagement.reports import MonthlyReport, as_payload
from core.notices.engagement import MonthlyReportNotice, NpsPromptNotice
from notifications.replies import Button, Reply

router = Router(__name__)
COMMENT_PROMPT = "nps_comment"


def reason_name(lang: str, reason: str) -> str:
    return {
        "price": tr(lang, "price"), "payment": tr(lang, "payment"),
        "finding": tr(lang, "finding a pile"), "fault": tr(lang, "a fault"),
        "speed": tr(lang, "charging speed"), "other": tr(lang, "something else"),
    }.get(reason, reason)


def render_prompt(payload: dict[str, Any], lang: str) -> list[Reply]:
    """A stored `nps_prompt` row as the rider sees it."""
    return nps_prompt(NpsPromptNotice.from_payload(payload), lang)


@renders(NpsPromptNotice)
def nps_prompt(p: NpsPromptNotice, lang: str) -> list[Reply]:
    ref = p.charge_id
    scores = [Button(str(n), data=Nps(ref, str(n)).pack()) for n in range(11)]
    return [Reply(
        tr(lang, "Thanks for charging at {port}! How likely are you to recommend us to a "
                 "friend? 0 = not at all, 10 = certainly.", port=p.port),
        buttons=[scores[:6], scores[6:],
                 [Button(tr(lang, "Don't ask me again"), data=Nps(ref, "off").pack())]])]


def _reasons_reply(lang: str, ref: int) -> Reply:
    buttons = [Button(reason_name(lang, r), data=Nps(ref, f"r:{r}").pack())
               for r in surveys.REASONS]
    return Reply(tr(lang, "Sorry to hear that. What disappointed you most?"),
                 buttons=[buttons[:3], buttons[3:]])


async def button(turn: Turn, arg: str) -> list[Reply]:
    """`nps:{arg}` pressed."""
    p = Nps.unpack(f"{Nps.prefix}:{arg}")
    if p is None:
        return [Reply(tr(turn.lang, "This survey is closed."))]
    return await pressed(turn, p)


@router.button(Nps)
async def pressed(turn: Turn, p: Nps) -> list[Reply]:
    lang, rider_id = turn.lang, turn.rider_id
    charge_id, rest = p.charge_id, p.answer
    try:
        if rest == "off":
            await surveys.opt_out(turn.session, rider_id, turn.now)
            return [Reply(tr(lang, "Done: we won't ask you for ratings any more."))]
        if rest.startswith("r:"):
            reason = rest[2:]
            await surveys.give_reason(turn.session, rider_id, charge_id, reason, turn.now)
            if reason == "other":
                await prompts.ask(turn.session, rider_id, COMMENT_PROMPT, charge_id, turn.now)
                return [Reply(tr(lang, "Please tell us in a few words what went wrong."))]
            return [Reply(tr(lang, "Thank you! We will work on it."))]
        if (score := row_id(rest)) is None:
            return [Reply(tr(lang, "This survey is closed."))]
        row = await surveys.answer(turn.session, rider_id, charge_id, score, turn.now)
    except surveys.UnknownSurvey:
        return [Reply(tr(lang, "This survey is closed."))]
    if surveys.category(row.score or 0) == "detractor":
        return [_reasons_reply(lang, charge_id)]
    return [Reply(tr(lang, "Thank you for your rating!"))]


async def answer_prompt(turn: Turn, prompt: prompts.ChatPrompt) -> list[Reply] | None:
    """The rider's words after choosing "other"; None when the open prompt is not ours."""
    if prompt.kind != COMMENT_PROMPT:
        return None
    text = (turn.inc.text or "").strip()
    if text.startswith("/"):
        return None
    if not text:
        return [Reply(tr(turn.lang, "Please write it as text."))]
    try:
        await surveys.comment(turn.session, turn.rider_id, prompt.ref, text, turn.now)
    except surveys.UnknownSurvey:
        return None
    finally:
        await prompts.done(turn.session, turn.rider_id)
    return [Reply(tr(turn.lang, "Thank you! We will work on it."))]


# --- the monthly report in the ops chat -------------------------------------------------------


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def text_summary(report: MonthlyReport | dict[str, Any], lang: str) -> str:
    """The monthly report for staff: a report, or its outbox payload (`monthly_report`)."""
    p = as_payload(report) if isinstance(report, MonthlyReport) else report
    lines = [
        tr(lang, "📊 Rider satisfaction, {month}", month=p["month"]),
        tr(lang, "NPS {nps} from {n} answers ({promoters} promoters, {passives} passives, "
                 "{detractors} detractors)", nps=_num(p["nps"]), n=p["responses"],
           promoters=p["promoters"], passives=p["passives"], detractors=p["detractors"]),
    ]
    lines += [tr(lang, "· {site}: NPS {nps} (n={n})", site=s["name"], nps=_num(s["nps"]),
                 n=s["responses"]) for s in p["by_site"]]
    if p["reasons"]:
        lines.append(tr(lang, "Why detractors were unhappy: {reasons}", reasons=", ".join(
            f"{reason_name(lang, r)} {n}" for r, n in p["reasons"])))
    lines += [
        tr(lang, "Charges: {n}", n=p["charges"]),
        tr(lang, "Tickets: {n} ({rate} per 1,000 charges)", n=p["tickets"],
           rate=_num(p["tickets_per_1000_charges"])),
        tr(lang, "Faults: {n} ({rate} per 1,000 charges)", n=p["faults"],
           rate=_num(p["faults_per_1000_charges"])),
        tr(lang, "Mean time to repair: {hours} h over {n} repairs", hours=_num(p["mttr_hours"]),
           n=p["repairs_resolved"]),
        tr(lang, "Promise breaches: {n}", n=p["promise_breaches"]),
    ]
    return "\n".join(lines)


def render_report(payload: dict[str, Any], lang: str) -> list[Reply]:
    """A stored `monthly_report` row (payload: `core.reports.as_payload`)."""
    return monthly_report(MonthlyReportNotice.from_payload(payload), lang)


@renders(MonthlyReportNotice)
def monthly_report(n: MonthlyReportNotice, lang: str) -> list[Reply]:
    return [Reply(text_summary(n.to_payload(), lang))]
