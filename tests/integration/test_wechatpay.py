"""WeChat Pay v3 top-ups against a local fake: signed orders out, signed encrypted notices in."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr
from sqlalchemy import select

from bot.context import Context
from bot.payments import wechatpay
from bot.payments.wechatpay.client import WXPAY, WechatPayClient, WechatPayError
from bot.payments.wechatpay.orders import start_native_topup, start_topup
from core.billing import wallet
from core.billing.payments import Payment
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.db import transaction
from core.outbox import OutboxMessage
from core.piles.tables import Port
from core.riders.tables import Identity
from tests.fakes.wechatpay_api import FakeWechatPay
from tests.support.journey import WebRider
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings
from tests.support.wechatpay import (
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    fake_wechatpay,
    keys,
    pem_private,
    wechatpay_config,
)

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
NOTIFY_URL = "http://127.0.0.1/payments/wechatpay/notify"  # server.public_url + the route


def pay_settings(db_url: str, fake: FakeWechatPay, providers: list[str] | None = None) -> Any:
    return make_settings(db_url, payments={
        "providers": providers or ["sandbox", "wechatpay"],
        "wechatpay": wechatpay_config(fake.base_url),
    })


@pytest.fixture
async def fake() -> AsyncIterator[FakeWechatPay]:
    f = fake_wechatpay()
    await f.start()
    yield f
    await f.stop()


@pytest.fixture
async def app(db_url: str, fake: FakeWechatPay) -> AsyncIterator[Running]:
    # The "payment" notice's renderer belongs to the notifications work; only its row is checked.
    async with start_server(pay_settings(db_url, fake), notifier=False) as running:
        yield running


async def new_rider(app: Running) -> int:
    rider = WebRider(app.http, app.url)
    await rider.say("/start")
    async with app.ctx.sm() as s:
        rid = await s.scalar(select(Identity.rider_id).where(
            Identity.platform == "webchat", Identity.external_id == rider.client_id))
    assert rid is not None
    return rid


@dataclass
class Money:
    balance: int
    ledger: list[tuple[str, int]]
    payment_state: str | None
    notices: list[dict[str, Any]]


async def money(ctx: Context, rid: int, out_trade_no: str | None = None) -> Money:
    async with ctx.sm() as s:
        bal = await wallet.balance(s, rid)
        assert bal == await wallet.ledger_sum(s, rid)
        entries = (await s.execute(select(LedgerEntry.kind, LedgerEntry.amount_fen)
                                   .where(LedgerEntry.rider_id == rid)
                                   .order_by(LedgerEntry.id))).all()
        state = None
        if out_trade_no:
            state = await s.scalar(select(Payment.state).where(
                Payment.out_trade_no == out_trade_no))
        notices = (await s.execute(select(OutboxMessage.payload).where(
            OutboxMessage.rider_id == rid, OutboxMessage.kind == "payment"))).scalars().all()
    return Money(bal, [tuple(e) for e in entries], state, list(notices))


def verify_rsa(key: rsa.RSAPrivateKey, message: bytes, signature_b64: str) -> None:
    key.public_key().verify(base64.b64decode(signature_b64), message, padding.PKCS1v15(),
                            hashes.SHA256())


async def test_topup_end_to_end_credits_once(app: Running, fake: FakeWechatPay) -> None:
    ctx = app.ctx
    rid = await new_rider(app)

    order = await start_topup(ctx, rid, OPENID, 5000)
    otn = order["out_trade_no"]
    call = fake.calls[-1]
    assert call.auth_ok, call.auth_error
    assert call.path == "/v3/pay/transactions/jsapi"
    assert call.headers["Authorization"].startswith("WECHATPAY2-SHA256-RSA2048 mchid=")
    assert call.auth["mchid"] == MCHID and call.auth["serial_no"] == MERCHANT_SERIAL
    assert call.body == {
        "appid": APPID, "mchid": MCHID, "description": call.body["description"],
        "out_trade_no": otn, "notify_url": NOTIFY_URL,
        "amount": {"total": 5000, "currency": "CNY"}, "payer": {"openid": OPENID},
    }
    assert call.body["description"]
    prepay_id = fake.orders[otn].prepay_id
    assert order["prepay_id"] == prepay_id
    params = order["pay_params"]
    assert params["appId"] == APPID and params["signType"] == "RSA"
    assert params["package"] == f"prepay_id={prepay_id}"
    verify_rsa(keys()[0], (f"{APPID}\n{params['timeStamp']}\n{params['nonceStr']}\n"
                           f"prepay_id={prepay_id}\n").encode(), params["paySign"])
    assert (await money(ctx, rid, otn)).payment_state == "created"

    # Paid: ¥50 reaches the ¥8 bonus rule.
    headers, body = fake.build_notification(otn, 5000)
    assert await fake.post_notification(app.url, headers, body) == 204
    m = await money(ctx, rid, otn)
    assert m.balance == 5800
    assert m.ledger == [("topup", 5000), ("bonus", 800)]
    assert m.payment_state == "paid"
    assert m.notices == [{"amount_fen": 5000, "bonus_fen": 800, "balance_fen": 5800,
                          "provider": "wechatpay", "out_trade_no": otn, "bills_paid": 0,
                          "still_due_fen": 0}]
    async with ctx.sm() as s:
        p = (await s.execute(select(Payment).where(Payment.out_trade_no == otn))).scalar_one()
    assert p.provider_txn_id and p.provider_txn_id.startswith("42000")
    assert p.details["openid"] == OPENID and p.details["prepay_id"] == prepay_id

    # The same notification again, and WeChat's retry under a new notification id.
    assert await fake.post_notification(app.url, headers, body) == 204
    assert await fake.notify(app.url, otn, 5000) == 204
    assert await money(ctx, rid, otn) == m

    # Two (three) identical notifications at once, on a Native order: credited once.
    native = await start_native_topup(ctx, rid, 2000)
    assert native["code_url"].startswith("weixin://wxpay/")
    assert fake.calls[-1].auth_ok and fake.calls[-1].path == "/v3/pay/transactions/native"
    assert "payer" not in fake.calls[-1].body
    headers, body = fake.build_notification(native["out_trade_no"], 2000)
    statuses = await asyncio.gather(*(fake.post_notification(app.url, headers, body)
                                      for _ in range(3)))
    assert statuses == [204, 204, 204]
    m2 = await money(ctx, rid, native["out_trade_no"])
    assert m2.balance == 7800 and m2.payment_state == "paid"
    assert m2.ledger == [("topup", 5000), ("bonus", 800), ("topup", 2000)]
    assert len(m2.notices) == 2


async def test_forged_or_wrong_notifications_credit_nothing(
    app: Running, fake: FakeWechatPay,
) -> None:
    ctx = app.ctx
    rid = await new_rider(app)
    otn = (await start_topup(ctx, rid, OPENID, 1000))["out_trade_no"]
    nothing = Money(0, [], "created", [])

    for forge in ("signature", "serial", "ciphertext", "stale"):
        assert await fake.notify(app.url, otn, 1000, forge=forge) == 401, forge
        assert fake.last_notify is not None and fake.last_notify[1]["code"] == "FAIL"
        assert fake.last_notify[1]["message"]
    headers, body = fake.build_notification(otn, 1000)
    unsigned = {k: v for k, v in headers.items() if k != "Wechatpay-Signature"}
    assert await fake.post_notification(app.url, unsigned, body) == 401
    probe = {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers[
        "Wechatpay-Signature"]}
    assert await fake.post_notification(app.url, probe, body) == 401
    assert await money(ctx, rid, otn) == nothing

    assert await fake.notify(app.url, otn, 999) == 400  # the wrong amount
    assert fake.last_notify == (400, {"code": "FAIL", "message": fake.last_notify[1]["message"]})
    assert await fake.notify(app.url, otn, 1000, mchid="1900000000") == 400
    assert await fake.notify(app.url, otn, 1000, appid="wx0000000000000000") == 400
    assert await fake.notify(app.url, "CB20990101DEADBEEFDEADBEEF", 1000) == 404
    assert fake.last_notify is not None and fake.last_notify[1]["code"] == "FAIL"
    # Not a payment: taken, nothing credited.
    assert await fake.notify(app.url, otn, 1000, event_type="REFUND.SUCCESS") == 204
    assert await fake.notify(app.url, otn, 1000, trade_state="NOTPAY") == 204
    assert await money(ctx, rid, otn) == nothing

    # The order is still whole: the genuine notification credits it.
    assert await fake.notify(app.url, otn, 1000) == 204
    m = await money(ctx, rid, otn)
    assert (m.balance, m.ledger, m.payment_state) == (1000, [("topup", 1000)], "paid")


async def test_topup_pays_a_due_bill(app: Running, fake: FakeWechatPay) -> None:
    ctx = app.ctx
    await seed_city(ctx)
    rid = await new_rider(app)
    async with transaction(ctx.sm) as s:
        port = (await s.execute(select(Port).order_by(Port.id))).scalars().first()
        assert port is not None
        now = ctx.clock()
        charge = Charge(rider_id=rid, port_id=port.id, pile_id=port.pile_id,  # type: ignore[arg-type]
                        port_number=port.number, port_code=port.code, site_id="T01",
                        session_ref="s-due", state="ended", requested_at=now, started_at=now,
                        ended_at=now, duration_s=3600, amount_fen=300)
        s.add(charge)
        await s.flush()
        charge_id = charge.id

    otn = (await start_topup(ctx, rid, OPENID, 1000))["out_trade_no"]
    assert await fake.notify(app.url, otn, 1000) == 204
    m = await money(ctx, rid, otn)
    assert m.ledger == [("topup", 1000), ("charge", -300)]
    assert m.balance == 700
    assert m.notices[0]["balance_fen"] == 700 and m.notices[0]["bills_paid"] == 1
    assert m.notices[0]["still_due_fen"] == 0
    async with ctx.sm() as s:
        c = await s.get(Charge, charge_id)
    assert c is not None and c.state == "settled" and c.paid_fen == 300


async def test_client_checks_answers_and_reports_errors(
    app: Running, fake: FakeWechatPay,
) -> None:
    ctx = app.ctx
    rid = await new_rider(app)
    client = app.app[WXPAY]
    assert wechatpay.client_for(ctx) is client

    header = client.sign("POST", "/v3/pay/transactions/jsapi?x=1", b"{}", timestamp=1700000000,
                         nonce="N0NCE")
    m = re.fullmatch(r'WECHATPAY2-SHA256-RSA2048 mchid="(\d+)",nonce_str="N0NCE",'
                     r'signature="([^"]+)",timestamp="1700000000",serial_no="([0-9A-F]+)"', header)
    assert m and m.group(1) == MCHID and m.group(3) == MERCHANT_SERIAL
    verify_rsa(keys()[0], b"POST\n/v3/pay/transactions/jsapi?x=1\n1700000000\nN0NCE\n{}\n",
               m.group(2))

    for forge in ("signature", "unsigned", "serial"):
        fake.answer_forge = forge
        with pytest.raises(WechatPayError) as err:
            await start_topup(ctx, rid, OPENID, 500)
        assert err.value.code == "INVALID_RESPONSE_SIGNATURE", forge
    fake.answer_forge = None

    fake.fail_next = (400, "PARAM_ERROR", "商户订单号不合法")
    with pytest.raises(WechatPayError) as err:
        await start_native_topup(ctx, rid, 500)
    assert (err.value.status, err.value.code) == (400, "PARAM_ERROR")
    async with ctx.sm() as s:
        states = (await s.execute(select(Payment.state).where(Payment.rider_id == rid)
                                  .order_by(Payment.id))).scalars().all()
    # A forged answer may hide a real order, so those stay open; a clear refusal fails it.
    assert states == ["created", "created", "created", "failed"]

    # A request signed with a key WeChat Pay does not know is refused with SIGN_ERROR.
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cfg = ctx.settings.payments.wechatpay.model_copy(
        update={"private_key": SecretStr(pem_private(rogue))})
    other = WechatPayClient(cfg, NOTIFY_URL, http=app.http)
    with pytest.raises(WechatPayError) as err:
        await other.create_native("CB20990101ROGUE0000000001", 100)
    assert (err.value.status, err.value.code) == (401, "SIGN_ERROR")
    assert not fake.calls[-1].auth_ok
    assert (await money(ctx, rid)).balance == 0


async def test_off_unless_listed_in_providers(db_url: str, fake: FakeWechatPay) -> None:
    async with start_server(pay_settings(db_url, fake, providers=["sandbox"]),
                            notifier=False) as running:
        assert WXPAY not in running.app
        assert wechatpay.client_for(running.ctx) is None
        assert await fake.notify(running.url, "CB20990101DEADBEEFDEADBEEF", 100) == 404
        with pytest.raises(WechatPayError) as err:
            await start_native_topup(running.ctx, 1, 100)
        assert err.value.code == "NOT_CONFIGURED"
