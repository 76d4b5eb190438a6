"""Pile controller webhook (DESIGN §3): signed batches in, commands out, long poll."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.context import CTX, Context
from bot.pile_ingest import IngestWriter
from core import commands, events, piles
from core.db import transaction
from core.errors import InvalidEvent
from core.pile_auth import verify

log = logging.getLogger("chargebot.piles")

SECRET_TTL_S = 60.0
# Misses at once (many piles new to this worker, e.g. after a restart) beyond the engine's pool
# (10 on PostgreSQL) made it open and close an overflow connection per lookup, a backend fork
# each: ~480 new connections in 17 s of bench/ingest_workers.py. A few at a time stay in the pool.
SECRET_LOOKUPS = 4


class SecretCache:
    """Pile secrets, looked up once a minute instead of on every request of a busy fleet."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, str | None]] = {}
        self._lookups = asyncio.Semaphore(SECRET_LOOKUPS)

    async def get(self, ctx: Context, pile_id: str) -> str | None:
        hit = self._entries.get(pile_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < SECRET_TTL_S:
            return hit[1]
        async with self._lookups, ctx.reader()() as session:
            secret = await session.scalar(select(piles.Pile.secret).where(piles.Pile.id == pile_id))
        if len(self._entries) > 200_000:
            self._entries.clear()
        self._entries[pile_id] = (now, secret)
        return secret


SECRETS = web.AppKey("pile_secrets", SecretCache)


def _error(status: int, error: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, **extra}, status=status)


async def _authenticate(request: web.Request, body: bytes) -> str | web.Response:
    pile_id = request.headers.get("X-Pile-Id", "")
    if not pile_id or len(pile_id) > 32:
        return _error(401, "missing or bad X-Pile-Id")
    secret = await request.app[SECRETS].get(request.app[CTX], pile_id)
    if secret is None:
        # The same answer as a bad signature: nobody learns which pile ids exist.
        log.warning("rejected request from unknown pile %r", pile_id)
        return _error(401, "bad or stale signature")
    ok = verify(secret, request.headers.get("X-Timestamp", ""), body,
                request.headers.get("X-Signature", ""), time.time())
    if not ok:
        log.warning("rejected signature for pile %s", pile_id)
        return _error(401, "bad or stale signature")
    return pile_id


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
    auth = await _authenticate(request, b"")
    if isinstance(auth, web.Response):
        return auth
    pile_id = auth
    if request.match_info["pile_id"] != pile_id:
        return _error(401, "X-Pile-Id does not match the path")
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        return _error(400, "wait must be a number of seconds", field="wait")
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


WRITER = web.AppKey("ingest_writer", IngestWriter)


def setup(app: web.Application, ctx: Context) -> None:
    app[SECRETS] = SecretCache()
    writer = app[WRITER] = IngestWriter(ctx)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        writer.start()
        yield
        await writer.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/piles/events", post_events)
    app.router.add_get("/api/piles/{pile_id}/commands", poll_commands)
