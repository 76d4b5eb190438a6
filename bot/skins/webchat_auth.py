"""Who a web-chat request speaks for: the cookies the server issued, never the client's word.

`cb_chat` holds the browser's own identity, `<id>.<HMAC>`: a random id the server made and
signed (key made once and stored in the database, `app_secrets`). A request without a valid one
gets a new identity (counted per client address an hour); a forged or altered cookie counts as
none. `cb_staff` holds a staff session's token, `<token>.<HMAC>`, looked up (hashed) in
`web_sessions`: while it is live the browser speaks as the staff member (core.web_sessions).
Both are HttpOnly and SameSite=Lax, and Secure when `server.public_url` is https.

Staff log in with a one-time link from their own chat (`/weblogin`, opened here at
`/webchat/login`) or a password (`POST /webchat/api/login`), and log out with `/logout`.
The link's page asks for a tap before it logs in: chat apps fetch links to preview them, and
a preview must not spend the link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import math
import re
import secrets
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from bot.context import CTX, Context
from bot.demo import DEMO_STAFF
from bot.i18n import tr
from core import app_secrets
from core.db import transaction
from core.riders import staff, staff_passwords, web_sessions
from core.riders.identities import language_from_hint
from core.riders.tables import DEFAULT_LANGUAGE, Rider

CHAT_COOKIE = "cb_chat"
STAFF_COOKIE = "cb_staff"
COOKIE_SECRET = "webchat_cookies"
CHAT_ID = re.compile(r"[A-Za-z0-9_-]{24}")  # secrets.token_urlsafe(18): 144 random bits
CHAT_MAX_AGE = 365 * 24 * 3600
DEMO_IDS = frozenset(client_id for client_id, _role, _name in DEMO_STAFF)
KEY = web.AppKey("webchat_cookie_key", dict)


@dataclass
class Who:
    """The identity a request speaks for, and the cookies its answer must set."""

    external_id: str
    staff_token: str | None = None  # a live staff session's token
    new_chat: str | None = None  # a cb_chat value to set: the identity was just issued
    drop_staff: bool = False  # a cb_staff cookie that no longer works: remove it

    @property
    def staff_rider(self) -> int | None:
        return web_sessions.staff_rider_of(self.external_id)


class TooManyIdentities(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("too many new web chat identities from this address")
        self.retry_after_s = retry_after_s


async def _key(request: web.Request) -> bytes:
    box = request.app[KEY]
    if "key" not in box:
        value = await app_secrets.get_or_create(request.app[CTX].sm, COOKIE_SECRET)
        box["key"] = bytes.fromhex(value)
    return box["key"]


def _sign(key: bytes, purpose: str, value: str) -> str:
    mac = hmac.new(key, f"{purpose}|{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _signed(key: bytes, purpose: str, value: str) -> str:
    return f"{value}.{_sign(key, purpose, value)}"


def _verified(key: bytes, purpose: str, cookie: str | None) -> str | None:
    """The value of a cookie we signed for `purpose`; None for anything else."""
    if not cookie or len(cookie) > 200:
        return None
    value, dot, sig = cookie.rpartition(".")
    if not dot or not hmac.compare_digest(sig.encode(), _sign(key, purpose, value).encode()):
        return None
    return value


def address(request: web.Request) -> str:
    """The socket's peer: a forwarded header would be the client's word."""
    return (request.remote or "?")[:64]


async def who(request: web.Request, *, issue: bool = True) -> Who | None:
    """The identity of this request; a new one issued when it has none (TooManyIdentities past
    the address's hourly limit). With issue=False, None instead of a new identity."""
    ctx = request.app[CTX]
    server = ctx.settings.server
    if server.webchat_demo_identities and request.query.get("as") in DEMO_IDS:
        return Who(request.query["as"])
    key = await _key(request)
    dropped = False
    if (token := _verified(key, "staff", request.cookies.get(STAFF_COOKIE))) is not None:
        async with ctx.reader()() as session:
            row = await web_sessions.find(session, token, ctx.clock())
        if row is not None:
            return Who(web_sessions.staff_identity(row.rider_id), staff_token=token)
        dropped = True
    elif STAFF_COOKIE in request.cookies:
        dropped = True
    chat = _verified(key, "chat", request.cookies.get(CHAT_COOKIE))
    if chat is not None and CHAT_ID.fullmatch(chat):
        return Who(chat, drop_staff=dropped)
    if not issue:
        return None
    async with transaction(ctx.sm) as session:
        wait = await web_sessions.issue_identity(
            session, address(request), ctx.clock(),
            per_hour=server.webchat_new_identities_per_hour)
    if wait is not None:
        raise TooManyIdentities(max(1, math.ceil(wait.total_seconds())))
    new = secrets.token_urlsafe(18)
    return Who(new, new_chat=_signed(key, "chat", new), drop_staff=dropped)


def _secure(ctx: Context) -> bool:
    return ctx.settings.server.public_url.lower().startswith("https://")


def _set(response: web.StreamResponse, ctx: Context, name: str, value: str,
         max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="Lax", secure=_secure(ctx))


def _drop(response: web.StreamResponse, ctx: Context, name: str) -> None:
    response.del_cookie(name, path="/", secure=_secure(ctx), httponly=True, samesite="Lax")


def finish(request: web.Request, response: web.StreamResponse, w: Who | None) -> None:
    """Set (or remove) the cookies `who` decided on."""
    if w is None:
        return
    ctx = request.app[CTX]
    if w.new_chat is not None:
        _set(response, ctx, CHAT_COOKIE, w.new_chat, CHAT_MAX_AGE)
    if w.drop_staff:
        _drop(response, ctx, STAFF_COOKIE)


def too_many_identities(exc: TooManyIdentities) -> web.Response:
    return web.json_response(
        {"error": "too many new chats from your address in the last hour; try again later",
         "reason": "too_many_chats", "retry_after": exc.retry_after_s},
        status=429, headers={"Retry-After": str(exc.retry_after_s)})


async def _staff_session(request: web.Request, rider_id: int, platform: str,
                         via: str) -> str:
    ctx = request.app[CTX]
    hours = ctx.settings.server.webchat_staff_session_hours
    async with transaction(ctx.sm) as session:
        token = await web_sessions.start(session, rider_id, platform, via, ctx.clock(),
                                         hours=hours, address=address(request))
    return _signed(await _key(request), "staff", token)


def _session_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    ctx = request.app[CTX]
    _set(response, ctx, STAFF_COOKIE, value,
         int(ctx.settings.server.webchat_staff_session_hours * 3600))


async def end_session(request: web.Request, response: web.StreamResponse, w: Who) -> None:
    """Log out: the session ends in the database (a copied cookie stops working too)."""
    ctx = request.app[CTX]
    if w.staff_token is not None:
        async with transaction(ctx.sm) as session:
            await web_sessions.end(session, w.staff_token, ctx.clock())
    _drop(response, ctx, STAFF_COOKIE)


# --- routes -----------------------------------------------------------------------------------


def _page(lang: str, title: str, body: str, status: int = 200) -> web.Response:
    doc = (f'<!doctype html><html lang="{"en" if lang == "en" else "zh-CN"}"><head>'
           '<meta charset="utf-8"><meta name="viewport" content="width=device-width, '
           'initial-scale=1"><meta name="referrer" content="no-referrer">'
           f'<title>{html.escape(title)}</title>'
           '<link rel="stylesheet" href="/static/webchat.css"></head>'
           f'<body class="login-page"><main class="login-card"><h1>{html.escape(title)}</h1>'
           f'{body}</main></body></html>')
    return web.Response(text=doc, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _link_gone(request: web.Request) -> web.Response:
    lang = language_from_hint(request.headers.get("Accept-Language"))
    text = tr(lang, "This login link has expired or was used already. Send /weblogin in your "
                    "Telegram or WeChat chat with us for a new one.")
    back = tr(lang, "Open the web chat")
    return _page(lang, tr(lang, "Staff login"),
                 f'<p>{html.escape(text)}</p><p><a href="/">{html.escape(back)}</a></p>',
                 status=410)


async def login_page(request: web.Request) -> web.Response:
    """GET /webchat/login?t=…: what the link is for, and a button that logs in."""
    ctx = request.app[CTX]
    token = request.query.get("t", "")
    async with ctx.reader()() as session:
        link = await web_sessions.login_link(session, token, ctx.clock())
        if link is None:
            return _link_gone(request)
        rider = await session.get(Rider, link.rider_id)
        name = await staff.display_name(session, link.rider_id) or (
            rider.display_name if rider else "")
    lang = rider.language if rider else DEFAULT_LANGUAGE
    text = tr(lang, "Log in to the web chat as {name}? The link works once.",
              name=name or tr(lang, "staff"))
    form = (f'<p>{html.escape(text)}</p><form method="post" action="/webchat/login">'
            f'<input type="hidden" name="t" value="{html.escape(token)}">'
            f'<button type="submit" class="send-btn">{html.escape(tr(lang, "Log in"))}</button>'
            '</form>')
    return _page(lang, tr(lang, "Staff login"), form)


async def login_with_link(request: web.Request) -> web.StreamResponse:
    """POST /webchat/login (t=…): spend the link, open the session, on to the chat."""
    ctx = request.app[CTX]
    try:
        form = await request.post()
    except (ValueError, RuntimeError, BadHttpMessage):
        return _link_gone(request)  # a body that is no form holds no link
    token = form.get("t")
    if not isinstance(token, str):
        return _link_gone(request)
    async with transaction(ctx.sm) as session:
        link = await web_sessions.use_login_link(session, token, ctx.clock())
    if link is None:
        return _link_gone(request)
    cookie = await _staff_session(request, link.rider_id, link.platform, "link")
    response = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})
    _session_cookie(request, response, cookie)
    return response


