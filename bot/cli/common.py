"""What every `chargebot` command shares: its error, the settings and one database session."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from core.config import ConfigError, Settings, load_settings
from core.db import make_engine, make_sessionmaker, transaction


class CliError(Exception):
    """Bad input or a refusal: `main` prints it and exits 2."""


def settings_for(args: argparse.Namespace) -> Settings:
    if getattr(args, "database", None):
        os.environ["CHARGEBOT_DATABASE__URL"] = args.database
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    server = settings.server
    if getattr(args, "port", None) and args.port != server.port:
        # `--port 8191` (`make run PORT=8191`): links and images follow the port, unless
        # public_url was set to something else (a proxy, a domain).
        followed = server.public_url == server.own_url()
        server.port = args.port
        if followed:
            server.public_url = server.own_url()
    return settings


T = TypeVar("T")


async def with_session(settings: Settings, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = make_engine(settings.database.url)
    try:
        async with transaction(make_sessionmaker(engine)) as session:
            return await fn(session)
    finally:
        await engine.dispose()
