"""The WeChat Pay API v3 client: signed JSAPI/Native orders out, every answer's signature checked.

Money is integer fen on both sides (``amount.total``), so nothing is ever converted.
"""

from __future__ import annotations

import json
import time
import weakref
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from bot.context import Context
from bot.payments.wechatpay.crypto import (
    InvalidNotification,
    load_private_key,
    load_public_key,
    nonce_str,
    request_message,
    rsa_sign,
    verify_signature,
)
from core.config_sections import WechatPaySettings

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
JSAPI_PATH = "/v3/pay/transactions/jsapi"
NATIVE_PATH = "/v3/pay/transactions/native"
DEFAULT_DESCRIPTION = "充电钱包充值"


class WechatPayError(Exception):
    """WeChat Pay refused or could not be reached; ``status`` 0 means no HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"wechatpay {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class WechatPayClient:
    """Signed calls to WeChat Pay; every 2xx answer must carry a valid platform signature."""

    def __init__(self, cfg: WechatPaySettings, notify_url: str, *, currency: str = "CNY",
                 http: aiohttp.ClientSession | None = None) -> None:
        if not (cfg.mchid and cfg.private_key and cfg.platform_public_key):
            raise ValueError("wechatpay needs mchid, private_key and platform_public_key")
        self.cfg = cfg
        self.notify_url = notify_url
        self.currency = currency
        self.http = http
        self.private_key = load_private_key(cfg.private_key.get_secret_value())
        self.platform_key = load_public_key(cfg.platform_public_key)
        # Signs the pay links riders get in chat (bot.payments.pay_page); loaded at start-up.
        self.link_key: bytes | None = None

    # signing

    def sign(self, method: str, path_with_query: str, body: str | bytes = b"", *,
             timestamp: int | None = None, nonce: str | None = None) -> str:
        """The Authorization header value for one request."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or nonce_str()
        raw = body.encode() if isinstance(body, str) else body
        signature = rsa_sign(self.private_key, request_message(method, path_with_query, ts,
                                                               nonce, raw))
        return (f'{AUTH_SCHEMA} mchid="{self.cfg.mchid}",nonce_str="{nonce}",'
                f'signature="{signature}",timestamp="{ts}",serial_no="{self.cfg.serial_no or ""}"')

    def pay_params(self, prepay_id: str, *, timestamp: int | None = None,
                   nonce: str | None = None) -> dict[str, str]:
        """What the H5 page hands to ``WeixinJSBridge.invoke('getBrandWCPayRequest', …)``."""
        params = {
            "appId": self.cfg.appid or "",
            "timeStamp": str(int(time.time()) if timestamp is None else timestamp),
            "nonceStr": nonce or nonce_str(),
            "package": f"prepay_id={prepay_id}",
            "signType": "RSA",
        }
        message = (f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n"
                   f"{params['package']}\n").encode()
        params["paySign"] = rsa_sign(self.private_key, message)
        return params

    # transport

    async def request(self, method: str, path: str, payload: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        if self.http is None:
            raise WechatPayError(0, "NOT_STARTED", "the HTTP session is not open")
        url = URL(self.cfg.api_base_url.rstrip("/") + path)
        body = b"" if payload is None else json.dumps(
            payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Authorization": self.sign(method, url.raw_path_qs, body),
            "Accept": "application/json",
            "User-Agent": "chargebot-wechatpay/1",
        }
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.http.request(method, url, data=body or None, headers=headers) as r:
                raw = await r.read()
                status, rheaders = r.status, r.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WechatPayError(0, "NETWORK_ERROR", str(exc) or type(exc).__name__) from exc
        if status >= 400:
            # Errors are not always signed (a request we signed wrongly gets none); trusting an
            # error credits nothing, so it is read as it comes.
            try:
                err = json.loads(raw)
                code, message = str(err.get("code", "")), str(err.get("message", ""))
            except (ValueError, AttributeError):
                code, message = "HTTP_ERROR", raw[:200].decode(errors="replace")
            raise WechatPayError(status, code or "HTTP_ERROR", message)
        try:
            verify_signature(rheaders, raw, self.platform_key, self.cfg.platform_serial)
        except InvalidNotification as exc:
            raise WechatPayError(status, "INVALID_RESPONSE_SIGNATURE", str(exc)) from None
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise WechatPayError(status, "INVALID_RESPONSE", "answer is not JSON") from None
        if not isinstance(data, dict):
            raise WechatPayError(status, "INVALID_RESPONSE", "answer is not an object")
        return data

    def _order(self, out_trade_no: str, amount_fen: int, description: str | None
               ) -> dict[str, Any]:
        return {
            "appid": self.cfg.appid,
            "mchid": self.cfg.mchid,
            "description": (description or DEFAULT_DESCRIPTION)[:127],
            "out_trade_no": out_trade_no,
            "notify_url": self.notify_url,
            "amount": {"total": int(amount_fen), "currency": self.currency},
        }

    async def create_jsapi(self, out_trade_no: str, amount_fen: int, openid: str,
                           description: str | None = None) -> dict[str, Any]:
        """``{"prepay_id", "pay_params": {appId, timeStamp, nonceStr, package, signType,
        paySign}}`` for a rider inside WeChat (official-account H5 page)."""
        body = {**self._order(out_trade_no, amount_fen, description), "payer": {"openid": openid}}
        data = await self.request("POST", JSAPI_PATH, body)
        prepay_id = data.get("prepay_id")
        if not isinstance(prepay_id, str) or not prepay_id:
            raise WechatPayError(200, "INVALID_RESPONSE", "no prepay_id in the answer")
        return {"prepay_id": prepay_id, "pay_params": self.pay_params(prepay_id)}

    async def create_native(self, out_trade_no: str, amount_fen: int,
                            description: str | None = None) -> str:
        """The ``weixin://wxpay/…`` code_url to show as a QR code."""
        data = await self.request("POST", NATIVE_PATH,
                                  self._order(out_trade_no, amount_fen, description))
        code_url = data.get("code_url")
        if not isinstance(code_url, str) or not code_url:
            raise WechatPayError(200, "INVALID_RESPONSE", "no code_url in the answer")
        return code_url


WXPAY = web.AppKey("wechatpay_client", WechatPayClient)

# The client per Context, for callers that hold a ctx but not the app (start_topup).
_CLIENTS: dict[int, tuple[weakref.ref[Context], WechatPayClient]] = {}


def client_for(ctx: Context) -> WechatPayClient | None:
    found = _CLIENTS.get(id(ctx))
    if found is None or found[0]() is not ctx:
        return None
    return found[1]




def register(ctx: Context, client: WechatPayClient) -> None:
    """Make `client_for(ctx)` find this client for as long as the Context lives."""
    key = id(ctx)
    _CLIENTS[key] = (weakref.ref(ctx, lambda _r: _CLIENTS.pop(key, None)), client)
