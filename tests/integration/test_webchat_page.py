"""The page and the server agree (issue 18 finding 4): the text box holds what the server takes,
a refused message is told apart from a lost network, and every word the page shows comes from
the catalog in both languages (the page's own copies are a fallback for when /ui fails)."""

from __future__ import annotations

import re
from pathlib import Path

from bot.skins.webchat import MAX_TEXT
from tests.support.journey import WebRider
from tests.support.server import Running

STATIC = Path(__file__).resolve().parents[2] / "bot" / "static"


def test_the_text_box_holds_no_more_than_the_server_takes() -> None:
    html = (STATIC / "webchat.html").read_text(encoding="utf-8")
    box = re.search(r'<input id="input"[^>]*>', html)
    assert box is not None
    assert re.search(r'maxlength="(\d+)"', box.group(0)).group(1) == str(MAX_TEXT)  # type: ignore[union-attr]


def test_a_refused_send_is_not_shown_as_a_lost_network() -> None:
    js = (STATIC / "webchat.js").read_text(encoding="utf-8")
    post = js[js.index("async function postSend"):js.index("class SendRejected")]
    # A 400 becomes a SendRejected naming why; only other failures fall through to "offline".
    assert "res.status === 400" in post and "text_too_long" in post
    assert "err instanceof SendRejected" in js


async def test_the_longest_message_is_taken_and_one_more_character_is_refused_by_name(
        server: Running) -> None:
    rider = await WebRider(server.http, server.url).connect()
    replies = await rider.say("好" * MAX_TEXT)
    assert replies
    too_long = {"text": "好" * (MAX_TEXT + 1)}
    async with server.http.post(f"{server.url}/webchat/api/send", json=too_long,
                                headers=rider.headers) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "text"


async def test_every_word_of_the_page_comes_from_the_catalog(server: Running) -> None:
    js = (STATIC / "webchat.js").read_text(encoding="utf-8")
    fallback = js[js.index("const FALLBACK"):js.index("// ---", js.index("const FALLBACK"))]
    keys = set(re.findall(r"^\s+(\w+): '", fallback, flags=re.M)) | set(
        re.findall(r",\s(\w+): '", fallback))
    assert {"offline", "text_too_long", "bad_request", "photo_too_large"} <= keys
    rider = await WebRider(server.http, server.url).connect()
    for lang in ("zh_CN", "en"):
        async with server.http.get(f"{server.url}/webchat/api/ui", params={"lang": lang},
                                   headers=rider.headers) as r:
            strings = (await r.json())["strings"]
        assert keys <= set(strings), keys - set(strings)
        assert all(strings[k].strip() for k in keys)
    assert "1,000" in strings["text_too_long"]
