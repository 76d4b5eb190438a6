"""Issue 15, item 6: photo uploads cannot fill the disk or leak where a rider stood.

A photo is decoded and written again (bytes hidden behind the image and all EXIF, GPS
included, are dropped), one identity gets a daily quota of uploads, and uploads nothing used are
deleted after 24 hours. Through the real app (web-chat upload route, the router for a Telegram
photo, the scheduler's job), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import func, select

from bot import scheduler
from bot.handlers import router
from core.db import transaction
from core.riders.identities import rider_for
from core.support import photos
from core.support.tables import Ticket
from notifications.replies import Incoming
from tests.support.journey import HandClock, WebRider
from tests.support.server import Running, start_server
from tests.support.settings import all_skins_settings, make_settings

GPS_IFD = 0x8825
ORIENTATION = 0x0112


@dataclass
class Server:
    running: Running
    clock: HandClock
    photo_dir: Path


@pytest.fixture
async def server(db_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    clock = HandClock()
    settings = make_settings(db_url, support={"photo_dir": str(tmp_path / "photos"),
                                              "photos_per_day": 3})
    async with start_server(settings, clock=clock) as running:
        yield Server(running, clock, tmp_path / "photos")


async def upload(running: Running, data: bytes, rider: WebRider | None = None,
                 filename: str = "photo.jpg") -> tuple[int, dict]:
    """An upload from `rider`'s browser (a new one when None)."""
    form = aiohttp.FormData()
    form.add_field("photo", BytesIO(data), filename=filename, content_type="image/jpeg")
    return await (rider or WebRider(running.http, running.url)).upload(form)


def stored_file(server: Server, ref: str) -> Path:
    path = photos.find(server.photo_dir, ref.removeprefix("webchat:"))
    assert path is not None, ref
    return path


def picture(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


async def test_png_with_megabytes_of_trailing_bytes_is_stored_re_encoded_and_small(
        server: Server) -> None:
    buf = BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(buf, format="PNG")
    payload = os.urandom(int(4.9 * 1024 * 1024))
    status, body = await upload(server.running, buf.getvalue() + payload, filename="tiny.png")
    assert status == 200, body

    kept = stored_file(server, body["ref"])
    data = kept.read_bytes()
    assert len(data) < 10_000  # the picture, not the 4.9 MB riding behind it
    assert payload[:64] not in data
    with Image.open(kept) as image:
        assert (image.format, image.size) == ("JPEG", (8, 8))
    assert kept.suffix == ".jpg"


async def test_jpeg_with_gps_comes_back_without_any_exif_and_upright(server: Server) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "turn 90° clockwise to show": how phones store a portrait photo
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2] = "N", (30.0, 16.0, 40.8)  # GPSLatitudeRef, GPSLatitude
    gps[3], gps[4] = "E", (120.0, 6.0, 50.4)  # GPSLongitudeRef, GPSLongitude
    buf = BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="JPEG", exif=exif)
    sent = buf.getvalue()
    with Image.open(BytesIO(sent)) as original:  # the test's photo does carry the position
        assert original.getexif().get_ifd(GPS_IFD)[1] == "N"

    status, body = await upload(server.running, sent)
    assert status == 200, body
    kept = stored_file(server, body["ref"])
    data = kept.read_bytes()
    assert b"Exif" not in data and b"PhoneMaker" not in data
    with Image.open(kept) as image:
        assert dict(image.getexif()) == {}
        assert "exif" not in image.info
        assert image.size == (48, 64)  # the orientation tag was applied to the pixels


async def test_quota_refuses_the_next_upload_of_the_day_while_another_rider_still_uploads(
        server: Server) -> None:
    first = WebRider(server.running.http, server.running.url)
    for i in range(3):
        status, body = await upload(server.running, picture((i * 60, 10, 10)), first)
        assert status == 200, body

    status, body = await upload(server.running, picture((250, 250, 10)), first)
    assert status == 429
    assert (body["field"], body["reason"]) == ("photo", "too_many")
    assert "3 photos" in body["error"]

    status, body = await upload(server.running, picture((250, 250, 10)))  # another rider
    assert status == 200, body

    # The window is a day: tomorrow the first rider uploads again.
    server.clock.advance(hours=24, seconds=1)
    status, body = await upload(server.running, picture((250, 250, 10)), first)
    assert status == 200, body


