"""Issue 15, item 2: who a web-chat browser is, the server says.

The identity is a cookie the server issued and signed (HttpOnly, SameSite, Secure on https); a
`client_id` in a body or a query is nobody. Staff act in the web chat only after logging in (a
one-time link from their own Telegram or WeChat chat, or a password), with sessions that end at
logout and at their expiry. `?as=` identities are the demo's alone. New identities are limited
per client address an hour. A rider's photos, tickets, wallet and inbox are theirs.

Every test attacks the real app over HTTP (the web chat, the Telegram webhook against the local
fake Bot API, the CLI), on SQLite and on PostgreSQL. Each one failed on the code before: there,
the browser's word was its identity.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import select

from bot.skins.webchat_auth import CHAT_COOKIE, STAFF_COOKIE
from core.billing import wallet
from core.db import transaction
from core.riders import staff, staff_passwords
from core.riders.identities import rider_for
from core.riders.staff_passwords import LoginFailure, StaffPassword
from core.riders.tables import Identity
from core.support.tables import Ticket
from tests.fakes.telegram_api import FakeTelegram
from tests.support.journey import STAFF_PASSWORD, HandClock, WebRider, button, web_staff
from tests.support.riders import TG_SECRET, TelegramRider
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parent.parent.parent
STAFF_ONLY = ("This is for our staff only.", "此功能仅限工作人员使用。")


@dataclass
class App:
    running: Running
    clock: HandClock

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.running.http

    @property
    def url(self) -> str:
        return self.running.url

    def browser(self) -> WebRider:
        return WebRider(self.running.http, self.running.url)


def _settings(db_url: str, fake_tg: FakeTelegram | None = None, **server: Any) -> Any:
    sections: dict[str, dict[str, Any]] = {"scheduler": {"enabled": False}, "server": server}
    if fake_tg is not None:
        sections["telegram"] = {"token": fake_tg.token, "base_url": fake_tg.base_url,
                                "base_file_url": fake_tg.base_file_url,
                                "webhook_secret": TG_SECRET}
    return make_settings(db_url, **sections)


@pytest.fixture
async def app(db_url: str, tmp_path: Path) -> AsyncIterator[App]:
    clock = HandClock()
    settings = make_settings(db_url, scheduler={"enabled": False},
                             support={"photo_dir": str(tmp_path / "photos")})
    async with start_server(settings, clock=clock) as running:
        await seed_city(running.ctx, ports=4)
        yield App(running, clock)


@pytest.fixture
async def tg_app(db_url: str, fake_tg: FakeTelegram) -> AsyncIterator[tuple[App, FakeTelegram]]:
    clock = HandClock()
    async with start_server(_settings(db_url, fake_tg), clock=clock) as running:
        await seed_city(running.ctx, ports=4)
        yield App(running, clock), fake_tg


def _cookie(response: aiohttp.ClientResponse, name: str) -> Any:
    """The Set-Cookie the answer carries for `name` (a Morsel), read from the raw headers."""
    for header in response.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if name in jar:
            return jar[name]
    return None


async def _as_attacker(app: App, path: str, **kw: Any) -> tuple[int, dict, Any]:
    """A request with no cookie of its own: (status, JSON, the cb_chat it was given)."""
    method = "POST" if path in ("send", "photo") else "GET"
    async with app.http.request(method, f"{app.url}/webchat/api/{path}", **kw) as r:
        return r.status, await r.json(), _cookie(r, CHAT_COOKIE)


def picture(color: tuple[int, int, int]) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="JPEG")
    return buf.getvalue()


# --- the identity is the server's cookie -------------------------------------------------------


async def test_a_client_id_in_the_body_or_query_is_nobody(app: App) -> None:
    victim = app.browser()
    await victim.press("lang:en")
    async with transaction(app.running.ctx.sm) as s:
        me = await rider_for(s, "webchat", victim.client_id)
        await wallet.post(s, me.id, "topup", 5800, "seed:victim")  # type: ignore[arg-type]
    await victim.say("/link")  # something in the victim's chat history

    # The attacker names the victim's id everywhere a client_id used to go.
    status, body, issued = await _as_attacker(
        app, "send", json={"client_id": victim.client_id, "text": "/wallet"},
        params={"client_id": victim.client_id})
    assert status == 200
    assert "58.00" not in body["replies"][0]["text"]  # not the victim's wallet
    assert issued is not None and issued.value.split(".")[0] != victim.client_id
    status, body, issued = await _as_attacker(
        app, "messages", params={"client_id": victim.client_id, "after": "0"})
    assert status == 200 and body["messages"] == []
    assert issued.value.split(".")[0] != victim.client_id
    status, body, _ = await _as_attacker(app, "ui", params={"client_id": victim.client_id})
    assert body["lang"] == "zh_CN"  # the victim chose English; a stranger gets the default
    async with app.running.ctx.sm() as s:
        ids = (await s.scalars(select(Identity.external_id).where(
            Identity.rider_id == me.id))).all()
    assert ids == [victim.client_id]  # nobody else became the victim
    # The victim is still the victim.
    assert "58.00" in (await victim.say("/wallet"))[0]["text"]


async def test_the_cookie_is_random_signed_httponly_and_lax(app: App) -> None:
    async with app.http.get(f"{app.url}/webchat/api/ui") as r:
        morsel = _cookie(r, CHAT_COOKIE)
    assert morsel is not None
    ident, _, sig = morsel.value.rpartition(".")
    assert len(ident) >= 22 and len(sig) >= 40  # ≥ 128 random bits, a full HMAC-SHA256
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert int(morsel["max-age"]) >= 300 * 24 * 3600
    assert not morsel["secure"]  # public_url is http here: a Secure cookie would never return
    # Two browsers, two identities.
    async with app.http.get(f"{app.url}/webchat/api/ui") as r:
        assert _cookie(r, CHAT_COOKIE).value.split(".")[0] != ident

    # A forged or altered cookie is no cookie: a new identity, never the one it names.
    altered = ident[:-1] + ("y" if ident.endswith("x") else "x")  # one character changed
    forged = [f"{ident}.{'A' * len(sig)}", f"{ident}.", ident, f"{altered}.{sig}",
              f"demo-technician.{sig}", f"staff:1.{sig}"]
    for value in forged:
        status, _body, issued = await _as_attacker(
            app, "send", json={"text": "/start"}, headers={"Cookie": f"{CHAT_COOKIE}={value}"})
        assert status == 200 and issued is not None, value
        assert issued.value.split(".")[0] not in (ident, "demo-technician", "staff:1"), value


async def test_the_cookie_is_secure_when_the_public_url_is_https(db_url: str) -> None:
    settings = _settings(db_url, public_url="https://charge.example.com")
    async with start_server(settings, notifier=False) as running, \
            running.http.get(f"{running.url}/webchat/api/ui") as r:
        morsel = _cookie(r, CHAT_COOKIE)
    assert morsel is not None and morsel["secure"] and morsel["httponly"]


async def test_new_identities_are_limited_per_client_address_an_hour(db_url: str) -> None:
    clock = HandClock()
    settings = _settings(db_url, webchat_new_identities_per_hour=3)
    async with start_server(settings, clock=clock) as running:
        app = App(running, clock)
        kept = [await app.browser().connect() for _ in range(3)]
        # The fourth new browser from this address in the hour, however it asks: refused, and
        # a forwarded header does not make it someone else's address.
        for path, kw in (("ui", {}), ("send", {"json": {"text": "/start"}}),
                         ("messages", {"params": {"after": "0"}}),
                         ("send", {"json": {"text": "hi"},
                                   "headers": {"X-Forwarded-For": "203.0.113.9"}})):
            status, body, issued = await _as_attacker(app, path, **kw)
            assert status == 429, (path, status)
            assert body["reason"] == "too_many_chats" and issued is None
        async with running.http.get(f"{running.url}/webchat/api/ui") as r:
            assert 0 < int(r.headers["Retry-After"]) <= 3600
        # Browsers that have their identity keep it.
        for browser in kept:
            assert (await browser.say("/start"))[0]["text"]
        # An hour later the address may open new chats again.
        clock.advance(hours=1, seconds=1)
        assert (await app.browser().say("/start"))[0]["text"]


# --- staff: a web chat id is no way in ---------------------------------------------------------


async def test_knowing_a_staff_members_web_chat_id_gives_nothing(app: App) -> None:
    # How staff were set up before: `chargebot staff add --platform webchat --user desk-agent…`.
    async with transaction(app.running.ctx.sm) as s:
        desk = await rider_for(s, "webchat", "desk-agent-0001")
        desk.language = "en"
        await staff.add(s, desk.id, "agent", "*")  # type: ignore[arg-type]
    for who in ("desk-agent-0001", "demo-technician", f"staff:{desk.id}"):
        for params in ({"client_id": who}, {"as": who}):
            status, body, _ = await _as_attacker(
                app, "send", json={"client_id": who, "text": "/tickets"}, params=params)
            assert status == 200
            assert body["replies"][0]["text"] in STAFF_ONLY, (who, body)


def _cli(db: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--database", db, *args], cwd=ROOT, input=stdin,
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "CHARGEBOT_LOG": "WARNING"})


async def test_staff_add_refuses_a_web_chat_id_and_staff_passwd_lets_them_log_in(
        tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    assert _cli(db, "db", "upgrade").returncode == 0
    refused = _cli(db, "staff", "add", "--platform", "webchat", "--user", "desk-agent-0001",
                   "--role", "agent", "--sites", "*")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "/weblogin" in refused.stderr and "staff passwd" in refused.stderr
    assert _cli(db, "staff", "add", "--platform", "telegram", "--user", "424242", "--role",
                "agent", "--sites", "*", "--name", "小周").returncode == 0
    short = _cli(db, "staff", "passwd", "--platform", "telegram", "--user", "424242",
                 "--password-stdin", stdin="short\n")
    assert short.returncode != 0 and "at least" in short.stderr
    stranger = _cli(db, "staff", "passwd", "--platform", "telegram", "--user", "999",
                    "--password-stdin", stdin="long enough password\n")
    assert stranger.returncode != 0 and "not staff" in stranger.stderr
    done = _cli(db, "staff", "passwd", "--platform", "telegram", "--user", "424242",
                "--password-stdin", stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert "telegram:424242" in done.stdout and "correct horse" not in done.stdout

    async with start_server(make_settings(db, scheduler={"enabled": False}),
                            notifier=False) as running:
        async with running.ctx.sm() as s:
            stored = (await s.scalars(select(StaffPassword.hash))).one()
        assert stored.startswith("$argon2id$") and "correct horse" not in stored
        browser = WebRider(running.http, running.url)
        logged_in = await browser.login("telegram:424242", "correct horse battery")
        assert logged_in == {"ok": True, "name": "小周"}
        assert (await browser.say("/tickets"))[0]["text"] not in STAFF_ONLY


# --- staff: the one-time link ------------------------------------------------------------------


async def _telegram_staff(app: App, fake: FakeTelegram, role: str = "agent") -> TelegramRider:
    tg = TelegramRider(app.running, fake)
    tg.user.language_code = "en"
    await tg.say("/start")
    async with transaction(app.running.ctx.sm) as s:
        me = await rider_for(s, "telegram", str(tg.user.user_id))
        await staff.add(s, me.id, role, "*", name="Zhou")  # type: ignore[arg-type]
    return tg


async def _link_token(tg: TelegramRider) -> str:
    n = len([m for m in tg._messages() if "/webchat/login?t=" in (m.get("text") or "")])
    await tg.say("/weblogin")
    texts = [m["text"] for m in tg._messages() if "/webchat/login?t=" in (m.get("text") or "")]
    assert len(texts) == n + 1, texts
    found = re.search(r"/webchat/login\?t=([A-Za-z0-9_-]+)", texts[-1])
    assert found and len(found.group(1)) >= 22
    return found.group(1)


async def test_staff_log_in_with_a_one_time_link_from_their_own_chat(
        tg_app: tuple[App, FakeTelegram]) -> None:
    app, fake = tg_app
    # A rider asking for a link gets none.
    rider = TelegramRider(app.running, fake)
    rider.user.language_code = "en"
    await rider.say("/weblogin")
    assert "/webchat/login" not in (await rider.wait_text("staff only"))

    tg = await _telegram_staff(app, fake)
    token = await _link_token(tg)
    link = f"{app.url}/webchat/login?t={token}"
    # Opening it shows what it does and changes nothing (a link preview must not spend it).
    for _ in range(2):
        async with app.http.get(link) as r:
            assert r.status == 200 and "Zhou" in await r.text()
            assert _cookie(r, STAFF_COOKIE) is None
    async with app.http.post(f"{app.url}/webchat/login", data={"t": token},
                             allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
        session = _cookie(r, STAFF_COOKIE)
    assert session is not None and session["httponly"] and session["samesite"] == "Lax"
    browser = app.browser()
    browser.cookies[STAFF_COOKIE] = session.value
    assert "No open tickets" in (await browser.say("/tickets"))[0]["text"]
    await browser.connect()
    assert (await _ui(browser))["staff"] == "Zhou"  # the page says who is logged in

    # Used once: again (or by whoever copied the link) is a friendly page and no session.
    async with app.http.post(f"{app.url}/webchat/login", data={"t": token},
                             allow_redirects=False) as r:
        assert r.status == 410 and _cookie(r, STAFF_COOKIE) is None
        assert "/weblogin" in await r.text()
    # A link not opened within 10 minutes is gone too.
    late = await _link_token(tg)
    app.clock.advance(minutes=10, seconds=1)
    async with app.http.post(f"{app.url}/webchat/login", data={"t": late},
                             allow_redirects=False) as r:
        assert r.status == 410 and _cookie(r, STAFF_COOKIE) is None
    async with app.running.ctx.sm() as s:
        from core.riders.web_sessions import WebLoginLink

        stored = (await s.scalars(select(WebLoginLink.token_hash))).all()
    assert token not in stored and late not in stored  # only hashes are kept


async def _ui(browser: WebRider) -> dict:
    async with browser.http.get(f"{browser.url}/webchat/api/ui", headers=browser.headers) as r:
        return await r.json()


# --- staff: passwords --------------------------------------------------------------------------


async def test_wrong_passwords_are_limited_per_account_and_per_address(app: App) -> None:
    agent = await web_staff(app.running, "agent")
    account = await _account_of(app, agent.rider_id)  # type: ignore[arg-type]
    browser = app.browser()

    async def login(who: str, password: str) -> int:
        async with app.http.post(f"{app.url}/webchat/api/login",
                                 json={"staff": who, "password": password}) as r:
            assert _cookie(r, STAFF_COOKIE) is None or r.status == 200
            return r.status

    # Unknown accounts and riders without a role are refused like a wrong password.
    async with transaction(app.running.ctx.sm) as s:
        plain = await rider_for(s, "telegram", "5550001")
        await staff_passwords.set_password(s, plain.id, "a rider's password", app.clock())  # type: ignore[arg-type]
    assert await login("telegram:5550001", "a rider's password") == 401
    assert await login("telegram:0", STAFF_PASSWORD) == 401
    # Wrong guesses from elsewhere count against the account...
    async with transaction(app.running.ctx.sm) as s:
        s.add_all([LoginFailure(account=account, address="198.51.100.7", at=app.clock())
                   for _ in range(5)])
    assert await login(account, STAFF_PASSWORD) == 429  # even the right password waits
    app.clock.advance(minutes=15, seconds=1)
    assert (await browser.login(account, STAFF_PASSWORD))["ok"]
    # ...and guesses at other accounts count against this address.
    for i in range(5):
        assert await login(f"telegram:77700{i}", "guess") == 401
    assert await login(account, STAFF_PASSWORD) == 429
    app.clock.advance(minutes=15, seconds=1)
    assert await login(account, STAFF_PASSWORD) == 200


async def _account_of(app: App, rider_id: int) -> str:
    async with app.running.ctx.sm() as s:
        user = (await s.scalars(select(Identity.external_id).where(
            Identity.rider_id == rider_id, Identity.platform == "telegram"))).one()
    return f"telegram:{user}"


async def test_logout_and_expiry_end_the_session_even_for_a_copied_cookie(app: App) -> None:
    agent = await web_staff(app.running, "agent")
    copied = dict(agent.cookies)
    assert STAFF_COOKIE in copied
    assert "No open tickets" in (await agent.say("/tickets"))[0]["text"]
    menu = await agent.say("/menu")
    assert button(menu, "weblogout") == "weblogout"  # the staff menu's Log out button
    out = await agent.send(text="/logout")
    assert out.get("identity_changed") and "logged out" in out["replies"][0]["text"]
    assert STAFF_COOKIE not in agent.cookies
    thief = app.browser()
    thief.cookies = dict(copied)
    assert (await thief.say("/tickets"))[0]["text"] in STAFF_ONLY
    assert STAFF_COOKIE not in thief.cookies  # told to forget it

    # Expiry: 12 hours by default, on the app's clock.
    again = await web_staff(app.running, "agent")
    copied = dict(again.cookies)
    app.clock.advance(hours=11, minutes=59)
    assert "No open tickets" in (await again.say("/tickets"))[0]["text"]
    app.clock.advance(minutes=2)
    thief = app.browser()
    thief.cookies = dict(copied)
    assert (await thief.say("/tickets"))[0]["text"] in STAFF_ONLY
    assert (await again.say("/tickets"))[0]["text"] in STAFF_ONLY


async def test_staff_notices_go_back_to_their_own_chat_after_logout(
        tg_app: tuple[App, FakeTelegram]) -> None:
    app, fake = tg_app
    tg = await _telegram_staff(app, fake)
    token = await _link_token(tg)
    browser = app.browser()
    async with app.http.post(f"{app.url}/webchat/login", data={"t": token},
                             allow_redirects=False) as r:
        browser.keep(r)
    rider = app.browser()
    await rider.press("lang:en")
    await rider.press(button(await rider.say("do you sell replacement charger cables at the "
                                             "sites?"), "ask"))
    await browser.wait_message("Ticket #1")  # logged in: the desk's notice comes here
    # Logged out from the phone: every web session ends, notices go to Telegram again.
    await tg.say("/logout")
    assert "1 session" in await tg.wait_text("Logged out of the web chat")
    assert (await browser.say("/tickets"))[0]["text"] in STAFF_ONLY
    other = app.browser()
    await other.press("lang:en")
    await other.press(button(await other.say("can you fix the brakes on my scooter please"),
                             "ask"))
    await tg.wait_text("Ticket #2")


# --- demo identities are the demo's alone ------------------------------------------------------


async def test_demo_identities_only_where_the_demo_turned_them_on(db_url: str) -> None:
    from bot import demo

    for on in (False, True):
        settings = _settings(db_url, webchat_demo_identities=on)
        async with start_server(settings, notifier=False) as running:
            if not on:
                async with transaction(running.ctx.sm) as s:
                    await demo.seed(s)
            tech = WebRider(running.http, running.url, demo_as="demo-technician")
            reply = (await tech.say("/orders"))[0]["text"]
            assert ("工单" in reply) is on, (on, reply)
            # Only the demo's staff ids: `as` names no one else, even in the demo.
            stranger = WebRider(running.http, running.url, demo_as="desk-agent-0001")
            await stranger.say("/start")
            async with running.ctx.sm() as s:
                named = await s.scalar(select(Identity.id).where(
                    Identity.external_id == "desk-agent-0001"))
            assert named is None


def test_serve_refuses_demo_identities_and_names_the_key(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from bot.cli import main

    assert main(["serve"]) == 0  # the refusal below is about this key alone
    monkeypatch.setenv("CHARGEBOT_SERVER__WEBCHAT_DEMO_IDENTITIES", "true")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "server.webchat_demo_identities" in err and "`chargebot demo` only" in err
    monkeypatch.delenv("CHARGEBOT_SERVER__WEBCHAT_DEMO_IDENTITIES")
    config_dir.write_text(config_dir.read_text() + "[server]\nwebchat_demo_identities = true\n")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "server.webchat_demo_identities" in err and "`chargebot demo` only" in err


# --- a rider's things are theirs ---------------------------------------------------------------


async def test_another_riders_photo_ticket_and_inbox_are_out_of_reach(app: App) -> None:
    owner, other = app.browser(), app.browser()
    for who in (owner, other):
        await who.press("lang:en")
    status, body = await owner.upload(_form(picture((200, 10, 10))))
    assert status == 200, body
    ref = body["ref"]
    # The owner's report, with the photo.
    card = await owner.say("P0001-02")
    menu = await owner.press(button(card, "rep:"))
    await owner.press(button(menu, "rp:P0001-02:damaged"))
    filed = await owner.send(photo=ref)
    assert "Report #1" in filed["replies"][0]["text"]

    # Another rider naming the owner's photo: refused as if it did not exist...
    async with app.http.post(f"{app.url}/webchat/api/send", json={"photo": ref},
                             headers=other.headers) as r:
        assert r.status == 400 and (await r.json())["field"] == "photo"
    # ...also when claiming to be the owner.
    async with app.http.post(f"{app.url}/webchat/api/send", params={"client_id": owner.client_id},
                             json={"client_id": owner.client_id, "photo": ref},
                             headers=other.headers) as r:
        assert r.status == 400
    # The owner's ticket is not theirs to rate, to add to or to close.
    for data in ("rskip:1", "trate:1:1", "tk:take:1", "tk:close:1"):
        async with app.http.post(f"{app.url}/webchat/api/send",
                                 json={"client_id": owner.client_id, "data": data},
                                 headers=other.headers) as r:
            text = (await r.json())["replies"][0]["text"]
            assert "Report #1" not in text and "Ticket #1" not in text, (data, text)
    async with app.running.ctx.sm() as s:
        ticket = (await s.scalars(select(Ticket))).one()
    assert ticket.rating is None and ticket.state == "open" and ticket.assignee_id is None
    # The owner's inbox is not theirs to read.
    async with app.http.get(f"{app.url}/webchat/api/messages",
                            params={"client_id": owner.client_id, "after": "0"},
                            headers=other.headers) as r:
        assert (await r.json())["messages"] == []
    # The staff whose role covers tickets see it.
    agent = await web_staff(app.running, "agent")
    assert "is yours" in (await agent.press("tk:take:1"))[0]["text"]


def _form(data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("photo", BytesIO(data), filename="p.jpg", content_type="image/jpeg")
    return form
