"""Photos riders send with a report: checked, stored once, fetched from every platform."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import select

from bot.skins import photos as photo_fetch
from core.support import photos
from core.support.photos import PhotoRejected, PhotoUnavailable
from tests.fakes.wechat_api import FAKE_JPEG
from tests.support.journey import WebRider
from tests.support.server import Running, start_server
from tests.support.settings import all_skins_settings, make_settings

LIMIT = 200_000  # small enough that an oversized photo is quick to make


def picture(fmt: str = "JPEG", size: tuple[int, int] = (64, 48),
            color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 × side² bytes."""
    buf = BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(3 * side * side)).save(buf, format="PNG")
    return buf.getvalue()


# --- check and store -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                           ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_real_photos_pass_with_their_type_and_size(fmt: str, mime: str) -> None:
    assert photos.check(picture(fmt, (64, 48)), max_bytes=LIMIT) == (mime, 64, 48)


@pytest.mark.parametrize("data", [
    b"just some notes, saved as photo.jpg",
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>',
    b"<!doctype html><html><script>alert(1)</script></html>",
    b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF",
    FAKE_JPEG,  # JPEG magic bytes and nothing behind them
])
def test_anything_that_only_claims_to_be_a_photo_is_refused(data: bytes, tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(data)  # the name proves nothing
    with pytest.raises(PhotoRejected) as err:
        photos.check((tmp_path / "photo.jpg").read_bytes(), max_bytes=LIMIT)
    assert err.value.reason == "not_image"
    assert err.value.key == "error.photo_not_image"


def test_a_bmp_is_a_real_image_but_not_one_we_keep() -> None:
    with pytest.raises(PhotoRejected) as err:
        photos.check(picture("BMP"), max_bytes=LIMIT)
    assert err.value.reason == "not_image"


def test_oversized_and_empty_photos_are_refused_with_the_limit() -> None:
    big = noise_png(300)
    assert len(big) > LIMIT
    with pytest.raises(PhotoRejected) as err:
        photos.check(big, max_bytes=LIMIT)
    assert (err.value.reason, err.value.limit) == ("too_large", LIMIT)
    with pytest.raises(PhotoRejected) as err:
        photos.check(b"", max_bytes=LIMIT)
    assert err.value.reason == "empty"


def test_a_photo_is_stored_once_under_its_hash(tmp_path: Path) -> None:
    data = picture("PNG")
    first = photos.store(data, tmp_path, max_bytes=LIMIT)
    # Re-encoded (a PNG without transparency becomes a JPEG): the hash is of what was written.
    assert first.path == f"{first.sha256[:2]}/{first.sha256}.jpg"
    written = (tmp_path / first.path).read_bytes()
    assert (first.mime, first.size, first.width, first.height) == (
        "image/jpeg", len(written), 64, 48)
    assert hashlib.sha256(written).hexdigest() == first.sha256
    mtime = (tmp_path / first.path).stat().st_mtime_ns

    again = photos.store(data, tmp_path, max_bytes=LIMIT)
    assert again == first
    assert (tmp_path / first.path).stat().st_mtime_ns == mtime  # not written twice
    other = photos.store(picture("PNG", color=(30, 200, 30)), tmp_path, max_bytes=LIMIT)
    assert other.path.endswith(".jpg") and other.path != first.path
    stored = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert stored == sorted([first.path, other.path])  # no temp files left behind
    assert photos.find(tmp_path, first.sha256) == tmp_path / first.path
    assert photos.find(tmp_path, "../" + first.sha256) is None


def test_a_refused_file_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(PhotoRejected):
        photos.store(b"<svg/>", tmp_path / "photos", max_bytes=LIMIT)
    assert not (tmp_path / "photos").exists()


# --- through the running app -----------------------------------------------------------------


@pytest.fixture
async def skins(db_url: str, fakes: tuple[Any, Any], tmp_path: Path) -> AsyncIterator[Running]:
    settings = all_skins_settings(db_url, *fakes, support={
        "photo_dir": str(tmp_path / "photos"), "max_photo_bytes": LIMIT})
    async with start_server(settings) as running:
        yield running


@pytest.fixture(params=["own clients", "app clients"])
def attached(request: pytest.FixtureRequest, skins: Running) -> str:
    """fetch works on short-lived clients of its own, and on the app's once setup has run."""
    if request.param == "app clients":
        photo_fetch.setup(skins.app, skins.ctx)
    return str(request.param)


async def test_telegram_photo_is_fetched_and_stored(skins: Running, fakes: Any,
                                                    attached: str, tmp_path: Path) -> None:
    tg, _wx = fakes
    data = picture("JPEG", (1280, 960))
    tg.add_file("AgAC-broken-port", data, "photos/file_7.jpg")

    assert await photo_fetch.fetch(skins.ctx, "telegram", "AgAC-broken-port") == data
    stored = await photo_fetch.intake(skins.ctx, "telegram", "AgAC-broken-port")
    assert (stored.mime, stored.width, stored.height) == ("image/jpeg", 1280, 960)
    with Image.open(tmp_path / "photos" / stored.path) as kept:  # re-encoded, same picture
        assert (kept.format, kept.size) == ("JPEG", (1280, 960))


async def test_telegram_unknown_file_is_unavailable(skins: Running, fakes: Any,
                                                    attached: str) -> None:
    tg, _wx = fakes
    tg.fail_next("getFile", error_code=400, retry_after=None,
                 description="Bad Request: invalid file_id")
    with pytest.raises(PhotoUnavailable) as err:
        await photo_fetch.fetch(skins.ctx, "telegram", "AgAC-gone")
    assert "invalid file_id" in err.value.detail.lower()
    assert tg.token not in str(err.value)


async def test_telegram_photo_over_the_limit_is_refused_before_download(
        skins: Running, fakes: Any, attached: str) -> None:
    tg, _wx = fakes
    tg.add_file("AgAC-huge", noise_png(300), "photos/huge.png")
    with pytest.raises(PhotoRejected) as err:
        await photo_fetch.fetch(skins.ctx, "telegram", "AgAC-huge")
    assert (err.value.reason, err.value.limit) == ("too_large", LIMIT)


async def test_telegram_file_that_is_not_a_photo_is_refused_at_intake(
        skins: Running, fakes: Any, attached: str, tmp_path: Path) -> None:
    tg, _wx = fakes
    tg.add_file("BQAC-notes", b"%PDF-1.4 meeting notes", "documents/notes.jpg")
    with pytest.raises(PhotoRejected) as err:
        await photo_fetch.intake(skins.ctx, "telegram", "BQAC-notes")
    assert err.value.reason == "not_image"
    assert not (tmp_path / "photos").exists()


async def test_wechat_media_is_fetched_and_stored(skins: Running, fakes: Any, attached: str,
                                                  tmp_path: Path) -> None:
    _tg, wx = fakes
    data = picture("JPEG")
    wx.add_media("MEDIA_broken_port", data)
    stored = await photo_fetch.intake(skins.ctx, "wechat", "MEDIA_broken_port")
    with Image.open(tmp_path / "photos" / stored.path) as kept:  # re-encoded, same picture
        assert (kept.format, kept.size) == ("JPEG", (64, 48))
    assert [c.query["media_id"] for c in wx.calls if c.path == "/cgi-bin/media/get"] == [
        "MEDIA_broken_port"]


async def test_wechat_error_answer_instead_of_a_file_is_unavailable(
        skins: Running, fakes: Any, attached: str) -> None:
    with pytest.raises(PhotoUnavailable) as err:
        await photo_fetch.fetch(skins.ctx, "wechat", "MEDIA_expired")  # 40007 invalid media_id
    assert "40007" in err.value.detail


async def test_wechat_media_over_the_limit_is_refused(skins: Running, fakes: Any,
                                                      attached: str) -> None:
    _tg, wx = fakes
    wx.add_media("MEDIA_huge", noise_png(300), "image/png")
    with pytest.raises(PhotoRejected) as err:
        await photo_fetch.fetch(skins.ctx, "wechat", "MEDIA_huge")
    assert err.value.reason == "too_large"


async def test_wechat_media_refreshes_a_token_wechat_rejected(skins: Running, fakes: Any,
                                                              attached: str) -> None:
    _tg, wx = fakes
    data = picture("PNG")
    wx.add_media("MEDIA_1", data, "image/png")
    assert await photo_fetch.fetch(skins.ctx, "wechat", "MEDIA_1") == data
    requests = wx.token_requests
    wx.expire_tokens()  # our cached token still looks valid; WeChat answers 40001
    assert await photo_fetch.fetch(skins.ctx, "wechat", "MEDIA_1") == data
    assert wx.token_requests == requests + 1


async def test_unsupported_platform_or_missing_ref_is_unavailable(skins: Running) -> None:
    with pytest.raises(PhotoUnavailable):
        await photo_fetch.fetch(skins.ctx, "sms", "x")
    with pytest.raises(PhotoUnavailable):
        await photo_fetch.fetch(skins.ctx, "telegram", "")


# --- web chat upload -------------------------------------------------------------------------


async def upload(running: Running, data: bytes, *, rider: WebRider | None = None,
                 filename: str = "photo.jpg", field: str = "photo",
                 content_type: str = "image/jpeg") -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field(field, BytesIO(data), filename=filename, content_type=content_type)
    return await (rider or WebRider(running.http, running.url)).upload(form)


async def test_web_chat_rider_uploads_a_photo_and_sends_it_with_a_caption(
        skins: Running, tmp_path: Path) -> None:
    data = picture("JPEG")
    rider = WebRider(skins.http, skins.url)
    status, body = await upload(skins, data, rider=rider)
    assert status == 200, body
    ref = body["ref"]
    assert ref.startswith("webchat:")
    sha = ref.removeprefix("webchat:")
    assert photos.find(tmp_path / "photos", sha) is not None

    replies = (await rider.send(photo=ref, text="port 3 is burnt"))["replies"]
    assert replies and all("error" not in reply for reply in replies)
    # The handlers get the ref back as Incoming.photo: it fetches to the stored (re-encoded)
    # bytes, and taking it again stores nothing new.
    kept = photos.find(tmp_path / "photos", sha)
    assert kept is not None
    assert await photo_fetch.fetch(skins.ctx, "webchat", ref) == kept.read_bytes()
    again = await photo_fetch.intake(skins.ctx, "webchat", ref, user_id=rider.client_id)
    assert again.sha256 == sha
    # Nobody else can take it as theirs.
    with pytest.raises(PhotoUnavailable):
        await photo_fetch.intake(skins.ctx, "webchat", ref, user_id="someone-else")


async def test_web_chat_photo_alone_is_a_message(skins: Running) -> None:
    rider = WebRider(skins.http, skins.url)
    _status, body = await upload(skins, picture("PNG"), rider=rider, filename="p.png",
                                 content_type="image/png")
    assert (await rider.send(photo=body["ref"]))["replies"]


async def test_web_chat_upload_refuses_what_is_not_a_usable_photo(skins: Running,
                                                                  tmp_path: Path) -> None:
    status, body = await upload(skins, noise_png(300), filename="big.png")
    assert status == 400
    assert (body["field"], body["reason"]) == ("photo", "too_large")
    assert "limit" in body["error"]

    status, body = await upload(skins, b"<svg onload=alert(1)/>", filename="cute.jpg")
    assert status == 400
    assert (body["field"], body["reason"]) == ("photo", "not_image")

    status, body = await upload(skins, b"", filename="empty.jpg")
    assert (status, body["reason"]) == (400, "empty")

    status, body = await upload(skins, picture(), field="image")
    assert (status, body["field"]) == (400, "photo")
    assert not (tmp_path / "photos").exists()


async def test_web_chat_upload_belongs_to_the_cookie_identity_not_a_client_id(
        skins: Running) -> None:
    rider = WebRider(skins.http, skins.url)
    form = aiohttp.FormData()
    form.add_field("photo", BytesIO(picture()), filename="p.jpg", content_type="image/jpeg")
    async with skins.http.post(f"{skins.url}/webchat/api/photo", params={"client_id": "x"},
                               data=form) as r:
        assert r.status == 200, await r.text()
        rider.keep(r)  # a new identity, issued with the answer
    async with skins.ctx.sm() as s:
        owners = set((await s.scalars(select(photos.PhotoUpload.external_id))).all())
    assert owners == {rider.client_id}


async def test_web_chat_send_refuses_a_photo_ref_it_never_stored(skins: Running) -> None:
    rider = WebRider(skins.http, skins.url)
    for ref in ["webchat:" + "0" * 64, "webchat:../../etc/passwd", "AgAC-telegram-id", 42]:
        async with skins.http.post(f"{skins.url}/webchat/api/send", json={"photo": ref},
                                   headers=rider.headers) as r:
            assert r.status == 400
            assert (await r.json())["field"] == "photo"


async def test_web_chat_photo_limit_is_not_the_apps_2_mb_request_limit(
        db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, support={"photo_dir": str(tmp_path)})
    assert settings.support.max_photo_bytes == 5 * 1024 * 1024
    data = noise_png(1000)
    assert 2 * 1024 * 1024 < len(data) < settings.support.max_photo_bytes
    async with start_server(settings) as running:
        status, body = await upload(running, data, filename="big.png", content_type="image/png")
        assert status == 200, body
        status, body = await upload(running, data + os.urandom(3 * 1024 * 1024))
        assert (status, body["reason"]) == (400, "too_large")
