"""The CLI does what DESIGN §6 says and answers bad input with a clear error and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
    (["staff", "add", "--platform", "telegram", "--user", "1", "--role", "technician",
      "--sites", "NOPE"], "unknown site NOPE"),
    (["staff", "add", "--platform", "telegram", "--user", "1", "--role", "technician",
      "--sites", "*", "--hours", "8-20"], "hours must look like 08:00-20:00"),
    (["staff", "add", "--platform", "fax", "--user", "1", "--role", "technician",
      "--sites", "*"], "--platform must be one of"),
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


def _seed_settled_charge(db: str) -> int:
    import asyncio
    from datetime import UTC, datetime

    from core.billing import wallet
    from core.charging.tables import Charge
    from core.db import make_engine, make_sessionmaker, transaction
    from core.piles.fleet import add_pile, add_site
    from core.riders.tables import Rider

    async def go() -> int:
        engine = make_engine(db)
        try:
            async with transaction(make_sessionmaker(engine)) as s:
                await add_site(s, "S1", "s", 30.0, 120.0)
                await s.flush()
                await add_pile(s, "S1", "P0001", 2, secret="x")
                rider = Rider(display_name="r")
                s.add(rider)
                await s.flush()
                await wallet.post(s, rider.id, "topup", 500, "t1")  # type: ignore[arg-type]
                await wallet.post(s, rider.id, "charge", -120, "charge:1")  # type: ignore[arg-type]
                c = Charge(rider_id=rider.id, port_id=1, pile_id="P0001", port_number=1,  # type: ignore[arg-type]
                           port_code="P0001-01", site_id="S1", state="settled", tariff={},
                           amount_fen=120, paid_fen=120, settled_at=datetime.now(UTC),
                           payer_rider_id=rider.id)
                s.add(c)
                await s.flush()
                return c.id  # type: ignore[return-value]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_staff_refund_coupon_and_disputes_commands(db: str) -> None:
    assert run(db, "db", "upgrade").returncode == 0
    charge = _seed_settled_charge(db)
    r = run(db, "refund", "--charge", str(charge), "--fen", "50", "--reason", "loose socket")
    assert r.returncode == 0 and "refunded 50 fen" in r.stdout
    r = run(db, "refund", "--charge", str(charge), "--fen", "50", "--reason", "loose socket")
    assert r.returncode == 0 and "already made" in r.stdout  # the same refund twice: once
    r = run(db, "refund", "--charge", str(charge), "--fen", "500", "--reason", "too much")
    assert r.returncode == 2 and "at most 70 fen" in r.stderr
    r = run(db, "refund", "--charge", "999", "--fen", "5", "--reason", "x")
    assert r.returncode == 2 and "unknown charge" in r.stderr
    r = run(db, "coupons", "issue", "--rider", "1", "--fen", "300", "--reason", "sorry")
    assert r.returncode == 0 and "issued" in r.stdout
    r = run(db, "coupons", "issue", "--rider", "1")
    assert r.returncode == 2 and "either --fen or --percent" in r.stderr
    assert run(db, "disputes", "list").returncode == 0
    r = run(db, "disputes", "resolve", "7", "--note", "x")
    assert r.returncode == 2 and "unknown dispute" in r.stderr


def test_staff_add_and_list(db: str, tmp_path: Path) -> None:
    assert run(db, "db", "upgrade").returncode == 0
    csv = tmp_path / "sites.csv"
    csv.write_text("id,name,address,lat,lon,kind,tariff\n"
                   "HZ09,城西银泰车棚,杭州市拱墅区,30.29,120.11,mall,by_time\n", encoding="utf-8")
    assert run(db, "sites", "import", str(csv)).returncode == 0
    r = run(db, "staff", "add", "--platform", "telegram", "--user", "777", "--role",
            "technician", "--sites", "HZ09", "--hours", "20:00-08:00", "--name", "王师傅")
    assert r.returncode == 0, r.stderr
    assert "technician 王师傅" in r.stdout and "HZ09" in r.stdout
    r = run(db, "staff", "add", "--platform", "telegram", "--user", "888", "--role",
            "supervisor", "--sites", "*")
    assert r.returncode == 0, r.stderr
    listing = run(db, "staff", "list").stdout.splitlines()
    assert any(line.startswith("*") and "supervisor" in line for line in listing)
    assert any("HZ09" in line and "20:00-08:00" in line and "王师傅" in line for line in listing)


def test_report_monthly_writes_csv_and_charts(db: str, tmp_path: Path) -> None:
    assert run(db, "db", "upgrade").returncode == 0
    r = run(db, "report", "monthly", "--month", "2031-03", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "figures.csv").exists()
    assert "2031-03" in r.stdout
    bad = run(db, "report", "monthly", "--month", "March", "--out", str(tmp_path))
    assert bad.returncode != 0 and "--month" in bad.stderr and "Traceback" not in bad.stderr


def test_vouchers_redeem_once(db: str) -> None:
    import asyncio
    from datetime import UTC, datetime

    from core.db import make_engine, make_sessionmaker, transaction
    from core.engagement import vouchers
    from core.riders.tables import Rider

    assert run(db, "db", "upgrade").returncode == 0

    async def issue() -> str:
        engine = make_engine(db)
        try:
            async with transaction(make_sessionmaker(engine)) as s:
                rider = Rider(display_name="r")
                s.add(rider)
                await s.flush()
                v = await vouchers.on_topup(s, rider.id, 5000, "community",  # type: ignore[arg-type]
                                            datetime.now(UTC), topup_ref="T-1")
                return v[0].code
        finally:
            await engine.dispose()

    code = asyncio.run(issue())
    r = run(db, "vouchers", "redeem", code, "--merchant", "property")
    assert r.returncode == 0 and "redeemed" in r.stdout, r.stderr
    again = run(db, "vouchers", "redeem", code)
    assert again.returncode != 0 and "already redeemed" in again.stderr
    assert "unknown voucher" in run(db, "vouchers", "redeem", "NOPE-NOPE").stderr


def test_events_rejected_lists_what_piles_sent_that_was_refused(db: str, tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime

    from core.config import Settings
    from core.db import make_engine, make_sessionmaker, transaction
    from core.piles import events
    from core.piles import fleet as piles

    assert run(db, "db", "upgrade").returncode == 0

    async def ingest() -> None:
        engine = make_engine(db)
        now = datetime.now(UTC)
        try:
            async with transaction(make_sessionmaker(engine)) as s:
                await piles.add_site(s, "HZ01", "车棚", 30.2, 120.1)
                await s.flush()
                await piles.add_pile(s, "HZ01", "P0001", 4, secret="s1", lat=30.2, lon=120.1)
                await piles.add_pile(s, "HZ01", "P0002", 4, secret="s2", lat=30.2, lon=120.1)
            for pile, body in (
                ("P0001", b'{"events": [{"id": "m1", "type": "meter", "ts": "2026-12-07T08:00:00Z",'
                          b' "port": 1, "session": "S1", "power_w": NaN, "energy_wh": 12.5}]}'),
                ("P0002", b'{"events": [{"id": "t1", "type": "teleport",'
                          b' "ts": "2026-12-07T08:00:00Z"}]}'),
            ):
                batch = events.parse_batch(events.decode_body(body), body)
                async with transaction(make_sessionmaker(engine)) as s:
                    await events.ingest_group(s, [(pile, batch)], Settings(), now)
        finally:
            await engine.dispose()

    asyncio.run(ingest())
    everything = run(db, "events", "rejected")
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert lines[0].startswith("received_at\tpile\tindex\tid\tfield\terror\traw")
    assert len(lines) == 3
    assert "\tP0001\t0\tm1\tevents[0].power_w\tmust be a finite number\t" in lines[1]
    assert '"power_w": NaN' in lines[1]  # the raw event, as the pile sent it
    assert "\tP0002\t0\tt1\tevents[0].type\t" in lines[2]
    one = run(db, "events", "rejected", "--pile", "P0002", "--since", "1h")
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 2 and "P0002" in one.stdout
    later = run(db, "events", "rejected", "--since", "2099-01-01")
    assert later.returncode == 0 and later.stdout.strip() == "no rejected events"
    bad = run(db, "events", "rejected", "--since", "last tuesday")
    assert bad.returncode != 0 and "--since" in bad.stderr and "Traceback" not in bad.stderr