async def login_with_password(request: web.Request) -> web.Response:
    """POST /webchat/api/login {"staff": "telegram:<user id>" | "wechat:<openid>", "password"}."""
    ctx = request.app[CTX]
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    account = body.get("staff") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(account, str) or not isinstance(password, str) or not account \
            or not password or len(account) > 200 or len(password) > 1024:
        return web.json_response({"error": "send staff (telegram:<user id> or wechat:<openid>) "
                                           "and password", "field": "staff"}, status=400)
    try:
        async with transaction(ctx.sm) as session:
            found = await staff_passwords.check(session, account, password, address(request),
                                                ctx.clock())
    except staff_passwords.TooManyFailures:
        retry = int(staff_passwords.FAILURE_WINDOW.total_seconds())
        return web.json_response({"error": "too many wrong passwords; try again later",
                                  "reason": "too_many_tries", "retry_after": retry},
                                 status=429, headers={"Retry-After": str(retry)})
    if found is None:
        return web.json_response({"error": "wrong staff account or password",
                                  "reason": "wrong"}, status=401)
    rider_id, platform = found
    cookie = await _staff_session(request, rider_id, platform, "password")
    async with ctx.reader()() as session:
        name = await staff.display_name(session, rider_id)
    response = web.json_response({"ok": True, "name": name})
    _session_cookie(request, response, cookie)
    return response


async def logout(request: web.Request) -> web.Response:
    """POST /webchat/api/logout: the staff session ends; the browser is its own rider again."""
    w = await who(request, issue=False)
    response = web.json_response({"ok": True, "was_staff": bool(w and w.staff_token)})
    if w is not None:
        await end_session(request, response, w)
    else:
        _drop(response, request.app[CTX], STAFF_COOKIE)
    return response


def setup(app: web.Application) -> None:
    app[KEY] = {}
    app.router.add_get("/webchat/login", login_page)
    app.router.add_post("/webchat/login", login_with_link)
    app.router.add_post("/webchat/api/login", login_with_password)
    app.router.add_post("/webchat/api/logout", logout)


__all__ = ["CHAT_COOKIE", "STAFF_COOKIE", "TooManyIdentities", "Who", "end_session", "finish",
           "setup", "too_many_identities", "who"]
