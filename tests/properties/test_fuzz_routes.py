"""Every HTTP route under random input (ISSUE 8, part): never a 500, and a rejected request
changes nothing. The pile webhook has its own, deeper fuzz in
tests/integration/test_pile_webhook.py."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import func, select

from core.outbox import OutboxMessage
from core.riders.tables import Identity, Rider
from tests.fakes.wechat_user import sign
from tests.support.fuzzing import draw_examples
from tests.support.riders import ACCOUNT, TG_SECRET
from tests.support.server import Running, seed_city

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=12)
# Update-shaped noise gets further into python-telegram-bot than arbitrary JSON does.
UPDATES = st.fixed_dictionaries(
    {"update_id": st.integers(min_value=-5, max_value=2**40)},
    optional={"message": st.dictionaries(st.sampled_from(
        ["message_id", "date", "chat", "from", "text", "photo", "reply_to_message"]), JSONISH,
        max_size=5), "callback_query": JSONISH, "poll_answer": JSONISH})


async def _state(server: Running) -> tuple[int, int, int]:
    async with server.ctx.sm() as s:
        return tuple([await s.scalar(select(func.count()).select_from(m))  # type: ignore[return-value]
                      for m in (Rider, Identity, OutboxMessage)])


async def test_random_input_on_every_chat_route_never_gets_a_500(all_skins: Running) -> None:
    server = all_skins
    await seed_city(server.ctx)
    http, url = server.http, server.url

    # Telegram: without the secret → 401 and nothing stored; with it → 200 or 400.
    before = await _state(server)
    for body in draw_examples(UPDATES, 40):
        async with http.post(f"{url}/telegram/webhook", json=body) as r:
            assert r.status == 401
    assert await _state(server) == before
    for body in draw_examples(UPDATES, 60) + draw_examples(JSONISH, 30):
        async with http.post(f"{url}/telegram/webhook", json=body,
                             headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}) as r:
            assert r.status in (200, 400), (body, r.status, await r.text())

    # WeChat: signed but garbage bodies → 400; unsigned → 401; never a 500, nothing stored.
    before = await _state(server)
    for raw in draw_examples(st.binary(max_size=300), 40):
        ts, nonce = str(int(time.time())), "12345"
        params = {"timestamp": ts, "nonce": nonce, "signature": sign(ACCOUNT.token, ts, nonce),
                  "openid": "oFuzz", "encrypt_type": "aes",
                  "msg_signature": sign(ACCOUNT.token, ts, nonce, raw.decode("latin-1"))}
        async with http.post(f"{url}/wechat", params=params, data=raw) as r:
            assert r.status in (400, 401), (raw, r.status)
        async with http.post(f"{url}/wechat", params={"timestamp": ts}, data=raw) as r:
            assert r.status in (400, 401), (raw, r.status)
    assert await _state(server) == before

    # Web chat: random JSON → 200 or 400 naming a field; a 400 creates no rider. A client_id
    # in the body is noise like any other key: the identity is the server's cookie.
    for body in draw_examples(JSONISH, 60) + draw_examples(st.fixed_dictionaries(
            {"client_id": st.sampled_from(["fuzz-client-1", "x", "", "a" * 70])},
            optional={"text": JSONISH, "data": JSONISH, "location": JSONISH,
                      "photo": JSONISH}), 60):
        before = await _state(server)
        async with http.post(f"{url}/webchat/api/send", data=json.dumps(body)) as r:
            assert r.status in (200, 400), (body, r.status, await r.text())
            if r.status == 400:
                assert "field" in await r.json()
                assert await _state(server) == before
    for raw in draw_examples(st.binary(max_size=400), 20):
        async with http.post(f"{url}/webchat/api/photo", data=raw, headers={
                "Content-Type": "multipart/form-data; boundary=xyz"}) as r:
            assert r.status == 400, (raw, r.status)

    # Staff login: made-up accounts, passwords and link tokens are refused (400, 401, 410, or
    # 429 once the address guessed too often), never a 500, and log nobody in.
    logins = draw_examples(JSONISH, 20) + draw_examples(st.fixed_dictionaries({
        "staff": st.text(max_size=40) | st.sampled_from(["telegram:1", "wechat:o", ":"]),
        "password": JSONISH}), 30)
    for body in logins:
        async with http.post(f"{url}/webchat/api/login", data=json.dumps(body)) as r:
            assert r.status in (400, 401, 429), (body, r.status, await r.text())
            assert "cb_staff" not in r.cookies
    for token in draw_examples(st.text(max_size=60), 20):
        async with http.get(f"{url}/webchat/login", params={"t": token}) as r:
            assert r.status == 410, (token, r.status)
        async with http.post(f"{url}/webchat/login", data={"t": token}) as r:
            assert r.status == 410 and "cb_staff" not in r.cookies, (token, r.status)
    for raw in draw_examples(st.binary(max_size=200), 10):
        async with http.post(f"{url}/webchat/login", data=raw, headers={
                "Content-Type": "multipart/form-data; boundary=xyz"}) as r:
            assert r.status in (400, 410), (raw, r.status)
    async with http.post(f"{url}/webchat/api/logout", data=b"\xff") as r:
        assert r.status == 200  # nobody was logged in: nothing to end

    # Signed photo links and the pile command poll: bad input is 400/401/404.
    paths: list[Any] = draw_examples(st.text(max_size=40), 20)
    for p in paths:
        async with http.get(f"{url}/photos/ab/{p}", params={"exp": p, "sig": p}) as r:
            assert r.status in (400, 401, 404), (p, r.status)
        async with http.get(f"{url}/api/piles/{p or 'x'}/commands", params={"wait": p}) as r:
            assert r.status in (400, 401, 404), (p, r.status)

    async with http.get(f"{url}/healthz") as r:
        assert r.status == 200
