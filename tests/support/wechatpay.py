"""WeChat Pay v3 for tests: the merchant's identity and keys, the `payments.wechatpay` settings
that point the app at the local fake (tests/fakes/wechatpay_api.py), and that fake."""

from __future__ import annotations

import functools
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.wechatpay_api import FakeWechatPay

MCHID = "1900009191"
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PLATFORM_SERIAL = "3775B6A45ACD588826D15E583A95F5DD00000001"
APIV3_KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"  # 32 ASCII characters


@functools.cache
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """(merchant, platform) 2048-bit RSA keys, made once per test run."""
    return (rsa.generate_private_key(public_exponent=65537, key_size=2048),
            rsa.generate_private_key(public_exponent=65537, key_size=2048))


def pem_private(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pem_public(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def wechatpay_config(base_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    """The `payments.wechatpay` section for the merchant above, with WeChat Pay at `base_url`
    (the running fake's `base_url`; the default is a port nothing listens on)."""
    merchant, platform = keys()
    return {"mchid": MCHID, "appid": APPID, "serial_no": MERCHANT_SERIAL,
            "private_key": pem_private(merchant), "apiv3_key": APIV3_KEY,
            "platform_public_key": pem_public(platform), "platform_serial": PLATFORM_SERIAL,
            "api_base_url": base_url}


def fake_wechatpay() -> FakeWechatPay:
    """The fake WeChat Pay for this merchant, not started yet (`await fake.start()` serves it;
    its notification builders work without)."""
    merchant, platform = keys()
    return FakeWechatPay(mchid=MCHID, appid=APPID, merchant_public_key=merchant.public_key(),
                         merchant_serial=MERCHANT_SERIAL, apiv3_key=APIV3_KEY,
                         platform_private_key=platform, platform_serial=PLATFORM_SERIAL)
