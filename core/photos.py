"""Photos riders send with a report: checked to be a real image, then stored once by content.

A photo arrives as bytes from any platform. Only what Pillow recognises as JPEG, PNG, WebP or
GIF is kept: a file's name or declared type proves nothing (an SVG or HTML page "called"
photo.jpg could run script where staff open it). Files are named by their SHA-256, so the same
photo sent twice, or by two riders, is stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import app_secrets
from core.config import Settings
from core.errors import DomainError

FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"),
           "WEBP": ("image/webp", "webp"), "GIF": ("image/gif", "gif")}
EXTENSIONS = tuple(ext for _mime, ext in FORMATS.values())
REASONS = ("too_large", "not_image", "empty")
SHA256 = re.compile(r"[0-9a-f]{64}")


class PhotoRejected(DomainError):
    """Not a photo we keep; `reason` is one of REASONS, `limit` the byte limit for too_large."""

    def __init__(self, reason: str, *, limit: int | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.key = f"error.photo_{reason}"
        super().__init__(reason=reason, limit=limit)
        self.reason = reason
        self.limit = limit


class PhotoUnavailable(DomainError):
    """The platform could not give us the photo (expired media, unknown file, network)."""

    key = "error.photo_unavailable"

    def __init__(self, platform: str, detail: str) -> None:
        super().__init__(platform=platform, detail=detail)
        self.platform = platform
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.platform} photo unavailable: {self.detail}"


@dataclass(frozen=True)
class StoredPhoto:
    path: str  # relative to the photo directory, e.g. "ab/ab12….jpg"
    sha256: str
    mime: str
    size: int
    width: int
    height: int


def check(data: bytes, *, max_bytes: int) -> tuple[str, int, int]:
    """(mime, width, height) of a photo we accept, else PhotoRejected."""
    if not data:
        raise PhotoRejected("empty")
    if len(data) > max_bytes:
        raise PhotoRejected("too_large", limit=max_bytes)
    try:
        with warnings.catch_warnings():
            # Past MAX_IMAGE_PIXELS Pillow only warns; past twice that it raises (below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=list(FORMATS)) as image:
                fmt, (width, height) = image.format, image.size
                image.verify()
    except Image.DecompressionBombError:
        raise PhotoRejected("too_large", limit=max_bytes) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        # Pillow reports a corrupt file with whichever of these its decoder hits first.
        raise PhotoRejected("not_image") from None
    if fmt not in FORMATS or width < 1 or height < 1:
        raise PhotoRejected("not_image")
    return FORMATS[fmt][0], width, height


def store(data: bytes, directory: Path, *, max_bytes: int) -> StoredPhoto:
    """Check and keep a photo under `directory`; storing the same bytes again writes nothing."""
    mime, width, height = check(data, max_bytes=max_bytes)
    sha = hashlib.sha256(data).hexdigest()
    ext = next(e for m, e in FORMATS.values() if m == mime)
    relative = f"{sha[:2]}/{sha}.{ext}"
    target = Path(directory) / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: a reader never sees half a photo, and two
        # workers storing the same photo at once both end with the same complete file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{sha[:8]}-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; whatever serves photos reads it
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return StoredPhoto(path=relative, sha256=sha, mime=mime, size=len(data), width=width,
                       height=height)


def find(directory: Path, sha256: str) -> Path | None:
    """The stored file of a photo by its SHA-256, if we have it."""
    if not SHA256.fullmatch(sha256):
        return None
    folder = Path(directory) / sha256[:2]
    for ext in EXTENSIONS:
        path = folder / f"{sha256}.{ext}"
        if path.is_file():
            return path
    return None


# --- signed links for staff -------------------------------------------------------------------
# A ticket's photo goes to the desk as a URL: Telegram fetches it to show the picture, WeChat and
# the web chat show a link. The signature is an HMAC of the path and the expiry, keyed by
# `support.link_secret`, or, when unset, by a random key the first worker made and stored in the
# database (core.app_secrets), loaded at start-up (`load_link_key`) so every worker agrees. It is
# never derived from the configuration: a database URL is no secret.
LINK_VALID_S = 7 * 24 * 3600
# Stored keys by database URL, as loaded by each app at start-up.
_STORED_KEYS: dict[str, bytes] = {}
# Outside an app (a script, a unit test) with neither: a key of this process only, so such a
# link verifies nowhere else rather than under a guessable key.
_PROCESS_KEY = secrets.token_bytes(32)


async def load_link_key(settings: Settings, sm: async_sessionmaker[AsyncSession]) -> None:
    """Make (once per deployment) or read the stored photo-link key, unless one is configured."""
    if settings.support.link_secret is not None:
        return
    value = await app_secrets.get_or_create(sm, app_secrets.PHOTO_LINKS)
    _STORED_KEYS[settings.database.url] = bytes.fromhex(value)


def _key(settings: Settings) -> bytes:
    s = settings.support.link_secret
    if s is not None:
        return s.get_secret_value().encode()
    return _STORED_KEYS.get(settings.database.url, _PROCESS_KEY)


def link_signature(settings: Settings, path: str, exp: int) -> str:
    return hmac.new(_key(settings), f"{path}|{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def signed_url(settings: Settings, path: str, now: float | None = None) -> str:
    exp = int((now if now is not None else time.time()) + LINK_VALID_S)
    base = settings.server.public_url.rstrip("/")
    return f"{base}/photos/{path}?exp={exp}&sig={link_signature(settings, path, exp)}"


