"""`chargebot wechat menu`, and the WeChat client other commands borrow."""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cli.common import CliError, settings_for
from bot.skins.wechat_menu import menu
from core.config import Settings
from core.db import make_engine, make_sessionmaker
from notifications.wechat_client import WechatClient, WechatError


async def wechat_client(
    settings: Settings,
) -> tuple[WechatClient, AsyncEngine, aiohttp.ClientSession]:
    """The client with what the caller closes after it: the engine and the HTTP session."""
    if settings.wechat.secret is None or not settings.wechat.appid:
        raise CliError("WeChat is not configured: set wechat.appid and CHARGEBOT_WECHAT__SECRET")
    engine = make_engine(settings.database.url)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    return WechatClient(make_sessionmaker(engine), settings.wechat, http), engine, http


def cmd_wechat_menu(args: argparse.Namespace) -> None:
    settings = settings_for(args)

    async def publish() -> None:
        client, engine, http = await wechat_client(settings)
        try:
            await client.create_menu(menu())
        except WechatError as exc:
            raise CliError(f"WeChat refused the menu: {exc}") from None
        finally:
            await http.close()
            await engine.dispose()

    asyncio.run(publish())
    print("WeChat menu published")
