"""A new SQLite connection gets WAL even when the journal-mode pragma first says "locked"."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from core.db import sqlite_pragmas


class Flaky:
    """A sqlite3 connection whose journal-mode pragma fails `times` times as a closing
    neighbour makes it fail (sqlite3.OperationalError: database is locked)."""

    def __init__(self, path: Path, times: int, message: str = "database is locked") -> None:
        self.real = sqlite3.connect(path, isolation_level=None)
        self.times, self.message, self.tries = times, message, 0

    def cursor(self) -> Any:
        outer, real = self, self.real.cursor()

        class Cursor:
            def execute(self, sql: str) -> Any:
                if sql.startswith("PRAGMA journal_mode"):
                    outer.tries += 1
                    if outer.times:
                        outer.times -= 1
                        raise sqlite3.OperationalError(outer.message)
                return real.execute(sql)

            def fetchone(self) -> Any:
                return real.fetchone()

            def close(self) -> None:
                real.close()

        return Cursor()


def test_a_locked_journal_mode_is_waited_out_and_wal_set_on_a_new_file(tmp_path: Path) -> None:
    conn = Flaky(tmp_path / "new.db", times=2)
    sqlite_pragmas(conn)
    assert conn.tries == 4  # two refusals, then read "delete" and set WAL
    assert conn.real.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.real.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.real.execute("PRAGMA busy_timeout").fetchone()[0] == 10000


def test_a_file_already_in_wal_is_only_asked(tmp_path: Path) -> None:
    sqlite_pragmas(Flaky(tmp_path / "db", times=0))
    again = Flaky(tmp_path / "db", times=0)
    sqlite_pragmas(again)
    assert again.tries == 1


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    conn = Flaky(tmp_path / "db", times=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        sqlite_pragmas(conn)
    assert conn.tries == 1
