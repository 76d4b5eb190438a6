"""The real app on a local port for a test, and a small city for it to serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.app import create_app
from bot.context import CTX, Context
from core.config import Settings
from core.db import transaction
from core.piles import fleet as piles
from tests.support.settings import PILE_SECRET


@dataclass
class Running:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def ctx(self) -> Context:
        return self.app[CTX]


class start_server:  # noqa: N801 - used like a function
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.app = create_app(settings, **kwargs)
        self.ts = TestServer(self.app, host="127.0.0.1")

    async def __aenter__(self) -> Running:
        await self.ts.start_server()
        # No cookies: each WebRider keeps its own web-chat identity (tests/support/journey.py),
        # or every rider of a test would be one.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return Running(str(self.ts.make_url("")).rstrip("/"), self.app, self.http)

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.ts.close()


async def seed_city(ctx: Context, *, piles_n: int = 1, ports: int = 4,
                    tariff: str = "standard", lat: float = 30.2780, lon: float = 120.1140
                    ) -> list[tuple[str, str, int]]:
    """One site with `piles_n` piles; returns (pile id, secret, ports) for the simulator."""
    specs = []
    async with transaction(ctx.sm) as session:
        await piles.add_site(session, "T01", "测试小区车棚", lat, lon, address="测试路1号",
                             tariff=tariff)
        await session.flush()
        for i in range(1, piles_n + 1):
            pid = f"P{i:04d}"
            secret = PILE_SECRET if i == 1 else f"test-secret-{pid}"
            await piles.add_pile(session, "T01", pid, ports, secret=secret,
                                 lat=lat + i * 0.0001, lon=lon)
            specs.append((pid, secret, ports))
    return specs
