"""Riders' voice (ISSUE 6): site reviews shown on port cards, /suggest adopted into 3 months of
free charging, the FAQ menu led by the week's most asked questions, and a ticket's answer turned
into an FAQ entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.scheduler import faq_digest
from core.billing.plans import RiderPlan
from core.db import transaction
from core.engagement.questions import FaqDigest
from core.riders import staff
from core.riders.identities import rider_for
from core.support.suggestions import Suggestion
from tests.support.journey import PileClient, WebRider, button, english_rider, wait_until, web_staff
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


async def _is(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return (await value) == expected


async def _staff(server: Running, role: str = "agent") -> WebRider:
    """Customer service in the web chat, logged in as staff do."""
    return await web_staff(server, role)


async def test_review_after_a_charge_shows_on_the_port_card(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=4)
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        now = datetime.now(UTC)
        await pile.post([pile.event("heartbeat", now)])
        rider = await english_rider(server)
        card = await rider.say("P0001-01")
        await rider.press(button(card, "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        await pile.run_charge(1, ref, now - timedelta(minutes=40), 30)
        bill = await rider.wait_message("🧾")
        stars = await rider.press(button([bill], "rv:"))
        tags = await rider.press(button(stars, "rvs:") [:-1] + "4")
        tags = await rider.press(button(tags, "rvt:") .rsplit(":", 1)[0] + ":fast")
        assert "✅ charges fast" in [b["label"] for row in tags[0]["buttons"] for b in row]
        done = await rider.say("roof keeps the rain off")
        assert "Thank you" in done[0]["text"]
        other = await english_rider(server)
        card = await other.say("P0001-02")
        assert "⭐ 4.0 from 1 riders · charges fast" in card[0]["text"]
        # Someone else's charge cannot be rated.
        assert "Only your own" in (await other.press(button([bill], "rv:")))[0]["text"]


async def test_adopted_suggestion_grants_three_months_of_free_charging_once(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        agent = await _staff(server)
        rider = await english_rider(server)
        ask = await rider.say("/suggest")
        assert "free for 3 months" in ask[0]["text"]
        thanks = await rider.say("put a roof over the HZ02 piles")
        assert "Idea #1" in thanks[0]["text"]
        listing = await agent.say("/suggestions")
        assert "roof over the HZ02" in listing[0]["text"]
        assert "adopted" in (await agent.press(button(listing, "sg:yes:")))[0]["text"]
        assert "already decided" in (await agent.press("sg:yes:1"))[0]["text"]
        assert "staff only" in (await rider.press("sg:yes:1"))[0]["text"]
        await rider.wait_message("We are adopting your idea")
        async with server.ctx.sm() as s:
            plans = list((await s.execute(select(RiderPlan))).scalars())
            sug = (await s.execute(select(Suggestion))).scalars().one()
        assert len(plans) == 1 and plans[0].price_fen == 0
        assert (plans[0].ends_at - plans[0].starts_at).days == 90
        assert sug.state == "adopted" and sug.plan_id == plans[0].id


async def test_faq_menu_digest_and_a_ticket_answer_becoming_an_entry(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        agent = await _staff(server)
        riders = [await english_rider(server) for i in range(3)]
        for r in riders:
            await r.say("how much does charging cost per hour?")
        await riders[0].say("how can I stop charging early")
        await faq_digest(server.ctx)
        digest = await agent.wait_message("most asked questions")
        assert "3×" in digest["text"]
        async with server.ctx.sm() as s:
            first = (await s.execute(select(FaqDigest).order_by(FaqDigest.rank))).scalars().first()
        assert first is not None and first.key == "price"
        menu = await riders[1].press("faq")
        assert button(menu, "faq:") == "faq:price"  # the most asked comes first
        answer = await riders[1].press("faq:price")
        assert "/h" in answer[0]["text"] or "hour" in answer[0]["text"].lower()

        # An uncovered question goes to a person (one tap); the answer becomes an FAQ entry.
        unsure = await riders[2].say("do you sell replacement charger cables at the sites?")
        handed = await riders[2].press(button(unsure, "ask"))
        assert "A person from our team" in handed[0]["text"]
        post = await agent.wait_message("Ticket #1")
        await agent.press(button([post], "tk:reply:"))
        await agent.say("Not yet: bring your own cable; the ports are standard sockets.")
        saved = await agent.press("tk:faq:1")
        assert "Saved" in saved[0]["text"]
        newcomer = await english_rider(server)
        reply = await newcomer.say("do you sell replacement charger cables at the sites?")
        assert "bring your own cable" in reply[0]["text"]


async def test_best_pile_vote_in_chat_and_in_a_telegram_group_poll(
        db_url: str, fakes: tuple) -> None:
    from bot.scheduler import monthly_vote
    from core.piles import fleet as piles
    from core.support.votes import BestPile, Vote
    from tests.fakes.telegram_updates import TelegramUser, next_update_id
    from tests.support.riders import TG_SECRET
    from tests.support.settings import all_skins_settings

    tg, wx = fakes
    group = -1_002_000_000_555
    clock = {"now": datetime(2031, 3, 20, 4, 0, tzinfo=UTC)}
    settings = all_skins_settings(db_url, tg, wx, scheduler={"enabled": False},
                                  support={"rider_groups": [group]})
    async with start_server(settings, clock=lambda: clock["now"]) as server:
        await seed_city(server.ctx, ports=2)
        async with transaction(server.ctx.sm) as s:
            await piles.add_site(s, "T02", "第二车棚", 30.28, 120.12)
        # The technician in their own Telegram chat: the result comes weeks later, long after
        # any web chat session would have ended.
        tech_uid = 555_900
        async with transaction(server.ctx.sm) as s:
            tech = await rider_for(s, "telegram", str(tech_uid), chat_id=str(tech_uid))
            tech.language = "en"
            await staff.add(s, tech.id, "technician", "*")  # type: ignore[arg-type]
        web = await english_rider(server)
        menu = await web.say("/vote")
        assert {b["data"] for row in menu[0]["buttons"] for b in row} == {"vote:T01", "vote:T02"}
        await web.press("vote:T02")
        assert "counted" in (await web.press("vote:T01"))[0]["text"]  # changed, still one vote

        # The 1st of April: March is counted later; first the group poll for March goes out.
        from bot.skins import rider_groups

        assert await rider_groups.post_polls(server.ctx, "2031-03") == 1
        poll_msg = tg.messages_to(group)[-1]
        options = [o["text"] for o in poll_msg["poll"]["options"]]
        for uid in (555_001, 555_002):
            voter = TelegramUser(uid)
            update = {"update_id": next_update_id(), "poll_answer": {
                "poll_id": poll_msg["poll"]["id"], "user": voter.user,
                "option_ids": [options.index("第二车棚")],
                "option_persistent_ids": [str(options.index("第二车棚"))]}}
            async with server.http.post(f"{server.url}/telegram/webhook", json=update,
                                        headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
                                        ) as r:
                assert r.status == 200
        async def votes_cast() -> int:
            async with server.ctx.sm() as s:
                return len((await s.execute(select(Vote))).scalars().all())

        await wait_until(lambda: _is(votes_cast(), 3))  # updates are processed in the background
        clock["now"] = datetime(2031, 4, 1, 2, 0, tzinfo=UTC)
        await monthly_vote(server.ctx)
        await monthly_vote(server.ctx)  # a second run changes nothing
        async with server.ctx.sm() as s:
            best = (await s.execute(select(BestPile))).scalars().one()
        assert (best.month, best.site_id, best.votes) == ("2031-03", "T02", 2)
        await wait_until(lambda: any("best place to charge in 2031-03" in m.get("text", "")
                                     for m in tg.messages_to(tech_uid)))
        # March is closed; a vote now counts for April.
        assert "2031-04" in (await web.press("vote:T01"))[0]["text"]
