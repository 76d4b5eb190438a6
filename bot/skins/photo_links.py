"""GET /photos/…: stored photos for staff, only through signed, expiring links
(`core.photos.signed_url`); the photo directory is never public."""

from __future__ import annotations

import hmac
import re
import time
from pathlib import Path

from aiohttp import web

from bot.context import CTX
from core.support.photos import link_signature

PATH = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.(jpg|png|webp|gif)$")


async def serve(request: web.Request) -> web.StreamResponse:
    settings = request.app[CTX].settings
    path = f"{request.match_info['prefix']}/{request.match_info['name']}"
    try:
        exp = int(request.query.get("exp", ""))
    except ValueError:
        return web.json_response({"error": "exp: a unix time"}, status=400)
    sig = request.query.get("sig", "")
    if not PATH.match(path) or not hmac.compare_digest(sig, link_signature(settings, path, exp)):
        return web.json_response({"error": "bad signature"}, status=401)
    if exp < time.time():
        return web.json_response({"error": "link expired"}, status=401)
    file = Path(settings.support.photo_dir) / path
    if not file.is_file():
        return web.json_response({"error": "no such photo"}, status=404)
    return web.FileResponse(file, headers={"Cache-Control": "private, max-age=3600"})


def setup(app: web.Application) -> None:
    app.router.add_get("/photos/{prefix}/{name}", serve)
