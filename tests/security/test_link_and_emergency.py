"""Issue 15, items 3 and 5: a /link code cannot be guessed into someone's wallet, and ten riders
smelling the same smoke page staff once (with a count), not ten times.

Every test drives the real app over HTTP (web chat and the Telegram webhook against the local
fake Bot API), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.scheduler import sweep_support
from core.billing import wallet
from core.db import transaction
from core.outbox import OutboxMessage
from core.riders.identities import rider_for
from core.riders.tables import Identity, Rider
from core.support.tables import Ticket
from tests.support.journey import HandClock, WebRider, button, web_staff
from tests.support.riders import TelegramRider
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import all_skins_settings, make_settings

# Crockford base32 without I, L, O, U, shown in groups of four.
SHOWN_CODE = re.compile(r"\b([0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{2})\b")


@dataclass
class Pair:
    """A web-chat rider who owns a code, and a Telegram rider (or attacker) who types codes."""

    server: Running
    clock: HandClock
    fakes: Any
    owner: WebRider

    def telegram(self, name: str = "Mallory") -> TelegramRider:
        tg = TelegramRider(self.server, self.fakes[0])
        tg.user.language_code, tg.user.first_name = "en", name
        return tg

    async def code(self) -> str:
        """The code as the owner is shown it (its format is checked on its own, below)."""
        replies = await self.owner.say("/link")
        found = re.search(r"/link (\S+)", replies[0]["text"])
        assert found, replies[0]["text"]
        return found.group(1)

    async def rider_of(self, platform: str, external_id: str) -> Rider:
        async with self.server.ctx.sm() as s:
            rider = (await s.execute(select(Rider).join(Identity).where(
                Identity.platform == platform, Identity.external_id == external_id))).scalar_one()
            rider.balance_fen = await wallet.balance(s, rider.id)  # type: ignore[arg-type]
            return rider

    async def count(self, model: Any, *where: Any) -> int:
        async with self.server.ctx.sm() as s:
            return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture
async def pair(db_url: str, fakes: Any) -> AsyncIterator[Pair]:
    clock = HandClock()
    settings = all_skins_settings(db_url, *fakes, scheduler={"enabled": False})
    async with start_server(settings, clock=clock) as server:
        owner = await WebRider(server.http, server.url).connect()
        async with transaction(server.ctx.sm) as s:
            victim = await rider_for(s, "webchat", owner.client_id, display_name="Victim")
            victim.language = "en"
            await wallet.post(s, victim.id, "topup", 5800, "seed:victim")  # type: ignore[arg-type]
        yield Pair(server, clock, fakes, owner)


async def _fund(pair: Pair, tg: TelegramRider, fen: int) -> None:
    await tg.say("/help")  # first contact creates the identity
    async with transaction(pair.server.ctx.sm) as s:
        rider = await rider_for(s, "telegram", str(tg.user.user_id))
        await wallet.post(s, rider.id, "topup", fen, f"seed:{tg.user.user_id}")  # type: ignore[arg-type]


# --- the code itself ----------------------------------------------------------------------------


async def test_link_code_is_ten_unambiguous_characters_shown_in_groups(pair: Pair) -> None:
    codes = {await pair.code() for _ in range(5)}
    assert len(codes) == 5
    for code in codes:
        assert SHOWN_CODE.fullmatch(code), code
        raw = code.replace("-", "")
        assert len(raw) >= 10 and not set(raw) & set("ILOU")


async def test_a_code_is_accepted_in_any_case_with_or_without_dashes(pair: Pair) -> None:
    code = await pair.code()
    tg = pair.telegram()
    await tg.say(f"/link {code.replace('-', ' ').lower()}")
    await tg.wait_text("please confirm in the app where you got the code")


# --- guessing -----------------------------------------------------------------------------------


async def test_the_sixth_try_in_an_hour_is_refused_unchecked_even_when_right(pair: Pair) -> None:
    code = await pair.code()
    tg = pair.telegram()
    for guess in ("000000", "123456", "ABCD-EFGH-JK", "ZZZZ-ZZZZ-ZZ", "0000-0000-00"):
        await tg.say(f"/link {guess}")
    assert (await tg.wait_text("wrong or has expired"))
    await tg.say(f"/link {code}")  # the right code, sixth try: not even looked at
    await tg.wait_text("Too many wrong codes")
    assert await pair.count(OutboxMessage, OutboxMessage.kind == "link_request") == 0
    victim = await pair.rider_of("webchat", pair.owner.client_id)
    assert victim.balance_fen == 5800
    # The code was not spent by the refused try: its owner can still use it from their phone.
    other = pair.telegram("Owner's phone")
    await other.say(f"/link {code}")
    await other.wait_text("please confirm")
    # An hour later the attacker's budget is back (their failures aged out).
    pair.clock.advance(minutes=61)
    await tg.say("/link 0000-0000-00")
    await tg.wait_text("wrong or has expired")


async def test_a_global_failure_budget_pauses_link_entry_for_everyone(pair: Pair) -> None:
    from core.riders.accounts import LinkAttempt

    code = await pair.code()
    async with transaction(pair.server.ctx.sm) as s:
        bots = await rider_for(s, "webchat", "botnet")
        s.add_all([LinkAttempt(platform="webchat", external_id=f"bot-{i}", rider_id=bots.id,  # type: ignore[arg-type]
                               at=pair.clock.now - timedelta(minutes=30)) for i in range(200)])
    tg = pair.telegram()
    await tg.say(f"/link {code}")
    await tg.wait_text("Linking accounts is paused")
    assert await pair.count(OutboxMessage, OutboxMessage.kind == "link_request") == 0


async def test_a_code_is_single_use(pair: Pair) -> None:
    code = await pair.code()
    first, second = pair.telegram("First"), pair.telegram("Second")
    await first.say(f"/link {code}")
    await first.wait_text("please confirm")
    await second.say(f"/link {code}")
    await second.wait_text("wrong or has expired")
    assert await pair.count(OutboxMessage, OutboxMessage.kind == "link_request") == 1


async def test_an_expired_code_fails(pair: Pair) -> None:
    code = await pair.code()
    pair.clock.advance(minutes=10, seconds=1)
    tg = pair.telegram()
    await tg.say(f"/link {code}")
    await tg.wait_text("wrong or has expired")


# --- the owner decides --------------------------------------------------------------------------


async def test_a_valid_code_merges_nothing_until_the_owner_confirms(pair: Pair) -> None:
    code = await pair.code()
    tg = pair.telegram("Mallory")
    await _fund(pair, tg, 500)
    await tg.say(f"/link {code}")
    await tg.wait_text("please confirm in the app where you got the code")
    # Nothing has moved: two riders, two wallets.
    victim = await pair.rider_of("webchat", pair.owner.client_id)
    asker = await pair.rider_of("telegram", str(tg.user.user_id))
    assert victim.id != asker.id and (victim.balance_fen, asker.balance_fen) == (5800, 500)
    # The owner is asked in their own chat, and only their Confirm links.
    ask = await pair.owner.wait_message("Link the Telegram account")
    assert "Mallory" in ask["text"]
    confirm = button([ask], "lk:ok:")
    stranger = WebRider(pair.server.http, pair.server.url)
    await stranger.press("lang:en")
    assert "Linked" not in (await stranger.press(confirm))[0]["text"]
    assert (await pair.rider_of("telegram", str(tg.user.user_id))).id == asker.id
    done = await pair.owner.press(confirm)
    assert "Linked" in done[0]["text"] and "¥63.00" in done[0]["text"]
    await tg.wait_text("Linked")
    merged = await pair.rider_of("telegram", str(tg.user.user_id))
    assert merged.id == victim.id and merged.balance_fen == 6300
    # A second tap decides nothing more.
    assert "already answered" in (await pair.owner.press(confirm))[0]["text"]


async def test_refuse_leaves_both_riders_untouched(pair: Pair) -> None:
    code = await pair.code()
    tg = pair.telegram("Mallory")
    await _fund(pair, tg, 500)
    async with pair.server.ctx.sm() as s:
        entries = int(await s.scalar(select(func.count()).select_from(wallet.LedgerEntry)) or 0)
    await tg.say(f"/link {code}")
    ask = await pair.owner.wait_message("Link the Telegram account")
    refused = await pair.owner.press(button([ask], "lk:no:"))
    assert "nothing was linked" in refused[0]["text"]
    await tg.wait_text("did not confirm")
    victim = await pair.rider_of("webchat", pair.owner.client_id)
    asker = await pair.rider_of("telegram", str(tg.user.user_id))
    assert victim.id != asker.id and (victim.balance_fen, asker.balance_fen) == (5800, 500)
    async with pair.server.ctx.sm() as s:
        assert int(await s.scalar(select(func.count()).select_from(wallet.LedgerEntry)) or 0
                   ) == entries
    # Confirm after Refuse moves nothing either.
    assert "already answered" in (await pair.owner.press(button([ask], "lk:ok:")))[0]["text"]
    assert (await pair.rider_of("telegram", str(tg.user.user_id))).id == asker.id


async def test_an_unanswered_request_lapses_after_ten_minutes(pair: Pair) -> None:
    code = await pair.code()
    tg = pair.telegram()
    await tg.say(f"/link {code}")
    ask = await pair.owner.wait_message("Link the Telegram account")
    pair.clock.advance(minutes=11)
    late = await pair.owner.press(button([ask], "lk:ok:"))
    assert "expired" in late[0]["text"]
    victim = await pair.rider_of("webchat", pair.owner.client_id)
    assert (await pair.rider_of("telegram", str(tg.user.user_id))).id != victim.id


# --- emergencies --------------------------------------------------------------------------------


async def _pages(server: Running, rider_id: int) -> int:
    async with server.ctx.sm() as s:
        return int(await s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.rider_id == rider_id, OutboxMessage.kind == "ticket")) or 0)


async def test_a_fire_reported_by_eleven_riders_pages_staff_once_with_a_count(db_url: str
                                                                             ) -> None:
    clock = HandClock()
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=4)
        agent = await web_staff(server, "agent")
        sup = await web_staff(server, "supervisor")
        ids = {"sos-agent": agent.rider_id}
        # The first report pages at once.
        first = WebRider(server.http, server.url)
        await first.press("lang:en")
        assert "Safety first" in (await first.say("起火了 smoke fire"))[0]["text"]
        await agent.wait_message("EMERGENCY #1")
        # Ten more riders in the next seconds: each is answered at once and has a ticket, but
        # nobody is paged again.
        for i in range(1, 11):
            clock.advance(seconds=2)
            rider = WebRider(server.http, server.url)
            await rider.press("lang:en")
            replies = await rider.say("起火了 smoke fire")
            assert "Safety first" in replies[0]["text"] and f"#{i + 1}" in replies[0]["text"]
        assert await server_count(server, Ticket, Ticket.priority == "emergency") == 11
        await asyncio.sleep(0.5)  # give the notifier its chance to send what it would
        assert await _pages(server, ids["sos-agent"]) == 1
        assert not [m for m in agent.inbox if "EMERGENCY #2" in m["text"]]
        # One follow-up a minute after the first repeat carries the count.
        clock.advance(minutes=1)
        count = await agent.wait_message("emergency reports")
        assert "11 emergency reports" in count["text"] and "#1" in count["text"]
        assert await server_count(server, OutboxMessage, OutboxMessage.kind == "sos_reports",
                                  OutboxMessage.rider_id == ids["sos-agent"]) == 1
        # A repeat after that follow-up went out is still no page; it starts the next count.
        clock.advance(minutes=3)
        more = WebRider(server.http, server.url)
        await more.press("lang:en")
        await more.say("fire!!")
        clock.advance(minutes=1)
        assert "12 emergency reports" in (await agent.wait_message("12 emergency"))["text"]
        assert await _pages(server, ids["sos-agent"]) == 1
        # The supervisors are paged once for the incident, not once per rider.
        await sweep_support(server.ctx)
        await sup.wait_message("was not taken within 60 seconds")
        assert await server_count(server, OutboxMessage,
                                  OutboxMessage.kind == "ticket_escalated") == 1
        # Eleven minutes after the first page, a new report is news: it pages again.
        clock.now = (await _created(server, 1)) + timedelta(minutes=11)
        late = WebRider(server.http, server.url)
        await late.press("lang:en")
        await late.say("smoke again!")
        await agent.wait_message("EMERGENCY #13")
        assert await _pages(server, ids["sos-agent"]) == 2


async def server_count(server: Running, model: Any, *where: Any) -> int:
    async with server.ctx.sm() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _created(server: Running, ticket_id: int) -> Any:
    async with server.ctx.sm() as s:
        ticket = await s.get(Ticket, ticket_id)
        assert ticket is not None
        return ticket.created_at