async def test_quota_on_a_chat_skin_is_a_friendly_reply(db_url: str, fakes: tuple[Any, Any],
                                                        tmp_path: Path) -> None:
    tg, _wx = fakes
    settings = all_skins_settings(db_url, *fakes, support={
        "photo_dir": str(tmp_path / "photos"), "photos_per_day": 2})
    async with start_server(settings) as running:
        for i in range(3):
            tg.add_file(f"AgAC-{i}", picture((i * 80, 40, 40)), f"photos/file_{i}.jpg")
        replies: list[Any] = []
        for i in range(3):
            replies, _lang = await router.handle(running.ctx, Incoming(
                platform="telegram", user_id="7001", chat_id="7001", photo=f"AgAC-{i}",
                language_hint="en", nonce=f"n{i}"))
        assert "2 photos today" in replies[0].text, replies
        async with running.ctx.sm() as s:
            counted = await s.scalar(select(func.count()).select_from(photos.PhotoUpload).where(
                photos.PhotoUpload.external_id == "7001"))
        assert counted == 2
        asked = [c.params.get("file_id") for c in tg.calls if c.method == "getFile"]
        assert "AgAC-2" not in asked  # refused before the download


async def test_clean_up_removes_a_day_old_unreferenced_upload_and_keeps_used_ones(
        server: Server) -> None:
    running, clock = server.running, server.clock
    one, two = WebRider(running.http, running.url), WebRider(running.http, running.url)
    _s, unused = await upload(running, picture((1, 2, 3)), one)
    _s, reported = await upload(running, picture((90, 90, 200)), one)
    _s, shared = await upload(running, picture((0, 200, 0)), one)
    async with transaction(running.ctx.sm) as session:
        rider = await rider_for(session, "webchat", one.client_id)
        session.add(Ticket(rider_id=rider.id, platform="webchat", created_at=clock(),
                           photo=stored_file(server, reported["ref"]).relative_to(
                               server.photo_dir).as_posix()))

    clock.advance(hours=20)
    # Another rider sends the same picture later: the file is theirs too, for their own 24 h.
    _s, again = await upload(running, picture((0, 200, 0)), two)
    assert again["ref"] == shared["ref"]

    clock.advance(hours=5)  # 25 h after the first three
    unused_file = stored_file(server, unused["ref"])
    await scheduler.sweep_photos(running.ctx)
    assert not unused_file.exists()
    assert stored_file(server, reported["ref"]).exists()
    assert stored_file(server, shared["ref"]).exists()
    async with running.ctx.sm() as s:
        left = (await s.execute(select(photos.PhotoUpload.external_id, photos.PhotoUpload.path,
                                       photos.PhotoUpload.referenced))).all()
    paths = {p: (who, used) for who, p, used in left}
    assert unused_file.name not in {Path(p).name for p in paths}
    assert sorted((who == two.client_id, used) for who, used in paths.values()) == [
        (False, True), (True, False)]

    # A day later the second upload of the shared picture is stale too, and nothing used it.
    clock.advance(hours=20)
    await scheduler.sweep_photos(running.ctx)
    assert not stored_file_exists(server, shared["ref"])
    assert stored_file(server, reported["ref"]).exists()


def stored_file_exists(server: Server, ref: str) -> bool:
    return photos.find(server.photo_dir, ref.removeprefix("webchat:")) is not None


def test_a_picture_past_the_pixel_limit_is_refused_before_decoding(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A real bomb is a few KB of PNG that decodes to gigabytes; the guard is the same check.
    monkeypatch.setattr(photos, "MAX_PIXELS", 64 * 48 - 1)
    with pytest.raises(photos.PhotoRejected) as err:
        photos.store(picture((5, 5, 5)), tmp_path, max_bytes=1_000_000)
    assert err.value.reason == "too_large"
    assert not any(tmp_path.iterdir())


def test_a_picture_with_transparency_stays_a_png_without_its_text_chunks(tmp_path: Path) -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "taken at 30.278N 120.114E")
    buf = BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(buf, format="PNG", pnginfo=text)
    kept = photos.store(buf.getvalue(), tmp_path, max_bytes=1_000_000)
    assert (kept.mime, kept.path[-4:]) == ("image/png", ".png")
    data = (tmp_path / kept.path).read_bytes()
    assert b"120.114E" not in data
    with Image.open(tmp_path / kept.path) as image:
        assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0  # type: ignore[index]
