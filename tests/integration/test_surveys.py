"""The NPS survey (ISSUE 7): its arithmetic, when a rider is asked (and when not), and the
buttons a rider taps after a settled charge.

The survey modules are imported inside the tests, after `survey_tables` created their tables
(tests/support/surveys.py says why).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.handlers.turn import Turn
from core.charging.tables import Charge
from core.db import transaction
from core.outbox import OutboxMessage
from core.piles.tables import Port
from core.riders.identities import rider_for
from core.riders.tables import Rider
from notifications.replies import MAX_CALLBACK_BYTES, Incoming
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings
from tests.support.surveys import create_survey_tables, survey_tables  # noqa: F401

SHANGHAI_NOON = datetime(2031, 5, 10, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai


@pytest.fixture
async def running(db_url: str) -> AsyncIterator[Running]:
    async with start_server(make_settings(db_url, scheduler={"enabled": False})) as server:
        await create_survey_tables(server.ctx.engine)
        await seed_city(server.ctx, ports=4)
        yield server


async def _rider(server: Running, name: str, language: str = "en") -> int:
    async with transaction(server.ctx.sm) as s:
        rider = await rider_for(s, "webchat", name)
        rider.language = language
        await s.flush()
        return rider.id  # type: ignore[return-value]


async def _charge(server: Running, rider_id: int, ended_at: datetime, port: int = 1,
                  state: str = "settled") -> int:
    async with transaction(server.ctx.sm) as s:
        p = (await s.execute(select(Port).where(Port.pile_id == "P0001",
                                                Port.number == port))).scalars().one()
        charge = Charge(rider_id=rider_id, port_id=p.id, pile_id="P0001",  # type: ignore[arg-type]
                        port_number=port, port_code=p.code, site_id="T01", state=state,
                        requested_at=ended_at - timedelta(hours=1),
                        started_at=ended_at - timedelta(hours=1), ended_at=ended_at,
                        settled_at=ended_at if state == "settled" else None)
        s.add(charge)
        await s.flush()
        return charge.id  # type: ignore[return-value]


async def _prompt(server: Running, charge_id: int, now: datetime, **rules: Any) -> Any:
    from core.engagement import surveys

    async with transaction(server.ctx.sm) as s:
        charge = await s.get(Charge, charge_id)
        assert charge is not None
        return await surveys.maybe_prompt(s, charge, now, **rules)


async def _outbox(server: Running, rider_id: int) -> list[OutboxMessage]:
    async with server.ctx.sm() as s:
        return list((await s.execute(select(OutboxMessage).where(
            OutboxMessage.rider_id == rider_id, OutboxMessage.kind == "nps_prompt")
            .order_by(OutboxMessage.id))).scalars())


# --- the arithmetic ---------------------------------------------------------------------------


def test_nps_is_percent_promoters_minus_percent_detractors() -> None:
    from core.engagement.surveys import category, nps

    assert nps([10, 9, 8, 7, 6, 0, 10, 3]) == 0.0  # 3 promoters, 3 detractors of 8
    assert nps([10, 9, 9, 8]) == 75.0
    assert nps([10, 9, 7, 0]) == 25.0
    assert nps([9, 9, 5]) == pytest.approx(100 / 3)
    assert nps([6, 6, 0]) == -100.0
    assert nps([10]) == 100.0
    # The boundaries: 9 promotes, 7 and 8 are passive, 6 detracts.
    assert [category(s) for s in (0, 6, 7, 8, 9, 10)] == [
        "detractor", "detractor", "passive", "passive", "promoter", "promoter"]


def test_nps_without_answers_is_none_and_all_passives_is_zero() -> None:
    from core.engagement.surveys import nps

    assert nps([]) is None
    assert nps([7, 8, 8, 7]) == 0.0
    with pytest.raises(ValueError):
        nps([11])
    with pytest.raises(ValueError):
        nps([-1])


def test_quiet_hours_move_a_prompt_to_eight_in_the_morning_local_time() -> None:
    from core.engagement.surveys import in_quiet_hours, send_time

    shanghai = timedelta(hours=8)
    late = datetime(2031, 5, 10, 23, 30, tzinfo=UTC) - shanghai  # 23:30 local
    small_hours = datetime(2031, 5, 11, 3, 0, tzinfo=UTC) - shanghai  # 03:00 local
    assert send_time(late) == datetime(2031, 5, 11, 8, 0, tzinfo=UTC) - shanghai
    assert send_time(small_hours) == datetime(2031, 5, 11, 8, 0, tzinfo=UTC) - shanghai
    assert send_time(SHANGHAI_NOON) == SHANGHAI_NOON
    # 22:00 is quiet, 08:00 is not.
    assert in_quiet_hours(datetime(2031, 5, 10, 22, 0, tzinfo=UTC) - shanghai)
    assert not in_quiet_hours(datetime(2031, 5, 11, 8, 0, tzinfo=UTC) - shanghai)
    assert not in_quiet_hours(datetime(2031, 5, 11, 7, 59, tzinfo=UTC) - shanghai,
                              quiet=("23:00", "07:00"))
    # A window that does not cross midnight, in another zone.
    assert in_quiet_hours(datetime(2031, 5, 11, 13, 0, tzinfo=UTC), quiet=("12:00", "14:00"),
                          tz="UTC")


# --- when a rider is asked --------------------------------------------------------------------


async def test_a_settled_charge_prompts_once_with_the_port_in_the_outbox(
        running: Running) -> None:
    rider = await _rider(running, "nps-rider-1")
    charge = await _charge(running, rider, SHANGHAI_NOON)
    row = await _prompt(running, charge, SHANGHAI_NOON)
    assert row is not None and row.score is None and row.site_id == "T01"
    assert await _prompt(running, charge, SHANGHAI_NOON) is None  # a replayed settlement
    [msg] = await _outbox(running, rider)
    assert msg.payload == {"charge_id": charge, "port": "P0001-01"}
    assert msg.due_at == SHANGHAI_NOON and msg.dedupe_key == f"nps:{charge}"
    # A charge not yet paid is not asked about.
    due = await _charge(running, rider, SHANGHAI_NOON, port=2, state="ended")
    assert await _prompt(running, due, SHANGHAI_NOON + timedelta(days=30)) is None


async def test_a_charge_cut_by_a_fault_is_not_asked_about(running: Running) -> None:
    rider = await _rider(running, "nps-rider-fault")
    cut, dropped, found = [await _charge(running, rider, SHANGHAI_NOON, port=p)
                           for p in (1, 2, 3)]
    async with transaction(running.ctx.sm) as s:
        for charge_id, reason, bill in ((cut, "fault", {}), (dropped, "power_loss", {}),
                                        (found, "full", {"fault_code": "over_temperature"})):
            charge = await s.get(Charge, charge_id)
            assert charge is not None
            charge.end_reason, charge.bill = reason, bill
    for charge_id in (cut, dropped, found):
        assert await _prompt(running, charge_id, SHANGHAI_NOON) is None
    assert await _outbox(running, rider) == []
    fine = await _charge(running, rider, SHANGHAI_NOON, port=4)
    assert await _prompt(running, fine, SHANGHAI_NOON) is not None


async def test_a_rider_is_asked_at_most_once_per_min_days_between(running: Running) -> None:
    rider = await _rider(running, "nps-rider-2")
    first = await _charge(running, rider, SHANGHAI_NOON)
    assert await _prompt(running, first, SHANGHAI_NOON, min_days_between=7) is not None
    three_days = SHANGHAI_NOON + timedelta(days=3)
    second = await _charge(running, rider, three_days, port=2)
    assert await _prompt(running, second, three_days, min_days_between=7) is None
    eight_days = SHANGHAI_NOON + timedelta(days=8)
    third = await _charge(running, rider, eight_days, port=3)
    assert await _prompt(running, third, eight_days, min_days_between=7) is not None
    assert [m.payload["charge_id"] for m in await _outbox(running, rider)] == [first, third]
    # Another rider's prompt is not theirs to count.
    other = await _rider(running, "nps-rider-2b")
    theirs = await _charge(running, other, three_days, port=4)
    assert await _prompt(running, theirs, three_days) is not None


async def test_a_charge_settled_at_night_is_asked_about_at_eight(running: Running) -> None:
    rider = await _rider(running, "nps-rider-3")
    night = datetime(2031, 5, 10, 15, 30, tzinfo=UTC)  # 23:30 in Asia/Shanghai
    charge = await _charge(running, rider, night)
    row = await _prompt(running, charge, night, quiet=("22:00", "08:00"), tz="Asia/Shanghai")
    eight = datetime(2031, 5, 11, 0, 0, tzinfo=UTC)  # 08:00 in Asia/Shanghai
    assert row is not None and row.prompted_at == eight
    [msg] = await _outbox(running, rider)
    assert msg.due_at == eight and msg.state == "pending"
    # The spacing counts from when the prompt goes out: 6 days 10 h after it is too soon.
    later = eight + timedelta(days=6, hours=10)
    again = await _charge(running, rider, later, port=2)
    assert await _prompt(running, again, later) is None


async def test_a_rider_who_opted_out_is_not_asked_and_a_waiting_prompt_is_withdrawn(
        running: Running) -> None:
    from core.engagement import surveys

    rider = await _rider(running, "nps-rider-4")
    night = datetime(2031, 5, 10, 15, 30, tzinfo=UTC)
    waiting = await _charge(running, rider, night)
    assert await _prompt(running, waiting, night) is not None
    async with transaction(running.ctx.sm) as s:
        await surveys.opt_out(s, rider, night + timedelta(minutes=5))
        await surveys.opt_out(s, rider, night + timedelta(minutes=6))  # twice is fine
    [msg] = await _outbox(running, rider)
    assert msg.state == "dead"
    month_later = night + timedelta(days=30)
    charge = await _charge(running, rider, month_later, port=2)
    assert await _prompt(running, charge, month_later) is None
    async with transaction(running.ctx.sm) as s:
        assert not await surveys.should_prompt(s, rider, month_later)
        await surveys.opt_in(s, rider)
    assert await _prompt(running, charge, month_later) is not None


def test_prompt_rules_come_from_the_settings_with_defaults() -> None:
    from core.engagement.surveys import prompt_rules

    rules = prompt_rules(make_settings("sqlite+aiosqlite:///unused.db"))
    assert rules == {"min_days_between": 7, "quiet": ("22:00", "08:00"),
                     "tz": "Asia/Shanghai"}


# --- the rider's taps -------------------------------------------------------------------------


def test_the_prompt_has_eleven_scores_and_an_opt_out_within_telegram_limits() -> None:
    from bot.handlers.surveys import render_prompt

    [reply] = render_prompt({"charge_id": 9_999_999_999, "port": "P0001-03"}, "en")
    assert "P0001-03" in reply.text
    data = [b.data for row in reply.buttons for b in row]
    assert data == [f"nps:9999999999:{n}" for n in range(11)] + ["nps:9999999999:off"]
    assert all(len((d or "").encode()) <= MAX_CALLBACK_BYTES for d in data)
    assert [b.label for b in reply.buttons[0]] == ["0", "1", "2", "3", "4", "5"]


async def _tap(server: Running, client: str, data: str | None = None, text: str | None = None
               ) -> list[Any]:
    from bot.handlers import surveys as handler
    from core.engagement import prompts

    async with transaction(server.ctx.sm) as s:
        rider: Rider = await rider_for(s, "webchat", client)
        inc = Incoming(platform="webchat", user_id=client, chat_id=client, data=data, text=text)
        turn = Turn(ctx=server.ctx, session=s, rider=rider, inc=inc)
        if data is not None:
            verb, _, arg = data.partition(":")
            assert verb == "nps"
            return await handler.button(turn, arg)
        prompt = await prompts.pending(s, rider.id, turn.now)  # type: ignore[arg-type]
        assert prompt is not None
        return await handler.answer_prompt(turn, prompt) or []


async def test_a_detractor_is_asked_why_and_can_write_their_own_reason(
        running: Running) -> None:
    from core.engagement import prompts
    from core.engagement.surveys import NpsResponse

    rider = await _rider(running, "nps-tap-1")
    charge = await _charge(running, rider, SHANGHAI_NOON)
    await _prompt(running, charge, SHANGHAI_NOON)
    [why] = await _tap(running, "nps-tap-1", f"nps:{charge}:3")
    assert "disappointed" in why.text
    assert [b.data for row in why.buttons for b in row] == [
        f"nps:{charge}:r:{r}" for r in ("price", "payment", "finding", "fault", "speed", "other")]
    [ask] = await _tap(running, "nps-tap-1", f"nps:{charge}:r:other")
    assert "few words" in ask.text
    [thanks] = await _tap(running, "nps-tap-1", text="the cable was too short")
    assert "Thank you" in thanks.text
    async with running.ctx.sm() as s:
        row = (await s.execute(select(NpsResponse))).scalars().one()
        assert await prompts.pending(s, rider, SHANGHAI_NOON) is None
    assert (row.score, row.reason, row.comment) == (3, "other", "the cable was too short")
    assert row.answered_at is not None


async def test_a_promoter_is_thanked_and_a_changed_mind_clears_the_reason(
        running: Running) -> None:
    from core.engagement.surveys import NpsResponse

    rider = await _rider(running, "nps-tap-2")
    charge = await _charge(running, rider, SHANGHAI_NOON)
    await _prompt(running, charge, SHANGHAI_NOON)
    await _tap(running, "nps-tap-2", f"nps:{charge}:6")
    [thanks] = await _tap(running, "nps-tap-2", f"nps:{charge}:r:price")
    assert "Thank you" in thanks.text
    [again] = await _tap(running, "nps-tap-2", f"nps:{charge}:9")
    assert "Thank you for your rating" in again.text and not again.buttons
    async with running.ctx.sm() as s:
        row = (await s.execute(select(NpsResponse))).scalars().one()
    assert (row.score, row.reason) == (9, None)
    # A promoter has no reason to give.
    [closed] = await _tap(running, "nps-tap-2", f"nps:{charge}:r:price")
    assert "closed" in closed.text


async def test_someone_elses_survey_and_bad_taps_are_refused_and_off_opts_out(
        running: Running) -> None:
    from core.engagement.surveys import NpsResponse, SurveyOptOut

    owner = await _rider(running, "nps-tap-3")
    await _rider(running, "nps-tap-4")
    charge = await _charge(running, owner, SHANGHAI_NOON)
    await _prompt(running, charge, SHANGHAI_NOON)
    for data in (f"nps:{charge}:10", f"nps:{charge}:11", "nps:x:5", f"nps:{charge}:r:moon",
                 f"nps:{charge + 1}:5", f"nps:{charge}:"):
        [refused] = await _tap(running, "nps-tap-4", data)
        assert "closed" in refused.text, data
    [off] = await _tap(running, "nps-tap-3", f"nps:{charge}:off")
    assert "won't ask" in off.text
    async with running.ctx.sm() as s:
        assert (await s.execute(select(NpsResponse))).scalars().one().score is None
        assert await s.get(SurveyOptOut, owner) is not None


async def test_answer_prompt_leaves_other_prompts_and_commands_alone(running: Running) -> None:
    from bot.handlers import surveys as handler
    from core.engagement import prompts

    rider_id = await _rider(running, "nps-tap-5")
    async with transaction(running.ctx.sm) as s:
        rider = await s.get(Rider, rider_id)
        assert rider is not None
        now = running.ctx.clock()
        await prompts.ask(s, rider_id, "review_note", 1, now)
        prompt = await prompts.pending(s, rider_id, now)
        assert prompt is not None
        inc = Incoming(platform="webchat", user_id="nps-tap-5", chat_id="nps-tap-5", text="hi")
        assert await handler.answer_prompt(Turn(running.ctx, s, rider, inc), prompt) is None
        await prompts.ask(s, rider_id, handler.COMMENT_PROMPT, 1, now)
        prompt = await prompts.pending(s, rider_id, now)
        assert prompt is not None
        inc = Incoming(platform="webchat", user_id="nps-tap-5", chat_id="nps-tap-5",
                       text="/help")
        assert await handler.answer_prompt(Turn(running.ctx, s, rider, inc), prompt) is None
