"""Nothing heavy on the event loop (issue 14): every "first" after a start-up is as quick as the
second, because heavy imports happen at start-up and CPU work runs in worker threads.

The server is a fresh `chargebot serve` process (tests/support/served.py): in this pytest process
earlier tests have long imported scipy, matplotlib and jieba, so a first use here would prove
nothing.
It runs with `server.slow_callback_s = 1.0`: asyncio's debug mode logs every callback that held
the loop for a second or more ("Executing <…> took N seconds"), and the log must have none after
a whole journey of firsts: a bill, a fault, a report with a photo, an FAQ answer, a chart.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from PIL import Image

from core.db import make_engine, make_sessionmaker, transaction
from core.piles import fleet as piles
from tests.support.journey import PileClient, WebRider, button
from tests.support.served import serve

SECRET = "loop-secret-P0001"
SLOW_CALLBACK = re.compile(r"Executing .* took [\d.]+ seconds")


async def _seed(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with transaction(make_sessionmaker(engine)) as s:
            await piles.add_site(s, "L01", "测试车棚", 30.278, 120.114, address="测试路1号")
            await s.flush()
            await piles.add_pile(s, "L01", "P0001", 4, secret=SECRET, lat=30.2781, lon=120.114)
    finally:
        await engine.dispose()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(out, "JPEG")
    return out.getvalue()


async def _charge(rider: WebRider, pile: PileClient, port: int) -> tuple[str, datetime]:
    """The rider starts a charge from the port card; the pile takes the start command."""
    card = await rider.say(f"P0001-{port:02d}")
    await rider.press(button(card, f"start:P0001-{port:02d}"))
    ref = next(c["session"] for c in await pile.commands(wait=10)
               if c["type"] == "start" and c["port"] == port)
    return ref, datetime.now(UTC) - timedelta(minutes=20)


def _meters(pile: PileClient, port: int, ref: str, t0: datetime) -> list[dict]:
    # With the terminal temperature: the bill computes the charge's heating (core.heat).
    return [pile.event("meter", t0 + timedelta(minutes=m), port=port, session=ref,
                       power_w=200.0, energy_wh=200 * m // 60,
                       temperature_c=31.0 + m / 10) for m in range(1, 6)]


async def test_a_journey_of_firsts_never_holds_the_event_loop(db_url: str,
                                                               tmp_path: Path) -> None:
    await _seed(db_url)
    # The riders start without a wallet: the start floor is not what this test watches.
    async with serve(db_url, tmp_path / "served",
                     env={"CHARGEBOT_SERVER__SLOW_CALLBACK_S": "1.0",
                          "CHARGEBOT_BILLING__START_MIN_BALANCE_FEN": "0"}) as server, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        pile = PileClient(http, server.url, "P0001", SECRET)
        await pile.post([pile.event("heartbeat", datetime.now(UTC))])

        # The first bill: a charge the pile ends itself.
        billed = WebRider(http, server.url)
        await billed.press("lang:en")
        ref, t0 = await _charge(billed, pile, 1)
        await pile.post([pile.event("session_started", t0, port=1, session=ref),
                         *_meters(pile, 1, ref, t0),
                         pile.event("session_ended", t0 + timedelta(minutes=6), port=1,
                                    session=ref, reason="full", energy_wh=20,
                                    duration_s=360)])
        assert "P0001-01" in (await billed.wait_message("🧾"))["text"]

        # The first fault: it cuts another rider's charge short.
        cut = WebRider(http, server.url)
        await cut.press("lang:en")
        ref, t0 = await _charge(cut, pile, 2)
        await pile.post([pile.event("session_started", t0, port=2, session=ref),
                         *_meters(pile, 2, ref, t0),
                         pile.event("fault", t0 + timedelta(minutes=6), port=2,
                                    code="over_temperature")])
        assert "P0001-02" in (await cut.wait_message("failed"))["text"]

        # The first report with a photo: the problem from the port card, then the picture.
        card = await billed.say("P0001-03")
        problems = await billed.press(button(card, "rep:"))
        asked = await billed.press(button(problems, "rp:"))
        assert "photo" in asked[0]["text"]
        form = aiohttp.FormData()
        form.add_field("photo", io.BytesIO(_jpeg()), filename="socket.jpg",
                       content_type="image/jpeg")
        status, body = await billed.upload(form)
        assert status == 200, body
        photo = body["ref"]
        sent = await billed.send(photo=photo)
        assert "is with our team" in sent["replies"][0]["text"]

        # The first FAQ answer.
        asker = WebRider(http, server.url)
        await asker.press("lang:en")
        answer = await asker.say("how do I stop charging early?")
        assert "/stop" in answer[0]["text"]

        # The first chart: the rider's year as an image card.
        year = await billed.say("/myyear")
        assert any(r.get("photo_url") for r in year), year

    log = server.log()
    # The check is on: asyncio's debug mode ran with the one-second threshold...
    assert "asyncio debug on" in log, log[-3000:]
    # ...and nothing held the loop that long, from the start-up to the last reply.
    slow = [line for line in log.splitlines() if SLOW_CALLBACK.search(line)]
    assert not slow, "\n".join(slow)
