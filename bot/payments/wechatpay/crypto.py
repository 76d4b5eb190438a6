"""WeChat Pay API v3 signatures and notification decryption: pure functions, no I/O.

* Requests carry ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
  signature="…",timestamp="…",serial_no="…"``, the signature being SHA256withRSA (PKCS#1 v1.5)
  with the merchant API private key over ``METHOD\\nPATH_WITH_QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``.
* Answers and notifications are signed by WeChat Pay's platform key over
  ``TIMESTAMP\\nNONCE\\nBODY\\n`` (headers ``Wechatpay-Timestamp``, ``Wechatpay-Nonce``,
  ``Wechatpay-Signature``, ``Wechatpay-Serial``); we check them with the platform public key.
* A notification's ``resource`` is AEAD_AES_256_GCM with the APIv3 key, its ``nonce`` and
  ``associated_data``; the ciphertext is base64 with the 16-byte tag at its end.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.config import Settings

MAX_SKEW_S = 300  # WeChat's own rule: reject signatures more than 5 minutes off
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"  # WeChat's probes that we do verify signatures


class InvalidNotification(Exception):  # noqa: N818 - reads as what it is
    """A notification (or API answer) that is not provably from WeChat Pay, or unreadable."""


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the merchant private key must be RSA")
    return key


@functools.lru_cache(maxsize=8)
def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """A platform public key PEM, or a platform certificate PEM (its key is taken)."""
    data = pem.encode()
    key: PublicKeyTypes
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
