"""Pile controller webhook (DESIGN §3): signed batches in, commands out, long poll."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bot.context import CTX, Context
from bot.piles.ingest import WRITER, IngestWriter
from bot.piles.trust import REPLAYS, SECRETS, ReplayCache, SecretCache
from core.db import transaction
from core.errors import InvalidEvent
from core.piles import commands, events
from core.piles import fleet as piles
from core.piles.auth import verify

log = logging.getLogger("chargebot.piles")

def _error(status: int, error: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, **extra}, status=status)


async def _authenticate(request: web.Request, body: bytes, *, query_signed: bool = False
                        ) -> str | web.Response:
    """The pile a request is signed by, or the 401 to answer. `query_signed`: the request may
    sign its query string instead of the empty body when the query holds a `nonce`, so a pile
    can poll more than once a second (`?wait=30&nonce=…` signed as `"{ts}.wait=30&nonce=…"`)."""
    pile_id = request.headers.get("X-Pile-Id", "")
    if not pile_id or len(pile_id) > 32:
        return _error(401, "missing or bad X-Pile-Id")
    secret = await request.app[SECRETS].get(request.app[CTX], pile_id)
    if secret is None:
        # The same answer as a bad signature: nobody learns which pile ids exist.
        log.warning("rejected request from unknown pile %r", pile_id)
        return _error(401, "bad or stale signature")
    timestamp, signature = (request.headers.get("X-Timestamp", ""),
                            request.headers.get("X-Signature", ""))
    now = time.time()
    ok = verify(secret, timestamp, body, signature, now)
    if not ok and query_signed and "nonce" in request.query:
        ok = verify(secret, timestamp, request.query_string.encode(), signature, now)
    if not ok:
        log.warning("rejected signature for pile %s", pile_id)
        return _error(401, "bad or stale signature")
    return pile_id


def _used_before(request: web.Request, pile_id: str) -> web.Response | None:
    """The 401 for a signature already accepted once, else None (and it is now used). Called
    only when the request is about to hand out commands: one refused for a bad `wait` drains
    nothing, so it does not use the signature up."""
    if request.app[REPLAYS].first_use(pile_id, request.headers.get("X-Timestamp", ""),
                                      request.headers.get("X-Signature", ""), time.time()):
        return None
    log.warning("replayed signature for pile %s refused", pile_id)
    response = _error(401, "signature already used, sign a fresh request")
    response.headers["Retry-After"] = "1"
    return response


async def post_events(request: web.Request) -> web.Response:
    body = await request.read()
    auth = await _authenticate(request, body)
    if isinstance(auth, web.Response):
        return auth
    pile_id = auth
    try:
        raw = events.decode_body(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or absurdly deep
        return _error(400, "body is not JSON", field="body")
    try:
        batch = events.parse_batch(raw, body)
    except InvalidEvent as exc:
        return _error(400, f"{exc.field}: {exc.problem}", field=exc.field)
    try:
        result = await request.app[WRITER].submit(pile_id, batch)
    except Exception:
        # Nothing was stored; the pile keeps the batch and sends it again (the writer has
        # logged why: a database outage, or a bug that an alert on these lines will show).
        response = _error(503, "could not store the events, retry")
        response.headers["Retry-After"] = "2"
        return response
    if result.rejected:
        log.warning("pile %s: %d event(s) rejected, first %s: %s", pile_id,
                    len(result.rejected), result.rejected[0]["field"],
                    result.rejected[0]["error"][:120])
    return web.json_response(
        {"accepted": result.accepted, "duplicates": result.duplicates,
         "rejected": result.rejected, "commands": result.commands}
    )


async def poll_commands(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    # The poll hands out commands: a replayed signature (captured on the wire, re-sent within
    # the skew window) would take them from the pile. Events, by contrast, are idempotent and a
    # pile may resend the same bytes after a lost answer, so POST keeps its replays.
    auth = await _authenticate(request, b"", query_signed=True)
    if isinstance(auth, web.Response):
        return auth
    pile_id = auth
    if request.match_info["pile_id"] != pile_id:
        return _error(401, "X-Pile-Id does not match the path")
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        return _error(400, "wait must be a number of seconds", field="wait")
    if (replayed := _used_before(request, pile_id)) is not None:
        return replayed
    wait = max(0.0, min(wait, ctx.settings.piles.max_long_poll_s))
    deadline = time.monotonic() + wait
    settings = ctx.settings
    while True:
        now = ctx.clock()
        async with transaction(ctx.sm) as session:
            await piles.touch(session, pile_id, now, min_gap_s=5)
            out = []
            if await commands.has_pending(session, pile_id):
                out = await commands.take(session, pile_id, now,
                                          resend_s=settings.piles.command_resend_s,
                                          ttl_s=settings.piles.command_ttl_s)
        remaining = deadline - time.monotonic()
        if out or remaining <= 0:
            return web.json_response({"commands": out})
        # Woken at once by a start in this process; other workers' commands are seen by polling.
        await ctx.wakeups.wait(f"pile:{pile_id}", min(remaining, 1.0))
        await asyncio.sleep(0)


def setup(app: web.Application, ctx: Context) -> None:
    app[SECRETS] = SecretCache()
    app[REPLAYS] = ReplayCache()
    writer = app[WRITER] = IngestWriter(ctx)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        writer.start()
        yield
        await writer.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/piles/events", post_events)
    app.router.add_get("/api/piles/{pile_id}/commands", poll_commands)
