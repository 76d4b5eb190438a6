"""A simulated WeChat user, and the WeChat server that POSTs their messages to our ``/wechat``.

Wire format (official-account "message push", checked against wechatpy 1.8.18 and WeChat's
消息加解密说明 page):

* Every push is ``POST {url}?signature=S&timestamp=T&nonce=N&openid=O`` with a ``text/xml``
  body.  ``signature = sha1("".join(sorted([token, timestamp, nonce])))``.
* Safe mode (安全模式) adds ``&encrypt_type=aes&msg_signature=M`` and the body carries only
  ``<ToUserName>`` and ``<Encrypt>``;  ``M = sha1("".join(sorted([token, timestamp, nonce,
  encrypt])))``.  The ``signature`` parameter is still there and still signs only
  token/timestamp/nonce.
* Our passive reply in safe mode must be ``<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/>
  </xml>`` -- exactly what ``WeChatCrypto.encrypt_message`` returns.  An empty body or the string
  ``success`` means "no reply" and stops WeChat's retries.

The encryption itself is done by wechatpy (``wechatpy.crypto.WeChatCrypto``), so a fault here
is a fault in the same library the app uses, not in a hand-rolled copy of the algorithm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import xmltodict
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

__all__ = [
    "DOC_ENCRYPTED_SAMPLE",
    "DOC_TEXT_MESSAGE",
    "WECHATPY_ENCRYPTED_SAMPLE",
    "Delivery",
    "EncryptedSample",
    "OfficialAccount",
    "WechatUser",
    "read_reply",
    "sign",
    "verify_echo",
]

# Verbatim from wechatpy's own tests: repo wechatpy/wechatpy, tests/test_parser.py,
# test_parse_text_message (the same sample WeChat's 接收普通消息 page shows).  The odd
# indentation is theirs; keeping it proves whitespace between elements is tolerated.
DOC_TEXT_MESSAGE = """<xml>
        <ToUserName><![CDATA[toUser]]></ToUserName>
        <FromUserName><![CDATA[fromUser]]></FromUserName>
         <CreateTime>1348831860</CreateTime>
        <MsgType><![CDATA[text]]></MsgType>
        <Content><![CDATA[this is a test]]></Content>
        <MsgId>1234567890123456</MsgId>
        </xml>"""


@dataclass(frozen=True)
class EncryptedSample:
    """A published encrypted push with everything needed to verify and decrypt it."""

    token: str
    aes_key: str
    appid: str
    timestamp: str
    nonce: str
    msg_signature: str
    body: str
    source: str


# Tencent's own official-account sample: the Python ``Sample.py`` in the WXBizMsgCrypt demo
# (cryptoDemo.zip) linked from the 消息加解密说明 page; read from a verbatim copy at
# charlesXu86/Chatbot_CN, Chatbot_Web/impl/weixin/Sample.py.  Note its body carries the
# plaintext fields *and* <Encrypt> -- that is compatibility mode (兼容模式); safe mode sends only
# ToUserName + Encrypt.  Decrypts to a text message "abcdteT" from oyORnuP8q7ou2gfYjqLzSIWZf0rs.
DOC_ENCRYPTED_SAMPLE = EncryptedSample(
    token="spamtest",
    aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    appid="wx2c2769f8efd9abc2",
    timestamp="1409735669",
    nonce="1320562132",
    msg_signature="5d197aaffba7e9b25a30732f161a50dee96bd5fa",
    body=(
        "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><FromUserName><![CDATA["
        "oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName><CreateTime>1409735668</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[abcdteT]]></Content><MsgId>"
        "6054768590064713728</MsgId><Encrypt><![CDATA[hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHv"
        "xYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIIt"
        "b52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6u"
        "x5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77"
        "TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1"
        "ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=]]></Encrypt></xml>"
    ),
    source="Tencent WXBizMsgCrypt Sample.py (official-account demo)",
)

# wechatpy's own encrypted fixture: repo wechatpy/wechatpy, tests/test_crypto.py,
# test_decrypt_message.  It was made for WeChat Work (note <AgentID>), but the cipher is the
# same, so the official-account ``wechatpy.crypto.WeChatCrypto`` decrypts it too.
WECHATPY_ENCRYPTED_SAMPLE = EncryptedSample(
    token="123456",
    aes_key="kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
    appid="wx49f0ab532d5d035a",
    timestamp="1411525903",
    nonce="461056294",
    msg_signature="74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
    body=(
        "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n"
        "<Encrypt><![CDATA[RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVOD"
        "GajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzE"
        "gMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1y"
        "CF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdsho"
        "QgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbc"
        "X2e8K9QaNWHp91eBdCRxthuL0=]]></Encrypt>\n"
        "<AgentID><![CDATA[1]]></AgentID>\n"
        "</xml>"
    ),
    source="wechatpy tests/test_crypto.py (WeChat Work sample)",
)


@dataclass(frozen=True)
class OfficialAccount:
    """What is configured in bot.toml ``[wechat]`` (token/secret/aes_key come from env)."""

    token: str = "chargebot-wechat-token"
    appid: str = "wx1234567890abcdef"
    # 43 characters: WeChat's EncodingAESKey is base64 of a 32-byte key without the "=".
    # This one is wechatpy's test key (tests/test_crypto.py).
    aes_key: str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
    original_id: str = "gh_0123456789ab"  # the account's ToUserName in every push
    # Not part of the push protocol; here so FakeWechat and the app can share one config.
    secret: str = "chargebot-wechat-secret"

    def crypto(self) -> WeChatCrypto:
        return WeChatCrypto(self.token, self.aes_key, self.appid)


def sign(*parts: str) -> str:
    """WeChat's signature: sha1 over the sorted parts, concatenated without separator."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def _nonce() -> str:
    # WeChat's nonces are decimal digits (see the 消息加解密说明 examples).
    return str(100_000_000 + secrets.randbelow(1_900_000_000))


