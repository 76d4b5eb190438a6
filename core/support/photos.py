"""Photos riders send with a report: checked to be a real image, re-encoded, stored once.

A photo arrives as bytes from any platform. Only what Pillow recognises as JPEG, PNG, WebP or
GIF is taken: a file's name or declared type proves nothing (an SVG or HTML page "called"
photo.jpg could run script where staff open it). What is kept is not the rider's file but its
pixels, decoded and written again (JPEG, or PNG when the picture has transparency): bytes
hidden after the image, and all metadata (EXIF with the rider's GPS position, comments, ICC
profiles), never reach the disk. Files are named by the SHA-256 of what we wrote, so the same
photo sent twice, or by two riders, is stored once.

Every upload is a row (`PhotoUpload`): a rider's uploads in the last 24 hours are counted from
the rows, so the daily quota holds across workers, and an upload no ticket, work order or review
took within 24 hours is deleted (`sweep_unreferenced`), so uploads alone cannot fill the disk.
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
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy import Index, column, delete, func, select, table, union, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import Subquery
from sqlmodel import Field, SQLModel, col

from core import app_secrets
from core.config import Settings
from core.db import utcnow
from core.errors import DomainError

FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"),
           "WEBP": ("image/webp", "webp"), "GIF": ("image/gif", "gif")}
EXTENSIONS = tuple(ext for _mime, ext in FORMATS.values())
REASONS = ("too_large", "not_image", "empty", "too_many")
SHA256 = re.compile(r"[0-9a-f]{64}")
# A phone photo is 12–50 megapixels; past this a "photo" is a decompression bomb (a few KB of
# PNG that decodes to gigabytes), refused before its pixels are decoded.
MAX_PIXELS = 50_000_000
JPEG_QUALITY = 85  # what phones and chat apps send; desk staff cannot tell it from the original
# An upload nothing referenced by then is deleted: a report is filed minutes after its photo.
UNREFERENCED_TTL = timedelta(hours=24)
QUOTA_WINDOW = timedelta(hours=24)


class PhotoRejected(DomainError):
    """Not a photo we keep; `reason` is one of REASONS, `limit` the byte limit for too_large
    (or the daily count for too_many)."""

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


def reencode(data: bytes, *, max_bytes: int) -> tuple[bytes, str, int, int]:
    """(bytes, mime, width, height) of the photo written again from its pixels, upright.

    JPEG when it has no transparency, else PNG. Only the first frame of an animation is kept:
    a report needs a picture, not a clip.
    """
    check(data, max_bytes=max_bytes)  # verify() consumed that image; decoding needs a new one
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=list(FORMATS)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise PhotoRejected("too_large", limit=max_bytes)
                # Phones store the picture sideways plus an EXIF tag saying how to turn it; the
                # tag goes with the metadata, so the turn is applied to the pixels first.
                upright = ImageOps.exif_transpose(image)
                alpha = upright.mode in ("RGBA", "LA", "PA") or (
                    upright.mode == "P" and "transparency" in upright.info)
                mode = "RGBA" if alpha else "RGB"
                converted = upright.convert(mode)
                # A new image from the pixels alone: nothing of the original's `info` (EXIF,
                # ICC profile, comments, PNG text chunks) can be carried into the output.
                clean = Image.frombytes(mode, converted.size, converted.tobytes())
    except PhotoRejected:
        raise
    except Image.DecompressionBombError:
        raise PhotoRejected("too_large", limit=max_bytes) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        # A header that verifies can still hide pixel data the decoder cannot read.
        raise PhotoRejected("not_image") from None
    out = BytesIO()
    if alpha:
        clean.save(out, format="PNG")
    else:
        clean.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), "image/png" if alpha else "image/jpeg", clean.width, clean.height


def store(data: bytes, directory: Path, *, max_bytes: int) -> StoredPhoto:
    """Check, re-encode and keep a photo under `directory`; the same picture again writes
    nothing."""
    encoded, mime, width, height = reencode(data, max_bytes=max_bytes)
    sha = hashlib.sha256(encoded).hexdigest()
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
                f.write(encoded)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; whatever serves photos reads it
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return StoredPhoto(path=relative, sha256=sha, mime=mime, size=len(encoded), width=width,
                       height=height)


def stored(directory: Path, sha256: str) -> StoredPhoto | None:
    """A photo we stored already, described from its file (it is not re-encoded again: JPEG
    written twice is not the same bytes, and the second copy would belong to no upload)."""
    path = find(directory, sha256)
    if path is None:
        return None
    mime = next(m for m, e in FORMATS.values() if e == path.suffix[1:])
    with Image.open(path) as image:
        width, height = image.size
    return StoredPhoto(path=path.relative_to(directory).as_posix(), sha256=sha256, mime=mime,
                       size=path.stat().st_size, width=width, height=height)


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


# --- uploads: the daily quota and the clean-up ----------------------------------------------


class PhotoUpload(SQLModel, table=True):
    """One photo taken from one identity (a web-chat client, a Telegram or WeChat user).

    `referenced` is set by the sweep once a ticket, work order or review uses the file: from then
    on the row is only history and the sweep skips it.
    """

    __tablename__ = "photo_uploads"
    __table_args__ = (
        Index("ix_photo_uploads_identity", "platform", "external_id", "uploaded_at"),
        Index("ix_photo_uploads_sweep", "referenced", "uploaded_at"),
        Index("ix_photo_uploads_path", "path"),
    )

    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=16)
    external_id: str = Field(max_length=128)
    sha256: str = Field(max_length=64)
    path: str = Field(max_length=80)  # relative to the photo directory, as tickets hold it
    uploaded_at: datetime = Field(default_factory=utcnow)
    referenced: bool = False


async def uploads_in_window(session: AsyncSession, platform: str, external_id: str,
                            now: datetime) -> int:
    return await session.scalar(select(func.count()).select_from(PhotoUpload).where(
        col(PhotoUpload.platform) == platform, col(PhotoUpload.external_id) == external_id,
        col(PhotoUpload.uploaded_at) > now - QUOTA_WINDOW)) or 0


async def check_quota(session: AsyncSession, platform: str, external_id: str, now: datetime,
                      *, per_day: int) -> None:
    """PhotoRejected("too_many") once this identity uploaded `per_day` photos in 24 hours.

    A rolling 24 hours rather than a calendar day: no burst at midnight, and no timezone to
    agree on. Two workers checking at the same instant may both let one more in; the quota is
    against filling the disk, where one photo over does no harm.
    """
    if await uploads_in_window(session, platform, external_id, now) >= per_day:
        raise PhotoRejected("too_many", limit=per_day)


async def record(session: AsyncSession, platform: str, external_id: str, photo: StoredPhoto,
                 now: datetime) -> PhotoUpload:
    row = PhotoUpload(platform=platform, external_id=external_id[:128], sha256=photo.sha256,
                      path=photo.path, uploaded_at=now)
    session.add(row)
    await session.flush()
    return row


# Where a stored photo's path ends up. Named, not imported: core.support imports this module.
REFERENCING = (("tickets", "photo"), ("ticket_messages", "photo"), ("work_orders", "photo"),
               ("site_reviews", "photo"))


def _referenced_paths() -> Subquery:
    return union(*(select(column(field).label("path")).select_from(table(name, column(field)))
                   .where(column(field).is_not(None)) for name, field in REFERENCING)).subquery()


async def sweep_unreferenced(session: AsyncSession, now: datetime, *,
                             batch: int = 1000) -> list[str]:
    """Forget uploads older than 24 h that nothing references; the paths returned are files no
    upload or reference needs any more, for `remove_files` once this transaction committed."""
    cutoff = now - UNREFERENCED_TTL
    used = _referenced_paths()
    old = col(PhotoUpload.uploaded_at) < cutoff
    pending = col(PhotoUpload.referenced).is_(False)
    await session.execute(update(PhotoUpload).where(
        old, pending, col(PhotoUpload.path).in_(select(used.c.path)))
        .values(referenced=True))
    # In batches: a backlog (the job was off for a month) must not become one huge statement.
    rows = (await session.execute(select(col(PhotoUpload.id), col(PhotoUpload.path))
                                  .where(old, pending)
                                  .order_by(col(PhotoUpload.id)).limit(batch))).all()
    if not rows:
        return []
    await session.execute(delete(PhotoUpload).where(
        col(PhotoUpload.id).in_([row.id for row in rows])))
    stale = {row.path for row in rows}
    # Another upload of the same picture keeps the file (its own sweep decides later); so does
    # a reference made since the update above.
    kept = set((await session.scalars(select(col(PhotoUpload.path)).where(
        col(PhotoUpload.path).in_(stale)))).all())
    kept |= set((await session.scalars(select(used.c.path).where(used.c.path.in_(stale)))).all())
    return sorted(stale - kept)


def remove_files(directory: Path, paths: list[str]) -> list[str]:
    """Delete these stored photos; returns those that were there."""
    removed = []
    for relative in paths:
        target = Path(directory) / relative
        if target.parent.parent != Path(directory) or not SHA256.fullmatch(target.stem):
            continue  # not a path we wrote: never delete outside the photo directory
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            removed.append(relative)
    return removed


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


