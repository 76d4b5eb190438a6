"""WeChat official-account skin: signed (and AES) XML in, passive replies in 5 s, the rest later.

WeChat waits 5 s for the HTTP answer and then retries the same delivery. We answer within
`reply_timeout_s`: quick work goes back as the passive reply; slower work is acknowledged with
"success" and its replies go out through the outbox as customer-service messages. WeChat has no
inline buttons, so buttons become numbered options (also `weixin://bizmsgmenu` links that send
the number when tapped); the rider's next "2" means the second option.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import inspect, select
from sqlmodel import col
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

from bot.context import CTX, Context
from bot.handlers import router
from bot.i18n import tr
from bot.skins.clients import WX
from core import outbox
from core.db import insert_ignore, saved_id, transaction
from core.notices.chat import RepliesNotice
from core.riders.tables import DEFAULT_LANGUAGE, Identity, Rider
from notifications.replies import Incoming, Reply
from notifications.wechat_client import RETRYABLE, WINDOW_CLOSED, WechatClient, WechatError
from notifications.wechat_store import ChatOptions, WechatInbound
from notifications.worker import DeliveryError

log = logging.getLogger("chargebot.wechat")
MAX_BYTES = 2048  # WeChat's limit on a text message


def enabled(ctx: Context) -> bool:
    wx = ctx.settings.wechat
    return wx.token is not None and bool(wx.appid)


# --- rendering -------------------------------------------------------------------------------


def render_text(replies: list[Reply], lang: str) -> tuple[str, dict[str, str]]:
    """One WeChat text for a list of replies, with numbered options for the buttons."""
    parts: list[str] = []
    options: dict[str, str] = {}
    for reply in replies:
        lines = [html.escape(reply.text, quote=False)] if reply.text else []
        if reply.photo_url:
            lines.append(f'<a href="{html.escape(reply.photo_url)}">📷</a>')
        if reply.venue is not None:
            v = reply.venue
            link = (f"https://uri.amap.com/marker?position={v.lon},{v.lat}"
                    f"&name={html.escape(v.title)}")
            lines.append(f"📍 {html.escape(v.title)} {html.escape(v.address)}")
            lines.append(f'<a href="{link}">{html.escape(tr(lang, "Open in maps"))}</a>')
        for row in reply.buttons:
            for b in row:
                label = html.escape(b.label, quote=False)
                if b.url is not None:
                    lines.append(f'<a href="{html.escape(b.url)}">{label}</a>')
                else:
                    n = str(len(options) + 1)
                    options[n] = b.data or ""
                    lines.append(f'<a href="weixin://bizmsgmenu?msgmenucontent={n}&msgmenuid={n}">'
                                 f"{n}. {label}</a>")
        if reply.request_location and not reply.buttons:
            lines.append(tr(lang, "Tap ＋ below and send your location."))
        parts.append("\n".join(lines))
    text = "\n\n".join(p for p in parts if p)
    if options:
        text += "\n" + tr(lang, "Reply with a number to choose.")
    encoded = text.encode()
    if len(encoded) > MAX_BYTES:
        text = encoded[: MAX_BYTES - 3].decode(errors="ignore") + "…"
    return text, options


async def save_options(ctx: Context, identity_id: int, options: dict[str, str]) -> None:
    async with transaction(ctx.sm) as session:
        row = await session.get(ChatOptions, identity_id)
        if row is None:
            session.add(ChatOptions(identity_id=identity_id, options=options,
                                    updated_at=ctx.clock()))
        else:
            row.options, row.updated_at = options, ctx.clock()


async def _identity(ctx: Context, openid: str) -> tuple[Identity, str] | None:
    async with ctx.reader()() as session:
        row = (await session.execute(
            select(Identity, col(Rider.language))
            .join(Rider, col(Rider.id) == col(Identity.rider_id))
            .where(col(Identity.platform) == "wechat", col(Identity.external_id) == openid)
        )).first()
    return (row[0], row[1]) if row else None


async def _option(ctx: Context, openid: str, text: str) -> str | None:
    found = await _identity(ctx, openid)
    if found is None:
        return None
    async with ctx.reader()() as session:
        row = await session.get(ChatOptions, found[0].id)
    return row.options.get(text) if row else None


# --- inbound ---------------------------------------------------------------------------------


def _dedupe_key(msg: Any) -> str:
    if getattr(msg, "id", None):
        return f"m:{msg.id}"
    return f"e:{msg.source}:{int(msg.create_time.timestamp())}:{getattr(msg, 'event', msg.type)}"


async def incoming(ctx: Context, msg: Any) -> Incoming | None:
    common = {"platform": "wechat", "user_id": msg.source, "chat_id": msg.source,
              "nonce": _dedupe_key(msg)}
    kind = msg.type
    if kind == "text":
        text = (msg.content or "").strip()
        if text.isdigit() and (data := await _option(ctx, msg.source, text)):
            return Incoming(**common, data=data)
        return Incoming(**common, text=text)
    if kind == "location":
        return Incoming(**common, location=(float(msg.location_x), float(msg.location_y)))
    if kind == "image":
        return Incoming(**common, photo=msg.media_id)
    if kind != "event":
        return Incoming(**common, text="/help")
    event = msg.event
    if event in ("subscribe_scan", "scan"):
        return Incoming(**common, text=f"/start {msg.scene_id}")
    if event == "subscribe":
        return Incoming(**common, text="/start")
    if event == "location":
        return Incoming(**common, location=(float(msg.latitude), float(msg.longitude)))
    if event == "click":
        return Incoming(**common, data=msg.key)
    return None  # unsubscribe, view, location_select (its location message follows), …


def _crypto(ctx: Context) -> WeChatCrypto | None:
    wx = ctx.settings.wechat
    if wx.aes_key is None or wx.token is None:
        return None
    return WeChatCrypto(wx.token.get_secret_value(), wx.aes_key.get_secret_value(), wx.appid)


def _signature_ok(ctx: Context, request: web.Request) -> bool:
    q = request.query
    token = ctx.settings.wechat.token
    if token is None:
        return False
    try:
        check_signature(token.get_secret_value(),
                        q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", ""))
    except InvalidSignatureException:
        return False
    # WeChat signs with its wall-clock time (not our business clock): a captured request
    # replayed later carries a stale timestamp and is refused like a forged one.
    try:
        skew = abs(time.time() - int(q.get("timestamp", "")))
    except ValueError:
        return False
    return skew <= ctx.settings.wechat.replay_window_s


async def verify(request: web.Request) -> web.Response:
    """The server-address check WeChat makes when the URL is configured."""
    ctx = request.app[CTX]
    if not _signature_ok(ctx, request):
        return web.Response(status=401, text="bad or stale signature")
    return web.Response(text=request.query.get("echostr", ""))


async def receive(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if not _signature_ok(ctx, request):
        log.warning("wechat: rejected a delivery with a bad signature")
        return web.Response(status=401, text="bad or stale signature")
    q = request.query
    body = await request.read()
    encrypted = q.get("encrypt_type", "raw") == "aes"
    crypto = _crypto(ctx)
    if encrypted:
        if crypto is None:
            return web.Response(status=400, text="safe mode message but no aes_key configured")
        try:
            xml = crypto.decrypt_message(body, q.get("msg_signature", ""), q.get("timestamp", ""),
                                         q.get("nonce", ""))
        except InvalidSignatureException:
            return web.Response(status=401, text="bad msg_signature")
        except (InvalidAppIdException, ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.Response(status=400, text=f"cannot decrypt: {type(exc).__name__}")
        except Exception as exc:  # expat and base64 errors have no common base
            return web.Response(status=400, text=f"malformed encrypted XML: {type(exc).__name__}")
    else:
        xml = body.decode("utf-8", errors="replace")
    try:
        msg = parse_message(xml)
        if msg is None or not msg.source:
            raise ValueError("no FromUserName")
    except Exception as exc:  # xmltodict raises expat errors; a missing tag is a KeyError
        return web.Response(status=400, text=f"malformed XML: {type(exc).__name__}")

    key = _dedupe_key(msg)
    async with transaction(ctx.sm) as session:
        dialect = session.get_bind().dialect.name
        inbound = inspect(WechatInbound).local_table
        fresh = (await session.execute(
            insert_ignore(dialect, inbound).values(key=key, created_at=ctx.clock())
            .returning(inbound.c.key))).first()
    if fresh is None:
        return web.Response(text="success")  # WeChat's retry of a delivery we already took
    inc = await incoming(ctx, msg)
    if inc is None:
        return web.Response(text="success")

    task = asyncio.create_task(router.handle(ctx, inc))
    try:
        replies, lang = await asyncio.wait_for(asyncio.shield(task),
                                               ctx.settings.wechat.reply_timeout_s)
    except TimeoutError:
        task.add_done_callback(lambda t: asyncio.ensure_future(_finish_late(ctx, inc, t)))
        return web.Response(text="success")
    except Exception:
        log.exception("wechat handler failed")
        replies, lang = [Reply(tr(DEFAULT_LANGUAGE, "Sorry, something went wrong on our side. "
                                                    "Please try again."))], DEFAULT_LANGUAGE
    text, options = render_text(replies, lang)
    found = await _identity(ctx, msg.source)
    if found is not None:
        await save_options(ctx, saved_id(found[0]), options)
    reply_xml = TextReply(message=msg, content=text).render()
    if encrypted and crypto is not None:
        reply_xml = crypto.encrypt_message(reply_xml, q.get("nonce", ""), q.get("timestamp"))
    return web.Response(text=reply_xml, content_type="application/xml")


async def _finish_late(ctx: Context, inc: Incoming,
                       task: asyncio.Task[tuple[list[Reply], str]]) -> None:
    """The passive window passed: deliver the replies as customer-service messages."""
    if task.cancelled() or task.exception() is not None:
        log.error("wechat late handler failed", exc_info=task.exception())
        return
    replies, _lang = task.result()
    found = await _identity(ctx, inc.user_id)
    if found is None:
        return
    async with transaction(ctx.sm) as session:
        await outbox.enqueue(session, found[0].rider_id,
                             RepliesNotice(replies=[r.as_dict() for r in replies]),
                             f"wx-late:{inc.nonce}", now=ctx.clock())
    ctx.wake_outbox()


# --- outbound --------------------------------------------------------------------------------


def template_data(text: str) -> dict[str, dict[str, str]]:
    """Industry-standard template fields: first line, up to four keywords, the rest as remark."""
    lines = [ln for ln in html.unescape(text).splitlines() if ln and "<a " not in ln]
    data = {"first": {"value": lines[0] if lines else ""}}
    for i, line in enumerate(lines[1:5], start=1):
        data[f"keyword{i}"] = {"value": line}
    data["remark"] = {"value": "\n".join(lines[5:])}
    return data


class WechatSender:
    """Customer-service message inside the 48 h window, template message outside it."""

    def __init__(self, ctx: Context, client: WechatClient) -> None:
        self.ctx = ctx
        self.client = client

    async def send(self, identity: Identity, replies: list[Reply], *, lang: str = "zh_CN",
                   kind: str = "text", payload: dict[str, Any] | None = None,
                   **_: Any) -> str:
        wx = self.ctx.settings.wechat
        text, options = render_text(replies, lang)
        now = self.ctx.clock()
        window_open = identity.last_inbound_at is not None and (
            now - identity.last_inbound_at < timedelta(hours=wx.window_hours))
        try:
            if window_open:
                try:
                    await self.client.send_custom(identity.external_id, text)
                    await save_options(self.ctx, saved_id(identity), options)
                    return "wechat:custom"
                except WechatError as exc:
                    if exc.errcode != WINDOW_CLOSED:
                        raise
            template = wx.templates.get(kind)
            if not template:
                raise DeliveryError(f"48 h window closed and no template for {kind!r}",
                                    retryable=False)
            await self.client.send_template(identity.external_id, template, template_data(text))
            return "wechat:template"
        except WechatError as exc:
            if exc.errcode in RETRYABLE:
                raise DeliveryError(str(exc), retry_after=5.0) from exc
            raise DeliveryError(str(exc), retryable=False) from exc
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"wechat unreachable: {exc}") from exc


def setup(app: web.Application, ctx: Context) -> WechatClient | None:
    if not enabled(ctx):
        log.info("wechat: no token/appid configured, WeChat skin is off")
        return None
    client = WechatClient(ctx.sm, ctx.settings.wechat, None, ctx.clock)
    app[WX] = client
    app.router.add_get("/wechat", verify)
    app.router.add_post("/wechat", receive)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            client.http = http
            yield

    app.cleanup_ctx.append(lifecycle)
    log.info("wechat: skin on (%s mode)", "safe" if ctx.settings.wechat.aes_key else "plaintext")
    return client
