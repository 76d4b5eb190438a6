"""Engine and sessions: the same code on SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Table, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util.concurrency import await_, in_greenlet
from sqlmodel import SQLModel

# Longer than any write transaction, like SQLite's busy_timeout below: then it is an error.
GATE_TIMEOUT_S = 10.0
_GATED = "chargebot_write_gate"


def utcnow() -> datetime:
    """Aware UTC: sqlmodel stores datetimes as UTC on both databases and returns them aware."""
    return datetime.now(UTC)


def aware(ts: datetime) -> datetime:
    """A naive datetime (SQLite hands them back so) taken as the UTC it was stored as."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def row_id(text: str) -> int | None:
    """Text (button data, a typed id, a pile's command id) as an INTEGER key, else None.
    ASCII only ('²'.isdigit() is true but int('²') fails) and within int4, which a 20-digit
    id overflows on PostgreSQL."""
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= 2**31 - 1:
        return int(text)
    return None


class _Saved(Protocol):
    @property
    def id(self) -> int | None: ...


def saved_id(row: _Saved) -> int:
    """The id of a row already flushed; asking for one that was not is a bug, said loudly."""
    if row.id is None:
        raise RuntimeError(f"{type(row).__name__} has no id yet: flush it first")
    return row.id


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a `table=True` model, i.e. its `__table__`, which SQLModel's types do
    not declare: for Core statements (bulk updates, dialect inserts) built on the table."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, echo=echo, connect_args={"timeout": 10}, pool_size=8, max_overflow=16
        )
        _sqlite_pragmas(engine)
        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True)


def sqlite_pragmas(dbapi_connection: Any) -> None:
    """WAL, NORMAL sync, foreign keys and a 10 s busy timeout on a new SQLite connection."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    # The journal-mode pragma can fail at once with "database is locked", busy handler or not,
    # while another connection to the file is closing (it checkpoints and removes the WAL):
    # seen with twenty connections opening together on a loaded machine. WAL sticks to the
    # file, so it is set only on a new file, and a lock there is waited out.
    for attempt in range(50):
        try:
            cur.execute("PRAGMA journal_mode")
            if str(cur.fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            break
        except Exception as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            pause = 0.02 * (attempt + 1)
            if in_greenlet():
                await_(asyncio.sleep(pause))
            else:
                time.sleep(pause)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take pysqlite's hands off transactions so we can BEGIN IMMEDIATE ourselves.
        dbapi_connection.isolation_level = None
        sqlite_pragmas(dbapi_connection)

    gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
        weakref.WeakKeyDictionary())

    def gate() -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if (lock := gates.get(loop)) is None:
            lock = gates[loop] = asyncio.Lock()
        return lock

    def release(info: dict[Any, Any]) -> None:
        if (lock := info.pop(_GATED, None)) is not None:
            lock.release()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" when another writer got in between; taking the write lock up front makes
        # SQLite queue writers behind busy_timeout instead. Read-only sessions (read_sessions)
        # stay deferred, so they never wait for writers (WAL gives them a snapshot).
        if conn.get_execution_options().get("read_only"):
            conn.exec_driver_sql("BEGIN")
            return
        if in_greenlet():
            # SQLite's busy handler is no queue: it polls with growing sleeps, so a steady run
            # of short transactions (the ingest writer's group commits) starved other writers
            # for seconds (a bill's "sent" mark waited 4.3 s). This process's writers take
            # turns at an asyncio lock first, in arrival order; busy_timeout is left for
            # other processes.
            lock = gate()
            await_(_acquire(lock))
            conn.info[_GATED] = lock
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            release(conn.info)
            raise

    @event.listens_for(engine.sync_engine, "commit")
    @event.listens_for(engine.sync_engine, "rollback")
    def _end(conn: Any) -> None:
        release(conn.info)

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        # A connection given back without a commit or rollback event (invalidated, closed).
        if record is not None:
            release(record.info)


async def _acquire(lock: asyncio.Lock) -> None:
    # asyncio.timeout, not wait_for: no task per write, and no 3.11 wait_for cancel races.
    async with asyncio.timeout(GATE_TIMEOUT_S):
        await lock.acquire()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def make_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that only read: on SQLite they do not take the write lock."""
    return async_sessionmaker(engine.execution_options(read_only=True), class_=AsyncSession,
                              expire_on_commit=False)


@asynccontextmanager
async def transaction(sm: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error."""
    async with sm() as session, session.begin():
        yield session


def insert_ignore(engine_or_dialect_name: str, table: Any) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` for the dialect in use (idempotency keys)."""
    if engine_or_dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