def _cdata(text: str) -> str:
    # "]]>" cannot appear inside CDATA; split it across two sections so any content survives.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _render(fields: list[tuple[str, Any]]) -> str:
    """Element per line, strings as CDATA and numbers bare -- the layout WeChat pushes."""
    parts = []
    for name, value in fields:
        inner = _cdata(value) if isinstance(value, str) else str(value)
        parts.append(f"<{name}>{inner}</{name}>")
    return "<xml>" + "\n".join(parts) + "\n</xml>"


class _Bare:
    """Pre-formatted number: not a str, so _render writes it without CDATA."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _coordinate(value: float) -> _Bare:
    # WeChat sends coordinates bare with 6 decimals (e.g. <Location_X>23.134521</Location_X>).
    return _Bare(f"{value:.6f}")


@dataclass
class Delivery:
    """One push exactly as WeChat's server would POST it.

    WeChat retries a push (same MsgId) when we don't answer within 5 s; to simulate a retry
    just POST the same Delivery again (``same_again()``), or use ``WechatUser.resigned()`` for a
    retry that carries fresh timestamp/nonce, so deduplication must use MsgId (or
    FromUserName + CreateTime for events, which have no MsgId).
    """

    params: dict[str, str]
    body: bytes
    xml: str  # the plaintext XML, for assertions
    openid: str
    create_time: int
    msg_id: int | None = None  # None for events
    encrypted: bool = True
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/xml"})

    def post_args(self, url: str) -> dict[str, Any]:
        """Keyword arguments for ``aiohttp.ClientSession.post(**...)``; ``url`` is the app's
        base URL (``/wechat`` is appended)."""
        return {
            "url": f"{url.rstrip('/')}/wechat",
            "params": dict(self.params),
            "data": self.body,
            "headers": dict(self.headers),
        }

    def same_again(self) -> Delivery:
        """A WeChat retry of this push: byte-for-byte the same request."""
        return self

    @property
    def dedupe_key(self) -> str:
        """What WeChat's docs say to deduplicate on: MsgId, or FromUserName + CreateTime."""
        return str(self.msg_id) if self.msg_id is not None else f"{self.openid}:{self.create_time}"


