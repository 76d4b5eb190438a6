"""Helpers for journey tests: a rider in the web chat, and the bill the tariff should give."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import select

from bot.context import Context
from bot.skins.webchat_auth import CHAT_COOKIE
from core.piles.tables import Pile, PileEvent
from core.riders.tables import Identity


class WebRider:
    """A browser in the web chat. Its identity is the cookie the server issued (`cb_chat`, and
    `cb_staff` once a staff member logged in), kept here: the tests' shared HTTP session keeps
    no cookies, so that each WebRider is its own identity."""

    def __init__(self, http: Any, url: str, *, demo_as: str | None = None) -> None:
        self.http = http
        self.url = url
        self.demo_as = demo_as  # `?as=` identities, which only the demo honours
        self.cookies: dict[str, str] = {}
        self.seq = 0
        self.inbox: list[dict] = []
        self.rider_id: int | None = None  # set by helpers that know it (web_staff)

    @property
    def client_id(self) -> str:
        """The web-chat identity the server issued (Identity.external_id): `connect()` first."""
        if self.demo_as:
            return self.demo_as
        chat = self.cookies.get(CHAT_COOKIE)
        assert chat, "no web chat identity yet: await rider.connect() first"
        return chat.rsplit(".", 1)[0]

    @property
    def headers(self) -> dict[str, str]:
        if not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def params(self, **params: Any) -> dict[str, Any]:
        return {**params, "as": self.demo_as} if self.demo_as else params

    def keep(self, response: Any) -> None:
        """What a browser does with the answer's Set-Cookie headers."""
        for name, morsel in response.cookies.items():
            if not morsel.value or morsel["max-age"] == "0":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value

    async def connect(self) -> WebRider:
        """Open the page: the server issues the identity (the page's first call is /ui)."""
        async with self.http.get(f"{self.url}/webchat/api/ui", headers=self.headers,
                                 params=self.params()) as r:
            assert r.status == 200, await r.text()
            self.keep(r)
        return self

    async def send(self, **body: Any) -> dict:
        async with self.http.post(f"{self.url}/webchat/api/send", json=body,
                                  headers=self.headers, params=self.params()) as r:
            assert r.status == 200, await r.text()
            self.keep(r)
            return await r.json()

    async def upload(self, data: Any) -> tuple[int, dict]:
        """POST /webchat/api/photo with `data` (an aiohttp.FormData or bytes)."""
        async with self.http.post(f"{self.url}/webchat/api/photo", data=data,
                                  headers=self.headers, params=self.params()) as r:
            self.keep(r)
            return r.status, await r.json()

    async def login(self, account: str, password: str) -> dict:
        """Staff: log in with a password, as the page's login form does."""
        async with self.http.post(f"{self.url}/webchat/api/login",
                                  json={"staff": account, "password": password},
                                  headers=self.headers) as r:
            assert r.status == 200, await r.text()
            self.keep(r)
            return await r.json()

    async def say(self, text: str) -> list[dict]:
        return (await self.send(text=text))["replies"]

    async def press(self, data: str) -> list[dict]:
        return (await self.send(data=data))["replies"]

    async def poll(self, wait: float = 0) -> list[dict]:
        async with self.http.get(
            f"{self.url}/webchat/api/messages", headers=self.headers,
            params=self.params(after=self.seq, wait=wait),
        ) as r:
            assert r.status == 200, await r.text()
            self.keep(r)
            data = await r.json()
        for m in data["messages"]:
            self.seq = max(self.seq, m["seq"])
            self.inbox.append(m["reply"])
        return [m["reply"] for m in data["messages"]]

    async def wait_message(self, contains: str, timeout: float = 20.0) -> dict:
        """Long-polls the inbox until a pushed message contains `contains`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for m in self.inbox:
                if contains in m["text"]:
                    return m
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"no message with {contains!r}; got {[m['text'] for m in self.inbox]}"
            await self.poll(wait=min(left, 5))


async def english_rider(server: Any) -> WebRider:
    """A web chat rider who switched to English (tests read the English wording)."""
    rider = WebRider(server.http, server.url)
    await rider.press("lang:en")
    return rider


async def english_rider_and_id(server: Any) -> tuple[WebRider, int]:
    """An English web chat rider and their rider id (from the identity the server issued)."""
    rider = await english_rider(server)
    async with server.ctx.sm() as s:
        rid = (await s.execute(select(Identity.rider_id).where(
            Identity.platform == "webchat", Identity.external_id == rider.client_id))
        ).scalar_one()
    return rider, rid


STAFF_PASSWORD = "a staff password for tests"


async def web_staff(server: Any, role: str, *, name: str = "", sites: tuple[str, ...] = ("*",),
                    hours: str = "00:00-24:00", lang: str = "en") -> WebRider:
    """A staff member in the web chat as staff really get there: their own chat is Telegram
    (`chargebot staff add`), an operator set a password, and they logged in with it. Their
    rider id is `.rider_id`."""
    from core.db import transaction
    from core.riders import staff, staff_passwords
    from core.riders.identities import rider_for

    user = f"tg-staff-{uuid.uuid4().hex[:10]}"
    async with transaction(server.ctx.sm) as s:
        person = await rider_for(s, "telegram", user, display_name=name)
        person.language = lang
        for site in sites:
            await staff.add(s, person.id, role, site, hours=hours, name=name)  # type: ignore[arg-type]
        await staff_passwords.set_password(s, person.id, STAFF_PASSWORD,  # type: ignore[arg-type]
                                           server.ctx.clock())
        rider_id = person.id
    web = WebRider(server.http, server.url)
    await web.login(f"telegram:{user}", STAFF_PASSWORD)
    web.rider_id = rider_id
    return web


class HandClock:
    """Time the test moves by hand. It starts an hour ahead: outbox rows are stamped with the
    real time, and the notifier (on this clock) must find them due."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def button(replies: list[dict], prefix: str) -> str:
    for r in replies:
        for row in r["buttons"]:
            for b in row:
                if b.get("data", "").startswith(prefix):
                    return b["data"]
    raise AssertionError(f"no button {prefix!r} in {replies}")


