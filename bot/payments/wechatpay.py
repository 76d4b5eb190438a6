"""WeChat Pay API v3: JSAPI/Native orders out, signed and encrypted payment notifications in.

Wire formats (pay.weixin.qq.com, APIv3 签名/验签/回调解密):

* Requests carry ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
  signature="…",timestamp="…",serial_no="…"``, the signature being SHA256withRSA (PKCS#1 v1.5)
  with the merchant API private key over ``METHOD\\nPATH_WITH_QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``.
* Answers and notifications are signed by WeChat Pay's platform key over
  ``TIMESTAMP\\nNONCE\\nBODY\\n`` (headers ``Wechatpay-Timestamp``, ``Wechatpay-Nonce``,
  ``Wechatpay-Signature``, ``Wechatpay-Serial``); we check them with the platform public key.
* A notification's ``resource`` is AEAD_AES_256_GCM with the APIv3 key, its ``nonce`` and
  ``associated_data``; the ciphertext is base64 with the 16-byte tag at its end.
* We answer a notification 204 when we took it, and 4xx/5xx with ``{"code": "FAIL",
  "message": …}`` when WeChat should retry (it does, for about a day).

Money is integer fen on both sides (``amount.total``), so nothing is ever converted.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from yarl import URL

from bot.context import CTX, Context
from core import outbox, wallet
from core.billing.payments import (
    Payment,
    PaymentMismatch,
    confirm,
    could_be_ours,
    create_payment,
    find,
)
from core.charging import pay_due
from core.config import Settings, WechatPaySettings
from core.db import transaction

log = logging.getLogger("chargebot.wechatpay")

AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
NOTIFY_PATH = "/payments/wechatpay/notify"
JSAPI_PATH = "/v3/pay/transactions/jsapi"
NATIVE_PATH = "/v3/pay/transactions/native"
MAX_SKEW_S = 300  # WeChat's own rule: reject signatures more than 5 minutes off
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"  # WeChat's probes that we do verify signatures
DEFAULT_DESCRIPTION = "充电钱包充值"


class WechatPayError(Exception):
    """WeChat Pay refused or could not be reached; ``status`` 0 means no HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"wechatpay {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class InvalidNotification(Exception):  # noqa: N818 - reads as what it is
    """A notification (or API answer) that is not provably from WeChat Pay, or unreadable."""


# --- crypto ----------------------------------------------------------------------------------


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the merchant private key must be RSA")
    return key


@functools.lru_cache(maxsize=8)
def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """A platform public key PEM, or a platform certificate PEM (its key is taken)."""
    data = pem.encode()
    if b"BEGIN CERTIFICATE" in data:
        key = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = serialization.load_pem_public_key(data)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the platform public key must be RSA")
    return key


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def nonce_str() -> str:
    return secrets.token_hex(16).upper()


def request_message(method: str, path_with_query: str, timestamp: str, nonce: str,
                    body: bytes) -> bytes:
    return f"{method.upper()}\n{path_with_query}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def response_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up without case
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


def verify_signature(
    headers: Mapping[str, str], body: bytes, public_key: rsa.RSAPublicKey,
    platform_serial: str | None, *, now: float | None = None,
) -> None:
    """Check the Wechatpay-* headers over an answer's or notification's raw body."""
    timestamp = _header(headers, "Wechatpay-Timestamp")
    nonce = _header(headers, "Wechatpay-Nonce")
    signature = _header(headers, "Wechatpay-Signature")
    serial = _header(headers, "Wechatpay-Serial")
    if not (timestamp and nonce and signature and serial):
        raise InvalidNotification("unsigned: Wechatpay-Timestamp/Nonce/Signature/Serial missing")
    if platform_serial and serial != platform_serial:
        raise InvalidNotification(f"signed with platform key {serial!r}, we hold "
                                  f"{platform_serial!r}")
    try:
        ts = int(timestamp)
    except ValueError:
        raise InvalidNotification(f"bad Wechatpay-Timestamp {timestamp!r}") from None
    if abs((time.time() if now is None else now) - ts) > MAX_SKEW_S:
        raise InvalidNotification(f"Wechatpay-Timestamp {ts} is more than 5 minutes off")
    if signature.startswith(SIGNTEST_PREFIX):
        raise InvalidNotification("signature probe (WECHATPAY/SIGNTEST/)")
    if not rsa_verify(public_key, response_message(timestamp, nonce, body), signature):
        raise InvalidNotification("bad Wechatpay-Signature")


