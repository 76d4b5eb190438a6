"""Proves tests/fakes against the real python-telegram-bot client, so tests built on the fake
fail for the same reasons production would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    LabeledPrice,
    MenuButtonCommands,
    ReplyKeyboardMarkup,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    RetryAfter,
)
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes

from tests.fakes.telegram_api import Call, FakeTelegram, UploadedFile
from tests.fakes.telegram_updates import TelegramUser, inline_buttons

RIDER_ID = 10001

# PTB itself reads RetryAfter.retry_after while building the exception and warns about the
# upcoming int -> timedelta change; that is PTB's noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def app(fake: FakeTelegram) -> AsyncIterator[Application]:
    application = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .updater(None)
        .build()
    )
    async with application:
        yield application


def _keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [InlineKeyboardButton("开始充电", callback_data="start:P0001-03")],
            [InlineKeyboardButton("帮助", url="https://example.com/help")],
        ]
    )


@pytest.mark.asyncio
async def test_get_me_is_the_first_call_and_parses(fake: FakeTelegram, app: Application) -> None:
    assert fake.calls[0].method == "getMe"
    me = await app.bot.get_me()
    assert me.id == 123456
    assert me.is_bot and me.first_name == "ChargeBot"
    assert me.username == "chargebot_test_bot"
    assert me.can_join_groups is True
    assert me.supports_inline_queries is False
    assert app.bot.username == "chargebot_test_bot"


@pytest.mark.asyncio
async def test_send_message_decodes_params(fake: FakeTelegram, app: Application) -> None:
    msg = await app.bot.send_message(RIDER_ID, "请选择端口", reply_markup=_keyboard())

    assert msg.text == "请选择端口"
    assert msg.chat.id == RIDER_ID and msg.chat.type == "private"
    assert msg.from_user is not None and msg.from_user.is_bot
    assert msg.reply_markup == _keyboard()

    call = fake.calls[-1]
    assert call.method == "sendMessage"
    # Sent as form field strings; the fake turns them back into typed values.
    assert call.params["chat_id"] == RIDER_ID
    assert call.params["text"] == "请选择端口"
    assert call.params["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "开始充电", "callback_data": "start:P0001-03"}],
            [{"text": "帮助", "url": "https://example.com/help"}],
        ]
    }
    [shown] = fake.messages_to(RIDER_ID)
    assert shown["text"] == "请选择端口"
    assert shown["message_id"] == msg.message_id
    assert fake.sent[-1]["message_id"] == msg.message_id


@pytest.mark.asyncio
async def test_message_ids_increase_per_chat(fake: FakeTelegram, app: Application) -> None:
    a1 = await app.bot.send_message(1, "a")
    b1 = await app.bot.send_message(2, "b")
    a2 = await app.bot.send_message(1, "c")
    assert (a1.message_id, b1.message_id, a2.message_id) == (1, 1, 2)
    assert [m["text"] for m in fake.messages_to(1)] == ["a", "c"]


@pytest.mark.asyncio
async def test_reply_keyboard_is_kept_in_record_but_not_on_message(
    fake: FakeTelegram, app: Application
) -> None:
    markup = ReplyKeyboardMarkup([[KeyboardButton("发送位置", request_location=True)]])
    msg = await app.bot.send_message(RIDER_ID, "附近的充电桩？", reply_markup=markup)
    assert msg.reply_markup is None
    record = fake.messages_to(RIDER_ID)[-1]
    assert record["reply_markup"]["keyboard"][0][0]["request_location"] is True


@pytest.mark.asyncio
async def test_send_venue_and_location(fake: FakeTelegram, app: Application) -> None:
    venue = await app.bot.send_venue(
        RIDER_ID,
        latitude=31.2304,
        longitude=121.4737,
        title="P0001 人民广场",
        address="南京东路1号",
    )
    assert venue.venue is not None
    assert venue.venue.title == "P0001 人民广场"
    assert venue.venue.location.latitude == pytest.approx(31.2304)
    call = fake.calls[-1]
    assert call.method == "sendVenue"
    assert call.params["latitude"] == pytest.approx(31.2304)

    loc = await app.bot.send_location(RIDER_ID, latitude=31.0, longitude=121.0)
    assert loc.location is not None and loc.location.longitude == 121.0
    assert [m.get("venue", {}).get("title") for m in fake.messages_to(RIDER_ID)] == [
        "P0001 人民广场",
        None,
    ]


@pytest.mark.asyncio
async def test_edit_message_text_updates_record(fake: FakeTelegram, app: Application) -> None:
    msg = await app.bot.send_message(RIDER_ID, "充电中", reply_markup=_keyboard())
    edited = await app.bot.edit_message_text("已结束", chat_id=RIDER_ID, message_id=msg.message_id)

    assert not isinstance(edited, bool)
    assert edited.text == "已结束"
    assert edited.edit_date is not None
    # Like Telegram: an edit without reply_markup drops the inline keyboard.
    assert edited.reply_markup is None
    [record] = fake.messages_to(RIDER_ID)
    assert record["text"] == "已结束" and "reply_markup" not in record
    assert [m["text"] for m in fake.sent] == ["充电中", "已结束"]
    assert fake.calls[-1].params["message_id"] == msg.message_id

    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await app.bot.edit_message_text("已结束", chat_id=RIDER_ID, message_id=msg.message_id)
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await app.bot.edit_message_text("x", chat_id=RIDER_ID, message_id=999)

    markup = await app.bot.edit_message_reply_markup(
        chat_id=RIDER_ID, message_id=msg.message_id, reply_markup=_keyboard()
    )
    assert not isinstance(markup, bool) and markup.reply_markup == _keyboard()

    assert await app.bot.delete_message(RIDER_ID, msg.message_id) is True
    assert fake.messages_to(RIDER_ID) == []


@pytest.mark.asyncio
async def test_answer_callback_query(fake: FakeTelegram, app: Application) -> None:
    assert await app.bot.answer_callback_query("4000000000000001", text="已开始", show_alert=True)
    call = fake.calls[-1]
    assert call.method == "answerCallbackQuery"
    assert call.params == {
        "callback_query_id": "4000000000000001",
        "text": "已开始",
        "show_alert": True,
    }


@pytest.mark.asyncio
async def test_send_photo_multipart_and_download(fake: FakeTelegram, app: Application) -> None:
    data = b"\xff\xd8\xff\xe0fake-jpeg-bytes"
    msg = await app.bot.send_photo(RIDER_ID, photo=data, caption="二维码")

    call = fake.calls[-1]
    assert call.method == "sendPhoto"
    upload = call.params["photo"]
    assert isinstance(upload, UploadedFile)
    assert upload.data == data
    assert call.files == {"photo": upload}
    assert call.params["chat_id"] == RIDER_ID
    assert call.params["caption"] == "二维码"

    assert msg.caption == "二维码"
    largest = msg.photo[-1]
    file = await app.bot.get_file(largest.file_id)
    assert file.file_path is not None and file.file_path.startswith(fake.base_file_url)
    assert bytes(await file.download_as_bytearray()) == data

    # Re-sending by file_id is a plain form field, not an upload.
    again = await app.bot.send_photo(RIDER_ID, photo=largest.file_id)
    assert fake.calls[-1].params["photo"] == largest.file_id
    assert again.photo[-1].file_id == largest.file_id


@pytest.mark.asyncio
async def test_send_document_invoice_poll_chat_action(fake: FakeTelegram, app: Application) -> None:
    doc = await app.bot.send_document(RIDER_ID, document=b"a,b\n1,2\n", filename="账单.csv")
    assert doc.document is not None and doc.document.file_name == "账单.csv"

    invoice = await app.bot.send_invoice(
        RIDER_ID,
        title="充值",
        description="钱包充值 10 元",
        payload="topup:10",
        currency="CNY",
        prices=[LabeledPrice("充值", 1000)],
        provider_token="TEST:provider",
    )
    assert invoice.invoice is not None and invoice.invoice.total_amount == 1000
    assert fake.calls[-1].params["prices"] == [{"label": "充值", "amount": 1000}]

    poll = await app.bot.send_poll(RIDER_ID, "好用吗？", ["好", "不好"])
    assert poll.poll is not None and [o.text for o in poll.poll.options] == ["好", "不好"]
    assert fake.calls[-1].params["options"] == [{"text": "好"}, {"text": "不好"}]

    assert await app.bot.send_chat_action(RIDER_ID, "typing") is True
    assert await app.bot.answer_pre_checkout_query("pcq-1", ok=True) is True
    assert [m.get("invoice", {}).get("title") for m in fake.messages_to(RIDER_ID)][1] == "充值"


@pytest.mark.asyncio
async def test_bot_config_methods(fake: FakeTelegram, app: Application) -> None:
    assert await app.bot.set_my_commands([BotCommand("start", "开始"), BotCommand("help", "帮助")])
    assert [c.command for c in await app.bot.get_my_commands()] == ["start", "help"]
    assert await app.bot.set_chat_menu_button(menu_button=MenuButtonCommands())
    assert fake.calls[-1].params["menu_button"] == {"type": "commands"}
    chat = await app.bot.get_chat(RIDER_ID)
    assert chat.id == RIDER_ID and chat.type == "private"
    with pytest.raises(BadRequest, match=r"(?i)BOT_COMMAND_INVALID"):
        await app.bot.set_my_commands([BotCommand("Start", "大写不行")])


@pytest.mark.asyncio
async def test_webhook_methods_and_conflict(fake: FakeTelegram, app: Application) -> None:
    assert await app.bot.set_webhook("https://bot.example.com/tg", secret_token="s3cret")
    info = await app.bot.get_webhook_info()
    assert info.url == "https://bot.example.com/tg"
    assert fake.webhook is not None and fake.webhook["secret_token"] == "s3cret"
    with pytest.raises(Conflict):
        await app.bot.get_updates()
    assert await app.bot.delete_webhook()
    assert (await app.bot.get_webhook_info()).url == ""


@pytest.mark.asyncio
async def test_get_updates_long_poll_and_offset(fake: FakeTelegram, app: Application) -> None:
    rider = TelegramUser(RIDER_ID)
    fake.queue_update(rider.text("/start"))
    [first] = await app.bot.get_updates(timeout=5)
    assert first.message is not None and first.message.text == "/start"

    # Long poll returns as soon as an update is queued, not after the timeout.
    poll = asyncio.create_task(app.bot.get_updates(offset=first.update_id + 1, timeout=5))
    await asyncio.sleep(0.1)
    assert not poll.done()
    started = time.monotonic()
    fake.queue_update(rider.location(31.2, 121.4))
    [second] = await poll
    assert time.monotonic() - started < 1
    assert second.message is not None and second.message.location is not None

    # The offset confirmed the first update; an empty short poll returns [].
    assert await app.bot.get_updates(offset=second.update_id + 1, timeout=0) == ()


@pytest.mark.asyncio
async def test_fail_next_raises_retry_after(fake: FakeTelegram, app: Application) -> None:
    fake.fail_next("sendMessage")
    with pytest.raises(RetryAfter) as excinfo:
        await app.bot.send_message(RIDER_ID, "hi")
    assert "Retry in 1" in str(excinfo.value)
    assert fake.calls[-1].status == 429
    # Only the next call fails.
    assert (await app.bot.send_message(RIDER_ID, "hi")).text == "hi"

    fake.fail_next(
        "sendMessage",
        error_code=403,
        retry_after=None,
        description="Forbidden: bot was blocked by the user",
    )
    with pytest.raises(Forbidden):
        await app.bot.send_message(RIDER_ID, "hi")


@pytest.mark.asyncio
async def test_rate_limit_counts_throttled(fake: FakeTelegram, app: Application) -> None:
    fake.flood_limit_per_s = 3
    outcomes = []
    for i in range(6):
        try:
            await app.bot.send_message(RIDER_ID, f"n{i}")
            outcomes.append("ok")
        except RetryAfter:
            outcomes.append("429")
    assert outcomes[:3] == ["ok", "ok", "ok"]
    assert "429" in outcomes
    assert fake.throttled == outcomes.count("429")


@pytest.mark.asyncio
async def test_formatting_errors_like_telegram(fake: FakeTelegram, app: Application) -> None:
    ok = await app.bot.send_message(
        RIDER_ID, "<b>P0001</b> &lt;3号口&gt;", parse_mode=ParseMode.HTML
    )
    assert ok.message_id == 1
    with pytest.raises(BadRequest, match=r'(?i)unsupported start tag "br"'):
        await app.bot.send_message(RIDER_ID, "a<br>b", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)Can't find end tag"):
        await app.bot.send_message(RIDER_ID, "<b>unclosed", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)Character '.' is reserved"):
        await app.bot.send_message(RIDER_ID, "余额 1.5 元", parse_mode=ParseMode.MARKDOWN_V2)
    assert await app.bot.send_message(RIDER_ID, r"*余额* 1\.5 元", parse_mode=ParseMode.MARKDOWN_V2)
    too_long = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="充电" * 11)]])
    with pytest.raises(BadRequest, match=r"(?i)BUTTON_DATA_INVALID"):
        await app.bot.send_message(RIDER_ID, "x", reply_markup=too_long)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await app.bot.send_message(RIDER_ID, "长" * 4097)


@pytest.mark.asyncio
async def test_blocked_chat(fake: FakeTelegram, app: Application) -> None:
    fake.blocked_chats.add(RIDER_ID)
    with pytest.raises(Forbidden, match="blocked"):
        await app.bot.send_message(RIDER_ID, "充电完成")


@pytest.mark.asyncio
async def test_unknown_method_and_wrong_token(fake: FakeTelegram, app: Application) -> None:
    with pytest.raises(EndPointNotFound):
        await app.bot.do_api_request("sendRocket", api_kwargs={"chat_id": 1})
    assert fake.calls[-1].method == "sendRocket"
    assert fake.calls[-1].status == 404

    intruder = Bot("999:WRONG", base_url=fake.base_url)
    with pytest.raises(InvalidToken):
        async with intruder:
            pass
    assert fake.calls[-1].status == 401


@pytest.mark.asyncio
async def test_json_body_and_query_string(fake: FakeTelegram) -> None:
    # Not what PTB sends, but what curl-style clients and the real API accept.
    url = f"{fake.base_url}{fake.token}"
    markup = {"inline_keyboard": [[{"text": "a", "callback_data": "b"}]]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/sendMessage", json={"chat_id": "7", "text": "123", "reply_markup": markup}
        ) as resp:
            body = await resp.json()
        async with session.get(f"{url}/getme") as resp:
            me = await resp.json()
        async with session.get(f"{url}/nope") as resp:
            assert resp.status == 404
    assert body["ok"] is True and body["result"]["text"] == "123"
    assert fake.calls[0].params == {"chat_id": 7, "text": "123", "reply_markup": markup}
    assert me["result"]["username"] == "chargebot_test_bot"
    assert fake.calls[1].method == "getMe"


@pytest.mark.asyncio
async def test_wait_for(fake: FakeTelegram, app: Application) -> None:
    start = len(fake.calls)

    async def later() -> None:
        await asyncio.sleep(0.05)
        await app.bot.send_message(RIDER_ID, "稍后")

    task = asyncio.create_task(later())
    call = await fake.wait_for(
        lambda c: c.method == "sendMessage" and c.params["chat_id"] == RIDER_ID,
        timeout=2,
        start=start,
    )
    await task
    assert isinstance(call, Call) and call.params["text"] == "稍后"
    with pytest.raises(AssertionError, match=r"(?s)recent calls:\n.*sendMessage"):
        await fake.wait_for(lambda c: c.method == "sendPoll", timeout=0.1)


@pytest.mark.asyncio
async def test_round_trip_through_handlers(fake: FakeTelegram, app: Application) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(
            f"端口 {' '.join(context.args or [])}", reply_markup=_keyboard()
        )

    async def pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer("好的")
        await query.edit_message_text(f"已选择 {query.data}")

    app.add_handler(CommandHandler("start", start))
    app.add_handler(CallbackQueryHandler(pressed))
    rider = TelegramUser(RIDER_ID)

    await app.process_update(Update.de_json(rider.text("/start port_P0001-03"), app.bot))
    [menu] = fake.messages_to(RIDER_ID)
    assert menu["text"] == "端口 port_P0001-03"
    assert [b["text"] for b in inline_buttons(menu)] == ["开始充电", "帮助"]

    await app.process_update(Update.de_json(rider.press(menu, "start:P0001-03"), app.bot))
    assert fake.messages_to(RIDER_ID)[0]["text"] == "已选择 start:P0001-03"
    answered = next(c for c in fake.calls if c.method == "answerCallbackQuery")
    assert answered.params["text"] == "好的"

    with pytest.raises(AssertionError, match="no button"):
        rider.press(menu, "start:P9999-01")


def _bot() -> Bot:
    # de_json only needs a Bot object, not a live connection.
    return Bot("123456:TEST-TOKEN")


def test_update_builders_parse() -> None:
    bot = _bot()
    rider = TelegramUser(RIDER_ID, username="rider1")

    text = Update.de_json(rider.text("/start port_P0001-03"), bot)
    assert text.message is not None and text.message.text == "/start port_P0001-03"
    assert text.message.parse_entities() == {
        text.message.entities[0]: "/start",
    }
    assert text.effective_user is not None
    assert text.effective_user.language_code == "zh-hans"
    assert text.effective_user.first_name == "骑手"
    assert text.effective_chat is not None and text.effective_chat.id == RIDER_ID

    plain = Update.de_json(rider.text("你好"), bot)
    assert plain.message is not None and plain.message.entities == ()
    assert plain.update_id > text.update_id

    loc = Update.de_json(rider.location(31.23, 121.47), bot)
    assert loc.message is not None and loc.message.location is not None
    assert loc.message.location.latitude == pytest.approx(31.23)

    photo = Update.de_json(rider.photo("AgAC-pile", caption="坏了"), bot)
    assert photo.message is not None and photo.message.photo[-1].file_id == "AgAC-pile"
    assert photo.message.caption == "坏了"

    sent = {
        "message_id": 5,
        "from": {"id": 123456, "is_bot": True, "first_name": "ChargeBot"},
        "chat": {"id": RIDER_ID, "type": "private"},
        "date": int(time.time()),
        "text": "选择",
        "reply_markup": {"inline_keyboard": [[{"text": "确定", "callback_data": "ok"}]]},
    }
    press1 = rider.press(sent, "ok")
    press2 = rider.press(sent, "ok")
    cq = Update.de_json(press1, bot).callback_query
    assert cq is not None and cq.data == "ok"
    assert cq.message is not None and cq.message.message_id == 5
    assert press1["callback_query"]["id"] != press2["callback_query"]["id"]

    group = Update.de_json(rider.group_text(-1001234567890, "/status@chargebot_test_bot"), bot)
    assert group.message is not None and group.effective_chat is not None
    assert group.effective_chat.type == "supergroup"
    assert group.effective_chat.title == "骑手群"
    assert group.message.entities[0].length == len("/status@chargebot_test_bot")
    small = Update.de_json(rider.group_text(-42, "hi", title="小群"), bot)
    assert small.effective_chat is not None and small.effective_chat.type == "group"


@pytest.mark.asyncio
async def test_real_updater_polls_the_fake(fake: FakeTelegram) -> None:
    application = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("pong")

    application.add_handler(CommandHandler("ping", echo))
    rider = TelegramUser(RIDER_ID)
    async with application:
        assert application.updater is not None
        await application.start()
        await application.updater.start_polling(poll_interval=0, timeout=5)
        # The updater is now parked in a long poll; queuing must wake it immediately.
        await fake.wait_for(lambda c: c.method == "getUpdates" and c.status is None, timeout=2)
        fake.queue_update(rider.text("/ping"))
        reply = await fake.wait_for(lambda c: c.method == "sendMessage", timeout=2)
        assert reply.params == {"chat_id": RIDER_ID, "text": "pong"}
        await application.updater.stop()
        await application.stop()
    assert any(c.method == "deleteWebhook" for c in fake.calls)


@pytest.mark.asyncio
async def test_stop_releases_a_pending_long_poll() -> None:
    server = FakeTelegram()
    await server.start()
    bot = Bot(server.token, base_url=server.base_url)
    async with bot:
        poll = asyncio.create_task(bot.get_updates(timeout=30))
        await server.wait_for(lambda c: c.method == "getUpdates", timeout=2)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 2
        assert await poll == ()
