"""The same core journey through python-telegram-bot against a local fake Bot API server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.telegram_updates import TelegramUser
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings

SECRET = "webhook-secret-for-tests"


@pytest.fixture
async def tg_server(db_url: str, fake_tg: FakeTelegram) -> AsyncIterator[Running]:
    settings = make_settings(db_url, telegram={
        "token": fake_tg.token, "base_url": fake_tg.base_url,
        "base_file_url": fake_tg.base_file_url, "webhook_secret": SECRET,
    })
    async with start_server(settings) as running:
        yield running


async def post_update(server: Running, update: dict, secret: str = SECRET) -> int:
    async with server.http.post(
        f"{server.url}/telegram/webhook", json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    ) as r:
        return r.status


def _has_button(prefix: str):  # type: ignore[no-untyped-def]
    def check(call) -> bool:  # type: ignore[no-untyped-def]
        markup = call.params.get("reply_markup") or {}
        return any(b.get("callback_data", "").startswith(prefix)
                   for row in markup.get("inline_keyboard", []) for b in row)
    return check


async def test_webhook_rejects_a_wrong_secret_token(tg_server: Running) -> None:
    rider = TelegramUser(7)
    assert await post_update(tg_server, rider.text("/start"), secret="nope") == 401
    async with tg_server.http.post(
        f"{tg_server.url}/telegram/webhook", data=b"{not json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    ) as r:
        assert r.status == 400


async def test_language_switch_to_english(
    tg_server: Running, fake_tg: FakeTelegram, caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.DEBUG)  # it would log URLs holding the token
    from bot.logs import install

    install(tg_server.ctx.settings)
    logging.getLogger("httpx").setLevel(logging.DEBUG)
    rider = TelegramUser(99, language_code="zh-hans")
    assert await post_update(tg_server, rider.text("/language")) == 200
    menu = await fake_tg.wait_for(lambda c: _has_button("lang:en")(c))
    msg = fake_tg.message(99, int(menu.response["result"]["message_id"]))
    assert msg is not None
    start_from = len(fake_tg.calls)
    assert await post_update(tg_server, rider.press(msg, "lang:en")) == 200
    done = await fake_tg.wait_for(lambda c: c.method == "sendMessage", start=start_from)
    assert "English" in done.params["text"]
    start_from = len(fake_tg.calls)
    assert await post_update(tg_server, rider.text("/wallet")) == 200
    wallet = await fake_tg.wait_for(lambda c: c.method == "sendMessage", start=start_from)
    assert "Balance" in wallet.params["text"]
    assert "sendMessage" in caplog.text  # the requests were logged…
    assert fake_tg.token not in caplog.text and SECRET not in caplog.text  # …without secrets
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def test_polling_mode_for_development(db_url: str, fake_tg: FakeTelegram) -> None:
    settings = make_settings(db_url, telegram={
        "token": fake_tg.token, "base_url": fake_tg.base_url,
        "base_file_url": fake_tg.base_file_url, "mode": "polling",
    })
    async with start_server(settings):
        fake_tg.queue_update(TelegramUser(555).text("/start"))
        welcome = await fake_tg.wait_for(
            lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == 555)
        assert "⚡" in welcome.params["text"]


async def test_location_lists_nearest_free_ports_and_a_map_venue(
    tg_server: Running, fake_tg: FakeTelegram,
) -> None:
    await seed_city(tg_server.ctx, piles_n=6, ports=2)
    from core.db import transaction
    from core.piles.tables import Pile

    async with transaction(tg_server.ctx.sm) as s:
        for pile in (await s.execute(select(Pile))).scalars():
            pile.online, pile.last_seen_at = True, tg_server.ctx.clock()
    rider = TelegramUser(31337)
    assert await post_update(tg_server, rider.location(30.2782, 120.1141)) == 200
    listing = await fake_tg.wait_for(
        lambda c: c.method == "sendMessage" and _has_button("pile:")(c))
    rows = listing.params["reply_markup"]["inline_keyboard"]
    assert len(rows) == 5  # the five nearest of six piles
    msg = fake_tg.message(31337, int(listing.response["result"]["message_id"]))
    start_from = len(fake_tg.calls)
    assert await post_update(tg_server, rider.press(msg, rows[0][0]["callback_data"])) == 200
    # The pile's words carry its port buttons; its venue (the map pin) follows them.
    card = await fake_tg.wait_for(
        lambda c: c.method == "sendMessage" and _has_button("port:P00")(c), start=start_from)
    venue = await fake_tg.wait_for(lambda c: c.method == "sendVenue", start=start_from)
    assert abs(float(venue.params["latitude"]) - 30.278) < 0.01
    assert fake_tg.calls.index(card) < fake_tg.calls.index(venue)
    assert "reply_markup" not in venue.params
