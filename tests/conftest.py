"""Shared fixtures: every database test runs on SQLite and on PostgreSQL, over real HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import notifications.schema  # noqa: F401  (registers the notifications tables)
from bot.app import create_app
from bot.context import CTX, Context
from core.config import Settings
from core.db import make_engine, make_sessionmaker, transaction
from core.migrate import upgrade
from core.piles import fleet as piles
from core.schema import metadata

PG_ADMIN = os.environ.get("CHARGEBOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PILE_SECRET = "test-secret-P0001"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


async def _pg(sql: str, db: str = "postgres") -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{db}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"chargebot_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    upgrade(url)
    yield url
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _truncate_all(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    db = url.rsplit("/", 1)[1]
    asyncio.run(_pg(f"TRUNCATE {tables} RESTART IDENTITY CASCADE", db))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "chargebot.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _truncate_all(url)
    return url


def make_settings(db_url: str, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        # Every web-chat rider of a test is a new identity from 127.0.0.1: no hourly limit here
        # (tests/security/test_webchat_identity.py sets one).
        "server": {"public_url": "http://127.0.0.1", "webchat": True,
                   "webchat_new_identities_per_hour": 1_000_000},
        "telegram": {"token": None},
        "scheduler": {"offline_sweep_s": 0.2, "command_sweep_s": 0.2},
        "notifications": {"poll_s": 0.1, "lease_s": 5},
        "piles": {"offline_after_s": 180},
        # Like the demo: play money to top up with (production has none, tests/security), and
        # no start floor, so a test's new rider can start; the floor's own tests set it.
        "payments": {"providers": ["sandbox"]},
        "billing": {"start_min_balance_fen": 0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Settings(**base)


@pytest.fixture
async def sm(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on the test database, for tests of core functions without the app."""
    engine = make_engine(db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@dataclass
class Running:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def ctx(self) -> Context:
        return self.app[CTX]


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Running]:
    async with start_server(settings) as running:
        yield running


class start_server:  # noqa: N801 - used like a function
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.app = create_app(settings, **kwargs)
        self.ts = TestServer(self.app, host="127.0.0.1")

    async def __aenter__(self) -> Running:
        await self.ts.start_server()
        # No cookies: each WebRider keeps its own web-chat identity (tests/journey.py), or every
        # rider of a test would be one.
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


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[Any, Any]]:
    """A fake Telegram Bot API and a fake WeChat API, both on local ports."""
    from tests.fakes.telegram_api import FakeTelegram
    from tests.fakes.wechat_api import FakeWechat
    from tests.riders import ACCOUNT

    tg, wx = FakeTelegram(), FakeWechat(appid=ACCOUNT.appid, secret=ACCOUNT.secret)
    await tg.start()
    await wx.start()
    yield tg, wx
    await wx.stop()
    await tg.stop()


@pytest.fixture
async def fake_tg() -> AsyncIterator[Any]:
    """A fake Telegram Bot API alone, on a local port."""
    from tests.fakes.telegram_api import FakeTelegram

    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


def all_skins_settings(db_url: str, tg: Any, wx: Any, **extra: dict[str, Any]) -> Settings:
    """Telegram and WeChat pointed at their local fakes, web chat on."""
    from tests.riders import ACCOUNT, TG_SECRET

    sections: dict[str, dict[str, Any]] = {
        "telegram": {"token": tg.token, "base_url": tg.base_url,
                     "base_file_url": tg.base_file_url, "webhook_secret": TG_SECRET},
        "wechat": {"token": ACCOUNT.token, "appid": ACCOUNT.appid, "secret": ACCOUNT.secret,
                   "aes_key": ACCOUNT.aes_key, "api_base_url": wx.base_url},
    }
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value}
    return make_settings(db_url, **sections)


@pytest.fixture
async def all_skins(db_url: str, fakes: tuple[Any, Any]) -> AsyncIterator[Running]:
    async with start_server(all_skins_settings(db_url, *fakes)) as running:
        yield running


@pytest.fixture(autouse=True)
async def _report_leftover_tasks() -> AsyncIterator[None]:
    yield
    await asyncio.sleep(0)
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    if left:
        import sys

        for t in left:
            print("LEFTOVER", t.get_coro(), file=sys.stderr)
            t.print_stack(limit=8, file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Fuzz tests log the lone surrogates they send; pytest-xdist ships each report (captured
    output included) to the controller as UTF-8 and dies on them. Escape them in the report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]
