"""The bytes behind `Incoming.photo` on each platform, fetched with a size limit, then stored.

`Incoming.photo` is a platform reference: a Telegram file_id, a WeChat media_id, or
`webchat:<sha256>` for a photo the web chat already uploaded (and stored). Reading stops one
byte past `support.max_photo_bytes`, whatever the platform claims the size is.

`fetch` uses the app's own Telegram bot and WeChat client once `setup` has run (after the skins'
setup, `bot.skins.clients`); without it (a CLI, a job in another process) it makes short-lived
ones from settings.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import select
from sqlmodel import col
from telegram.error import BadRequest, TelegramError

from bot.context import Context
from bot.skins import clients
from core.db import transaction
from core.support import photos
from core.support.photos import PhotoRejected, PhotoUnavailable, PhotoUpload, StoredPhoto
from notifications.wechat_client import MediaTooLarge, WechatClient, WechatError

log = logging.getLogger("chargebot.photos")
WEBCHAT_PREFIX = "webchat:"
CHUNK = 64 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)


def setup(app: web.Application, ctx: Context) -> None:
    """Let `fetch` use the app's Telegram bot and WeChat client; call after the skins' setup."""
    clients.setup(app, ctx)
    ctx.photo_intake = intake


def photo_dir(ctx: Context) -> Path:
    return Path(ctx.settings.support.photo_dir)


def webchat_ref(sha256: str) -> str:
    return f"{WEBCHAT_PREFIX}{sha256}"


def webchat_file(ctx: Context, ref: str) -> Path | None:
    """The stored file of a web chat photo reference, if it is one we have."""
    if not ref.startswith(WEBCHAT_PREFIX):
        return None
    return photos.find(photo_dir(ctx), ref[len(WEBCHAT_PREFIX):])


async def webchat_owned(ctx: Context, ref: str, external_id: str) -> bool:
    """A web chat photo reference this identity uploaded itself (and we still have): a ref is
    only a hash, and another rider's photo must not become yours by naming it."""
    if webchat_file(ctx, ref) is None:
        return False
    async with ctx.reader()() as session:
        found = await session.scalar(select(col(PhotoUpload.id)).where(
            col(PhotoUpload.platform) == "webchat", col(PhotoUpload.external_id) == external_id,
            col(PhotoUpload.sha256) == ref[len(WEBCHAT_PREFIX):]).limit(1))
    return found is not None


async def fetch(ctx: Context, platform: str, ref: str) -> bytes:
    """The photo's bytes: PhotoRejected("too_large") past the limit, PhotoUnavailable when the
    platform cannot give it."""
    limit = ctx.settings.support.max_photo_bytes
    if not ref:
        raise PhotoUnavailable(platform, "no photo reference")
    if platform == "telegram":
        return await _telegram(ctx, ref, limit)
    if platform == "wechat":
        return await _wechat(ctx, ref, limit)
    if platform == "webchat":
        return await _webchat(ctx, ref, limit)
    raise PhotoUnavailable(platform, "photos are not supported on this platform")


async def intake(ctx: Context, platform: str, ref: str, *,
                 user_id: str | None = None) -> StoredPhoto:
    """Fetch, check, re-encode and store a rider's photo under `support.photo_dir`, recorded as
    an upload of `user_id`; PhotoRejected("too_many") past their daily quota."""
    if platform == "webchat":
        # Stored and counted when the page uploaded it (`bot.skins.webchat.upload_photo`), by this
        # identity: someone else's upload is not yours to send.
        path = webchat_file(ctx, ref)
        if path is not None and (user_id is None
                                 or not await webchat_owned(ctx, ref, user_id)):
            path = None
        found = (await asyncio.to_thread(photos.stored, photo_dir(ctx), path.stem)
                 if path is not None else None)
        if found is None:
            raise PhotoUnavailable("webchat", "unknown photo reference")
        return found
    if user_id is not None:
        # Before the download: a refused photo costs no bandwidth.
        async with transaction(ctx.sm) as session:
            await photos.check_quota(session, platform, user_id, ctx.clock(),
                                     per_day=ctx.settings.support.photos_per_day)
    data = await fetch(ctx, platform, ref)
    stored = await asyncio.to_thread(photos.store, data, photo_dir(ctx),
                                     max_bytes=ctx.settings.support.max_photo_bytes)
    async with transaction(ctx.sm) as session:
        await photos.record(session, platform, user_id or "", stored, ctx.clock())
    return stored


# --- Telegram --------------------------------------------------------------------------------


async def _telegram(ctx: Context, file_id: str, limit: int) -> bytes:
    try:
        async with clients.telegram_bot(ctx) as bot:
            file = await bot.get_file(file_id)
    except BadRequest as exc:
        # Telegram refuses getFile past its own 20 MB bot limit.
        if "too big" in exc.message.lower():
            raise PhotoRejected("too_large", limit=limit) from None
        raise PhotoUnavailable("telegram", exc.message) from None
    except TelegramError as exc:
        # Only the kind: InvalidToken's message quotes the token.
        raise PhotoUnavailable("telegram", type(exc).__name__) from None
    if file.file_size is not None and file.file_size > limit:
        raise PhotoRejected("too_large", limit=limit)
    url = file.file_path or ""
    if not url.startswith(("https://", "http://")):
        raise PhotoUnavailable("telegram", "no download URL for the file")
    # The URL carries the bot token: errors below never quote it or chain what would.
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.get(url) as r:
            if r.status != 200:
                raise PhotoUnavailable("telegram", f"file download answered HTTP {r.status}")
            if (r.content_length or 0) > limit:
                raise PhotoRejected("too_large", limit=limit)
            return await _read_limited(r.content, limit)
    except (aiohttp.ClientError, TimeoutError):
        raise PhotoUnavailable("telegram", "file download failed") from None


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    body = bytearray()
    async for chunk in stream.iter_chunked(CHUNK):
        body += chunk
        if len(body) > limit:
            raise PhotoRejected("too_large", limit=limit)
    return bytes(body)


# --- WeChat ----------------------------------------------------------------------------------


async def _wechat(ctx: Context, media_id: str, limit: int) -> bytes:
    try:
        if (attached := clients.wechat_client(ctx)) is not None:
            return await attached.media(media_id, max_bytes=limit)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            client = WechatClient(ctx.sm, ctx.settings.wechat, http, ctx.clock)
            return await client.media(media_id, max_bytes=limit)
    except MediaTooLarge:
        raise PhotoRejected("too_large", limit=limit) from None
    except WechatError as exc:
        # 40007: an unknown or expired media_id (WeChat keeps a rider's media for 3 days).
        raise PhotoUnavailable("wechat", str(exc)) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PhotoUnavailable("wechat", f"network: {type(exc).__name__}") from exc


# --- web chat --------------------------------------------------------------------------------


async def _webchat(ctx: Context, ref: str, limit: int) -> bytes:
    path = webchat_file(ctx, ref)
    if path is None:
        raise PhotoUnavailable("webchat", "unknown photo reference")

    try:
        return await asyncio.to_thread(_read_file, path, limit)
    except OSError as exc:
        raise PhotoUnavailable("webchat", f"stored photo unreadable: {exc.strerror}") from None


def _read_file(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PhotoRejected("too_large", limit=limit)
    return data


__all__ = ["PhotoRejected", "PhotoUnavailable", "StoredPhoto", "fetch", "intake",
           "setup", "webchat_file", "webchat_owned", "webchat_ref"]