def decrypt_resource(resource: Mapping[str, Any], apiv3_key: str) -> dict[str, Any]:
    """AEAD_AES_256_GCM with the APIv3 key; returns the decrypted JSON object."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise InvalidNotification(f"unsupported algorithm {resource.get('algorithm')!r}")
    key = apiv3_key.encode()
    if len(key) != 32:
        raise InvalidNotification("the APIv3 key must be 32 bytes")
    try:
        nonce = str(resource["nonce"]).encode()
        data = base64.b64decode(str(resource["ciphertext"]), validate=True)
        aad = str(resource.get("associated_data") or "").encode()
        plain = AESGCM(key).decrypt(nonce, data, aad)
        obj = json.loads(plain)
    except KeyError as exc:
        raise InvalidNotification(f"resource has no {exc.args[0]}") from None
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise InvalidNotification(f"cannot decrypt resource: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise InvalidNotification("decrypted resource is not an object")
    return obj


def verify_notification(
    headers: Mapping[str, str], body: bytes, settings: Settings, *, now: float | None = None,
) -> dict[str, Any]:
    """A checked, decrypted notification: the JSON with ``resource`` replaced by its plaintext.

    Raises InvalidNotification for anything not provably from WeChat Pay: missing or bad
    signature, a platform serial other than ours, a timestamp more than 5 minutes off, a
    ciphertext that does not decrypt (tampered, wrong key) or malformed JSON.
    """
    cfg = settings.payments.wechatpay
    if not cfg.platform_public_key or cfg.apiv3_key is None:
        raise InvalidNotification("wechatpay is not configured")
    verify_signature(headers, body, load_public_key(cfg.platform_public_key),
                     cfg.platform_serial, now=now)
    try:
        note = json.loads(body)
    except ValueError:
        raise InvalidNotification("body is not JSON") from None
    if not isinstance(note, dict) or not isinstance(note.get("resource"), dict):
        raise InvalidNotification("notification has no resource")
    return {**note, "resource": decrypt_resource(note["resource"],
                                                 cfg.apiv3_key.get_secret_value())}


# --- the API client --------------------------------------------------------------------------


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


# --- starting a top-up -----------------------------------------------------------------------


class OrderClosed(Exception):  # noqa: N818 - reads as what it is
    """The order is paid already, or WeChat Pay refused it: there is nothing to pay here."""

    def __init__(self, payment: Payment) -> None:
        super().__init__(f"order {payment.out_trade_no} is {payment.state}")
        self.payment = payment


async def open_payment(ctx: Context, rider_id: int, amount_fen: int, details: dict[str, Any],
                       out_trade_no: str | None = None) -> Payment:
    """The Payment row for a top-up: a new one, or, for a fixed ``out_trade_no`` (a pay link's),
    the one already made for it: a reloaded page or two racing ones share a row."""
    try:
        async with transaction(ctx.sm) as session:
            if out_trade_no is not None and (found := await find(session, out_trade_no)):
                return found
            payment = await create_payment(session, rider_id, "wechatpay", amount_fen,
                                           now=ctx.clock())
            if out_trade_no is not None:
                payment.out_trade_no = out_trade_no
            payment.details = details
            await session.flush()
            return payment
    except IntegrityError:
        if out_trade_no is None:
            raise
    async with ctx.sm() as session:  # the racing request's row, committed before ours
        found = await find(session, out_trade_no)
    if found is None:
        raise RuntimeError(f"order {out_trade_no} neither made nor found")
    return found


async def _note(ctx: Context, out_trade_no: str, *, failed: bool = False,
                **details: Any) -> None:
    async with transaction(ctx.sm) as session:
        payment = (await session.execute(
            select(Payment).where(Payment.out_trade_no == out_trade_no))).scalars().first()
        if payment is None:
            return
        payment.details = {**payment.details, **details}
        if failed and payment.state == "created":
            payment.state = "failed"


async def _place(ctx: Context, out_trade_no: str, call: Any) -> Any:
    try:
        return await call
    except WechatPayError as exc:
        # A clear refusal ends the order; after a timeout or a 5xx it may exist at WeChat, so
        # it stays open (a notification for it still credits the rider either way).
        await _note(ctx, out_trade_no, failed=400 <= exc.status < 500,
                    error={"status": exc.status, "code": exc.code, "message": exc.message[:200]})
        raise


def _client(ctx: Context, client: WechatPayClient | None) -> WechatPayClient:
    client = client or client_for(ctx)
    if client is None:
        raise WechatPayError(0, "NOT_CONFIGURED", "wechatpay is not enabled")
    return client


async def jsapi_order(ctx: Context, payment: Payment, openid: str, *,
                      description: str | None = None, client: WechatPayClient | None = None
                      ) -> str:
    """The order's prepay_id: the one WeChat Pay gave before, else a new JSAPI order for it.

    Placing the same out_trade_no again with the same fields is how WeChat Pay wants a lost
    answer retried (it answers with the same prepay_id). Raises OrderClosed when the order is
    paid or was refused, WechatPayError when WeChat Pay refuses now."""
    client = _client(ctx, client)
    if payment.state != "created":
        raise OrderClosed(payment)
    if isinstance(prepay_id := payment.details.get("prepay_id"), str) and prepay_id:
        return prepay_id
    result = await _place(ctx, payment.out_trade_no, client.create_jsapi(
        payment.out_trade_no, payment.amount_fen, openid, description))
    await _note(ctx, payment.out_trade_no, prepay_id=result["prepay_id"])
    return str(result["prepay_id"])


async def native_order(ctx: Context, payment: Payment, *, description: str | None = None,
                       client: WechatPayClient | None = None) -> str:
    """The order's code_url (for a QR code), placed once as jsapi_order places its order."""
    client = _client(ctx, client)
    if payment.state != "created":
        raise OrderClosed(payment)
    if isinstance(code_url := payment.details.get("code_url"), str) and code_url:
        return code_url
    code_url = await _place(ctx, payment.out_trade_no, client.create_native(
        payment.out_trade_no, payment.amount_fen, description))
    await _note(ctx, payment.out_trade_no, code_url=code_url)
    return str(code_url)


async def start_topup(
    ctx: Context, rider_id: int, openid: str, amount_fen: int, *,
    description: str | None = None, client: WechatPayClient | None = None,
) -> dict[str, Any]:
    """A JSAPI top-up: the Payment row, the order at WeChat Pay, and the page's pay params.

    Returns ``{"out_trade_no", "amount_fen", "prepay_id", "pay_params"}``; the wallet is
    credited later, by the notification. Raises WechatPayError when WeChat Pay refuses.
    """
    client = _client(ctx, client)
    payment = await open_payment(ctx, rider_id, amount_fen,
                                 {"trade_type": "JSAPI", "openid": openid})
    prepay_id = await jsapi_order(ctx, payment, openid, description=description, client=client)
    return {"out_trade_no": payment.out_trade_no, "amount_fen": amount_fen,
            "prepay_id": prepay_id, "pay_params": client.pay_params(prepay_id)}


async def start_native_topup(
    ctx: Context, rider_id: int, amount_fen: int, *,
    description: str | None = None, client: WechatPayClient | None = None,
) -> dict[str, Any]:
    """A Native (QR code) top-up: ``{"out_trade_no", "amount_fen", "code_url"}``."""
    client = _client(ctx, client)
    payment = await open_payment(ctx, rider_id, amount_fen, {"trade_type": "NATIVE"})
    code_url = await native_order(ctx, payment, description=description, client=client)
    return {"out_trade_no": payment.out_trade_no, "amount_fen": amount_fen, "code_url": code_url}


# --- the notification ------------------------------------------------------------------------


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"code": "FAIL", "message": message}, status=status)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _credit(ctx: Context, txn: dict[str, Any], out_trade_no: str, total: int) -> bool:
    """Confirm the order, pay due bills and queue the rider's message; True the first time."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        # Lock the order row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)
        # so a second notification racing this one waits and then sees it paid.
        payment = (await session.execute(
            select(Payment).where(Payment.out_trade_no == out_trade_no).with_for_update()
        )).scalars().first()
        if payment is None:
            raise KeyError(out_trade_no)
        if payment.provider != "wechatpay":
            raise _Refused(400, f"order {out_trade_no} is not a WeChat Pay order")
        payment, first = await confirm(session, out_trade_no, total,
                                       str(txn.get("transaction_id") or ""), ctx.settings, now)
        if not first:
            return False
        amount = txn.get("amount") or {}
        payer = txn.get("payer")
        payment.details = {
            **payment.details,
            "transaction_id": txn.get("transaction_id"),
            # Only recorded, never relied on: a payer that is no object must not undo the credit.
            "openid": payer.get("openid") if isinstance(payer, dict) else None,
            "payer_total": amount.get("payer_total"),
            "trade_type": txn.get("trade_type") or payment.details.get("trade_type"),
            "success_time": txn.get("success_time"),
            "bank_type": txn.get("bank_type"),
        }
        rider_id = payment.rider_id
        bills_paid, still_due = await pay_due(session, rider_id, now)
        balance = await wallet.balance(session, rider_id)
        await outbox.enqueue(session, rider_id, "payment", {
            "amount_fen": payment.amount_fen, "bonus_fen": payment.bonus_fen,
            "balance_fen": balance, "provider": "wechatpay",
            "out_trade_no": out_trade_no, "bills_paid": bills_paid, "still_due_fen": still_due,
        }, f"payment:{out_trade_no}")
    ctx.wake_outbox()
    return True


def _transaction_fields(txn: dict[str, Any], cfg: WechatPaySettings) -> tuple[str, int]:
    if txn.get("mchid") != cfg.mchid:
        raise _Refused(400, "mchid does not match this merchant")
    if cfg.appid and txn.get("appid") != cfg.appid:
        raise _Refused(400, "appid does not match this merchant")
    out_trade_no = txn.get("out_trade_no")
    amount = txn.get("amount")
    if not isinstance(out_trade_no, str) or not out_trade_no or not isinstance(amount, dict):
        raise _Refused(400, "transaction has no out_trade_no or amount")
    if not could_be_ours(out_trade_no):
        raise KeyError(out_trade_no)  # answered as unknown, the same on every database
    total = amount.get("total")
    if not isinstance(total, int) or isinstance(total, bool):
        raise _Refused(400, "amount.total is not an integer")
    if amount.get("currency", "CNY") != "CNY":
        raise _Refused(400, f"currency {amount.get('currency')!r} is not CNY")
    if not txn.get("transaction_id"):
        raise _Refused(400, "transaction has no transaction_id")
    return out_trade_no, total


async def notify(request: web.Request) -> web.Response:
    """POST /payments/wechatpay/notify: 204 when taken (first time or replay), else FAIL.

    401 not provably from WeChat Pay; 400 not ours or the wrong amount; 404 unknown order;
    500 on our own failure. Nothing is credited unless the answer is 204.
    """
    ctx = request.app[CTX]
    body = await request.read()
    try:
        note = verify_notification(request.headers, body, ctx.settings)
    except InvalidNotification as exc:
        log.warning("wechatpay: rejected a notification: %s", exc)
        return _fail(401, str(exc))
    event = note.get("event_type")
    txn = note["resource"]
    if event != "TRANSACTION.SUCCESS" or txn.get("trade_state") != "SUCCESS":
        log.info("wechatpay: notification %s %s (%s) taken, nothing to credit",
                 note.get("id"), event, txn.get("trade_state"))
        return web.Response(status=204)
    try:
        out_trade_no, total = _transaction_fields(txn, ctx.settings.payments.wechatpay)
        for attempt in (1, 2):
            try:
                first = await _credit(ctx, txn, out_trade_no, total)
                break
            except IntegrityError:
                # Only a lost race on a unique key gets here; the retry sees the winner's row.
                if attempt == 2:
                    raise
        log.info("wechatpay: order %s paid (%s, %s)", out_trade_no, txn.get("transaction_id"),
                 "credited" if first else "already credited")
        return web.Response(status=204)
    except _Refused as exc:
        log.warning("wechatpay: refused notification %s: %s", note.get("id"), exc.message)
        return _fail(exc.status, exc.message)
    except KeyError:
        log.warning("wechatpay: notification for unknown order %s", txn.get("out_trade_no"))
        return _fail(404, "unknown out_trade_no")
    except PaymentMismatch as exc:
        log.error("wechatpay: amount mismatch: %s", exc)
        return _fail(400, "amount does not match the order")
    except Exception:
        log.exception("wechatpay: notification %s failed", note.get("id"))
        return _fail(500, "internal error")


# --- wiring ----------------------------------------------------------------------------------


def enabled(settings: Settings) -> bool:
    p = settings.payments
    cfg = p.wechatpay
    return ("wechatpay" in p.providers and bool(cfg.mchid) and cfg.private_key is not None
            and cfg.apiv3_key is not None and bool(cfg.platform_public_key))


def notify_url(settings: Settings) -> str:
    return (settings.payments.wechatpay.notify_url
            or settings.server.public_url.rstrip("/") + NOTIFY_PATH)


def setup(app: web.Application, ctx: Context) -> WechatPayClient | None:
    settings = ctx.settings
    if not enabled(settings):
        log.info("wechatpay: not in payments.providers or not configured, WeChat Pay is off")
        return None
    cfg = settings.payments.wechatpay
    if len(cfg.apiv3_key.get_secret_value().encode()) != 32:  # type: ignore[union-attr]
        log.error("wechatpay: apiv3_key must be 32 bytes, WeChat Pay is off")
        return None
    try:
        client = WechatPayClient(cfg, notify_url(settings), currency=settings.payments.currency)
    except ValueError as exc:  # unreadable PEM
        log.error("wechatpay: bad key material (%s), WeChat Pay is off", exc)
        return None
    if not cfg.serial_no or not cfg.platform_serial:
        log.warning("wechatpay: serial_no/platform_serial not set; orders or notifications "
                    "will be refused")
    app[WXPAY] = client
    key = id(ctx)
    _CLIENTS[key] = (weakref.ref(ctx, lambda _r: _CLIENTS.pop(key, None)), client)
    app.router.add_post(NOTIFY_PATH, notify)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            client.http = http
            try:
                yield
            finally:
                client.http = None

    app.cleanup_ctx.append(lifecycle)
    log.info("wechatpay: on (mchid %s, notify %s)", cfg.mchid, client.notify_url)
    return client
