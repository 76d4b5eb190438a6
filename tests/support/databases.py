"""The test databases: a PostgreSQL admin connection and emptying every table between tests."""

from __future__ import annotations

import asyncio
import os

import core.subscribers  # noqa: F401  (what follows a billed charge, as the app wires it)
import notifications.schema  # noqa: F401  (registers the notifications tables)
from core.schema import metadata

PG_ADMIN = os.environ.get("CHARGEBOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def pg(sql: str, db: str = "postgres") -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{db}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(name: str) -> str:
    """The SQLAlchemy URL of database `name` on the test server."""
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


def truncate_all(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    db = url.rsplit("/", 1)[1]
    asyncio.run(pg(f"TRUNCATE {tables} RESTART IDENTITY CASCADE", db))
