"""WeChat Pay API v3: JSAPI/Native orders out, signed and encrypted payment notifications in.

One concern a module (pay.weixin.qq.com, APIv3 签名/验签/回调解密):

* `crypto` — request signatures, answer and notification signature checks, AES-256-GCM
  decryption of a notification's resource; pure functions.
* `client` — `WechatPayClient`: signed calls, every 2xx answer's signature checked.
* `orders` — the Payment row and the order for a top-up, and crediting a paid one once.
* `notify` — the notification endpoint WeChat Pay posts to.

This module wires them into the app (`setup`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bot.context import Context
from bot.payments.wechatpay.client import WXPAY, WechatPayClient, client_for, register
from bot.payments.wechatpay.notify import NOTIFY_PATH, notify
from core.config import Settings

log = logging.getLogger("chargebot.wechatpay")


def enabled(settings: Settings) -> bool:
    p = settings.payments
    cfg = p.wechatpay
    return ("wechatpay" in p.providers and bool(cfg.mchid) and cfg.private_key is not None
            and cfg.apiv3_key is not None and bool(cfg.platform_public_key))


def notify_url(settings: Settings) -> str:
    return (settings.payments.wechatpay.notify_url
            or settings.server.public_url.rstrip("/") + NOTIFY_PATH)


def setup(app: web.Application, ctx: Context) -> WechatPayClient | None:
    settings = ctx.settings
    if not enabled(settings):
        log.info("wechatpay: not in payments.providers or not configured, WeChat Pay is off")
        return None
    cfg = settings.payments.wechatpay
    if cfg.apiv3_key is None or len(cfg.apiv3_key.get_secret_value().encode()) != 32:
        log.error("wechatpay: apiv3_key must be 32 bytes, WeChat Pay is off")
        return None
    try:
        client = WechatPayClient(cfg, notify_url(settings), currency=settings.payments.currency)
    except ValueError as exc:  # unreadable PEM
        log.error("wechatpay: bad key material (%s), WeChat Pay is off", exc)
        return None
    if not cfg.serial_no or not cfg.platform_serial:
        log.warning("wechatpay: serial_no/platform_serial not set; orders or notifications "
                    "will be refused")
    app[WXPAY] = client
    register(ctx, client)
    app.router.add_post(NOTIFY_PATH, notify)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            client.http = http
            try:
                yield
            finally:
                client.http = None

    app.cleanup_ctx.append(lifecycle)
    log.info("wechatpay: on (mchid %s, notify %s)", cfg.mchid, client.notify_url)
    return client


__all__ = ["NOTIFY_PATH", "WXPAY", "client_for", "enabled", "notify_url", "setup"]
