"""WeChat Pay from the chat: the H5 pay page inside WeChat (JSAPI) and a QR code (Native) for
the web chat, both behind links the server signs.

A link's token holds the rider, the amount, what it pays (a top-up or the bills due), JSAPI or
Native and when it was issued, with an HMAC-SHA256 under a key kept in ``app_secrets`` (so every
worker agrees); it is good for 30 minutes. Nothing in it is the visitor's word: the openid an
order is placed for is the rider's WeChat identity in our database, never a request parameter.
A forwarded link can only place the same order for the same rider, and WeChat Pay lets only
that openid pay it.

One token, one order: the order number is derived from the token, so a reloaded page (or the
web chat showing the QR again) finds the same Payment and its prepay_id / code_url.

Routes: ``GET /pay/wechat?t=…`` (the page), ``GET /pay/wechat/qr?t=…`` (the QR as a PNG) and
``GET /pay/wechat.js`` (the page's script; the CSP allows no inline script). The JSAPI
支付授权目录 to register in the merchant console is ``{public_url}/pay/``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlmodel import col

from bot.context import CTX, Context
from bot.i18n import tr
from bot.payments.wechatpay.client import WXPAY, WechatPayClient, WechatPayError, client_for
from bot.payments.wechatpay.orders import OrderClosed, jsapi_order, native_order, open_payment
from bot.qr import qr_png
from bot.tasks import stop_task
from core import app_secrets
from core.billing.payments import Payment, PaymentState
from core.billing.wallet import yuan
from core.charging.queries import owed_fen
from core.riders.tables import DEFAULT_LANGUAGE, Identity, Rider

log = logging.getLogger("chargebot.pay_page")

PAGE_PATH = "/pay/wechat"
QR_PATH = "/pay/wechat/qr"
SCRIPT_PATH = "/pay/wechat.js"
SCRIPT = Path(__file__).resolve().parent.parent / "static" / "pay" / "wechat_pay.js"
KEY_NAME = "wechatpay_links"
LINK_TTL_S = 30 * 60  # a prepay_id lives 2 hours: a link never outlives its order
KEY_RETRY_S = 2

PURPOSES = ("topup", "bill")
MODES = ("jsapi", "native")
_VERSION = 1
_BODY = struct.Struct(">BIIBI")  # version, rider id, amount (fen), purpose|mode, issued (unix s)
_MAC_BYTES = 16
_MAC_CONTEXT = b"chargebot/wechatpay-link\x00"
TOKEN = re.compile(r"[A-Za-z0-9_-]{40}")  # (14 + 16) bytes in base64url, no padding
DESCRIPTIONS = {"topup": "充电钱包充值", "bill": "充电账单支付"}  # shown in WeChat Pay's UI
_SCRIPT = web.AppKey("pay_page_script", bytes)


# --- links -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PayLink:
    rider_id: int
    amount_fen: int
    purpose: str  # topup | bill
    mode: str  # jsapi | native
    issued_at: int  # unix seconds


class BadLink(Exception):  # noqa: N818 - reads as what it is
    """A token that is not one of ours ("malformed", "forged") or is too old ("expired")."""

    def __init__(self, reason: str, link: PayLink | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link = link


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _MAC_CONTEXT + body, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(key: bytes, link: PayLink) -> str:
    flags = PURPOSES.index(link.purpose) | MODES.index(link.mode) << 1
    body = _BODY.pack(_VERSION, link.rider_id, link.amount_fen, flags, link.issued_at)
    return base64.urlsafe_b64encode(body + _mac(key, body)).rstrip(b"=").decode()


def decode(key: bytes, token: str, now: float) -> PayLink:
    """The link a token stands for; BadLink unless we signed it within the last 30 minutes."""
    # Exactly the canonical spelling: base64 decoders skip stray characters, and every other
    # spelling of a link would be another order number.
    if not TOKEN.fullmatch(token):
        raise BadLink("malformed")
    raw = base64.urlsafe_b64decode(token)
    body, mac = raw[:_BODY.size], raw[_BODY.size:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise BadLink("forged")
    version, rider_id, amount, flags, issued = _BODY.unpack(body)
    if version != _VERSION or flags > 3 or amount <= 0:
        raise BadLink("malformed")
    link = PayLink(rider_id, amount, PURPOSES[flags & 1], MODES[flags >> 1], issued)
    if not -60 <= now - issued <= LINK_TTL_S:
        raise BadLink("expired", link)
    return link


def out_trade_no(token: str) -> str:
    """The order a token places: the same every time (32 characters, WeChat's limit)."""
    return "WX" + hashlib.sha256(token.encode()).hexdigest()[:30].upper()


def link(ctx: Context, rider_id: int, amount_fen: int, purpose: str, mode: str) -> str | None:
    """A signed pay-page (jsapi) or QR (native) URL under server.public_url; None while WeChat
    Pay is off or its link key is not loaded yet."""
    client = client_for(ctx)
    if client is None or client.link_key is None or amount_fen <= 0:
        return None
    token = encode(client.link_key, PayLink(rider_id, amount_fen, purpose, mode,
                                            int(ctx.clock().timestamp())))
    path = PAGE_PATH if mode == "jsapi" else QR_PATH
    return f"{ctx.settings.server.public_url.rstrip('/')}{path}?t={token}"


# --- the routes --------------------------------------------------------------------------------

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_STYLE = """
body{margin:0;font:17px/1.5 -apple-system,"PingFang SC","Microsoft YaHei",sans-serif;
background:#f2f3f5;color:#1f2329}
main{max-width:28rem;margin:0 auto;padding:2.5rem 1.25rem;text-align:center}
h1{font-size:1.1rem;font-weight:500;margin:0 0 .5rem}
.amount{font-size:2.6rem;font-weight:600;margin:.25rem 0 1.5rem}
p{color:#646a73}
button{display:block;width:100%;padding:.8rem;margin:.75rem 0;border:0;border-radius:.5rem;
font-size:1.05rem;background:#07c160;color:#fff}
button.secondary{background:#e4e6eb;color:#1f2329}
button:disabled{opacity:.6}
[hidden]{display:none!important}
"""


@dataclass
class _Rider:
    language: str
    openid: str | None


async def _rider(ctx: Context, rider_id: int) -> _Rider | None:
    async with ctx.reader()() as session:
        language = await session.scalar(
            select(col(Rider.language)).where(col(Rider.id) == rider_id))
        if language is None:
            return None
        openid = await session.scalar(
            select(col(Identity.external_id)).where(col(Identity.rider_id) == rider_id,
                                                    col(Identity.platform) == "wechat")
            .order_by(col(Identity.id)).limit(1))
    return _Rider(language, openid)


async def _owed(ctx: Context, rider_id: int) -> int:
    async with ctx.reader()() as session:
        return await owed_fen(session, rider_id)


def _page(lang: str, status: int, title: str, body: str, *,
          data: dict[str, Any] | None = None) -> web.Response:
    nonce = secrets.token_urlsafe(12)
    csp = ("default-src 'none'; script-src 'self'; "
           f"style-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    script = ""
    if data is not None:
        # A data block, never executed; "<" escaped so no string in it can close the tag.
        blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
        script = (f'<script type="application/json" id="pay-data">{blob}</script>'
                  f'<script src="{SCRIPT_PATH}"></script>')
    doc = (f'<!doctype html><html lang="{"zh-CN" if lang == "zh_CN" else "en"}"><head>'
           '<meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width,initial-scale=1">'
           f"<title>{html.escape(title)}</title><style nonce=\"{nonce}\">{_STYLE}</style>"
           f"</head><body><main>{body}</main>{script}</body></html>")
    return web.Response(status=status, text=doc, content_type="text/html", charset="utf-8",
                        headers={**_HEADERS, "Content-Security-Policy": csp})


def _message(lang: str, status: int, text: str) -> web.Response:
    title = tr(lang, "WeChat Pay")
    return _page(lang, status, title, f"<h1>{html.escape(title)}</h1>"
                                      f"<p>{html.escape(text)}</p>")


def _refusal(exc: BadLink, lang: str) -> web.Response:
    if exc.reason == "expired":
        return _message(lang, 410, tr(lang, "This payment link has expired. Please ask for a "
                                            "new one in the chat."))
    return _message(lang, 403 if exc.reason == "forged" else 400,
                    tr(lang, "This payment link is not valid. Please ask for a new one in the "
                             "chat."))


async def _read_link(request: web.Request, mode: str
                     ) -> tuple[PayLink, str, WechatPayClient, _Rider] | web.Response:
    """The checked link of a request, its token, the client and the rider; else the refusal."""
    ctx = request.app[CTX]
    client = request.app[WXPAY]
    lang = DEFAULT_LANGUAGE
    token = request.query.get("t", "")
    if client.link_key is None:
        return _message(lang, 503, tr(lang, "WeChat Pay is not available right now. Please try "
                                            "again in a minute."))
    try:
        found = decode(client.link_key, token, ctx.clock().timestamp())
    except BadLink as exc:
        if exc.link is not None and (who := await _rider(ctx, exc.link.rider_id)):
            lang = who.language
        return _refusal(exc, lang)
    rider = await _rider(ctx, found.rider_id)
    if rider is None or found.mode != mode:
        return _refusal(BadLink("malformed"), rider.language if rider else lang)
    return found, token, client, rider


async def _payment(ctx: Context, found: PayLink, token: str, details: dict[str, Any]
                   ) -> Payment | None:
    """The link's order: made on the first visit; None when a bill link has nothing left to
    pay (and no order was made for it before)."""
    otn = out_trade_no(token)
    async with ctx.reader()() as session:
        existing = (await session.execute(
            select(Payment).where(col(Payment.out_trade_no) == otn))).scalars().first()
    if existing is not None:
        return existing
    if found.purpose == "bill" and await _owed(ctx, found.rider_id) <= 0:
        return None
    return await open_payment(ctx, found.rider_id, found.amount_fen,
                              {**details, "link": found.purpose,
                               "link_issued_at": found.issued_at}, out_trade_no=otn)


def _closed(lang: str, payment: Payment, *, paid_status: int = 200) -> web.Response:
    if payment.state == PaymentState.paid:
        return _message(lang, paid_status, tr(lang, "✅ Already paid. You can go back to the "
                                                    "chat."))
    return _message(lang, 409, tr(lang, "This payment could not be started. Please ask for a "
                                        "new link in the chat."))


def _unavailable(lang: str) -> web.Response:
    return _message(lang, 502, tr(lang, "WeChat Pay could not take the order right now. Please "
                                        "try again in a minute."))


async def page(request: web.Request) -> web.Response:
    """GET /pay/wechat?t=…: the JSAPI order (placed once per link) and the page that pays it."""
    checked = await _read_link(request, "jsapi")
    if isinstance(checked, web.Response):
        return checked
    found, token, client, rider = checked
    lang, ctx = rider.language, request.app[CTX]
    if rider.openid is None:
        return _message(lang, 403, tr(lang, "Please open this link from our chat in WeChat."))
    payment = await _payment(ctx, found, token, {"trade_type": "JSAPI", "openid": rider.openid})
    if payment is None:
        return _message(lang, 200, tr(lang, "Nothing to pay: your bill is already paid."))
    if payment.rider_id != found.rider_id:
        return _refusal(BadLink("forged"), lang)
    # The order keeps the openid it was placed for; a later identity change does not move it.
    openid = str(payment.details.get("openid") or rider.openid)
    try:
        prepay_id = await jsapi_order(ctx, payment, openid, client=client,
                                      description=DESCRIPTIONS[found.purpose])
    except OrderClosed as exc:
        return _closed(lang, exc.payment)
    except WechatPayError as exc:
        log.warning("pay page: order %s not placed: %s", payment.out_trade_no, exc)
        return _unavailable(lang)
    amount = yuan(payment.amount_fen)
    heading = (tr(lang, "Pay your charging bill") if found.purpose == "bill"
               else tr(lang, "Top up your charging wallet"))
    # (tr() outside the f-strings: the catalog extractor does not look inside them.)
    opening = tr(lang, "Opening WeChat Pay…")
    pay_label = tr(lang, "Pay {amount}", amount=amount)
    back_label = tr(lang, "Back to the chat")
    body = (f"<h1>{html.escape(heading)}</h1>"
            f'<div class="amount">{html.escape(amount)}</div>'
            f'<p id="status" role="status">{html.escape(opening)}</p>'
            f'<button id="pay" type="button">{html.escape(pay_label)}</button>'
            f'<button id="back" type="button" class="secondary" hidden>'
            f"{html.escape(back_label)}</button>")
    data = {
        "params": client.pay_params(prepay_id),
        "text": {
            "paying": opening,
            "paid": tr(lang, "✅ Paid. We will tell you in the chat as soon as the money "
                             "arrives."),
            "cancelled": tr(lang, "Payment cancelled. You can try again."),
            "failed": tr(lang, "The payment did not go through. Please try again."),
            "retry": tr(lang, "Try again"),
            "not_wechat": tr(lang, "Please open this page in WeChat."),
        },
    }
    return _page(lang, 200, tr(lang, "WeChat Pay"), body, data=data)


async def qr(request: web.Request) -> web.Response:
    """GET /pay/wechat/qr?t=…: the Native order's code_url as a QR code (PNG)."""
    checked = await _read_link(request, "native")
    if isinstance(checked, web.Response):
        return checked
    found, token, client, rider = checked
    ctx = request.app[CTX]
    payment = await _payment(ctx, found, token, {"trade_type": "NATIVE"})
    if payment is None:
        return _message(rider.language, 410, tr(rider.language, "Nothing to pay: your bill is "
                                                                "already paid."))
    if payment.rider_id != found.rider_id:
        return _refusal(BadLink("forged"), rider.language)
    try:
        code_url = await native_order(ctx, payment, client=client,
                                      description=DESCRIPTIONS[found.purpose])
    except OrderClosed as exc:
        # Nothing to scan any more: the chat says what happened.
        return _closed(rider.language, exc.payment, paid_status=410)
    except WechatPayError as exc:
        log.warning("pay QR: order %s not placed: %s", payment.out_trade_no, exc)
        return _unavailable(rider.language)
    png = await asyncio.get_running_loop().run_in_executor(None, qr_png, code_url)
    return web.Response(body=png, content_type="image/png", headers=_HEADERS)


async def script(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_SCRIPT], content_type="application/javascript",
                        charset="utf-8", headers={"Cache-Control": "public, max-age=300",
                                                  "X-Content-Type-Options": "nosniff"})


# --- wiring ------------------------------------------------------------------------------------


async def load_key(ctx: Context, client: WechatPayClient) -> None:
    client.link_key = bytes.fromhex(await app_secrets.get_or_create(ctx.sm, KEY_NAME))


def setup(app: web.Application, ctx: Context, client: WechatPayClient) -> None:
    app[_SCRIPT] = SCRIPT.read_bytes()
    app.router.add_get(PAGE_PATH, page, allow_head=False)
    app.router.add_get(QR_PATH, qr, allow_head=False)
    app.router.add_get(SCRIPT_PATH, script)

    async def key(_app: web.Application) -> AsyncIterator[None]:
        # Like the photo-link key: made once per deployment, read by every worker. A database
        # that is away at start-up is waited for; until then no pay link is offered.
        async def retry() -> None:
            while client.link_key is None:
                await asyncio.sleep(KEY_RETRY_S)
                try:
                    await load_key(ctx, client)
                except Exception as exc:  # noqa: BLE001 - keep trying; the log says why
                    log.warning("pay-link key not loaded yet: %s", type(exc).__name__)

        task: asyncio.Task[None] | None = None
        try:
            await load_key(ctx, client)
        except Exception as exc:  # noqa: BLE001 - the service runs without pay links meanwhile
            log.warning("pay-link key not loaded (%s); retrying", type(exc).__name__)
            task = asyncio.create_task(retry(), name="pay-link-key")
        yield
        await stop_task(task)

    app.cleanup_ctx.append(key)