async def wait_until(predicate: Any, timeout: float = 15.0, step: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(step)


async def pile_online(ctx: Context, pile_id: str) -> bool:
    """Whether the app counts the pile online (its heartbeat arrived): `wait_until` it."""
    async with ctx.sm() as s:
        pile = await s.get(Pile, pile_id)
        return bool(pile and pile.online)


async def pile_session(ctx: Context, pile_id: str, session_ref: str) -> dict[str, Any]:
    """What the pile itself reported for one session: start/end times, energy, meter samples."""
    async with ctx.sm() as s:
        rows = (await s.execute(select(PileEvent).where(PileEvent.pile_id == pile_id))).scalars()
        out: dict[str, Any] = {"samples": []}
        for e in rows:
            if e.payload.get("session") != session_ref:
                continue
            if e.type == "session_started":
                out["started"] = e.ts
            elif e.type == "session_ended":
                out["ended"] = e.ts
                out["energy_wh"] = e.payload["energy_wh"]
                out["reason"] = e.payload["reason"]
            elif e.type == "meter":
                out["samples"].append((e.ts, e.payload["power_w"]))
        return out


def expected_power_tier_fen(started: datetime, ended: datetime, samples: list,
                            tiers: list[dict], free_minutes: int) -> int:
    """An independent reading of DESIGN §5's power_tier tariff: peak 1-minute mean picks the tier,
    per started minute, free minutes off, rounded half up once."""
    minutes: dict[int, list[float]] = {}
    for ts, p in samples:
        if ts <= ended:
            minutes.setdefault(int((ts - started).total_seconds() // 60), []).append(p)
    band = max(sum(v) / len(v) for v in minutes.values())
    rate = next((t["fen_per_hour"] for t in sorted(tiers, key=lambda t: t["up_to_w"])
                 if round(band) <= t["up_to_w"]), tiers[-1]["fen_per_hour"])
    billable = max(0, math.ceil((ended - started).total_seconds() / 60) - free_minutes)
    return math.floor(Fraction(rate, 60) * billable + Fraction(1, 2))


class PileClient:
    """A hand-driven pile controller: signed requests with events the test chooses."""

    def __init__(self, http: Any, url: str, pile_id: str, secret: str) -> None:
        self.http, self.url, self.pile_id, self.secret = http, url, pile_id, secret
        self.seq = 0

    def event(self, type_: str, ts: datetime, **fields: Any) -> dict:
        self.seq += 1
        return {"id": f"t-{self.seq}", "type": type_, "ts": ts.isoformat(), **fields}

    async def post(self, events: list[dict]) -> dict:
        import json
        import time

        from core.piles.auth import signed_headers

        body = json.dumps({"events": events}).encode()
        async with self.http.post(f"{self.url}/api/piles/events", data=body,
                                  headers=signed_headers(self.pile_id, self.secret, body,
                                                         time.time())) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def commands(self, wait: float = 0) -> list[dict]:
        import secrets
        import time

        from core.piles.auth import signed_headers

        # A poll's signature is accepted once: a fresh nonce, signed with the query, lets a
        # test poll twice within one second as a busy pile does.
        query = f"wait={wait:g}&nonce={secrets.token_hex(8)}"
        async with self.http.get(
            f"{self.url}/api/piles/{self.pile_id}/commands?{query}",
            headers=signed_headers(self.pile_id, self.secret, query.encode(), time.time()),
        ) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["commands"]

    async def run_charge(self, port: int, session: str, start: datetime, minutes: int,
                         power_w: float = 250.0, *, reason: str = "user",
                         reported_wh: int | None = None, fault_at_minute: int | None = None,
                         ) -> None:
        """A whole charge as the pile reports it: started, a meter a minute, then the end
        (`reason`), optionally a `fault` event first and an energy counter that runs ahead."""
        from datetime import timedelta

        events = [self.event("session_started", start, port=port, session=session)]
        for m in range(minutes):
            events.append(self.event("meter", start + timedelta(minutes=m, seconds=30),
                                     port=port, session=session, power_w=power_w,
                                     energy_wh=int(power_w * (m + 0.5) / 60)))
        if fault_at_minute is not None:
            events.append(self.event("fault", start + timedelta(minutes=fault_at_minute),
                                     port=port, code="overload"))
        events.append(self.event(
            "session_ended", start + timedelta(minutes=minutes), port=port, session=session,
            reason=reason, duration_s=minutes * 60,
            energy_wh=reported_wh if reported_wh is not None else int(power_w * minutes / 60)))
        await self.post(events)
