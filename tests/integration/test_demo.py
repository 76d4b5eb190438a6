"""`chargebot demo` (what `make run` runs) serves the web chat with the demo city and its fleet."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import aiohttp

from tests.support.journey import WebRider
from tests.support.served import ROOT, free_port


async def test_demo_serves_the_web_chat_with_a_seeded_city_and_live_fleet(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CHARGEBOT_LOG"}
    env["CHARGEBOT_DATABASE__URL"] = f"sqlite+aiosqlite:///{tmp_path}/demo.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "demo", "--port", str(port), "--speed", "600",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            # Until it serves, however long the start-up (migrations, seeding, warm-up) takes.
            deadline = asyncio.get_running_loop().time() + 180
            while True:
                assert asyncio.get_running_loop().time() < deadline, "demo did not come up"
                try:
                    async with http.get(f"{url}/webchat/api/ui") as r:
                        if r.status == 200:
                            ui = await r.json()
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert len(ui["locations"]) == 4 and ui["ports"]
            async with http.get(f"{url}/") as r:
                assert r.status == 200 and "webchat.js" in await r.text()
            loc = ui["locations"][0]
            rider = WebRider(http, url)
            deadline = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < deadline:
                replies = (await rider.send(location=loc))["replies"]
                if replies[0]["buttons"]:
                    break  # the simulated fleet has checked in: free ports are listed
                await asyncio.sleep(0.1)
            assert replies[0]["buttons"], replies
            assert "P00" in replies[0]["text"]
            # The demo's technician works through the same web chat (/?as=demo-technician,
            # which only the demo honours).
            tech = WebRider(http, url, demo_as="demo-technician")
            assert "工单" in (await tech.say("/orders"))[0]["text"]
            assert "工单" not in (await rider.say("/orders"))[0]["text"]
            # The city's two AP3000 boards (simulator/ap3000.py) and two OCPP 1.6J charge points
            # (simulator/ocpp.py) come online through their gateways: seeded, connected, booted.
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                with sqlite3.connect(tmp_path / "demo.db") as db:
                    boards = db.execute("SELECT id, online FROM piles WHERE protocol = 'ap3000' "
                                        "ORDER BY id").fetchall()
                    points = db.execute(
                        "SELECT id, wire_id, ports, online, firmware FROM piles "
                        "WHERE protocol = 'ocpp16' ORDER BY id").fetchall()
                if (len(boards) == 2 and all(online for _, online in boards)
                        and len(points) == 2 and all(p[3] for p in points)):
                    break
                assert asyncio.get_running_loop().time() < deadline, (boards, points)
                await asyncio.sleep(0.2)
            # The firmware is the one its BootNotification gave: it spoke OCPP, not just HTTP.
            assert [p[:3] for p in points] == [("P0201", "CP-HZ04-01", 2),
                                               ("P0202", "CP-HZ04-02", 2)]
            assert all(p[4] == "chargebot-sim/1.0" for p in points), points
            # Their connectors report in (StatusNotification): every port has a reported status.
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                with sqlite3.connect(tmp_path / "demo.db") as db:
                    ports = db.execute("SELECT status, status_at FROM ports WHERE pile_id IN "
                                       "('P0201', 'P0202')").fetchall()
                if len(ports) == 4 and all(at for _, at in ports):
                    break
                assert asyncio.get_running_loop().time() < deadline, ports
                await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    # make run is quiet: INFO goes to var/log beside the database, the console keeps warnings
    # and what to open, the chat's address last of the start-up lines.
    assert proc.stdout is not None
    console = (await proc.stdout.read()).decode(errors="replace").splitlines()
    assert not [line for line in console if " INFO " in line], console[:20]
    starts = [line.split(":")[0].split(" ")[0] for line in console
              if line.startswith(("demo city", "AP3000 gateway", "OCPP 1.6J", "log:", "web chat:"))]
    assert starts == ["demo", "AP3000", "OCPP", "log", "web"], console[:20]
    assert " INFO " in (tmp_path / "log" / "demo.log").read_text(encoding="utf-8")
