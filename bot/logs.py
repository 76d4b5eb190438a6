"""Logging set-up: secrets never reach a log line, whoever logs them."""

from __future__ import annotations

import logging
import re

from core.config import Settings

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


def secrets_of(settings: Settings) -> list[str]:
    values = [settings.telegram.token, settings.telegram.webhook_secret, settings.wechat.token,
              settings.wechat.secret, settings.wechat.aes_key]
    out = [v.get_secret_value() for v in values if v is not None]
    if "@" in settings.database.url and ":" in settings.database.url.split("@")[0][12:]:
        out.append(settings.database.url.split("@")[0].rsplit(":", 1)[1])
    return out


def install(settings: Settings) -> RedactSecrets:
    """Attach the filter to every root handler (and to new records via the root logger)."""
    redact = RedactSecrets(secrets_of(settings))
    root = logging.getLogger()
    for target in [root, *root.handlers]:
        for old in [f for f in target.filters if isinstance(f, RedactSecrets)]:
            target.removeFilter(old)
        target.addFilter(redact)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return redact
