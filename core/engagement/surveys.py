"""The NPS survey after a settled charge: one question (0–10), and "why?" for a low score.

Riders hear from us about money and faults; a survey must not become noise. So a rider gets at
most one prompt per `min_days_between`, none after opting out, one per charge at most (a unique
key), and never in the quiet hours: a prompt caused at night waits in the outbox until the
quiet hours end (local time), rather than being dropped.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Column, Index, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core import outbox
from core.billing.settlement import FAULT_ENDS
from core.charging.lifecycle import ChargeBilled, after_billed
from core.charging.tables import Charge, ChargeState
from core.db import insert_ignore, table_of, utcnow
from core.notices.engagement import NpsPromptNotice

PROMPT_KIND = NpsPromptNotice.kind
REASONS = ("price", "payment", "finding", "fault", "speed", "other")
QUIET = ("22:00", "08:00")
TZ = "Asia/Shanghai"
MIN_DAYS_BETWEEN = 7


class NpsResponse(SQLModel, table=True):
    """A prompt sent for a charge, and the rider's answer once given (score stays None until)."""

    __tablename__ = "nps_responses"
    __table_args__ = (
        Index("ix_nps_responses_rider_prompted", "rider_id", "prompted_at"),
        Index("ix_nps_responses_answered", "answered_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id")
    charge_id: int = Field(foreign_key="charges.id", unique=True)  # one prompt per charge
    site_id: str = Field(max_length=32)
    score: int | None = None  # 0–10
    reason: str | None = Field(default=None, max_length=16)  # one of REASONS, for score < 7
    comment: str = Field(default="", sa_column=Column(String(500), nullable=False, default=""))
    prompted_at: datetime  # when the prompt is due to reach the rider (after quiet hours)
    answered_at: datetime | None = None


class SurveyOptOut(SQLModel, table=True):
    __tablename__ = "survey_opt_outs"

    rider_id: int = Field(primary_key=True, foreign_key="riders.id")
    at: datetime = Field(default_factory=utcnow)


class UnknownSurvey(Exception):
    """No prompt for this charge was sent to this rider (or the score is not valid)."""

    key = "error.unknown_survey"


# --- arithmetic -------------------------------------------------------------------------------


def category(score: int) -> str:
    """promoter (9–10) · passive (7–8) · detractor (0–6)."""
    if not 0 <= score <= 10:
        raise ValueError(f"an NPS score is 0 to 10, not {score}")
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def nps(scores: list[int] | tuple[int, ...]) -> float | None:
    """% promoters − % detractors, in points (−100 … 100); None without any response."""
    if not scores:
        return None
    kinds = [category(s) for s in scores]
    return 100.0 * (kinds.count("promoter") - kinds.count("detractor")) / len(kinds)


def _hm(value: str) -> time:
    hours, _, minutes = value.partition(":")
    return time(int(hours), int(minutes or 0))


def in_quiet_hours(now: datetime, quiet: tuple[str, str] = QUIET, tz: str = TZ) -> bool:
    start, end = _hm(quiet[0]), _hm(quiet[1])
    local = now.astimezone(ZoneInfo(tz)).time()
    if start <= end:
        return start <= local < end
    return local >= start or local < end  # the window crosses midnight (22:00–08:00)


def send_time(now: datetime, quiet: tuple[str, str] = QUIET, tz: str = TZ) -> datetime:
    """`now`, or the end of the quiet hours it falls in (local time), as an aware datetime."""
    if not in_quiet_hours(now, quiet, tz):
        return now
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    end = _hm(quiet[1])
    at = datetime.combine(local.date(), end, tzinfo=zone)
    if at <= local:
        at = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=zone)
    return at.astimezone(now.tzinfo)


def prompt_rules(settings: Any) -> dict[str, Any]:
    """`maybe_prompt`'s keyword arguments from the settings (`[surveys]` and the server zone);
    the defaults stand in for keys not configured."""
    cfg = getattr(settings, "surveys", None)
    return {
        "min_days_between": getattr(cfg, "min_days_between", MIN_DAYS_BETWEEN),
        "quiet": (getattr(cfg, "quiet_start", QUIET[0]), getattr(cfg, "quiet_end", QUIET[1])),
        "tz": settings.server.timezone,
    }


# --- prompting --------------------------------------------------------------------------------


async def opted_out(session: AsyncSession, rider_id: int) -> bool:
    return await session.get(SurveyOptOut, rider_id) is not None


