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


def _luminance(hex_color: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_riders_bubbles_and_brand_buttons_meet_aa_contrast() -> None:
    """Issue 18 finding 9: white on #0f9d6e was 3.46:1; AA needs 4.5:1 for body text."""
    css = (STATIC / "webchat.css").read_text(encoding="utf-8")
    var = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", css))
    assert _contrast("#ffffff", var["bubble-me"]) >= 4.5
    assert _contrast("#ffffff", var["brand"]) >= 4.5
    assert _contrast(var["brand-dark"], var["brand-soft"]) >= 4.5


def test_icon_buttons_have_accessible_names() -> None:
    html = (STATIC / "webchat.html").read_text(encoding="utf-8")
    close = re.search(r'<button[^>]*id="sheet-close"[^>]*>', html)
    assert close is not None and 'aria-label="' in close.group(0)
    js = (STATIC / "webchat.js").read_text(encoding="utf-8")
    assert "[el.sheetClose, 'close']" in js  # relabelled in the rider's language


def test_older_buttons_leave_the_tab_order() -> None:
    """Issue 18 finding 9: keyboard users tabbed through every old button to reach the input."""
    js = (STATIC / "webchat.js").read_text(encoding="utf-8")
    body = js[js.index("function keepTabOrderShort"):js.index("function addEntry")]
    assert "setAttribute('tabindex', '-1')" in body and "removeAttribute('tabindex')" in body
    add = js[js.index("function addEntry"):js.index("const typingEl")]
    assert "keepTabOrderShort(node)" in add
