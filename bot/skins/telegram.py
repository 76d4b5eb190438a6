"""Telegram skin: python-telegram-bot inside our aiohttp app (webhook), or polling for dev."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from aiohttp import web
from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    Update,
)
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import AIORateLimiter, Application, ContextTypes, TypeHandler

from bot.context import CTX, Context
from bot.handlers import router
from bot.i18n import tr
from bot.payments import telegram_pay
from bot.skins import rider_groups
from bot.skins.clients import TG_APP
from core.config import Settings
from core.riders.identities import language_from_hint
from core.riders.tables import Identity
from notifications.replies import Incoming, Reply
from notifications.worker import DeliveryError

log = logging.getLogger("chargebot.telegram")
WEBHOOK_PATH = "/telegram/webhook"


def webhook_secret(settings: Settings) -> str:
    """The configured secret, or one derived from the token so every worker agrees on it.

    A blank configured secret (`CHARGEBOT_TELEGRAM__WEBHOOK_SECRET=`) counts as unset: an empty
    secret would match a request that sends no header at all, i.e. anyone."""
    configured = settings.telegram.webhook_secret
    if configured is not None and configured.get_secret_value().strip():
        return configured.get_secret_value()
    if settings.telegram.token is None:
        raise RuntimeError("no Telegram token configured")
    token = settings.telegram.token.get_secret_value()
    return hashlib.sha256(b"chargebot-webhook:" + token.encode()).hexdigest()[:48]


def build_application(settings: Settings) -> Application:
    tg = settings.telegram
    if tg.token is None:
        raise RuntimeError("no Telegram token configured")
    builder = Application.builder().token(tg.token.get_secret_value())
    if tg.base_url:
        builder = builder.base_url(tg.base_url)
    if tg.base_file_url:
        builder = builder.base_file_url(tg.base_file_url)
    if tg.mode == "webhook":
        builder = builder.updater(None)
    # Telegram allows ~30 messages/s overall and 20/min per group; the limiter queues beyond.
    # Paced in 1/30 s slots, not a second's worth at once: after any pause a burst of 30
    # meets Telegram's rolling window, earns a 429 and a full second of silence (bench/
    # broadcast.py: 83 % of the limit bursting, 91 % paced, no 429s). At Telegram's rate a
    # slot holds one message; a higher (test) rate gets more per slot, not sub-ms timers.
    rate = tg.max_rate_per_s
    burst = max(1.0, rate / 30)
    limiter = (AIORateLimiter(overall_max_rate=burst, overall_time_period=burst / rate,
                              max_retries=2)
               if rate > 0 else AIORateLimiter(overall_max_rate=0, max_retries=2))  # 0: unpaced
    return builder.rate_limiter(limiter).concurrent_updates(64).build()


def incoming(update: Update, staff_chat: int | None = None) -> Incoming | None:
    user = update.effective_user
    chat = update.effective_chat
    if user is None or chat is None or user.is_bot:
        return None
    common: dict[str, Any] = {
        "platform": "telegram", "user_id": str(user.id), "chat_id": str(chat.id),
        "display_name": user.first_name or "", "language_hint": user.language_code,
    }
    if chat.type != "private":
        # The staff desk answers by replying to ticket posts; riders' groups run group-buys.
        common["group"] = "staff" if staff_chat is not None and chat.id == staff_chat else "riders"
    if (cq := update.callback_query) is not None:
        return Incoming(**common, data=cq.data or "", nonce=cq.id)
    msg = update.message
    if msg is None:
        return None
    if msg.reply_to_message is not None:
        common["reply_to"] = msg.reply_to_message.text or msg.reply_to_message.caption
    nonce = str(msg.message_id)
    if msg.location is not None:
        return Incoming(**common, location=(msg.location.latitude, msg.location.longitude),
                        nonce=nonce)
    if msg.photo:
        return Incoming(**common, photo=msg.photo[-1].file_id, text=msg.caption, nonce=nonce)
    if msg.text is not None:
        return Incoming(**common, text=msg.text, nonce=nonce)
    return None


def _markup(reply: Reply) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | None:
    if reply.buttons:
        return InlineKeyboardMarkup([
            [InlineKeyboardButton(b.label, callback_data=b.data) if b.data is not None
             else InlineKeyboardButton(b.label, url=b.url) for b in row]
            for row in reply.buttons
        ])
    if reply.request_location:
        return ReplyKeyboardMarkup(
            [[KeyboardButton(reply.request_location, request_location=True)]],
            resize_keyboard=True, one_time_keyboard=True,
        )
    return None


async def send_replies(bot: Bot, chat_id: int | str, replies: list[Reply]) -> None:
    for reply in replies:
        markup = _markup(reply)
        if reply.venue is not None:
            if reply.text:
                # The buttons ride with the text: a reader acts on the words, and the venue
                # that follows (a separate Bot API message) may arrive after they tap.
                await bot.send_message(chat_id, reply.text, reply_markup=markup)
                markup = None
            v = reply.venue
            await bot.send_venue(chat_id, latitude=v.lat, longitude=v.lon, title=v.title,
                                 address=v.address or v.title, reply_markup=markup)
        elif reply.photo_url:
            await bot.send_photo(chat_id, reply.photo_url, caption=reply.text or None,
                                 reply_markup=markup)
        else:
            await bot.send_message(chat_id, reply.text, reply_markup=markup)


class TelegramSender:
    """The notifier's way to Telegram: platform errors become retry decisions."""

    def __init__(self, application: Application) -> None:
        self.application = application

    async def send(self, identity: Identity, replies: list[Reply], **_: Any) -> str:
        try:
            await send_replies(self.application.bot, identity.chat_id, replies)
            return "telegram"
        except RetryAfter as exc:
            ra = exc.retry_after
            delay = ra.total_seconds() if isinstance(ra, timedelta) else float(ra)
            raise DeliveryError(str(exc), retry_after=delay) from exc
        except Forbidden as exc:  # the rider blocked the bot: retrying cannot help
            raise DeliveryError(str(exc), retryable=False) from exc
        except BadRequest as exc:
            raise DeliveryError(str(exc), retryable=False) from exc
        except (NetworkError, TelegramError) as exc:
            raise DeliveryError(str(exc)) from exc