async def should_prompt(
    session: AsyncSession, rider_id: int, now: datetime, *,
    min_days_between: int = MIN_DAYS_BETWEEN, quiet: tuple[str, str] = QUIET, tz: str = TZ,
) -> bool:
    """Not opted out, and no prompt within `min_days_between` of when this one would go out."""
    if await opted_out(session, rider_id):
        return False
    since = send_time(now, quiet, tz) - timedelta(days=min_days_between)
    recent = (await session.execute(select(col(NpsResponse.id)).where(
        col(NpsResponse.rider_id) == rider_id, col(NpsResponse.prompted_at) > since).limit(1)
    )).first()
    return recent is None


async def maybe_prompt(
    session: AsyncSession, charge: Charge, now: datetime, *,
    min_days_between: int = MIN_DAYS_BETWEEN, quiet: tuple[str, str] = QUIET, tz: str = TZ,
) -> NpsResponse | None:
    """After a settled charge: the prompt row and its outbox message (due after the quiet
    hours), or None when the rules say not now. Call it in the settling transaction."""
    if charge.state != ChargeState.settled or charge.id is None:
        return None
    if charge.end_reason in FAULT_ENDS or (charge.bill or {}).get("fault_code"):
        # Cut short by a fault: asking "how likely are you to recommend us" right after the
        # apology and the refund reads as tone-deaf (issue 18 finding 8), and it measures the
        # fault, which the fault reports already count.
        return None
    if not await should_prompt(session, charge.rider_id, now, min_days_between=min_days_between,
                               quiet=quiet, tz=tz):
        return None
    due = send_time(now, quiet, tz)
    row = NpsResponse(rider_id=charge.rider_id, charge_id=charge.id, site_id=charge.site_id,
                      prompted_at=due)
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        return None  # this charge was already asked about (a replayed settlement)
    await outbox.enqueue(session, charge.rider_id,
                         NpsPromptNotice(charge_id=charge.id, port=charge.port_code),
                         f"nps:{charge.id}", due_at=due, now=now)
    return row


@after_billed
async def prompt_after_paid(session: AsyncSession, event: ChargeBilled) -> None:
    """A paid charge may earn a survey; a bill left due does not (it would ask about a debt)."""
    if event.paid:
        await maybe_prompt(session, event.charge, event.now, **prompt_rules(event.settings))


# --- answers ----------------------------------------------------------------------------------


async def _prompt(session: AsyncSession, rider_id: int, charge_id: int) -> NpsResponse:
    row = (await session.execute(select(NpsResponse).where(
        col(NpsResponse.charge_id) == charge_id))).scalars().first()
    if row is None or row.rider_id != rider_id:
        raise UnknownSurvey()
    return row


async def answer(session: AsyncSession, rider_id: int, charge_id: int, score: int,
                 now: datetime) -> NpsResponse:
    """The rider's score; tapping again changes it (a reason only stays with a low score)."""
    if not isinstance(score, int) or not 0 <= score <= 10:
        raise UnknownSurvey()
    row = await _prompt(session, rider_id, charge_id)
    row.score, row.answered_at = score, now
    if score >= 7:
        row.reason = None
    await session.flush()
    return row


async def give_reason(session: AsyncSession, rider_id: int, charge_id: int, reason: str,
                      now: datetime) -> NpsResponse:
    if reason not in REASONS:
        raise UnknownSurvey()
    row = await _prompt(session, rider_id, charge_id)
    if row.score is None or row.score >= 7:
        raise UnknownSurvey()  # reasons are asked of detractors only
    row.reason = reason
    row.answered_at = row.answered_at or now
    await session.flush()
    return row


async def comment(session: AsyncSession, rider_id: int, charge_id: int, text: str,
                  now: datetime) -> NpsResponse:
    row = await _prompt(session, rider_id, charge_id)
    row.comment = text.strip()[:500]
    row.answered_at = row.answered_at or now
    await session.flush()
    return row


async def opt_out(session: AsyncSession, rider_id: int, now: datetime) -> None:
    """No more survey prompts for this rider; one still waiting for the morning is withdrawn."""
    dialect = session.get_bind().dialect.name
    await session.execute(insert_ignore(dialect, table_of(SurveyOptOut)).values(
        rider_id=rider_id, at=now))
    await session.execute(
        update(outbox.OutboxMessage).where(
            col(outbox.OutboxMessage.rider_id) == rider_id,
            col(outbox.OutboxMessage.kind) == PROMPT_KIND,
            col(outbox.OutboxMessage.state) == outbox.OutboxState.pending,
            col(outbox.OutboxMessage.lease_until).is_(None),
            col(outbox.OutboxMessage.due_at) > now)
        .values(state=outbox.OutboxState.dead, last_error="rider opted out of surveys")
        .execution_options(synchronize_session=False))


async def opt_in(session: AsyncSession, rider_id: int) -> None:
    row = await session.get(SurveyOptOut, rider_id)
    if row is not None:
        await session.delete(row)
        await session.flush()
