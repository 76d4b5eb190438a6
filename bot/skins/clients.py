"""The platform clients this process holds — the Telegram application's Bot and the WeChat
client — found by app key (routes) or by Context (code that holds a ctx but not the app: photo
fetching, rider groups' polls, jobs).

The skins put their clients here at setup; whoever needs one asks here, never the skin itself, so
nothing below the skins imports them (the skins import the router, which fetches photos).
Without the app's clients (a CLI, a job in another process) short-lived ones come from settings.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypedDict

from aiohttp import web
from telegram import Bot
from telegram.ext import Application

from bot.context import Context
from core.support.photos import PhotoUnavailable
from notifications.wechat_client import WechatClient

TG_APP = web.AppKey("telegram_app", Application)
WX = web.AppKey("wechat_client", WechatClient)


@dataclass
class _Clients:
    telegram: Bot | None = None
    wechat: WechatClient | None = None


class _BotUrls(TypedDict, total=False):
    """The Bot's endpoints that settings may override (a local Bot API server, a test one)."""

    base_url: str
    base_file_url: str


# By id: Context is an unhashable dataclass. The entry goes when its Context does.
_attached: dict[int, _Clients] = {}


def attach(ctx: Context, *, telegram: Bot | None = None,
           wechat: WechatClient | None = None) -> None:
    key = id(ctx)
    if key not in _attached:
        weakref.finalize(ctx, _attached.pop, key, None)
    _attached[key] = _Clients(telegram, wechat)


def setup(app: web.Application, ctx: Context) -> None:
    """Let code holding `ctx` use the app's Telegram bot and WeChat client; call after the skins'
    setup."""
    application = app.get(TG_APP)
    attach(ctx, telegram=application.bot if application is not None else None,
           wechat=app.get(WX))


def wechat_client(ctx: Context) -> WechatClient | None:
    """The app's WeChat client, if `setup` attached one to this Context."""
    clients = _attached.get(id(ctx))
    return clients.wechat if clients is not None else None


@asynccontextmanager
async def telegram_bot(ctx: Context) -> AsyncIterator[Bot]:
    """The app's Telegram bot, else a short-lived one from settings (PhotoUnavailable without a
    token)."""
    clients = _attached.get(id(ctx))
    if clients is not None and clients.telegram is not None:
        yield clients.telegram
        return
    tg = ctx.settings.telegram
    if tg.token is None:
        raise PhotoUnavailable("telegram", "no Telegram token configured")
    urls: _BotUrls = {}
    if tg.base_url:
        urls["base_url"] = tg.base_url
    if tg.base_file_url:
        urls["base_file_url"] = tg.base_file_url
    async with Bot(tg.token.get_secret_value(), **urls) as bot:
        yield bot
