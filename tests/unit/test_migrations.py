"""The migrations build exactly the tables the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

import notifications.schema  # noqa: F401  (registers the notifications tables)
from core.db import make_engine
from core.schema import metadata


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _float_columns(connection: Connection) -> dict[str, str]:
    insp = inspect(connection)
    wanted = {("charges", "energy_wh"), ("charges", "last_energy_wh"),
              ("meter_samples", "energy_wh"), ("piles", "signal_dbm")}
    return {f"{t}.{c['name']}": str(c["type"]) for t, _ in wanted
            for c in insp.get_columns(t) if (t, c["name"]) in wanted}


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            # Readings are kept at their resolution: no integer column for an energy counter.
            types = await conn.run_sync(_float_columns)
    finally:
        await engine.dispose()
    assert len(types) == 4
    assert all(t in ("FLOAT", "DOUBLE PRECISION", "REAL") for t in types.values()), types