class WechatUser:
    """A WeChat user talking to one official account.

    Every method returns a Delivery ready to POST; nothing is sent by itself, so a test
    controls timing, retries and ordering.
    """

    # Shared by all users: MsgIds are unique across the whole account, and 64-bit like real ones.
    _msg_ids = itertools.count(7_300_000_000_000_000_001)

    def __init__(self, openid: str, account: OfficialAccount, *, encrypted: bool = True) -> None:
        self.openid = openid
        self.account = account
        self.encrypted = encrypted

    # ------------------------------------------------------------------ messages

    def text(self, content: str) -> Delivery:
        return self._message("text", [("Content", content)])

    def menu_choice(self, item_id: str, content: str) -> Delivery:
        """The user tapped an item of a ``msgmenu`` customer-service message: WeChat pushes a
        text message with the item's content plus ``<bizmsgmenuid>``."""
        return self._message("text", [("Content", content)], tail=[("bizmsgmenuid", item_id)])

    def location(self, lat: float, lon: float, label: str = "", *, scale: int = 15) -> Delivery:
        """A location the user picked in the chat: Location_X is the latitude, Location_Y the
        longitude (WeChat's naming, not x/y)."""
        return self._message(
            "location",
            [
                ("Location_X", _coordinate(lat)),
                ("Location_Y", _coordinate(lon)),
                ("Scale", scale),
                ("Label", label),
            ],
        )

    def image(self, pic_url: str = "http://mmbiz.qpic.cn/x", media_id: str = "media-1") -> Delivery:
        # WeChat puts MsgId before MediaId for images.
        return self._message("image", [("PicUrl", pic_url)], tail=[("MediaId", media_id)])

    # ------------------------------------------------------------------ events

    def subscribe(self, scene: str | None = None, *, ticket: str | None = None) -> Delivery:
        """Follow the account; with ``scene`` the follow came from scanning a parametric QR
        code, which WeChat reports as EventKey ``qrscene_<scene>`` plus the code's Ticket."""
        if scene is None:
            # A plain follow still carries an empty EventKey in real pushes.
            return self._event("subscribe", [("EventKey", "")])
        return self._event(
            "subscribe",
            [("EventKey", f"qrscene_{scene}"), ("Ticket", ticket or _ticket_for(scene))],
        )

    def scan(self, scene: str, *, ticket: str | None = None) -> Delivery:
        """Scan a parametric QR code while already following: EventKey is the bare scene."""
        return self._event("SCAN", [("EventKey", scene), ("Ticket", ticket or _ticket_for(scene))])

    def location_event(self, lat: float, lon: float, precision: float = 30.0) -> Delivery:
        """The periodic/entry location report (only if the account enabled 上报地理位置)."""
        return self._event(
            "LOCATION",
            [
                ("Latitude", _coordinate(lat)),
                ("Longitude", _coordinate(lon)),
                ("Precision", _coordinate(precision)),
            ],
        )

    def click(self, key: str) -> Delivery:
        return self._event("CLICK", [("EventKey", key)])

    def view(self, url: str) -> Delivery:
        return self._event("VIEW", [("EventKey", url)])

    def unsubscribe(self) -> Delivery:
        return self._event("unsubscribe", [("EventKey", "")])

    def template_finished(self, msg_id: int, status: str = "success") -> Delivery:
        """WeChat's report on a template message we sent (``MsgID`` is the msgid
        template/send returned; status ``success``, ``failed:user block`` or
        ``failed: system failed``)."""
        return self._event("TEMPLATESENDJOBFINISH", [("MsgID", msg_id), ("Status", status)])

    # ------------------------------------------------------------------ retries and forgeries

    def resigned(self, delivery: Delivery) -> Delivery:
        """The same push (same XML, MsgId and CreateTime) re-signed with a fresh timestamp and
        nonce -- a retry whose query string differs from the first attempt."""
        return self._deliver(
            delivery.xml, delivery.create_time, delivery.msg_id, encrypted=delivery.encrypted
        )

    @staticmethod
    def tamper(delivery: Delivery, *, only: str | None = None) -> Delivery:
        """A copy whose signatures no longer match.  By default every signature parameter is
        corrupted; ``only="signature"`` or ``only="msg_signature"`` corrupts just that one
        (an app in safe mode must reject either)."""
        names = (
            [only] if only else [n for n in ("signature", "msg_signature") if n in delivery.params]
        )
        params = dict(delivery.params)
        for name in names:
            if name not in params:
                raise ValueError(f"delivery has no {name!r} parameter")
            good = params[name]
            # Still 40 lowercase hex digits, so only a real comparison catches it.
            params[name] = ("0" if good[0] != "0" else "1") + good[1:]
        return dataclasses.replace(delivery, params=params)

    # ------------------------------------------------------------------ reading our replies

    def read_reply(self, body: bytes) -> dict[str, Any] | None:
        """``read_reply`` for a reply to this user: also checks it is addressed to them and
        comes from the account."""
        reply = read_reply(self.account, body, encrypted=self.encrypted)
        if reply is not None:
            if reply.get("ToUserName") != self.openid:
                raise AssertionError(
                    f"reply addressed to {reply.get('ToUserName')!r}, not {self.openid!r}: {reply}"
                )
            if reply.get("FromUserName") != self.account.original_id:
                raise AssertionError(
                    f"reply FromUserName {reply.get('FromUserName')!r} is not the account's "
                    f"original id {self.account.original_id!r}: {reply}"
                )
        return reply

    # ------------------------------------------------------------------ plumbing

    def _head(self, msg_type: str, create_time: int) -> list[tuple[str, Any]]:
        return [
            ("ToUserName", self.account.original_id),
            ("FromUserName", self.openid),
            ("CreateTime", create_time),
            ("MsgType", msg_type),
        ]

    def _message(
        self,
        msg_type: str,
        fields: list[tuple[str, Any]],
        *,
        tail: list[tuple[str, Any]] | None = None,
    ) -> Delivery:
        create_time = int(time.time())
        msg_id = next(self._msg_ids)
        body = [*self._head(msg_type, create_time), *fields, ("MsgId", msg_id), *(tail or [])]
        return self._deliver(_render(body), create_time, msg_id)

    def _event(self, event: str, fields: list[tuple[str, Any]]) -> Delivery:
        create_time = int(time.time())
        body = [*self._head("event", create_time), ("Event", event), *fields]
        return self._deliver(_render(body), create_time, None)

    def _deliver(
        self, xml: str, create_time: int, msg_id: int | None, *, encrypted: bool | None = None
    ) -> Delivery:
        account = self.account
        encrypted = self.encrypted if encrypted is None else encrypted
        timestamp, nonce = str(int(time.time())), _nonce()
        params = {
            "signature": sign(account.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": self.openid,
        }
        if not encrypted:
            body = xml.encode()
        else:
            # encrypt_message builds a *reply* envelope (Encrypt/MsgSignature/TimeStamp/Nonce);
            # a push carries the same Encrypt and signature, just laid out differently:
            # Encrypt in the body next to ToUserName, the signature in the query string.
            envelope = xmltodict.parse(account.crypto().encrypt_message(xml, nonce, timestamp))
            encrypt = envelope["xml"]["Encrypt"]
            params["encrypt_type"] = "aes"
            params["msg_signature"] = envelope["xml"]["MsgSignature"]
            body = (
                "<xml>\n"
                f"    <ToUserName>{_cdata(account.original_id)}</ToUserName>\n"
                f"    <Encrypt>{_cdata(encrypt)}</Encrypt>\n"
                "</xml>"
            ).encode()
        return Delivery(
            params=params,
            body=body,
            xml=xml,
            openid=self.openid,
            create_time=create_time,
            msg_id=msg_id,
            encrypted=encrypted,
        )


def _ticket_for(scene: str) -> str:
    # Shaped like a real ticket (base64-ish, starts with "gQ"); stable per scene so a test
    # can predict it without a FakeWechat.
    return "gQ" + hashlib.sha1(scene.encode()).hexdigest()[:40] + "=="


def verify_echo(account: OfficialAccount, echostr: str) -> dict[str, str]:
    """Query parameters of WeChat's server-verification ``GET /wechat``.  The app must answer
    with ``echostr`` as-is (plain text, even in safe mode) when the signature checks out."""
    timestamp, nonce = str(int(time.time())), _nonce()
    return {
        "signature": sign(account.token, timestamp, nonce),
        "echostr": echostr,
        "timestamp": timestamp,
        "nonce": nonce,
    }


def read_reply(account: OfficialAccount, body: bytes, *, encrypted: bool) -> dict[str, Any] | None:
    """Parse our passive reply the way WeChat would.

    Returns the reply's fields as a dict (``{"MsgType": "text", "Content": ..., ...}``; nested
    elements such as ``Image``/``Articles`` stay nested dicts), or None for the "nothing to
    say" acknowledgement (empty body or ``success``).  In safe mode the reply must be the
    encrypted envelope and its MsgSignature must verify; anything else raises AssertionError,
    because WeChat would show the user "该公众号暂时无法提供服务".
    """
    text = body.decode("utf-8").strip()
    if text in ("", "success"):
        return None
    try:
        outer = xmltodict.parse(text)["xml"]
    except Exception as exc:
        raise AssertionError(f"reply is not WeChat XML: {text[:200]!r}") from exc
    if encrypted:
        missing = {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"} - set(outer or {})
        if missing:
            raise AssertionError(
                f"safe-mode reply must be encrypted; missing {sorted(missing)} in {text[:200]!r}"
            )
        try:
            inner = account.crypto().decrypt_message(
                text, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"]
            )
        except InvalidSignatureException as exc:
            raise AssertionError("reply MsgSignature does not verify") from exc
        except InvalidAppIdException as exc:
            raise AssertionError("reply was encrypted for another appid") from exc
        fields = xmltodict.parse(inner)["xml"]
    else:
        if outer and "Encrypt" in outer:
            raise AssertionError("plaintext push answered with an encrypted reply")
        fields = outer
    if not fields or "MsgType" not in fields:
        raise AssertionError(f"reply has no MsgType: {fields!r}")
    return dict(fields)
