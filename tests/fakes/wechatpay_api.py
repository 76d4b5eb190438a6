"""A local fake of WeChat Pay API v3 (``api.mch.weixin.qq.com``) and of its notifications.

Point the app at it with ``payments.wechatpay.api_base_url = fake.base_url``. It models:

* ``POST /v3/pay/transactions/jsapi`` → ``{"prepay_id"}`` and ``POST /v3/pay/transactions/native``
  → ``{"code_url"}``. The ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
  signature="…",timestamp="…",serial_no="…"`` header is checked with the merchant PUBLIC key over
  ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``; a bad one gets 401 ``SIGN_ERROR``
  (unsigned, as the real server does), a bad body 400 ``PARAM_ERROR``.
* Successful answers are signed with the platform private key: headers ``Wechatpay-Timestamp``,
  ``Wechatpay-Nonce``, ``Wechatpay-Signature`` (over ``TIMESTAMP\\nNONCE\\nBODY\\n``),
  ``Wechatpay-Serial``, ``Wechatpay-Signature-Type`` and ``Request-ID``.
* ``notify(app_url, out_trade_no, total, forge=…)`` sends a real payment notification:
  the transaction encrypted AEAD_AES_256_GCM with the APIv3 key (12-char nonce,
  associated_data "transaction"), the body signed with the platform key.

* ``pay(app_url, params=…, openid=…)`` is the rider confirming in WeChat: what the WeChat client
  checks before it shows the cashier (``getBrandWCPayRequest``'s parameters: appId, a known
  prepay_id in ``package``, ``signType`` RSA, a fresh ``timeStamp``, and ``paySign`` verified with
  the merchant public key over ``appId\\ntimeStamp\\nnonceStr\\npackage\\n``; only the order's
  payer openid may pay it), then the notification for the order's own amount. ``pay(app_url,
  code_url=…)`` is a scan of a Native order's QR code.

State a test can set: ``answer_forge`` (None | "signature" | "unsigned" | "serial") to spoil the
next answers' signatures, ``fail_next`` ((status, code, message) for the next order call).
State a test can read: ``calls`` (every order call, with ``auth_ok``), ``orders``,
``last_notify`` (status, JSON body of our app's last answer to a notification), ``sent`` (every
notification's headers and body, to replay one exactly).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Call", "FakeWechatPay", "Order", "PayRefused"]

AUTH_RE = re.compile(r'^WECHATPAY2-SHA256-RSA2048 (.+)$')
PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
NOTIFY_PATH = "/payments/wechatpay/notify"


def _sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


@dataclass
class Call:
    path: str
    body: dict[str, Any]
    auth: dict[str, str]
    auth_ok: bool
    auth_error: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Order:
    out_trade_no: str
    trade_type: str
    body: dict[str, Any]
    prepay_id: str | None = None
    code_url: str | None = None
    paid: bool = False

    @property
    def total(self) -> int:
        return int(self.body["amount"]["total"])

    @property
    def openid(self) -> str | None:
        return (self.body.get("payer") or {}).get("openid")


class PayRefused(Exception):  # noqa: N818 - what the WeChat client shows instead of a cashier
    pass


class FakeWechatPay:
    def __init__(
        self, *, mchid: str, appid: str, merchant_public_key: rsa.RSAPublicKey,
        merchant_serial: str, apiv3_key: str, platform_private_key: rsa.RSAPrivateKey,
        platform_serial: str,
    ) -> None:
        assert len(apiv3_key.encode()) == 32
        self.mchid, self.appid = mchid, appid
        self.merchant_public_key = merchant_public_key
        self.merchant_serial = merchant_serial
        self.apiv3_key = apiv3_key
        self.platform_private_key = platform_private_key
        self.platform_serial = platform_serial
        self.calls: list[Call] = []
        self.orders: dict[str, Order] = {}
        self.answer_forge: str | None = None
        self.fail_next: tuple[int, str, str] | None = None
        self.last_notify: tuple[int, Any] | None = None
        self.sent: list[tuple[dict[str, str], bytes]] = []  # every notification, to replay
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.base_url = ""

    # --- server ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v3/pay/transactions/jsapi", self._jsapi)
        app.router.add_post("/v3/pay/transactions/native", self._native)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _check_auth(self, request: web.Request, body: bytes) -> tuple[dict[str, str], str]:
        """The parsed Authorization parameters and an error ('' when the signature holds)."""
        m = AUTH_RE.match(request.headers.get("Authorization", ""))
        if not m:
            return {}, "no WECHATPAY2-SHA256-RSA2048 Authorization"
        auth = dict(PARAM_RE.findall(m.group(1)))
        missing = {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} - auth.keys()
        if missing:
            return auth, f"Authorization lacks {sorted(missing)}"
        if auth["mchid"] != self.mchid:
            return auth, "mchid in Authorization is not this merchant"
        if auth["serial_no"] != self.merchant_serial:
            return auth, "serial_no is not the merchant certificate's"
        if not auth["timestamp"].isdigit() or abs(time.time() - int(auth["timestamp"])) > 300:
            return auth, "timestamp expired"
        message = (f"{request.method}\n{request.raw_path}\n{auth['timestamp']}\n"
                   f"{auth['nonce_str']}\n").encode() + body + b"\n"
        try:
            self.merchant_public_key.verify(base64.b64decode(auth["signature"]), message,
                                            padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return auth, "signature does not verify"
        return auth, ""

    def _answer(self, data: dict[str, Any], status: int = 200) -> web.Response:
        body = json.dumps(data, separators=(",", ":")).encode()
        ts, nonce = str(int(time.time())), secrets.token_hex(16).upper()
        key = self.platform_private_key
        forge = self.answer_forge
        if forge == "signature":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        headers = {
            "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": _sign(key, f"{ts}\n{nonce}\n".encode() + body + b"\n"),
            "Wechatpay-Serial": "0000FORGED" if forge == "serial" else self.platform_serial,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Request-ID": secrets.token_hex(12),
        }
        if forge == "unsigned":
            headers = {"Request-ID": headers["Request-ID"]}
        return web.Response(status=status, body=body, headers=headers,
                            content_type="application/json")

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message}, status=status)

    async def _order(self, request: web.Request, trade_type: str) -> web.Response:
        raw = await request.read()
        auth, error = self._check_auth(request, raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        self.calls.append(Call(request.path, body, auth, not error, error,
                               dict(request.headers)))
        if error:
            return self._error(401, "SIGN_ERROR", error)
        if self.fail_next is not None:
            status, code, message = self.fail_next
            self.fail_next = None
            return self._error(status, code, message)
        amount = body.get("amount") or {}
        problems = [
            name for name, ok in [
                ("appid", body.get("appid") == self.appid),
                ("mchid", body.get("mchid") == self.mchid),
                ("description", isinstance(body.get("description"), str)
                 and 0 < len(body["description"]) <= 127),
                ("out_trade_no", isinstance(body.get("out_trade_no"), str)
                 and re.fullmatch(r"[0-9A-Za-z_\-|*]{6,32}", body["out_trade_no"])),
                ("notify_url", str(body.get("notify_url", "")).startswith("http")),
                ("amount.total", isinstance(amount.get("total"), int) and amount["total"] > 0),
                ("amount.currency", amount.get("currency") == "CNY"),
                ("payer.openid", trade_type != "JSAPI"
                 or bool((body.get("payer") or {}).get("openid"))),
            ] if not ok
        ]
        if problems:
            return self._error(400, "PARAM_ERROR", f"bad or missing: {', '.join(problems)}")
        order = self.orders.get(body["out_trade_no"])
        if order is not None and order.body["amount"] != body["amount"]:
            return self._error(400, "OUT_TRADE_NO_USED", "商户订单号重复")
        if order is None:
            order = Order(body["out_trade_no"], trade_type, body,
                          prepay_id=f"wx{secrets.token_hex(16)}",
                          code_url=f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(6)}")
            self.orders[order.out_trade_no] = order
        if trade_type == "JSAPI":
            return self._answer({"prepay_id": order.prepay_id})
        return self._answer({"code_url": order.code_url})

    async def _jsapi(self, request: web.Request) -> web.Response:
        return await self._order(request, "JSAPI")

    async def _native(self, request: web.Request) -> web.Response:
        return await self._order(request, "NATIVE")

    # --- notifications -----------------------------------------------------------------------

    def transaction(self, out_trade_no: str, total: int, **override: Any) -> dict[str, Any]:
        order = self.orders.get(out_trade_no)
        openid = ((order.body.get("payer") or {}).get("openid") if order else None) or "o-unknown"
        txn = {
            "appid": self.appid, "mchid": self.mchid, "out_trade_no": out_trade_no,
            "transaction_id": f"42000{secrets.randbelow(10**23):023d}",
            "trade_type": order.trade_type if order else "JSAPI", "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
            "success_time": time.strftime("%Y-%m-%dT%H:%M:%S+08:00",
                                          time.gmtime(time.time() + 8 * 3600)),
            "payer": {"openid": openid},
            "amount": {"total": total, "payer_total": total, "currency": "CNY",
                       "payer_currency": "CNY"},
        }
        txn.update(override)
        return txn

    def build_notification(
        self, out_trade_no: str, total: int, *, forge: bool | str = False,
        event_type: str = "TRANSACTION.SUCCESS", timestamp: int | None = None,
        **override: Any,
    ) -> tuple[dict[str, str], bytes]:
        """(headers, body) of a payment notification; `forge` spoils one part of it:
        "signature" (signed by another key), "ciphertext" (a flipped byte, re-signed),
        "serial" (another platform serial), "stale" (timestamp 10 minutes old)."""
        plain = json.dumps(self.transaction(out_trade_no, total, **override),
                           ensure_ascii=False, separators=(",", ":")).encode()
        nonce = secrets.token_urlsafe(9)[:12]
        aad = "transaction"
        ct = bytearray(AESGCM(self.apiv3_key.encode()).encrypt(nonce.encode(), plain,
                                                               aad.encode()))
        if forge == "ciphertext":
            ct[len(ct) // 2] ^= 0x01
        note = {
            "id": secrets.token_hex(18), "create_time": time.strftime(
                "%Y-%m-%dT%H:%M:%S+08:00", time.gmtime(time.time() + 8 * 3600)),
            "resource_type": "encrypt-resource", "event_type": event_type,
            "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(bytes(ct)).decode(),
                         "associated_data": aad, "nonce": nonce},
        }
        body = json.dumps(note, ensure_ascii=False, separators=(",", ":")).encode()
        ts = str(timestamp if timestamp is not None else int(time.time()) - (
            600 if forge == "stale" else 0))
        sig_nonce = secrets.token_hex(16).upper()
        key = self.platform_private_key
        if forge == "signature":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        headers = {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": sig_nonce,
            "Wechatpay-Signature": _sign(key, f"{ts}\n{sig_nonce}\n".encode() + body + b"\n"),
            "Wechatpay-Serial": "5157F09EFDC096DE15EBE81A47057A72FORGED" if forge == "serial"
            else self.platform_serial,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }
        return headers, body

    async def post_notification(self, app_url: str, headers: dict[str, str], body: bytes
                                ) -> int:
        assert self._http is not None, "start() the fake first"
        self.sent.append((headers, body))
        async with self._http.post(app_url.rstrip("/") + NOTIFY_PATH, data=body,
                                   headers=headers) as r:
            text = await r.text()
            try:
                answer: Any = json.loads(text) if text else None
            except ValueError:
                answer = text
            self.last_notify = (r.status, answer)
            return r.status

    async def notify(self, app_url: str, out_trade_no: str, total: int, *,
                     forge: bool | str = False, **kwargs: Any) -> int:
        headers, body = self.build_notification(out_trade_no, total, forge=forge, **kwargs)
        return await self.post_notification(app_url, headers, body)

    # --- the rider paying ----------------------------------------------------------------------

    def check_pay_params(self, params: dict[str, Any], *, now: float | None = None) -> Order:
        """The JSAPI order that ``getBrandWCPayRequest`` parameters pay, as the WeChat client
        checks them; PayRefused says what is wrong."""
        missing = {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"} - set(
            params)
        if missing:
            raise PayRefused(f"missing {sorted(missing)}")
        if params["appId"] != self.appid:
            raise PayRefused("appId is not the order's")
        if params["signType"] != "RSA":
            raise PayRefused("signType must be RSA")
        ts = str(params["timeStamp"])
        if not ts.isdigit() or abs((time.time() if now is None else now) - int(ts)) > 600:
            raise PayRefused("timeStamp is not the current time in seconds")
        if not 0 < len(str(params["nonceStr"])) <= 32:
            raise PayRefused("nonceStr must be 1-32 characters")
        package = str(params["package"])
        order = next((o for o in self.orders.values()
                      if o.trade_type == "JSAPI" and package == f"prepay_id={o.prepay_id}"), None)
        if order is None:
            raise PayRefused("package names no prepay_id of ours")
        message = f"{params['appId']}\n{ts}\n{params['nonceStr']}\n{package}\n".encode()
        try:
            self.merchant_public_key.verify(base64.b64decode(str(params["paySign"])), message,
                                            padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError) as exc:
            raise PayRefused("paySign does not verify") from exc
        return order

    async def pay(self, app_url: str, *, params: dict[str, Any] | None = None,
                  code_url: str | None = None, openid: str | None = None) -> int:
        """The rider pays in WeChat; returns our app's answer to the notification."""
        if params is not None:
            order = self.check_pay_params(params)
            if openid is not None and openid != order.openid:
                raise PayRefused("this order is another WeChat user's")
        else:
            found = next((o for o in self.orders.values()
                          if o.code_url is not None and o.code_url == code_url), None)
            if found is None:
                raise PayRefused("no order has this code_url")
            order = found
        if order.paid:
            raise PayRefused("the order is paid already")
        order.paid = True
        payer = openid or order.openid or "o-native-payer"
        return await self.notify(app_url, order.out_trade_no, order.total,
                                 payer={"openid": payer}, trade_type=order.trade_type)
