"""Local web chat: the same handlers behind a small page, to try the bot with no tokens."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from sqlalchemy import CursorResult, select, update
from sqlmodel import col

from bot.context import CTX, Context
from bot.handlers import router
from bot.i18n import tr
from bot.skins import photos as photo_fetch
from bot.skins import webchat_auth
from core.db import transaction
from core.outbox import OutboxMessage, OutboxState
from core.piles.tables import Pile, Port, Site
from core.riders import staff, web_sessions
from core.riders.identities import language_from_hint
from core.riders.tables import DEFAULT_LANGUAGE, LANGUAGES, Identity, Rider
from core.support import photos
from notifications import webchat_inbox
from notifications.replies import MAX_CALLBACK_BYTES, Incoming, Reply
from notifications.worker import DeliveryError

log = logging.getLogger("chargebot.webchat")
STATIC = Path(__file__).resolve().parent.parent / "static"
MAX_TEXT = 1000
MULTIPART_SLACK = 16 * 1024  # boundaries and part headers around the photo
PHOTO_PROBLEMS = {"too_large": "larger than the {mb} MB limit", "empty": "the file is empty",
                  "not_image": "not a JPEG, PNG, WebP or GIF image"}


def _bad(field: str, problem: str) -> web.Response:
    return web.json_response({"error": f"{field}: {problem}", "field": field}, status=400)


def _bad_photo(reason: str, limit: int) -> web.Response:
    """A refused upload; `reason` (too_large, not_image, empty) lets the page say why."""
    problem = PHOTO_PROBLEMS[reason].format(mb=f"{limit / 2**20:.3g}")
    return web.json_response({"error": f"photo: {problem}", "field": "photo", "reason": reason},
                             status=400)


def ui_strings(lang: str) -> dict[str, str]:
    return {
        "title": tr(lang, "Charging bot"),  # fits the header at 390 px in both languages
        "placeholder": tr(lang, "Type a message or a port code…"),
        "send": tr(lang, "Send"),
        "share_location": tr(lang, "📍 Location"),
        "scan_qr": tr(lang, "📷 Scan QR"),
        "pick_location": tr(lang, "Where are you?"),
        "pick_port": tr(lang, "Which port's QR code?"),
        "connecting": tr(lang, "Connecting…"),
        "offline": tr(lang, "Connection lost, retrying…"),
        "language": tr(lang, "中文 / English"),
        "too_many_chats": tr(lang, "Too many new chats from your network in the last hour. "
                                   "Please try again later."),
        "login_title": tr(lang, "Staff login"),
        "login_account": tr(lang, "Account: telegram:<user id> or wechat:<openid>"),
        "login_password": tr(lang, "Password"),
        "login_submit": tr(lang, "Log in"),
        "login_wrong": tr(lang, "Wrong account or password."),
        "login_too_many": tr(lang, "Too many wrong passwords. Please wait 15 minutes."),
        "logged_in_as": tr(lang, "Staff: {name}"),
        "logout": tr(lang, "Log out"),
        "send_photo": tr(lang, "Send a photo"),
        "photo_too_large": tr(lang, "That photo is too large. Please send a smaller one."),
        "photo_too_many": tr(lang, "You have sent too many photos today. Please try again "
                                   "tomorrow."),
        "photo_not_image": tr(lang, "That file is not a photo we can use (JPEG, PNG, WebP or "
                                    "GIF)."),
        "text_too_long": tr(lang, "That message is too long: at most {n} characters. Please "
                                  "send it in parts.", n=f"{MAX_TEXT:,}"),
        "bad_request": tr(lang, "That message could not be sent. Please try rewording it."),
        "close": tr(lang, "Close"),
    }


async def _lang_of(ctx: Context, client_id: str) -> str:
    async with ctx.reader()() as session:
        lang = await session.scalar(
            select(col(Rider.language)).join(Identity, col(Identity.rider_id) == col(Rider.id))
            .where(col(Identity.platform) == "webchat", col(Identity.external_id) == client_id)
        )
    return lang or DEFAULT_LANGUAGE


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "webchat.html")


def _chat_key(external_id: str) -> str:
    """What the page keys its saved transcript by: the identity changes at login and logout,
    and the page never learns the id itself (it is the cookie's secret)."""
    return hashlib.sha256(f"chat|{external_id}".encode()).hexdigest()[:16]


async def _identity(request: web.Request) -> webchat_auth.Who | web.Response:
    try:
        w = await webchat_auth.who(request)
    except webchat_auth.TooManyIdentities as exc:
        return webchat_auth.too_many_identities(exc)
    assert w is not None
    return w


def _answer(request: web.Request, w: webchat_auth.Who, body: dict[str, Any], *,
            status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response(body, status=status, headers=headers)
    webchat_auth.finish(request, response, w)
    return response


async def ui(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    w = await _identity(request)
    if isinstance(w, web.Response):
        return w
    lang = request.query.get("lang", "")
    if lang not in LANGUAGES:
        lang = await _lang_of(ctx, w.external_id)
    async with ctx.reader()() as session:
        staff_name = (await staff.display_name(session, w.staff_rider) or "?"
                      if w.staff_rider is not None else None)
        sites = (await session.execute(
            select(Site).order_by(col(Site.id)).limit(8))).scalars().all()
        codes = (await session.execute(
            select(col(Port.code)).join(Pile, col(Pile.id) == col(Port.pile_id))
            .where(col(Port.number) <= 3)
            .order_by(col(Pile.id), col(Port.number)).limit(9)
        )).scalars().all()
    locations = [
        # A spot a short walk from each site, as a rider would stand.
        {"name": s.name, "lat": round(s.lat + 0.0012, 6), "lon": round(s.lon - 0.0009, 6)}
        for s in sites
    ]
    return _answer(request, w, {"lang": lang, "strings": ui_strings(lang),
                                "locations": locations, "ports": list(codes),
                                "chat": _chat_key(w.external_id), "staff": staff_name})


async def send(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _bad("body", "must be JSON")
    if not isinstance(body, dict):
        return _bad("body", "must be a JSON object")
    text, data, loc = body.get("text"), body.get("data"), body.get("location")
    kwargs: dict[str, Any] = {}
    photo = body.get("photo")
    ref_problem = _bad("photo", "a ref returned by /webchat/api/photo")
    if photo is not None:
        if not isinstance(photo, str) or photo_fetch.webchat_file(ctx, photo) is None:
            return ref_problem
        kwargs["photo"] = photo
        data = loc = None  # a photo comes with at most a caption
    if text is not None:
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return _bad("text", f"a non-empty string of at most {MAX_TEXT} characters")
        kwargs["text"] = text
    elif data is not None:
        if not isinstance(data, str) or not data or len(data.encode()) > MAX_CALLBACK_BYTES:
            return _bad("data", f"a string of at most {MAX_CALLBACK_BYTES} bytes")
        kwargs["data"] = data
    elif loc is not None:
        try:
            lat, lon = float(loc["lat"]), float(loc["lon"])
        except (TypeError, KeyError, ValueError):
            return _bad("location", "needs numeric lat and lon")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return _bad("location", "lat/lon out of range")
        kwargs["location"] = (lat, lon)
    elif photo is None:
        return _bad("text", "send one of text, data, location or photo")
    # Who is speaking is the cookie's to say: a client_id in the body is ignored.
    w = await _identity(request)
    if isinstance(w, web.Response):
        return w
    client_id = w.external_id
    if w.staff_token is not None and (kwargs.get("data") == LOGOUT_DATA or (
            photo is None and str(kwargs.get("text", "")).strip().lower() == "/logout")):
        return await _logout(request, w)
    if photo is not None and not await photo_fetch.webchat_owned(ctx, photo, client_id):
        # The same answer as for a ref we never stored: another rider's photo is not yours.
        webchat_auth.finish(request, ref_problem, w)
        return ref_problem
    inc = Incoming(
        platform="webchat", user_id=client_id, chat_id=client_id,
        language_hint=request.headers.get("Accept-Language"), nonce=str(time.time_ns()),
        **kwargs,
    )
    try:
        replies, lang = await router.handle(ctx, inc)
    except Exception:
        log.exception("web chat handler failed")
        lang = DEFAULT_LANGUAGE
        replies = [Reply(tr(lang, "Sorry, something went wrong on our side. Please try again."))]
    return _answer(request, w, {"replies": [r.as_dict() for r in replies], "lang": lang,
                                "chat": _chat_key(client_id)})


LOGOUT_DATA = "weblogout"  # the staff menu's Log out button (bot.handlers.menu)


async def _logout(request: web.Request, w: webchat_auth.Who) -> web.Response:
    ctx = request.app[CTX]
    async with ctx.reader()() as session:
        lang = await session.scalar(
            select(col(Rider.language)).where(col(Rider.id) == w.staff_rider))
    lang = lang or DEFAULT_LANGUAGE
    reply = Reply(tr(lang, "🚪 You are logged out. This browser is a rider's chat again."))
    response = web.json_response({"replies": [reply.as_dict()], "lang": lang,
                                  "identity_changed": True})
    await webchat_auth.end_session(request, response, w)
    return response


async def upload_photo(request: web.Request) -> web.Response:
    """A photo for the next message: multipart field `photo` → {"ref": "webchat:<sha256>"}.

    The body is read here, part by part, so the photo limit applies instead of the app-wide
    request size limit, and reading stops as soon as the limit is passed.
    """
    ctx = request.app[CTX]
    w = await _identity(request)
    if isinstance(w, web.Response):
        return w
    client_id = w.external_id
    limit = ctx.settings.support.max_photo_bytes
    per_day = ctx.settings.support.photos_per_day
    try:
        # Before the body is read: a client over its quota does not get to send 5 MB again.
        async with transaction(ctx.sm) as session:
            await photos.check_quota(session, "webchat", client_id, ctx.clock(), per_day=per_day)
    except photos.PhotoRejected:
        return _answer(request, w, {"error": f"photo: more than {per_day} photos in 24 hours, "
                                             "try again later", "field": "photo",
                                    "reason": "too_many"}, status=429)
    if (request.content_length or 0) > limit + MULTIPART_SLACK:
        return _bad_photo("too_large", limit)
    not_multipart = _bad("photo", "send the file as multipart/form-data field 'photo'")
    if request.content_type != "multipart/form-data":
        return not_multipart
    try:
        reader = await request.multipart()
        part = await reader.next()
        # Only the photo, first: nothing else is read (or buffered) before it.
        if not isinstance(part, BodyPartReader) or part.name != "photo":
            return not_multipart
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            data += chunk
            if len(data) > limit:
                return _bad_photo("too_large", limit)
    except (ValueError, RuntimeError, BadHttpMessage):
        # aiohttp's multipart reader reports a malformed body with these.
        return not_multipart
    try:
        stored = await asyncio.to_thread(photos.store, bytes(data), photo_fetch.photo_dir(ctx),
                                         max_bytes=limit)
    except photos.PhotoRejected as exc:
        return _bad_photo(exc.reason, limit)
    async with transaction(ctx.sm) as session:
        await photos.record(session, "webchat", client_id, stored, ctx.clock())
    return _answer(request, w, {"ref": photo_fetch.webchat_ref(stored.sha256)})


async def messages(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        # Ids are 32-bit: a larger (or negative) `after` means the same, and the database driver
        # refuses an integer its column type cannot hold.
        after = min(max(int(request.query.get("after", "0")), -1), 2**31 - 1)
        wait = float(request.query.get("wait", "0"))
        if math.isnan(wait):  # min/max pass NaN through, and a NaN deadline never comes
            raise ValueError(wait)
        wait = min(max(wait, 0.0), 30.0)
    except ValueError:
        return _bad("after", "after and wait must be numbers")
    w = await _identity(request)
    if isinstance(w, web.Response):
        return w
    client_id = w.external_id
    polls = request.app[OPEN_POLLS]
    address = request.remote or "?"  # the socket's peer: a header would be the client's word
    if wait > 0 and polls[address] >= ctx.settings.server.webchat_max_polls_per_address:
        # Enough waits held for this address; each wakes once a second, and a few hundred of
        # them slowed every rider's /send. Answer now (a short poll) and say when to come back.
        wait = 0.0
        capped = True
    else:
        capped = False
    deadline = time.monotonic() + wait
    if wait > 0:
        polls[address] += 1
    try:
        while True:
            async with ctx.reader()() as session:
                rows = await webchat_inbox.after(session, client_id, after)
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                break
            await ctx.wakeups.wait(f"webchat:{client_id}", min(remaining, 1.0))
    finally:
        if wait > 0:
            polls[address] -= 1
            if polls[address] <= 0:
                del polls[address]
    lang = await _lang_of(ctx, client_id)
    answer: dict[str, Any] = {
        "messages": [{"seq": r.id, "reply": r.reply} for r in rows], "lang": lang,
        "chat": _chat_key(client_id),  # another than the page's: a session ended elsewhere
    }
    headers: dict[str, str] = {}
    if capped:
        answer["retry_after"] = POLL_RETRY_AFTER_S
        headers["Retry-After"] = str(POLL_RETRY_AFTER_S)
    return _answer(request, w, answer, headers=headers)


OPEN_POLLS = web.AppKey("webchat_open_polls", Counter)
POLL_RETRY_AFTER_S = 5


class WebchatSender:
    """Pushes notifier messages into the browser's inbox; the page long-polls it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def send(self, identity: Identity, replies: list[Reply], *,
                   outbox_id: int | None = None, **_: Any) -> str:
        if (staff_rider := web_sessions.staff_rider_of(identity.external_id)) is not None:
            # A staff member's web chat: theirs while a session lasts. After it, their notices
            # go back to the chat they logged in from; tried again, this one goes there.
            async with transaction(self.ctx.sm) as session:
                moved = await web_sessions.send_home(session, staff_rider, self.ctx.clock())
            if moved:
                raise DeliveryError("staff web chat session over: to their own chat",
                                    retry_after=1.0)
        async with transaction(self.ctx.sm) as session:
            if outbox_id is not None:
                # The inbox is our own database, so the push and "sent" can be one commit: a
                # worker killed (or PostgreSQL restarted) between two commits would otherwise
                # leave the row pending and the rider would get the same bill twice.
                took = await session.execute(
                    update(OutboxMessage)
                    .where(col(OutboxMessage.id) == outbox_id,
                           col(OutboxMessage.state) == OutboxState.pending)
                    .values(state=OutboxState.sent, sent_at=self.ctx.clock(), platform="webchat",
                            channel="webchat", lease_until=None))
                if cast(CursorResult[Any], took).rowcount == 0:
                    return "webchat"  # delivered already, by a pass cut short after its commit
            await webchat_inbox.push(session, identity.chat_id, [r.as_dict() for r in replies])
        self.ctx.wakeups.wake(f"webchat:{identity.chat_id}")
        return "webchat"


def setup(app: web.Application, ctx: Context) -> None:
    app[OPEN_POLLS] = Counter()
    app.router.add_get("/", page)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/webchat/api/ui", ui)
    app.router.add_post("/webchat/api/send", send)
    app.router.add_post("/webchat/api/photo", upload_photo)
    app.router.add_get("/webchat/api/messages", messages)
    webchat_auth.setup(app)


__all__ = ["WebchatSender", "language_from_hint", "setup"]
