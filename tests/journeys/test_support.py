"""Customer service through the bot (ISSUE 6): one-tap reports with a photo reach the staff desk,
staff answer by replying, the answer reaches the rider on their own platform, the rider's next
message joins the same ticket; close and rating; the emergency lane; bad input."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import func, select

from bot.scheduler import sweep_support
from core.billing.coupons import Coupon
from core.db import transaction
from core.faults.tables import WorkOrder
from core.outbox import OutboxMessage
from core.riders import staff
from core.riders.identities import rider_for
from core.support.tables import Ticket, TicketMessage
from tests.fakes.telegram_updates import TelegramUser
from tests.support.journey import HandClock, PileClient, WebRider, button, wait_until, web_staff
from tests.support.riders import ACCOUNT, TG_SECRET, TelegramRider, WechatRider
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, all_skins_settings, make_settings

DESK = -1_001_777_000_111  # the staff group


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, "JPEG")
    return out.getvalue()


async def _post_tg(server, update: dict) -> None:  # type: ignore[no-untyped-def]
    async with server.http.post(f"{server.url}/telegram/webhook", json=update,
                                headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}) as r:
        assert r.status == 200


async def _count(server, model, *where) -> int:  # type: ignore[no-untyped-def]
    async with server.ctx.sm() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()


@pytest.mark.parametrize("platform", ["telegram", "wechat"])
async def test_report_with_photo_staff_reply_rider_answer_close_and_rating(
        db_url: str, fakes: tuple, tmp_path, platform: str) -> None:  # type: ignore[no-untyped-def]
    tg, wx = fakes
    clock = HandClock()
    settings = all_skins_settings(db_url, tg, wx, scheduler={"enabled": False},
                                  support={"telegram_staff_chat": DESK,
                                           "photo_dir": str(tmp_path / "photos"),
                                           "desk_language": "en"})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=4)
        agent = TelegramUser(900_001, first_name="Agent Zhou")
        async with transaction(server.ctx.sm) as s:
            me = await rider_for(s, "telegram", str(agent.user_id))
            me.language = "en"
            await staff.add(s, me.id, "agent", "*", name="小周")  # type: ignore[arg-type]
        rider = (TelegramRider(server, tg) if platform == "telegram"
                 else WechatRider(server, wx, ACCOUNT))
        await rider.say("/language")
        await rider.tap("English")

        # One tap from the port card, the problem, then a photo.
        await rider.scan("P0001-02")
        await rider.tap("Report a problem")
        await rider.tap("damaged socket")
        await rider.wait_text("A photo helps")
        if platform == "telegram":
            tg.add_file("AgAC-socket", jpeg())
            await rider._post(rider.user.photo("AgAC-socket", caption="socket is melted"))
        else:
            wx.add_media("media-socket", jpeg())
            await rider.post(rider.user.image(media_id="media-socket"))
        await rider.wait_text("Report #1 is with our team")

        # The desk (a Telegram group) got the ticket, then the photo.
        await wait_until(lambda: any("photo attached" in (m.get("caption") or "")
                                      for m in tg.messages_to(DESK)), timeout=15)
        posts = tg.messages_to(DESK)
        # The desk sees the photo itself, through a signed, expiring link.
        shown = next(c for c in tg.calls if c.method == "sendPhoto")
        link = str(shown.params["photo"])
        path = link.split("/photos/", 1)[1]
        async with server.http.get(f"{server.url}/photos/{path}") as r:
            assert r.status == 200
            # The stored photo is the rider's picture re-encoded (no metadata), not their file.
            with Image.open(io.BytesIO(await r.read())) as shown_photo:
                assert (shown_photo.format, shown_photo.size) == ("JPEG", (64, 48))
        async with server.http.get(f"{server.url}/photos/{path[:-4]}0000") as r:
            assert r.status == 401
        first = posts[0]
        assert "Ticket #1" in first["text"] and "damaged socket" in first["text"]
        assert "P0001-02" in first["text"] and platform in first["text"]
        async with server.ctx.sm() as s:
            ticket = await s.get(Ticket, 1)
        assert ticket is not None and ticket.photo and ticket.photo.endswith(".jpg")
        with Image.open(tmp_path / "photos" / ticket.photo) as kept:  # re-encoded on intake
            assert (kept.format, kept.size, dict(kept.getexif())) == ("JPEG", (64, 48), {})

        # Staff answer by replying to the post in the group.
        update = agent.group_text(DESK, "Thanks! A technician is on the way; use port 3.",
                                  title="客服台")
        update["message"]["reply_to_message"] = {k: first[k] for k in
                                                 ("message_id", "chat", "date", "text")}
        await _post_tg(server, update)
        await rider.wait_text("A technician is on the way")

        # The rider answers: it joins the same ticket and reaches the desk.
        await rider.say("ok, thank you. port 3 works")
        await rider.wait_text("Added to your ticket #1")
        await wait_until(lambda: any("port 3 works" in (m.get("text") or "")
                                      for m in tg.messages_to(DESK)), timeout=15)
        assert await _count(server, Ticket) == 1
        async with server.ctx.sm() as s:
            authors = [m.author for m in (await s.execute(
                select(TicketMessage).order_by(TicketMessage.id))).scalars()]
        assert authors == ["rider", "staff", "rider"]

        # Close with a resolution (button then one line), and the rider rates it.
        post = next(m for m in tg.messages_to(DESK) if "Ticket #1" in (m.get("text") or ""))
        await _post_tg(server, agent.press(post, "tk:close:1"))
        await wait_until(lambda: any("How was #1 resolved" in (m.get("text") or "")
                                      for m in tg.messages_to(DESK)), timeout=10)
        # The prompt belongs to the agent, who answers in their own chat.
        await _post_tg(server, agent.text("Socket replaced."))
        await rider.wait_text("Ticket #1 is closed: Socket replaced.")
        await rider.tap("⭐⭐⭐⭐⭐")
        await rider.wait_text("Thank you for rating")
        async with server.ctx.sm() as s:
            ticket = await s.get(Ticket, 1)
        assert ticket is not None and ticket.state == "closed" and ticket.rating == 5

        # A reply to the closed ticket is refused, and nothing reaches the rider.
        before = len(rider.texts() if platform == "wechat" else rider._messages())
        late = agent.group_text(DESK, "one more thing", title="客服台")
        late["message"]["reply_to_message"] = {k: first[k] for k in
                                               ("message_id", "chat", "date", "text")}
        await _post_tg(server, late)
        await wait_until(lambda: any("already closed" in (m.get("text") or "")
                                      for m in tg.messages_to(DESK)), timeout=10)
        await asyncio.sleep(0.3)
        assert len(rider.texts() if platform == "wechat" else rider._messages()) == before


async def test_verified_report_earns_a_coupon_and_opens_one_work_order(db_url: str) -> None:
    clock = HandClock()
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=4)
        agent = await web_staff(server, "agent")
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        card = await rider.say("P0001-03")
        menu = await rider.press(button(card, "rep:"))
        ask = await rider.press(button(menu, "rp:P0001-03:no_power"))
        done = await rider.press(button(ask, "rskip:"))
        assert "Report #1" in done[0]["text"]
        post = await agent.wait_message("Ticket #1")
        replies = await agent.press(button([post], "tk:ver:"))
        assert "verified" in replies[0]["text"]
        again = await agent.press("tk:ver:1")
        assert "already verified" in again[0]["text"]
        async with server.ctx.sm() as s:
            coupons = list((await s.execute(select(Coupon))).scalars())
            orders = list((await s.execute(select(WorkOrder))).scalars())
        # ¥1 for the report + ¥2 for a new problem; no photo.
        assert [c.amount_fen for c in coupons] == [300]
        assert len(orders) == 1 and orders[0].port == 3 and orders[0].out_of_service
        await rider.wait_message("is confirmed")


async def test_bad_input_gets_a_clear_answer_and_loses_nothing(
        db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = HandClock()
    settings = make_settings(db_url, scheduler={"enabled": False},
                             support={"photo_dir": str(tmp_path), "max_photo_bytes": 20_000})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=4)
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        menu = await rider.press("rep:P0001-01")
        ask = await rider.press(button(menu, "rp:P0001-01:other"))
        assert "Tell us what is wrong" in ask[0]["text"]
        # An empty report (skipping the description): asked again, the ticket waits.
        empty = await rider.press("rskip:1")
        assert "Please tell us what is wrong first" in empty[0]["text"]
        # A file that is not an image, then one too large: refused by the upload.
        for data, want in ((b"%PDF-1.4 not a picture", "not"), (jpeg((1200, 1200)) * 3, "large")):
            form = aiohttp.FormData()
            form.add_field("photo", data, filename="x.jpg", content_type="image/jpeg")
            status, body = await rider.upload(form)
            assert status == 400
            assert want in body["error"].lower()
        # A proper description files it.
        done = await rider.say("the cable holder is broken")
        assert "Report #1" in done[0]["text"]
        async with server.ctx.sm() as s:
            msgs = (await s.execute(select(TicketMessage.text))).scalars().all()
        assert msgs == ["the cable holder is broken"]
        # Unknown targets get a friendly answer, not an error.
        assert "can't find" in (await rider.press("rep:P9999-01"))[0]["text"]
        assert "can't find" in (await rider.press("rep:c999"))[0]["text"]


async def test_smoke_message_pages_staff_at_once_and_escalates_once(db_url: str) -> None:
    clock = HandClock()
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=4)
        agent = await web_staff(server, "agent")
        sup = await web_staff(server, "supervisor")
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        replies = await rider.say("the pile next to my bike is smoking!!")
        assert "Safety first" in replies[0]["text"] and "119" in replies[0]["text"]
        page = await agent.wait_message("EMERGENCY #1")
        assert "smoking" in page["text"]
        clock.now += timedelta(seconds=59)
        await sweep_support(server.ctx)
        assert await _count(server, OutboxMessage, OutboxMessage.kind == "ticket_escalated") == 0
        clock.now += timedelta(seconds=2)
        await asyncio.gather(sweep_support(server.ctx), sweep_support(server.ctx))
        await sweep_support(server.ctx)
        assert await _count(server, OutboxMessage, OutboxMessage.kind == "ticket_escalated") == 1
        await sup.wait_message("was not taken within 60 seconds")
        # Chinese words work too, and a second alarm joins the same ticket.
        await rider.say("冒烟了")
        assert await _count(server, Ticket) == 1


async def test_a_charge_cut_by_a_fault_offers_the_emergency_lane(db_url: str) -> None:
    clock = HandClock()
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=4)
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        card = await rider.say("P0001-01")
        await rider.press(button(card, "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        t0 = clock.now - timedelta(minutes=20)
        await pile.post([pile.event("session_started", t0, port=1, session=ref),
                         pile.event("meter", t0 + timedelta(minutes=5), port=1, session=ref,
                                    power_w=200.0, energy_wh=16),
                         pile.event("fault", t0 + timedelta(minutes=6), port=1, code="leakage")])
        bill = await rider.wait_message("failed")
        replies = await rider.press(button([bill], "sos:"))
        assert "Safety first" in replies[0]["text"]
        async with server.ctx.sm() as s:
            ticket = (await s.execute(select(Ticket))).scalars().one()
        assert (ticket.priority, ticket.pile_id, ticket.port) == ("emergency", "P0001", 1)


async def test_questions_answered_from_the_faq_or_handed_to_a_person(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        answer = await rider.say("how do I stop charging early?")
        assert "/stop" in answer[0]["text"]
        assert await _count(server, Ticket) == 0
        # No ready answer: a person is one tap away, and the tap takes the question along.
        unsure = await rider.say("can you fix the brakes on my scooter please")
        assert "ready answer" in unsure[0]["text"] and await _count(server, Ticket) == 0
        handed = await rider.press(button(unsure, "ask"))
        assert "A person from our team" in handed[0]["text"]
        async with server.ctx.sm() as s:
            ticket = (await s.execute(select(Ticket))).scalars().one()
            [asked] = (await s.execute(select(TicketMessage))).scalars().all()
        assert ticket.kind == "question" and "brakes" in asked.text


async def test_a_conversation_you_can_see_and_leave(db_url: str) -> None:
    """Issue 18 finding 1: an open ticket swallowed every later question, showed no sign of
    itself and had no way out; nonsense opened one."""
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        rider = WebRider(server.http, server.url)
        await rider.press("lang:en")
        nonsense = await rider.say("asdkjh qwe zzz")
        assert await _count(server, Ticket) == 0 and button(nonsense, "ask")
        opened = await rider.press(button(nonsense, "ask"))
        end = button(opened, "tend:")
        async with server.ctx.sm() as s:
            ticket = (await s.execute(select(Ticket))).scalars().one()
        assert end == f"tend:{ticket.id}"

        # Inside the conversation the FAQ still answers, offering to hand the question on.
        faq = await rider.say("how do I stop charging early?")
        assert "/stop" in faq[0]["text"]
        assert button(faq, "tend:") == end and button(faq, "ask")
        words = await rider.say("thank you, I will wait for your colleague")
        assert f"ticket #{ticket.id}" in words[0]["text"] and button(words, "tend:") == end
        async with server.ctx.sm() as s:
            texts = [m.text for m in (await s.execute(select(TicketMessage).order_by(
                TicketMessage.id))).scalars()]
        assert texts == ["asdkjh qwe zzz", "thank you, I will wait for your colleague"]

        # Someone else's tap ends nothing; the rider's own does, once.
        stranger = WebRider(server.http, server.url)
        await stranger.press("lang:en")
        assert "already over" in (await stranger.press(end))[0]["text"]
        left = await rider.press(end)
        assert f"#{ticket.id} ended" in left[0]["text"]
        assert "already over" in (await rider.press(end))[0]["text"]
        async with server.ctx.sm() as s:
            closed = await s.get(Ticket, ticket.id)
            assert closed is not None and closed.state == "closed"
        after = await rider.say("how do I stop charging early?")
        assert "/stop" in after[0]["text"]
        assert not [b for row in after[0]["buttons"] for b in row
                    if b.get("data", "").startswith("tend:")]
        # An emergency is not the rider's to end: staff close it once all is safe.
        await rider.say("the pile next to my bike is smoking!!")
        more = await rider.say("thank you, I am waiting outside")
        assert "Added to your ticket" in more[0]["text"]
        assert not [b for r in more for row in r["buttons"] for b in row
                    if b.get("data", "").startswith("tend:")]


async def test_oversized_and_non_image_photos_in_chat_are_refused_clearly(
        db_url: str, fakes: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tg, wx = fakes
    settings = all_skins_settings(db_url, tg, wx, scheduler={"enabled": False},
                                  support={"photo_dir": str(tmp_path / "photos"),
                                           "max_photo_bytes": 30_000})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=4)
        rider = TelegramRider(server, tg)
        await rider.say("/language")
        await rider.tap("English")
        await rider.scan("P0001-04")
        await rider.tap("Report a problem")
        await rider.tap("dirty or blocked")
        tg.add_file("AgAC-huge", jpeg((2000, 2000)) + b"\0" * 40_000)
        await rider._post(rider.user.photo("AgAC-huge"))
        await rider.wait_text("too large")
        tg.add_file("AgAC-text", b"this is not a picture at all")
        await rider._post(rider.user.photo("AgAC-text"))
        await rider.wait_text("not a photo we can use")
        # Nothing was lost: the report waits for a good photo or a few words.
        await rider.say("bikes parked in front of the socket")
        await rider.wait_text("Report #1 is with our team")
        async with server.ctx.sm() as s:
            msgs = (await s.execute(select(TicketMessage))).scalars().all()
            ticket = await s.get(Ticket, 1)
        assert [m.text for m in msgs] == ["bikes parked in front of the socket"]
        assert ticket is not None and ticket.photo is None and ticket.problem == "dirty"
        assert not (tmp_path / "photos").exists() or not any((tmp_path / "photos").rglob("*.*"))
