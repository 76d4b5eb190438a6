"""The NPS survey's tables, which have no migration yet: tests of the survey and of the reports
over it create them themselves.

The survey modules are imported inside these functions, after the tables exist: until their
migration exists, conftest's PostgreSQL TRUNCATE of every table in the metadata would fail for any
test run after the import but before the tables were there.

`survey_tables` is a fixture for the modules that need it (session-wide, autouse there); import
it into such a module: `from tests.support.surveys import survey_tables  # noqa: F401`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from core.db import make_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


async def create_survey_tables(engine: AsyncEngine) -> None:
    from core.engagement.surveys import NpsResponse, SurveyOptOut

    async with engine.begin() as conn:
        for table in (NpsResponse.__table__, SurveyOptOut.__table__):
            await conn.run_sync(table.create, checkfirst=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def survey_tables(pg_database: str) -> None:
    async def create() -> None:
        engine = make_engine(pg_database)
        try:
            await create_survey_tables(engine)
        finally:
            await engine.dispose()

    asyncio.run(create())
