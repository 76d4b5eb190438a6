"""A local fake of the WeChat official-account server API (``api.weixin.qq.com``).

Point the app at it with ``wechat.api_base_url = fake.base_url``; paths are the real ones
(``/cgi-bin/token``, ``/cgi-bin/message/custom/send``, ...).  For wechatpy's own client use
``API_BASE_URL = fake.api_base_url`` -- but note ``WeChatClient.fetch_access_token`` hard-codes
``https://api.weixin.qq.com/cgi-bin/token`` and ignores API_BASE_URL, so it has to be
overridden (tests/unit/test_fake_wechat.py shows how).

Wire behaviour modelled on the real API (docs + wechatpy's client and constants.py):

* Every answer is HTTP 200 with a JSON body; failures carry ``errcode``/``errmsg``, successes
  ``errcode: 0`` (or, for token/qrcode/menu-get, no errcode at all).  The Content-Type is
  ``application/json; encoding=utf-8`` -- "encoding", not "charset", as the real server sends.
* ``access_token``: 7200 s lifetime; fetching a new one leaves the previous one valid for
  5 more minutes ("公众平台后台会保证在5分钟内，新老access_token都可用"), then 40001.
* JSON bodies must be raw UTF-8: a ``\\uXXXX`` escape of a non-ASCII character (what
  ``json.dumps`` / aiohttp ``json=`` produce by default) gets 40033 "invalid charset ...".
  That is what menu/create was reported to answer; for custom/send, users reported the escapes
  shown literally to the user instead.  Either way it is wrong, so the fake refuses it loudly.
  wechatpy itself posts ``ensure_ascii=False``; set ``reject_unicode_escapes = False`` to
  accept escapes.

State a test can set: ``closed_window`` (openids whose 48 h customer-service window is over),
``unsubscribed``, ``templates`` (known template ids; empty = accept any), media via
``add_media``.  State a test can read: ``calls``, ``token_requests``, ``menu``, ``qr_tickets``,
``max_in_flight``.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from tests.fakes.wechat_user import OfficialAccount

__all__ = ["FAKE_JPEG", "Call", "FakeWechat", "QrTicket"]

JSON = dict[str, Any]

CUSTOM_SEND = "/cgi-bin/message/custom/send"
TEMPLATE_SEND = "/cgi-bin/message/template/send"

# Only the JPEG magic (SOI + JFIF APP0 + EOI): enough for content sniffing, not a viewable image.
FAKE_JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00fake-wechat-media\xff\xd9"
)

_MSG_40001 = "invalid credential, access_token is invalid or not latest"
_MSG_45015 = "response out of time limit or subscription is canceled"
_MSG_40033 = "invalid charset. please check your request, if include \\uxxxx will create fail!"

# Customer-service message types of an official account (发送客服消息).  There is no
# "location": a pile's position has to go out as text or a news/link card.
_CUSTOM_TYPES = frozenset(
    {
        "text",
        "image",
        "voice",
        "video",
        "music",
        "news",
        "mpnews",
        "mpnewsarticle",
        "msgmenu",
        "wxcard",
        "miniprogrampage",
    }
)
_TEXT_LIMIT_BYTES = 2048

# Menu button types (自定义菜单/创建接口) and the field each one requires.
_BUTTON_FIELD = {
    "click": "key",
    "scancode_push": "key",
    "scancode_waitmsg": "key",
    "pic_sysphoto": "key",
    "pic_photo_or_album": "key",
    "pic_weixin": "key",
    "location_select": "key",
    "view": "url",
    "miniprogram": "url",
    "media_id": "media_id",
    "view_limited": "media_id",
    "article_id": "article_id",
    "article_view_limited": "article_id",
}

_QR_ACTIONS = frozenset({"QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE"})
_QR_MAX_EXPIRE_S = 2_592_000  # 30 days
_QR_DEFAULT_EXPIRE_S = 60

# A \uXXXX escape of a non-ASCII code point, not preceded by another backslash.
_NON_ASCII_ESCAPE = re.compile(r"(?<!\\)\\u(?!00[0-7][0-9a-fA-F])[0-9a-fA-F]{4}")


@dataclass
class Call:
    """One request the fake received.  ``response`` is None until the fake has answered
    (only visible while an artificial delay is running)."""

    path: str
    query: dict[str, str]
    body: JSON | None
    method: str = "GET"
    raw: bytes = b""
    response: JSON | None = None

    @property
    def errcode(self) -> int | None:
        if self.response is None:
            return None
        return int(self.response.get("errcode", 0))

    @property
    def ok(self) -> bool:
        return self.errcode == 0

    def summary(self) -> str:
        shown = json.dumps(self.body, ensure_ascii=False) if self.body is not None else ""
        if len(shown) > 120:
            shown = shown[:119] + "…"
        outcome = "pending" if self.response is None else str(self.errcode)
        if self.response and self.errcode:
            outcome += f" {self.response.get('errmsg')!r}"
        return f"{self.method} {self.path} {shown} -> {outcome}"


@dataclass
class QrTicket:
    ticket: str
    action_name: str
    scene: str  # scene_str, or str(scene_id) for the integer kinds
    url: str
    expire_seconds: int | None  # None for permanent (QR_LIMIT_*) codes


@dataclass
class _Token:
    value: str
    expires_at: float
    # Set when a newer token was issued: the end of the 5-minute overlap.
    superseded_until: float | None = None


class _ApiError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode = errcode
        self.errmsg = errmsg


@dataclass
class _Media:
    data: bytes
    content_type: str


@dataclass
class _Binary:
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def normalize_path(path: str) -> str:
    """ "message/custom/send", "cgi-bin/message/custom/send" and "/cgi-bin/message/custom/send"
    all name the same endpoint."""
    path = path.strip()
    if path.startswith("/"):
        return path
    return "/cgi-bin/" + path.removeprefix("cgi-bin/")


class FakeWechat:
    """The WeChat server API on 127.0.0.1, with recording and fault injection."""

    def __init__(
        self,
        *,
        appid: str = OfficialAccount.appid,
        secret: str = OfficialAccount.secret,
        expires_in: int = 7200,
        grace_s: float = 300.0,
    ) -> None:
        self.appid = appid
        self.secret = secret
        self.expires_in = expires_in
        self.grace_s = grace_s

        self.calls: list[Call] = []
        self.token_requests = 0
        self.closed_window: set[str] = set()
        self.unsubscribed: set[str] = set()
        self.templates: set[str] = set()
        self.menu: JSON | None = None
        self.qr_tickets: dict[str, QrTicket] = {}
        self.reject_unicode_escapes = True
        # Real errmsgs end in " rid: ..." (or " hint: [...]"); turn on to make sure nothing
        # compares errmsg instead of errcode.
        self.errmsg_rid = False
        # Per-path artificial latency (seconds), keyed by full path; see set_delay().
        self.delay_s: dict[str, float] = {}
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()

        self.port = 0
        self.base_url = ""
        self._tokens: dict[str, _Token] = {}
        self._clock_offset = 0.0
        self._media: dict[str, _Media] = {}
        self._failures: dict[str, collections.deque[tuple[int, str]]] = collections.defaultdict(
            collections.deque
        )
        self._template_ids = itertools.count(2_000_000_001)
        self._token_seq = itertools.count(80)
        # Replaced on every signal so each waiter sees exactly the changes after it started.
        self._calls_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

        self._routes: dict[str, tuple[str | None, Callable[[Call], JSON | _Binary]]] = {
            "/cgi-bin/token": ("GET", self._token),
            CUSTOM_SEND: ("POST", self._custom_send),
            "/cgi-bin/message/custom/typing": ("POST", self._typing),
            TEMPLATE_SEND: ("POST", self._template_send),
            "/cgi-bin/menu/create": ("POST", self._menu_create),
            "/cgi-bin/menu/get": (None, self._menu_get),
            "/cgi-bin/menu/delete": (None, self._menu_delete),
            "/cgi-bin/qrcode/create": ("POST", self._qrcode_create),
            "/cgi-bin/media/get": (None, self._media_get),
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def api_base_url(self) -> str:
        """What wechatpy's ``WeChatClient.API_BASE_URL`` would be."""
        return f"{self.base_url}/cgi-bin/"

    # ------------------------------------------------------------------ test helpers

    @property
    def current_token(self) -> str | None:
        """The newest access_token issued (valid unless expire_tokens()/advance() killed it)."""
        return next(reversed(self._tokens), None)

    def expire_tokens(self) -> None:
        """Invalidate every token at once (no grace), as when the secret is reset or another
        server fetched tokens often enough: the next API call gets 40001."""
        self._tokens.clear()

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (token lifetime and the 5-minute overlap) without
        sleeping."""
        self._clock_offset += seconds

    def set_delay(self, path: str, seconds: float) -> None:
        """Hold every answer on ``path`` for ``seconds`` (0 removes the delay)."""
        key = normalize_path(path)
        if seconds > 0:
            self.delay_s[key] = seconds
        else:
            self.delay_s.pop(key, None)

    def fail_next(self, path: str, errcode: int, errmsg: str) -> None:
        """Answer the next request on ``path`` with this error instead of handling it
        (FIFO: two calls fail the next two requests).  E.g. ``(45047, "out of response count
        limit")``, ``(-1, "system error")``, ``(45009, "reach max api daily quota limit")``."""
        self._failures[normalize_path(path)].append((errcode, errmsg))

    def add_media(
        self, media_id: str, data: bytes = FAKE_JPEG, content_type: str = "image/jpeg"
    ) -> None:
        """Make ``media/get?media_id=...`` return these bytes (e.g. the photo a WechatUser sent);
        unknown ids get 40007 like the real API."""
        self._media[media_id] = _Media(data, content_type)

    def sent_to(self, openid: str) -> list[JSON]:
        """Customer-service and template messages WeChat accepted for ``openid``, oldest first:
        each is the request body plus ``"kind": "custom" | "template"`` (and ``"msgid"`` for
        templates)."""
        out: list[JSON] = []
        for call in self.calls:
            if call.path not in (CUSTOM_SEND, TEMPLATE_SEND) or not call.ok or not call.body:
                continue
            if call.body.get("touser") != openid:
                continue
            item = copy.deepcopy(call.body)
            if call.path == CUSTOM_SEND:
                item["kind"] = "custom"
            else:
                item["kind"] = "template"
                item["msgid"] = call.response["msgid"] if call.response else None
            out.append(item)
        return out

    def texts_to(self, openid: str) -> list[str]:
        """The visible text of what ``sent_to`` lists: text content, a msgmenu's head + items +
        tail, or a template's values, one string per message."""
        texts = []
        for item in self.sent_to(openid):
            if item["kind"] == "template":
                texts.append("\n".join(str(v.get("value", "")) for v in item["data"].values()))
            elif item["msgtype"] == "text":
                texts.append(item["text"]["content"])
            elif item["msgtype"] == "msgmenu":
                menu = item["msgmenu"]
                lines = [menu.get("head_content", "")]
                lines += [entry["content"] for entry in menu["list"]]
                lines.append(menu.get("tail_content", ""))
                texts.append("\n".join(line for line in lines if line))
            else:
                texts.append(f"[{item['msgtype']}]")
        return texts

    def ticket_for(self, scene: str) -> str | None:
        """The ticket of the (latest) QR code created for ``scene``."""
        found = [t.ticket for t in self.qr_tickets.values() if t.scene == scene]
        return found[-1] if found else None

    async def wait_for(
        self, predicate: Callable[[Call], bool], timeout: float = 10.0, *, start: int = 0
    ) -> Call:
        """First answered call from ``calls[start:]`` matching ``predicate``, waiting for new
        ones.  Pass ``start=len(fake.calls)`` to ignore earlier traffic.  A predicate raising
        KeyError/TypeError/... counts as not matching, so
        ``lambda c: c.body["touser"] == "o1"`` is fine."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._calls_changed
            for call in self.calls[start:]:
                if call.response is None:
                    continue
                try:
                    if predicate(call):
                        return call
                except (KeyError, IndexError, TypeError, AttributeError):
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = self.calls[-20:]
                first = len(self.calls) - len(recent)
                lines = [f"  #{first + i} {c.summary()}" for i, c in enumerate(recent)]
                raise AssertionError(
                    f"no matching WeChat API call within {timeout}s "
                    f"({len(self.calls)} calls, searched from #{start}); recent calls:\n"
                    + ("\n".join(lines) or "  (none)")
                )
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ HTTP plumbing

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path not in self._routes:
            # Loud on purpose: a typo in an endpoint should not look like a WeChat error code.
            return web.Response(status=404, text=f"FakeWechat does not implement {path}")
        raw = await request.read()
        call = Call(path=path, query=dict(request.query), body=None, method=request.method, raw=raw)
        if raw:
            try:
                decoded = json.loads(raw)
                call.body = decoded if isinstance(decoded, dict) else None
            except ValueError:
                pass
        self.calls.append(call)
        if path == "/cgi-bin/token":
            self.token_requests += 1
        self._signal_calls()

        self.in_flight[path] += 1
        self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
        try:
            delay = self.delay_s.get(path)
            if delay:
                await asyncio.sleep(delay)
            # No awaits from here to the answer: once wait_for() sees the call answered, the
            # fake's state (menu, tickets, tokens) already reflects it.
            try:
                result = self._handle(call)
            except _ApiError as exc:
                result = {"errcode": exc.errcode, "errmsg": self._errmsg(exc.errmsg)}
        finally:
            self.in_flight[path] -= 1

        if isinstance(result, _Binary):
            call.response = {"errcode": 0, "bytes": len(result.data), **result.headers}
            self._signal_calls()
            return web.Response(body=result.data, headers=result.headers)
        call.response = result
        self._signal_calls()
        return web.Response(
            body=json.dumps(result, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; encoding=utf-8"},
        )

    def _handle(self, call: Call) -> JSON | _Binary:
        route = self._routes[call.path]
        failures = self._failures.get(call.path)
        if failures:
            raise _ApiError(*failures.popleft())
        method, handler = route
        if method == "POST" and call.method != "POST":
            raise _ApiError(43002, "require POST method")
        if call.path != "/cgi-bin/token":
            self._check_token(call.query)
        if call.method == "POST":
            self._check_body(call)
        return handler(call)

    def _check_body(self, call: Call) -> None:
        if not call.raw.strip():
            raise _ApiError(44002, "empty post data")
        if call.body is None:
            raise _ApiError(47001, "data format error")
        text = call.raw.decode("utf-8", "replace")
        if self.reject_unicode_escapes and _NON_ASCII_ESCAPE.search(text):
            raise _ApiError(40033, _MSG_40033)

    def _errmsg(self, errmsg: str) -> str:
        if not self.errmsg_rid:
            return errmsg
        rid = "-".join(secrets.token_hex(4) for _ in range(3))
        return f"{errmsg} rid: {rid}"

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _signal_calls(self) -> None:
        self._calls_changed.set()
        self._calls_changed = asyncio.Event()

    # ------------------------------------------------------------------ access_token

    def _token(self, call: Call) -> JSON:
        query = call.query
        if query.get("grant_type") != "client_credential":
            raise _ApiError(40002, "invalid grant_type")
        if not query.get("appid"):
            raise _ApiError(41002, "appid missing")
        if query["appid"] != self.appid:
            raise _ApiError(40013, "invalid appid")
        if not query.get("secret"):
            raise _ApiError(41004, "appsecret missing")
        if query["secret"] != self.secret:
            raise _ApiError(40125, "invalid appsecret")
        now = self._now()
        for old in self._tokens.values():
            if old.superseded_until is None:
                old.superseded_until = now + self.grace_s
        # Real tokens look like "80_MHgO67_ImWV...": a generation prefix and ~130 url-safe chars.
        value = f"{next(self._token_seq)}_{secrets.token_urlsafe(96)}"
        self._tokens[value] = _Token(value, expires_at=now + self.expires_in)
        return {"access_token": value, "expires_in": self.expires_in}

    def _check_token(self, query: dict[str, str]) -> None:
        value = query.get("access_token")
        if not value:
            raise _ApiError(41001, "access_token missing")
        token = self._tokens.get(value)
        now = self._now()
        if token is None or (token.superseded_until is not None and now >= token.superseded_until):
            raise _ApiError(40001, _MSG_40001)
        if now >= token.expires_at:
            raise _ApiError(42001, "access_token expired")

    # ------------------------------------------------------------------ messages

    def _require_user(self, body: JSON) -> str:
        openid = body.get("touser")
        if not isinstance(openid, str) or not openid:
            raise _ApiError(40003, "invalid openid")
        return openid

    def _custom_send(self, call: Call) -> JSON:
        body = call.body or {}
        openid = self._require_user(body)
        msgtype = body.get("msgtype")
        if msgtype not in _CUSTOM_TYPES:
            raise _ApiError(40008, "invalid message type")
        payload = body.get(msgtype)
        if not isinstance(payload, dict):
            raise _ApiError(44002, "empty post data")
        if msgtype == "text":
            content = payload.get("content")
            if not isinstance(content, str) or not content:
                raise _ApiError(44004, "empty content")
            if len(content.encode()) > _TEXT_LIMIT_BYTES:
                raise _ApiError(45002, "content size out of limit")
        elif msgtype == "msgmenu":
            self._check_msgmenu(payload)
        elif msgtype == "news":
            articles = payload.get("articles")
            if not isinstance(articles, list) or not articles:
                raise _ApiError(44003, "empty news data")
            # Customer-service news carries a single article since 2018.
            if len(articles) > 1:
                raise _ApiError(45008, "article size out of limit")
            for article in articles:
                if not isinstance(article, dict) or not article.get("title"):
                    raise _ApiError(47001, "data format error")
        elif msgtype in ("image", "voice", "mpnews") and not payload.get("media_id"):
            raise _ApiError(40007, "invalid media_id")
        # The window check comes after validation: a malformed message is malformed anyway.
        if openid in self.closed_window or openid in self.unsubscribed:
            raise _ApiError(45015, _MSG_45015)
        return {"errcode": 0, "errmsg": "ok"}

    def _check_msgmenu(self, payload: JSON) -> None:
        items = payload.get("list")
        if not isinstance(items, list) or not items or len(items) > 10:
            raise _ApiError(47001, "data format error")
        for item in items:
            if not isinstance(item, dict):
                raise _ApiError(47001, "data format error")
            item_id, content = item.get("id"), item.get("content")
            if not isinstance(item_id, str) or not item_id or len(item_id.encode()) > 64:
                raise _ApiError(47001, "data format error")
            if not isinstance(content, str) or not content or len(content.encode()) > 1024:
                raise _ApiError(47001, "data format error")
        for key in ("head_content", "tail_content"):
            text = payload.get(key, "")
            if not isinstance(text, str) or len(text.encode()) > 1024:
                raise _ApiError(47001, "data format error")

    def _typing(self, call: Call) -> JSON:
        body = call.body or {}
        openid = self._require_user(body)
        if body.get("command") not in ("Typing", "CancelTyping"):
            raise _ApiError(40035, "invalid args")
        if openid in self.closed_window or openid in self.unsubscribed:
            raise _ApiError(45015, _MSG_45015)
        return {"errcode": 0, "errmsg": "ok"}

    def _template_send(self, call: Call) -> JSON:
        body = call.body or {}
        openid = self._require_user(body)
        template_id = body.get("template_id")
        if not isinstance(template_id, str) or not template_id:
            raise _ApiError(40037, "invalid template_id")
        if self.templates and template_id not in self.templates:
            raise _ApiError(40037, "invalid template_id")
        data = body.get("data")
        if not isinstance(data, dict):
            raise _ApiError(47001, "data format error")
        for key, entry in data.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
                raise _ApiError(47003, f"argument invalid! data.{key}.value invalid")
        url = body.get("url")
        if url is not None and not isinstance(url, str):
            raise _ApiError(47001, "data format error")
        mini = body.get("miniprogram")
        if mini is not None and not (isinstance(mini, dict) and mini.get("appid")):
            raise _ApiError(47001, "data format error")
        if openid in self.unsubscribed:
            raise _ApiError(43004, "require subscribe")
        return {"errcode": 0, "errmsg": "ok", "msgid": next(self._template_ids)}

    # ------------------------------------------------------------------ menu

    def _menu_create(self, call: Call) -> JSON:
        body = call.body or {}
        buttons = body.get("button")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise _ApiError(40016, "invalid button size")
        for button in buttons:
            if not isinstance(button, dict):
                raise _ApiError(40016, "invalid button size")
            _check_name(button, 16, 40018, "invalid button name size")
            subs = button.get("sub_button")
            if subs and "type" not in button:
                if not isinstance(subs, list) or len(subs) > 5:
                    raise _ApiError(40017, "invalid sub button size")
                for sub in subs:
                    if not isinstance(sub, dict):
                        raise _ApiError(40017, "invalid sub button size")
                    _check_name(sub, 60, 40025, "invalid sub button name size")
                    _check_leaf(sub, sub_level=True)
            else:
                _check_leaf(button, sub_level=False)
        self.menu = copy.deepcopy(body)
        return {"errcode": 0, "errmsg": "ok"}

    def _menu_get(self, call: Call) -> JSON:
        if self.menu is None:
            raise _ApiError(46003, "menu no exist")
        menu = copy.deepcopy(self.menu)
        # As wechatpy's tests/fixtures/menu_get.json shows, every button comes back with a
        # sub_button list, empty for leaves.
        for button in menu["button"]:
            button.setdefault("sub_button", [])
            for sub in button["sub_button"]:
                sub.setdefault("sub_button", [])
        return {"menu": menu}

    def _menu_delete(self, call: Call) -> JSON:
        self.menu = None
        return {"errcode": 0, "errmsg": "ok"}

    # ------------------------------------------------------------------ QR codes and media

    def _qrcode_create(self, call: Call) -> JSON:
        body = call.body or {}
        action = body.get("action_name")
        if action not in _QR_ACTIONS:
            raise _ApiError(40035, "invalid args")
        scene_info = (body.get("action_info") or {}).get("scene")
        if not isinstance(scene_info, dict):
            raise _ApiError(40053, "invalid action info")
        if action.endswith("STR_SCENE"):
            scene = scene_info.get("scene_str")
            if not isinstance(scene, str) or not 1 <= len(scene) <= 64:
                raise _ApiError(40053, "invalid action info")
        else:
            scene_id = scene_info.get("scene_id")
            upper = 100_000 if action == "QR_LIMIT_SCENE" else 2**32 - 1
            if isinstance(scene_id, bool) or not isinstance(scene_id, int):
                raise _ApiError(40053, "invalid action info")
            if not 1 <= scene_id <= upper:
                raise _ApiError(40053, "invalid action info")
            scene = str(scene_id)
        ticket = "gQ" + secrets.token_urlsafe(60).replace("-", "+").replace("_", "/") + "=="
        url = "http://weixin.qq.com/q/" + secrets.token_urlsafe(16)
        answer: JSON = {"ticket": ticket}
        expire: int | None = None
        if not action.startswith("QR_LIMIT"):
            expire = body.get("expire_seconds", _QR_DEFAULT_EXPIRE_S)
            if isinstance(expire, bool) or not isinstance(expire, int):
                raise _ApiError(40035, "invalid args")
            if not 1 <= expire <= _QR_MAX_EXPIRE_S:
                raise _ApiError(40035, "invalid args")
            answer["expire_seconds"] = expire
        answer["url"] = url
        self.qr_tickets[ticket] = QrTicket(ticket, action, scene, url, expire)
        return answer

    def _media_get(self, call: Call) -> JSON | _Binary:
        media = self._media.get(call.query.get("media_id", ""))
        if media is None:
            raise _ApiError(40007, "invalid media_id")
        extension = "jpg" if media.content_type == "image/jpeg" else "bin"
        return _Binary(
            media.data,
            {
                "Content-Type": media.content_type,
                "Content-disposition": (
                    f'attachment; filename="{call.query["media_id"]}.{extension}"'
                ),
            },
        )


def _check_name(button: JSON, limit: int, errcode: int, errmsg: str) -> None:
    name = button.get("name")
    if not isinstance(name, str) or not name or len(name.encode()) > limit:
        raise _ApiError(errcode, errmsg)


# (top-level, sub-level) errors per problem, from wechatpy's constants.py (WeChatErrorCode).
_BUTTON_ERRORS = {
    "type": ((40015, "invalid button type"), (40024, "invalid sub button type")),
    "key": ((40019, "invalid button key size"), (40026, "invalid sub button key size")),
    "url": ((40020, "invalid button url size"), (40027, "invalid sub button url size")),
}


def _check_leaf(button: JSON, *, sub_level: bool) -> None:
    def fail(problem: str) -> _ApiError:
        return _ApiError(*_BUTTON_ERRORS[problem][int(sub_level)])

    kind = button.get("type")
    if kind not in _BUTTON_FIELD:
        raise fail("type")
    needed = _BUTTON_FIELD[kind]
    value = button.get(needed)
    if needed == "key":
        if not isinstance(value, str) or not value or len(value.encode()) > 128:
            raise fail("key")
    elif needed == "url":
        if not isinstance(value, str) or not value or len(value.encode()) > 1024:
            raise fail("url")
        if kind == "miniprogram" and not (button.get("appid") and button.get("pagepath")):
            raise _ApiError(40035, "invalid args")
    elif not value:
        raise _ApiError(40035, "invalid args")
