"""Logging set-up: secrets never reach a log line, whoever logs them."""

from __future__ import annotations

import contextvars
import logging
import re
import secrets as _secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.config import Settings

# The request being served, on every log line it causes (and in the X-Request-Id answer).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# httpx logs every request URL at INFO, and Telegram's URLs carry the bot token.
_BOT_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = _BOT_URL.sub("/bot***", msg)
        for s in self.secrets:
            clean = clean.replace(s, "***")
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


@web.middleware
async def request_ids(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """A load balancer's X-Request-Id is kept (if sane); otherwise one is made."""
    given = request.headers.get("X-Request-Id", "")
    rid = given if _SAFE_ID.match(given) else _secrets.token_hex(8)
    token = REQUEST_ID.set(rid)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        REQUEST_ID.reset(token)
    response.headers["X-Request-Id"] = rid
    return response


def secrets_of(settings: Settings) -> list[str]:
    values = [settings.telegram.token, settings.telegram.webhook_secret, settings.wechat.token,
              settings.wechat.secret, settings.wechat.aes_key, settings.support.link_secret,
              settings.mqtt.password, settings.payments.telegram_provider_token,
              settings.payments.wechatpay.private_key, settings.payments.wechatpay.apiv3_key]
    out = [v.get_secret_value() for v in values if v is not None]
    if "@" in settings.database.url and ":" in settings.database.url.split("@")[0][12:]:
        out.append(settings.database.url.split("@")[0].rsplit(":", 1)[1])
    return out


def install(settings: Settings) -> RedactSecrets:
    """Attach the filter to every root handler (and to new records via the root logger)."""
    redact = RedactSecrets(secrets_of(settings))
    root = logging.getLogger()
    for target in [root, *root.handlers]:
        for old in [f for f in target.filters if isinstance(f, RedactSecrets | RequestIdFilter)]:
            target.removeFilter(old)
        target.addFilter(redact)
        target.addFilter(RequestIdFilter())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return redact
