"""The CLI does what DESIGN §6 says and answers bad input with a clear error and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--database", db, *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "CHARGEBOT_LOG": "WARNING"},
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/cli.db"


def test_upgrade_import_add_and_list(db: str, tmp_path: Path) -> None:
    assert run(db, "db", "upgrade").returncode == 0
    csv = tmp_path / "sites.csv"
    csv.write_text("id,name,address,lat,lon,kind,tariff\n"
                   "HZ09,城西银泰车棚,杭州市拱墅区,30.29,120.11,mall,by_time\n", encoding="utf-8")
    r = run(db, "sites", "import", str(csv))
    assert r.returncode == 0 and "imported 1 sites" in r.stdout
    r = run(db, "piles", "add", "--site", "HZ09", "--id", "P0901", "--ports", "12")
    assert r.returncode == 0 and "secret: " in r.stdout
    r = run(db, "piles", "list")
    assert "P0901\tHZ09\t12 ports" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["piles", "add", "--site", "NOPE", "--id", "P0001", "--ports", "10"], "unknown site"),
    (["piles", "add", "--site", "X", "--id", "pile1", "--ports", "10"], "must look like P0001"),
    (["sites", "import", "/nonexistent.csv"], "no such file"),
    (["simulate", "--url", "http://127.0.0.1:9", "--piles", "0"], "at least 1"),
    (["simulate", "--url", "http://127.0.0.1:9", "--piles", "3"], "no piles in the database"),
])
def test_bad_input_gets_a_clear_error(db: str, args: list[str], message: str) -> None:
    run(db, "db", "upgrade")
    r = run(db, *args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_csv_names_the_line(db: str, tmp_path: Path) -> None:
    run(db, "db", "upgrade")
    csv = tmp_path / "bad.csv"
    csv.write_text("id,name,address,lat,lon,kind,tariff\nA,n,a,north,120,mall,standard\n")
    r = run(db, "sites", "import", str(csv))
    assert r.returncode == 2 and "bad.csv:2" in r.stderr
