"""HMAC signing shared by the pile webhook and every device-side client (DESIGN §3)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

MAX_SKEW_S = 300


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    msg = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float) -> bool:
    """True when the signature matches and the timestamp is inside the replay window."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > MAX_SKEW_S:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def signed_headers(pile_id: str, secret: str, body: bytes, now: float) -> dict[str, str]:
    ts = int(now)
    return {
        "X-Pile-Id": pile_id,
        "X-Timestamp": str(ts),
        "X-Signature": sign(secret, ts, body),
        "Content-Type": "application/json",
    }


def new_secret() -> str:
    return secrets.token_urlsafe(24)
