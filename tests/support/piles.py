"""A pile's side of the webhook (DESIGN §3) over real HTTP: signed event batches, the command
long poll, and a rider in the web chat starting the charge a test drives by hand.

`PileLink` shows every answer (status and body) for tests of the contract itself;
`support.journey.PileClient` is the pile of a journey, which only expects 200s.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from yarl import URL

from core.piles.auth import sign, signed_headers
from tests.support.journey import WebRider, button
from tests.support.server import Running
from tests.support.settings import PILE_SECRET

PILE = "P0001"
EVENTS_URL = "/api/piles/events"

_ids = itertools.count(1)


def ev(type_: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """One event as a pile would send it, with a fresh id."""
    return {"id": f"e{next(_ids)}", "type": type_, "ts": at.isoformat(), **fields}


def now_ts() -> datetime:
    return datetime.now(UTC)


class PileLink:
    """A pile's side of the HTTP contract: signs and sends batches, polls commands."""

    def __init__(self, server: Running, pile_id: str = PILE, secret: str = PILE_SECRET) -> None:
        self.server = server
        self.pile_id = pile_id
        self.secret = secret

    async def raw(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.server.http.post(self.server.url + EVENTS_URL, data=body,
                                         headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def send_body(self, body: bytes, *, at: float | None = None) -> tuple[int, Any]:
        headers = signed_headers(self.pile_id, self.secret, body,
                                 time.time() if at is None else at)
        return await self.raw(body, headers)

    async def send(self, body: Any) -> tuple[int, Any]:
        return await self.send_body(json.dumps(body).encode())

    async def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        status, data = await self.send({"events": events})
        assert status == 200, data
        return data

    async def poll(self, wait: float = 0, *, path_id: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = f"{self.server.url}/api/piles/{path_id or self.pile_id}/commands"
        if headers is not None:
            async with self.server.http.get(url, params={"wait": str(wait)},
                                            headers=headers) as r:
                return r.status, await r.json()
        # A poll signature is accepted once (issue 15): a pile polling more than once a second
        # signs its query string with a fresh nonce instead of the empty body.
        query = f"wait={quote(str(wait))}&nonce={uuid.uuid4().hex}"
        ts = int(time.time())
        hdrs = {"X-Pile-Id": self.pile_id, "X-Timestamp": str(ts),
                "X-Signature": sign(self.secret, ts, query.encode())}
        async with self.server.http.get(URL(f"{url}?{query}", encoded=True),
                                        headers=hdrs) as r:
            return r.status, await r.json()

    async def come_online(self, ports: int = 4) -> dict[str, Any]:
        at = now_ts()
        return await self.post(
            [ev("heartbeat", at, signal_dbm=-70)]
            + [ev("port_status", at, port=n, status="idle") for n in range(1, ports + 1)]
        )


async def take_start_command(link: PileLink) -> dict[str, Any]:
    status, data = await link.poll(0)
    assert status == 200, data
    starts = [c for c in data["commands"] if c["type"] == "start"]
    assert len(starts) == 1, data
    return starts[0]


async def rider_starts(server: Running, port: int, *, topup: int | None = 2000) -> WebRider:
    """A rider (in English, with money in the wallet) scans a port code and presses Start."""
    rider = WebRider(server.http, server.url)
    await rider.press("lang:en")
    if topup:
        wallet = await rider.press("wallet")
        await rider.press(button(wallet, f"topup:{topup}"))
    code = f"{PILE}-{port:02d}"
    card = await rider.say(f"/start port_{code}")
    assert code in card[0]["text"]
    started = await rider.press(button(card, f"start:{code}"))
    assert code in started[0]["text"] and button(started, "stop:")
    return rider