async def _on_payment_update(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """Telegram Payments updates, which carry no rider action for the router: True if handled."""
    ctx: Context = context.application.bot_data["ctx"]
    if (query := update.pre_checkout_query) is not None:
        await telegram_pay.answer_pre_checkout(ctx, query)
        return True
    msg = update.message
    if msg is None or msg.successful_payment is None:
        return False
    try:
        replies = await telegram_pay.on_successful_payment(ctx, msg)
    except Exception:
        sp = msg.successful_payment
        log.exception("crediting telegram payment %s (charge %s) failed", sp.invoice_payload,
                      sp.telegram_payment_charge_id)
        # Telegram has taken the money: "try again" would make the rider pay twice.
        lang = language_from_hint(msg.from_user.language_code if msg.from_user else None)
        replies = [Reply(tr(lang, "We received your payment, but something went wrong while "
                                  "adding it to your wallet. Please don't pay again: support "
                                  "will sort it out. Your reference: {ref}",
                            ref=sp.telegram_payment_charge_id))]
    if replies:
        await send_replies(context.bot, msg.chat_id, replies)
    return True


async def _on_update(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    ctx: Context = context.application.bot_data["ctx"]
    if await _on_payment_update(update, context):
        return
    if await rider_groups.on_poll_answer(ctx, update):
        return
    inc = incoming(update, ctx.settings.support.telegram_staff_chat)
    if update.callback_query is not None:
        try:
            await update.callback_query.answer()
        except TelegramError:
            log.debug("callback answer failed", exc_info=True)
    if inc is None:
        return
    try:
        amount = telegram_pay.topup_amount(inc.data) if inc.data is not None else None
        if amount is not None and telegram_pay.available(ctx.settings):
            # An invoice is a Telegram message the platform-neutral replies can't express.
            replies = await telegram_pay.send_topup_invoice(ctx, context.bot, inc, amount)
        else:
            replies, _lang = await router.handle(ctx, inc)
    except Exception:
        log.exception("handler failed for a telegram update")
        replies = [Reply(tr("zh_CN", "Sorry, something went wrong on our side. Please try again."))]
    await send_replies(context.bot, inc.chat_id, replies)


async def webhook(request: web.Request) -> web.Response:
    app = request.app[TG_APP]
    ctx = request.app[CTX]
    given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    expected = webhook_secret(ctx.settings)
    # No header is never a match, whatever the secret turned out to be.
    if not given or not expected or not secrets.compare_digest(given.encode(), expected.encode()):
        return web.json_response({"error": "bad secret token"}, status=401)
    try:
        data = json.loads(await request.read())
        update = Update.de_json(data, app.bot)
    except Exception:  # PTB raises whatever a malformed update trips over (found by fuzzing)
        return web.json_response({"error": "not a Telegram update"}, status=400)
    if update is None:
        return web.json_response({"error": "not a Telegram update"}, status=400)
    if update.message is not None and update.message.successful_payment is not None:
        # Money has been taken: credit it before answering, so that if we cannot, Telegram
        # delivers the update again instead of the payment being lost.
        try:
            replies = await telegram_pay.on_successful_payment(ctx, update.message)
        except Exception:
            log.exception("crediting a telegram payment failed; telegram will retry")
            return web.json_response({"error": "could not credit the payment, retry"},
                                     status=503)
        if replies:
            task = asyncio.create_task(send_replies(app.bot, update.message.chat_id, replies))
            _background.add(task)
            task.add_done_callback(_background.discard)
        return web.json_response({"ok": True})
    await app.update_queue.put(update)
    return web.json_response({"ok": True})


_background: set[asyncio.Task[None]] = set()


def setup(app: web.Application, ctx: Context) -> Application | None:
    if ctx.settings.telegram.token is None:
        log.info("telegram: no token configured, Telegram skin is off")
        return None
    application = build_application(ctx.settings)
    application.bot_data["ctx"] = ctx
    application.add_handler(TypeHandler(Update, _on_update))
    app[TG_APP] = application
    app.router.add_post(WEBHOOK_PATH, webhook)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with application:
            await application.start()
            tg = ctx.settings.telegram
            if tg.mode == "polling" and application.updater is not None:
                await application.updater.start_polling()
            elif ctx.settings.server.public_url.startswith("https://"):
                # Telegram only calls https URLs; a local run has no public URL to register.
                await application.bot.set_webhook(
                    ctx.settings.server.public_url.rstrip("/") + WEBHOOK_PATH,
                    secret_token=webhook_secret(ctx.settings),
                )
            yield
            if application.updater is not None and application.updater.running:
                await application.updater.stop()
            await application.stop()

    app.cleanup_ctx.append(lifecycle)
    log.info("telegram: skin on (%s mode)", ctx.settings.telegram.mode)
    return application


__all__ = ["TelegramSender", "setup", "webhook_secret"]
