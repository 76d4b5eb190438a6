"""Proves tests/fakes/wechat_user.py and wechat_api.py against real wechatpy (1.8.18), so tests
built on the fakes fail for the same reasons production would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import xmltodict
from wechatpy import WeChatClient, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.events import (
    ClickEvent,
    LocationEvent,
    ScanEvent,
    SubscribeEvent,
    SubscribeScanEvent,
    TemplateSendJobFinishEvent,
    UnsubscribeEvent,
    ViewEvent,
)
from wechatpy.exceptions import InvalidSignatureException, WeChatClientException
from wechatpy.messages import BaseMessage, ImageMessage, LocationMessage, TextMessage
from wechatpy.replies import ImageReply, TextReply
from wechatpy.utils import check_signature

from tests.fakes.wechat_api import FAKE_JPEG, Call, FakeWechat
from tests.fakes.wechat_user import (
    DOC_ENCRYPTED_SAMPLE,
    DOC_TEXT_MESSAGE,
    WECHATPY_ENCRYPTED_SAMPLE,
    Delivery,
    EncryptedSample,
    OfficialAccount,
    WechatUser,
    read_reply,
    verify_echo,
)

ACCOUNT = OfficialAccount()
# Real openids are 28 characters; wechatpy's WeChatMessage.OPENID_RE expects that shape.
OPENID = "oRider0000000000000000000001"
SCENE = "port_P0001-03"


def unwrap(delivery: Delivery) -> str:
    """What the app does with a push: check the signature, decrypt in safe mode."""
    p = delivery.params
    check_signature(ACCOUNT.token, p["signature"], p["timestamp"], p["nonce"])
    if not delivery.encrypted:
        assert "encrypt_type" not in p and "msg_signature" not in p
        return delivery.body.decode()
    assert p["encrypt_type"] == "aes"
    return ACCOUNT.crypto().decrypt_message(
        delivery.body, p["msg_signature"], p["timestamp"], p["nonce"]
    )


# ---------------------------------------------------------------------- pushes (wechat_user)

CASES: list[tuple[str, Callable[[WechatUser], Delivery], type, Callable[[Any], None]]] = [
    (
        "text",
        lambda u: u.text("充电 P0001-03 <&>"),
        TextMessage,
        lambda m: m.content == "充电 P0001-03 <&>",
    ),
    (
        "location",
        lambda u: u.location(31.230416, 121.473701, "人民广场"),
        LocationMessage,
        # wechatpy keeps coordinates as strings: LocationMessage.location is (str, str).
        lambda m: m.location == ("31.230416", "121.473701") and m.label == "人民广场",
    ),
    (
        "image",
        lambda u: u.image("http://mmbiz.qpic.cn/p1", "media-77"),
        ImageMessage,
        lambda m: m.image == "http://mmbiz.qpic.cn/p1" and m.media_id == "media-77",
    ),
    ("subscribe", lambda u: u.subscribe(), SubscribeEvent, lambda m: m.key == ""),
    (
        "subscribe_scan",
        lambda u: u.subscribe(SCENE, ticket="TICKET-1"),
        SubscribeScanEvent,
        lambda m: m.scene_id == SCENE and m.ticket == "TICKET-1",
    ),
    (
        "scan",
        lambda u: u.scan(SCENE, ticket="TICKET-2"),
        ScanEvent,
        lambda m: m.scene_id == SCENE and m.ticket == "TICKET-2",
    ),
    (
        "location_event",
        lambda u: u.location_event(31.230416, 121.473701, 65.0),
        LocationEvent,
        lambda m: (m.latitude, m.longitude, m.precision) == (31.230416, 121.473701, 65.0),
    ),
    ("click", lambda u: u.click("NEARBY"), ClickEvent, lambda m: m.key == "NEARBY"),
    ("view", lambda u: u.view("https://x.cn/w"), ViewEvent, lambda m: m.url == "https://x.cn/w"),
    ("unsubscribe", lambda u: u.unsubscribe(), UnsubscribeEvent, lambda m: True),
    (
        "menu_choice",
        lambda u: u.menu_choice("port-3", "3号口"),
        TextMessage,
        lambda m: m.content == "3号口" and m._data["bizmsgmenuid"] == "port-3",
    ),
    (
        "template_finished",
        lambda u: u.template_finished(2_000_000_123, "failed:user block"),
        TemplateSendJobFinishEvent,
        lambda m: m.id == 2_000_000_123 and m.status == "failed:user block",
    ),
]


@pytest.mark.parametrize("encrypted", [True, False], ids=["safe", "plain"])
@pytest.mark.parametrize(("name", "make", "cls", "check"), CASES, ids=[c[0] for c in CASES])
def test_every_push_parses_with_wechatpy(
    encrypted: bool,
    name: str,
    make: Callable[[WechatUser], Delivery],
    cls: type,
    check: Callable[[Any], bool],
) -> None:
    delivery = make(WechatUser(OPENID, ACCOUNT, encrypted=encrypted))
    xml = unwrap(delivery)
    assert xml == delivery.xml
    message: BaseMessage = parse_message(xml)
    assert type(message) is cls, (name, message)
    assert check(message), message
    assert message.source == OPENID
    assert message.target == ACCOUNT.original_id
    assert abs(message.time - time.time()) < 5
    assert delivery.params["openid"] == OPENID
    if name in ("text", "location", "image", "menu_choice"):
        assert message.id == delivery.msg_id
    else:
        assert delivery.msg_id is None  # events carry no MsgId
    if encrypted:
        # Safe mode leaks nothing but the account id.
        outer = xmltodict.parse(delivery.body)["xml"]
        assert set(outer) == {"ToUserName", "Encrypt"}
        assert outer["ToUserName"] == ACCOUNT.original_id


def test_msg_ids_unique_across_users_and_retries_keep_them() -> None:
    a, b = WechatUser(OPENID, ACCOUNT), WechatUser("oRider0000000000000000000002", ACCOUNT)
    deliveries = [a.text("1"), b.text("1"), a.location(1, 2), b.image()]
    ids = [d.msg_id for d in deliveries]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) and 0 < i < 2**63 for i in ids)

    first = deliveries[0]
    assert first.same_again() is first
    retry = a.resigned(first)
    assert retry.xml == first.xml and retry.msg_id == first.msg_id
    assert retry.dedupe_key == first.dedupe_key == str(first.msg_id)
    assert retry.params["nonce"] != first.params["nonce"] or retry.body != first.body
    assert parse_message(unwrap(retry)).id == first.msg_id

    event = a.click("K")
    assert event.dedupe_key == f"{OPENID}:{event.create_time}"


@pytest.mark.parametrize("only", [None, "signature", "msg_signature"])
def test_tampered_signatures_are_rejected_by_wechatpy(only: str | None) -> None:
    good = WechatUser(OPENID, ACCOUNT).text("hi")
    bad = WechatUser.tamper(good, only=only)
    assert bad.body == good.body and good.params != bad.params
    p = bad.params
    if only in (None, "signature"):
        with pytest.raises(InvalidSignatureException):
            check_signature(ACCOUNT.token, p["signature"], p["timestamp"], p["nonce"])
    if only in (None, "msg_signature"):
        with pytest.raises(InvalidSignatureException):
            ACCOUNT.crypto().decrypt_message(
                bad.body, p["msg_signature"], p["timestamp"], p["nonce"]
            )
    plain = WechatUser(OPENID, ACCOUNT, encrypted=False).text("hi")
    with pytest.raises(ValueError):
        WechatUser.tamper(plain, only="msg_signature")


def test_verify_echo_params_check_out() -> None:
    params = verify_echo(ACCOUNT, "echo-123")
    assert params["echostr"] == "echo-123"
    check_signature(ACCOUNT.token, params["signature"], params["timestamp"], params["nonce"])


def test_post_args_shape() -> None:
    delivery = WechatUser(OPENID, ACCOUNT).text("hi")
    args = delivery.post_args("http://127.0.0.1:8080/")
    assert args["url"] == "http://127.0.0.1:8080/wechat"
    assert args["params"] == delivery.params and args["data"] == delivery.body
    assert args["headers"]["Content-Type"] == "text/xml"


# ---------------------------------------------------------------------- replies


def test_read_reply_round_trips_encrypted_wechatpy_reply() -> None:
    user = WechatUser(OPENID, ACCOUNT)
    message = parse_message(unwrap(user.text("附近的桩")))
    reply = TextReply(message=message, content="最近的桩: P0001 <300m> & 空闲")
    body = ACCOUNT.crypto().encrypt_message(reply.render(), "1234567", str(int(time.time())))
    fields = user.read_reply(body.encode())
    assert fields is not None
    assert fields["MsgType"] == "text"
    assert fields["Content"] == "最近的桩: P0001 <300m> & 空闲"
    assert fields["ToUserName"] == OPENID and fields["FromUserName"] == ACCOUNT.original_id

    image = ImageReply(message=message, media_id="m-1").render()
    nested = read_reply(
        ACCOUNT, ACCOUNT.crypto().encrypt_message(image, "1").encode(), encrypted=True
    )
    assert nested is not None and nested["Image"] == {"MediaId": "m-1"}


def test_read_reply_plaintext_and_acknowledgements() -> None:
    reply = TextReply(source=ACCOUNT.original_id, target=OPENID, content="ok").render()
    fields = read_reply(ACCOUNT, reply.encode(), encrypted=False)
    assert fields is not None and fields["Content"] == "ok"
    for ack in (b"", b"success", b"  success\n"):
        assert read_reply(ACCOUNT, ack, encrypted=True) is None


def test_read_reply_rejects_what_wechat_would_reject() -> None:
    reply = TextReply(source=ACCOUNT.original_id, target=OPENID, content="ok").render()
    with pytest.raises(AssertionError, match="must be encrypted"):
        read_reply(ACCOUNT, reply.encode(), encrypted=True)
    body = ACCOUNT.crypto().encrypt_message(reply, "99", "1700000000")
    forged = body.replace(xmltodict.parse(body)["xml"]["MsgSignature"], "0" * 40)
    with pytest.raises(AssertionError, match="MsgSignature"):
        read_reply(ACCOUNT, forged.encode(), encrypted=True)
    other_app = WeChatCrypto(ACCOUNT.token, ACCOUNT.aes_key, "wxsomeoneelse0000")
    with pytest.raises(AssertionError, match="another appid"):
        read_reply(ACCOUNT, other_app.encrypt_message(reply, "1").encode(), encrypted=True)
    with pytest.raises(AssertionError, match="encrypted reply"):
        read_reply(ACCOUNT, body.encode(), encrypted=False)
    with pytest.raises(AssertionError, match="addressed to"):
        WechatUser("oSomeoneElse000000000000000x", ACCOUNT, encrypted=False).read_reply(
            reply.encode()
        )


# ---------------------------------------------------------------------- published samples


def test_doc_text_message_parses() -> None:
    message = parse_message(DOC_TEXT_MESSAGE)
    assert isinstance(message, TextMessage)
    assert (message.content, message.source, message.target) == (
        "this is a test",
        "fromUser",
        "toUser",
    )
    assert message.id == 1234567890123456


@pytest.mark.parametrize(
    ("sample", "content", "sender"),
    [
        (DOC_ENCRYPTED_SAMPLE, "abcdteT", "oyORnuP8q7ou2gfYjqLzSIWZf0rs"),
        (WECHATPY_ENCRYPTED_SAMPLE, "test", "messense"),
    ],
    ids=["tencent", "wechatpy"],
)
def test_published_encrypted_samples_decrypt(
    sample: EncryptedSample, content: str, sender: str
) -> None:
    crypto = WeChatCrypto(sample.token, sample.aes_key, sample.appid)
    xml = crypto.decrypt_message(sample.body, sample.msg_signature, sample.timestamp, sample.nonce)
    message = parse_message(xml)
    assert isinstance(message, TextMessage)
    assert (message.content, message.source) == (content, sender)
    with pytest.raises(InvalidSignatureException):
        crypto.decrypt_message(sample.body, "0" * 40, sample.timestamp, sample.nonce)


def test_our_account_key_is_a_valid_encoding_aes_key() -> None:
    assert len(ACCOUNT.aes_key) == 43
    assert len(ACCOUNT.crypto().key) == 32


# ---------------------------------------------------------------------- the API fake


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeWechat]:
    async with FakeWechat(appid=ACCOUNT.appid, secret=ACCOUNT.secret) as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """The calls the app will make, with aiohttp, raw UTF-8 JSON like the real API wants."""

    def __init__(self, fake: FakeWechat, http: aiohttp.ClientSession) -> None:
        self.fake, self.http = fake, http

    async def token(self, **overrides: str) -> dict[str, Any]:
        params = {"grant_type": "client_credential", "appid": ACCOUNT.appid}
        params["secret"] = ACCOUNT.secret
        params.update(overrides)
        return await self.get("/cgi-bin/token", params)

    async def get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        async with self.http.get(self.fake.base_url + path, params=params) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json; encoding=utf-8"
            return await resp.json()

    async def post(
        self, path: str, body: Any, token: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        token = token or self.fake.current_token or (await self.token())["access_token"]
        if "json" not in kw and "data" not in kw:
            kw["data"] = json.dumps(body, ensure_ascii=False).encode()
        async with self.http.post(
            self.fake.base_url + path, params={"access_token": token}, **kw
        ) as resp:
            assert resp.status == 200
            return await resp.json()

    async def send_text(
        self, openid: str, content: str, token: str | None = None
    ) -> dict[str, Any]:
        body = {"touser": openid, "msgtype": "text", "text": {"content": content}}
        return await self.post("/cgi-bin/message/custom/send", body, token)


@pytest.fixture
def api(fake: FakeWechat, http: aiohttp.ClientSession) -> Api:
    return Api(fake, http)


async def test_token_fetched_counted_and_validated(fake: FakeWechat, api: Api) -> None:
    answer = await api.token()
    assert answer["expires_in"] == 7200 and set(answer) == {"access_token", "expires_in"}
    assert len(answer["access_token"]) > 100 and answer["access_token"] == fake.current_token
    assert fake.token_requests == 1
    assert await api.token(appid="wxnope") == {"errcode": 40013, "errmsg": "invalid appid"}
    assert await api.token(secret="nope") == {"errcode": 40125, "errmsg": "invalid appsecret"}
    assert (await api.token(appid=""))["errcode"] == 41002
    assert (await api.token(grant_type="password"))["errcode"] == 40002
    assert fake.token_requests == 5
    assert fake.calls[0].query["appid"] == ACCOUNT.appid


async def test_token_lifecycle(fake: FakeWechat, api: Api) -> None:
    old = (await api.token())["access_token"]
    assert (await api.send_text(OPENID, "1"))["errcode"] == 0
    new = (await api.token())["access_token"]
    assert new != old
    # The old token keeps working for the 5-minute overlap, then dies with 40001.
    assert (await api.send_text(OPENID, "old token, within 5 min", token=old))["errcode"] == 0
    fake.advance(301)
    assert (await api.send_text(OPENID, "old token, too late", token=old))["errcode"] == 40001
    assert (await api.send_text(OPENID, "2"))["errcode"] == 0
    fake.advance(7200)
    assert (await api.send_text(OPENID, "3")) == {
        "errcode": 42001,
        "errmsg": "access_token expired",
    }
    await api.token()
    fake.expire_tokens()
    answer = await api.post("/cgi-bin/message/custom/send", {}, token=new)
    assert answer == {
        "errcode": 40001,
        "errmsg": "invalid credential, access_token is invalid or not latest",
    }
    assert (await api.get("/cgi-bin/menu/get", {}))["errcode"] == 41001


async def test_custom_send_recorded_and_validated(fake: FakeWechat, api: Api) -> None:
    assert await api.send_text(OPENID, "你好") == {"errcode": 0, "errmsg": "ok"}
    menu = {
        "touser": OPENID,
        "msgtype": "msgmenu",
        "msgmenu": {
            "head_content": "选择充电口",
            "list": [{"id": "p1", "content": "1号口"}, {"id": "p2", "content": "2号口"}],
            "tail_content": "",
        },
    }
    assert (await api.post("/cgi-bin/message/custom/send", menu))["errcode"] == 0
    sent = fake.sent_to(OPENID)
    assert [m["kind"] for m in sent] == ["custom", "custom"]
    assert sent[0]["text"] == {"content": "你好"}
    assert fake.texts_to(OPENID) == ["你好", "选择充电口\n1号口\n2号口"]
    call = fake.calls[-1]
    assert (call.path, call.method, call.body, call.ok) == (
        "/cgi-bin/message/custom/send",
        "POST",
        menu,
        True,
    )
    assert call.query["access_token"] == fake.current_token

    fake.closed_window.add(OPENID)
    assert await api.send_text(OPENID, "late") == {
        "errcode": 45015,
        "errmsg": "response out of time limit or subscription is canceled",
    }
    fake.closed_window.clear()
    location = {"touser": OPENID, "msgtype": "location", "location": {"lat": 1}}
    assert (await api.post("/cgi-bin/message/custom/send", location))["errcode"] == 40008
    assert (await api.post("/cgi-bin/message/custom/send", None, data=b""))["errcode"] == 44002
    no_user = {"msgtype": "text", "text": {"content": "x"}}
    assert (await api.post("/cgi-bin/message/custom/send", no_user))["errcode"] == 40003
    assert (await api.send_text(OPENID, "桩" * 682))["errcode"] == 0  # 2046 bytes
    assert (await api.send_text(OPENID, "桩" * 683))["errcode"] == 45002  # 2049 bytes
    # aiohttp's json= escapes Chinese as \uXXXX; WeChat wants raw UTF-8.
    escaped = {"touser": OPENID, "msgtype": "text", "text": {"content": "你好"}}
    answer = await api.post("/cgi-bin/message/custom/send", None, json=escaped)
    assert answer["errcode"] == 40033
    # Only successful sends count as sent.
    assert len(fake.sent_to(OPENID)) == 3


async def test_template_send(fake: FakeWechat, api: Api) -> None:
    fake.templates = {"tpl-bill"}
    await api.send_text(OPENID, "before")
    body = {
        "touser": OPENID,
        "template_id": "tpl-bill",
        "url": "https://chargebot.example/bill/1",
        "data": {
            "thing1": {"value": "P0001-03"},
            "amount2": {"value": "¥1.20", "color": "#173177"},
        },
    }
    answer = await api.post("/cgi-bin/message/template/send", body)
    assert answer["errcode"] == 0 and answer["errmsg"] == "ok" and isinstance(answer["msgid"], int)
    sent = fake.sent_to(OPENID)
    assert [m["kind"] for m in sent] == ["custom", "template"]
    assert sent[1]["msgid"] == answer["msgid"] and sent[1]["data"]["thing1"]["value"] == "P0001-03"
    assert fake.texts_to(OPENID)[1] == "P0001-03\n¥1.20"
    unknown = await api.post("/cgi-bin/message/template/send", {**body, "template_id": "nope"})
    assert unknown == {"errcode": 40037, "errmsg": "invalid template_id"}
    bad = await api.post("/cgi-bin/message/template/send", {**body, "data": {"k": "v"}})
    assert bad["errcode"] == 47003
    fake.unsubscribed.add(OPENID)
    assert (await api.post("/cgi-bin/message/template/send", body))["errcode"] == 43004


# The example from wechatpy's WeChatMenu.create docstring (WeChat's own menu example).
DOC_MENU = {
    "button": [
        {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY_MUSIC"},
        {"type": "click", "name": "歌手简介", "key": "V1001_TODAY_SINGER"},
        {
            "name": "菜单",
            "sub_button": [
                {"type": "view", "name": "搜索", "url": "http://www.soso.com/"},
                {"type": "view", "name": "视频", "url": "http://v.qq.com/"},
                {"type": "click", "name": "赞一下我们", "key": "V1001_GOOD"},
            ],
        },
    ]
}


def leaf(**kw: Any) -> dict[str, Any]:
    return {"type": "click", "name": "附近", "key": "NEARBY", **kw}


@pytest.mark.parametrize(
    ("menu", "errcode"),
    [
        ({"button": []}, 40016),
        ({"button": [leaf()] * 4}, 40016),
        ({"button": [{"name": "更多", "sub_button": [leaf()] * 6}]}, 40017),
        ({"button": [leaf(type="tap")]}, 40015),
        ({"button": [leaf(name="附近的充电桩呀")]}, 40018),  # 21 bytes > 16
        ({"button": [leaf(key=None)]}, 40019),
        ({"button": [{"type": "view", "name": "官网"}]}, 40020),
        ({"button": [{"name": "更多", "sub_button": [leaf(type="tap")]}]}, 40024),
        ({"button": [{"name": "更多", "sub_button": [leaf(name="桩" * 21)]}]}, 40025),
        ({"button": [{"type": "location_select", "name": "位置", "key": "LOC"}]}, 0),
    ],
)
async def test_menu_create_validation(
    fake: FakeWechat, api: Api, menu: dict[str, Any], errcode: int
) -> None:
    assert (await api.post("/cgi-bin/menu/create", menu))["errcode"] == errcode
    assert (fake.menu is not None) == (errcode == 0)


async def test_menu_create_and_get(fake: FakeWechat, api: Api) -> None:
    token = (await api.token())["access_token"]
    assert await api.get("/cgi-bin/menu/get", {"access_token": token}) == {
        "errcode": 46003,
        "errmsg": "menu no exist",
    }
    assert await api.post("/cgi-bin/menu/create", DOC_MENU) == {"errcode": 0, "errmsg": "ok"}
    assert fake.menu == DOC_MENU
    got = await api.get("/cgi-bin/menu/get", {"access_token": token})
    assert got["menu"]["button"][0] == {**DOC_MENU["button"][0], "sub_button": []}
    assert got["menu"]["button"][2]["sub_button"][2]["name"] == "赞一下我们"


async def test_qrcode_tickets(fake: FakeWechat, api: Api) -> None:
    body = {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": SCENE}}}
    answer = await api.post("/cgi-bin/qrcode/create", body)
    assert set(answer) == {"ticket", "url"}
    assert answer["url"].startswith("http://weixin.qq.com/q/")
    assert fake.qr_tickets[answer["ticket"]].scene == SCENE
    assert fake.ticket_for(SCENE) == answer["ticket"]

    temporary = {
        "expire_seconds": 604800,
        "action_name": "QR_STR_SCENE",
        "action_info": {"scene": {"scene_str": "bind_42"}},
    }
    answer = await api.post("/cgi-bin/qrcode/create", temporary)
    assert answer["expire_seconds"] == 604800
    assert fake.qr_tickets[answer["ticket"]].expire_seconds == 604800
    too_long = {
        "action_name": "QR_LIMIT_STR_SCENE",
        "action_info": {"scene": {"scene_str": "x" * 65}},
    }
    assert (await api.post("/cgi-bin/qrcode/create", too_long))["errcode"] == 40053

    # The ticket the fake issued is what the simulated user's scan carries.
    user = WechatUser(OPENID, ACCOUNT)
    event = parse_message(unwrap(user.scan(SCENE, ticket=fake.ticket_for(SCENE))))
    assert isinstance(event, ScanEvent) and event.ticket == fake.ticket_for(SCENE)


async def test_media_get(fake: FakeWechat, api: Api, http: aiohttp.ClientSession) -> None:
    token = (await api.token())["access_token"]
    fake.add_media("media-1")
    url = fake.base_url + "/cgi-bin/media/get"
    async with http.get(url, params={"access_token": token, "media_id": "media-1"}) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"
        data = await resp.read()
    assert data == FAKE_JPEG and data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")
    unknown = await api.get("/cgi-bin/media/get", {"access_token": token, "media_id": "nope"})
    assert unknown == {"errcode": 40007, "errmsg": "invalid media_id"}


async def test_fail_next_is_fifo_per_path(fake: FakeWechat, api: Api) -> None:
    fake.fail_next("message/custom/send", 45047, "out of response count limit")
    fake.fail_next("/cgi-bin/message/custom/send", -1, "system error")
    assert await api.send_text(OPENID, "a") == {
        "errcode": 45047,
        "errmsg": "out of response count limit",
    }
    # Other paths are unaffected.
    assert (await api.post("/cgi-bin/menu/create", DOC_MENU))["errcode"] == 0
    assert (await api.send_text(OPENID, "b"))["errcode"] == -1
    assert (await api.send_text(OPENID, "c"))["errcode"] == 0
    assert fake.texts_to(OPENID) == ["c"]


async def test_unknown_endpoint_is_a_404(fake: FakeWechat, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.base_url + "/cgi-bin/message/custom/sendd") as resp:
        assert resp.status == 404


async def test_wait_for_finds_later_calls_and_times_out(fake: FakeWechat, api: Api) -> None:
    await api.token()
    start = len(fake.calls)

    async def later() -> None:
        await asyncio.sleep(0.05)
        await api.send_text(OPENID, "ready")

    task = asyncio.create_task(later())
    call = await fake.wait_for(lambda c: c.body["text"]["content"] == "ready", 5, start=start)
    await task
    assert isinstance(call, Call) and call.ok
    began = time.monotonic()
    with pytest.raises(AssertionError, match="no matching WeChat API call within 0.2s") as info:
        await fake.wait_for(lambda c: c.body["touser"] == "nobody", timeout=0.2)
    assert time.monotonic() - began < 1
    assert "/cgi-bin/message/custom/send" in str(info.value)


async def test_delay_lets_concurrent_token_requests_overlap(fake: FakeWechat, api: Api) -> None:
    fake.set_delay("token", 0.3)
    began = time.monotonic()
    answers = await asyncio.gather(*(api.token() for _ in range(20)))
    assert time.monotonic() - began < 2  # overlapped, not 20 x 0.3 s
    assert fake.token_requests == 20
    assert fake.max_in_flight["/cgi-bin/token"] == 20
    # Every token issued during the stampede is still valid (5-minute overlap).
    tokens = {a["access_token"] for a in answers}
    assert len(tokens) == 20
    for token in list(tokens)[:3]:
        answer = await api.post("/cgi-bin/menu/create", DOC_MENU, token=token)
        assert answer["errcode"] == 0


async def test_wechatpy_client_against_the_fake(fake: FakeWechat) -> None:
    """wechatpy's (synchronous, requests-based) client works against the fake -- once its
    hard-coded token URL is redirected -- and its refresh-on-40001 retry kicks in."""

    class Client(WeChatClient):
        API_BASE_URL = fake.api_base_url

        def fetch_access_token(self) -> dict[str, Any]:
            # WeChatClient.fetch_access_token ignores API_BASE_URL (hard-coded host).
            return self._fetch_access_token(
                url=fake.base_url + "/cgi-bin/token",
                params={
                    "grant_type": "client_credential",
                    "appid": self.appid,
                    "secret": self.secret,
                },
            )

    def run() -> None:
        client = Client(ACCOUNT.appid, ACCOUNT.secret)
        client._http.trust_env = False  # never route 127.0.0.1 through an env proxy
        client.message.send_text(OPENID, "你好，wechatpy")
        fake.expire_tokens()
        client.message.send_text(OPENID, "after 40001")
        assert client.qrcode.create(
            {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": SCENE}}}
        )["ticket"]
        client.menu.create(DOC_MENU)
        assert client.menu.get()["menu"]["button"][2]["name"] == "菜单"
        fake.closed_window.add(OPENID)
        with pytest.raises(WeChatClientException) as info:
            client.message.send_text(OPENID, "late")
        assert info.value.errcode == 45015

    await asyncio.to_thread(run)
    assert fake.texts_to(OPENID) == ["你好，wechatpy", "after 40001"]
    assert fake.token_requests == 2
    assert [c.errcode for c in fake.calls if c.path.endswith("custom/send")] == [0, 40001, 0, 45015]
