"""Shared fixtures: every database test runs on SQLite and on PostgreSQL, over real HTTP.

Helpers that are not fixtures live in tests/support/, fakes of outside services in tests/fakes/
(tests/README.md)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.db import make_engine, make_sessionmaker
from core.migrate import upgrade
from tests.support.databases import pg, pg_url, truncate_all
from tests.support.server import Running, start_server
from tests.support.settings import all_skins_settings, make_settings


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"chargebot_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(pg(f'CREATE DATABASE "{name}"'))
    url = pg_url(name)
    upgrade(url)
    yield url
    asyncio.run(pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "chargebot.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    truncate_all(url)
    return url


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


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Running]:
    async with start_server(settings) as running:
        yield running


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[Any, Any]]:
    """A fake Telegram Bot API and a fake WeChat API, both on local ports."""
    from tests.fakes.telegram_api import FakeTelegram
    from tests.fakes.wechat_api import FakeWechat
    from tests.support.riders import ACCOUNT

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


@pytest.fixture
async def all_skins(db_url: str, fakes: tuple[Any, Any]) -> AsyncIterator[Running]:
    async with start_server(all_skins_settings(db_url, *fakes)) as running:
        yield running


# A test still waiting after this long is hung (the slowest passes in ~60 s on a loaded machine).
HUNG_AFTER_S = 200.0


@pytest.fixture(autouse=True)
async def _watchdog() -> AsyncIterator[None]:
    """A hung test fails with every asyncio task's stack instead of holding its xdist worker
    (and CI) until the job is killed; leftover tasks are printed after each test."""
    loop = asyncio.get_running_loop()

    def hung() -> None:
        print(f"HUNG after {HUNG_AFTER_S:.0f} s; asyncio tasks:", file=sys.__stderr__)
        for t in asyncio.all_tasks(loop):
            print("TASK", t.get_coro(), file=sys.__stderr__)
            t.print_stack(limit=12, file=sys.__stderr__)
        for t in asyncio.all_tasks(loop):
            t.cancel(f"hung for {HUNG_AFTER_S:.0f} s")

    timer = threading.Timer(HUNG_AFTER_S, loop.call_soon_threadsafe, (hung,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    await asyncio.sleep(0)
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
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
