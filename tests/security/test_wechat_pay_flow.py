"""WeChat riders pay in WeChat, end to end from the chat skins against the local fake WeChat Pay.

In WeChat the wallet card's amounts and a due bill's Pay are links to the H5 pay page under
public_url: the page places a JSAPI order for the rider's own openid (signed by the merchant
key, checked by the fake), hands WeixinJSBridge parameters whose paySign the test verifies from
WeChat Pay's documented formula, and the fake, as the rider's WeChat, pays and notifies. In the
web chat the amounts show a Native QR code. What the notification credits, it credits once; a
forged one or the wrong amount credits nothing; a link is its rider's, expires and cannot be
altered.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
from collections.abc import AsyncIterator
from io import BytesIO
from typing import Any

import pytest
import qrcode
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from PIL import Image
from sqlalchemy import func, select

from bot.i18n import tr
from bot.payments import pay_page
from core.billing import wallet
from core.billing.payments import Payment
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.db import transaction
from core.outbox import OutboxMessage
from core.piles.tables import Port
from core.riders.tables import Identity
from tests.fakes.wechatpay_api import FakeWechatPay, PayRefused
from tests.support.journey import HandClock, PileClient, WebRider
from tests.support.riders import ACCOUNT, WechatRider
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, all_skins_settings
from tests.support.wechatpay import APPID, fake_wechatpay, keys, wechatpay_config

PAGE_LINK = re.compile(r'<a href="([^"]*/pay/wechat\?t=[^"]*)">([^<]*)</a>')
DATA_BLOCK = re.compile(r'<script type="application/json" id="pay-data">(.*?)</script>', re.S)
ZH = "zh_CN"


@pytest.fixture
async def wxpay() -> AsyncIterator[FakeWechatPay]:
    fake = fake_wechatpay()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


@pytest.fixture
async def server(db_url: str, fakes: tuple[Any, Any], wxpay: FakeWechatPay,
                 clock: HandClock) -> AsyncIterator[Running]:
    """Production's payments: WeChat Pay alone (no sandbox), every skin on its fake."""
    settings = all_skins_settings(db_url, *fakes, payments={
        "providers": ["wechatpay"], "wechatpay": wechatpay_config(wxpay.base_url),
    })
    async with start_server(settings, clock=clock) as running:
        await seed_city(running.ctx)
        yield running


# --- what the test knows independently of the code under test ----------------------------------


def verify_pay_sign(params: dict[str, str]) -> None:
    """WeChat Pay's JSAPI rule (JSAPI调起支付, paySign): SHA256withRSA with the merchant key over
    the four lines appId, timeStamp, nonceStr, package, each ending in a newline; base64."""
    message = (f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n"
               f"{params['package']}\n").encode()
    keys()[0].public_key().verify(base64.b64decode(params["paySign"]), message,
                                  padding.PKCS1v15(), hashes.SHA256())


def read_qr(png: bytes) -> list[list[bool]]:
    """The module grid of a QR code image: its size from the finder pattern (7 modules wide),
    then each module sampled at its centre."""
    img = Image.open(BytesIO(png)).convert("L")
    width, height = img.size
    px = img.load()
    assert px is not None

    def dark(x: int, y: int) -> bool:
        return px[x, y] < 128  # type: ignore[operator]

    rows = [y for y in range(height) if any(dark(x, y) for x in range(width))]
    cols = [x for x in range(width) if any(dark(x, y) for y in range(height))]
    top, left, right = rows[0], cols[0], cols[-1]
    run = 0
    while dark(left + run, top):
        run += 1
    module = run / 7
    n = round((right - left + 1) / module)
    return [[dark(int(left + (c + 0.5) * module), int(top + (r + 0.5) * module))
             for c in range(n)] for r in range(n)]


def qr_matrices(data: str) -> list[list[list[bool]]]:
    found = []
    for level in (qrcode.constants.ERROR_CORRECT_L, qrcode.constants.ERROR_CORRECT_M,
                  qrcode.constants.ERROR_CORRECT_Q, qrcode.constants.ERROR_CORRECT_H):
        q = qrcode.QRCode(error_correction=level, border=0)
        q.add_data(data)
        q.make(fit=True)
        found.append(q.get_matrix())
    return found


# --- helpers -------------------------------------------------------------------------------------


def local(server: Running, url: str) -> str:
    """A link under public_url, on the test server's real port."""
    assert url.startswith(server.ctx.settings.server.public_url.rstrip("/") + "/pay/"), url
    return server.url + url[url.index("/pay/"):]


def pay_links(rider: WechatRider) -> dict[str, str]:
    """Label → pay-page URL, from every message the rider got (the latest wins)."""
    found: dict[str, str] = {}
    for text in rider.texts():
        for href, label in PAGE_LINK.findall(text):
            found[html.unescape(label)] = html.unescape(href)
    return found


async def wait_link(rider: WechatRider, label: str) -> str:
    await rider.wait_text(label)
    links = pay_links(rider)
    assert label in links, (label, rider.texts()[-1])
    return links[label]


async def open_page(server: Running, url: str) -> tuple[int, str, Any]:
    async with server.http.get(local(server, url)) as r:
        return r.status, await r.text(), r.headers


def page_params(page: str) -> dict[str, str]:
    m = DATA_BLOCK.search(page)
    assert m, page
    return json.loads(m.group(1))["params"]


async def rider_id(server: Running, platform: str, external_id: str) -> int:
    async with server.ctx.sm() as s:
        rid = await s.scalar(select(Identity.rider_id).where(
            Identity.platform == platform, Identity.external_id == external_id))
    assert rid is not None
    return rid


async def money(server: Running, rid: int) -> tuple[int, list[tuple[str, int]]]:
    async with server.ctx.sm() as s:
        bal = await wallet.balance(s, rid)
        assert bal == await wallet.ledger_sum(s, rid)
        entries = (await s.execute(select(LedgerEntry.kind, LedgerEntry.amount_fen).where(
            LedgerEntry.rider_id == rid).order_by(LedgerEntry.id))).all()
    return bal, [(k, a) for k, a in entries]


async def payments_of(server: Running, rid: int) -> list[tuple[str, int, str]]:
    async with server.ctx.sm() as s:
        rows = (await s.execute(select(Payment).where(Payment.rider_id == rid)
                                .order_by(Payment.id))).scalars().all()
    return [(p.out_trade_no, p.amount_fen, p.state) for p in rows]


async def payment_notices(server: Running, rid: int) -> int:
    async with server.ctx.sm() as s:
        return await s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.rider_id == rid, OutboxMessage.kind == "payment")) or 0


async def due_charge(server: Running, rid: int, fen: int) -> tuple[int, str]:
    """An ended charge the rider's wallet could not pay: (its id, its port code)."""
    async with transaction(server.ctx.sm) as s:
        port = (await s.execute(select(Port).order_by(Port.id))).scalars().first()
        assert port is not None
        now = server.ctx.clock()
        charge = Charge(rider_id=rid, port_id=port.id, pile_id=port.pile_id,  # type: ignore[arg-type]
                        port_number=port.number, port_code=port.code, site_id="T01",
                        session_ref=f"s-due-{rid}", state="ended", requested_at=now,
                        started_at=now, ended_at=now, duration_s=3600, amount_fen=fen)
        s.add(charge)
        await s.flush()
        assert charge.id is not None
        return charge.id, port.code


async def wechat_rider(server: Running, fakes: tuple[Any, Any]) -> tuple[WechatRider, int]:
    rider = WechatRider(server, fakes[1], ACCOUNT)
    await rider.say("/start")
    return rider, await rider_id(server, "wechat", rider.user.openid)


def topped_up(amount: str, lang: str = ZH) -> str:
    return tr(lang, "✅ Topped up {amount} via {provider}.", amount=amount,
              provider=tr(lang, "WeChat Pay"))


# --- the tests -----------------------------------------------------------------------------------


async def test_wechat_rider_tops_up_on_the_pay_page_credited_once(
    server: Running, fakes: tuple[Any, Any], wxpay: FakeWechatPay,
) -> None:
    rider, rid = await wechat_rider(server, fakes)
    await rider.say("/wallet")
    await rider.wait_text(tr(ZH, "Top up with WeChat Pay (tap an amount):"))
    url = await wait_link(rider, "+¥10.00")

    status, page, headers = await open_page(server, url)
    assert status == 200, page
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "¥10.00" in page and tr(ZH, "Top up your charging wallet") in page
    assert re.search(r"<script(?![^>]*(?:application/json|src=))", page) is None  # no inline JS

    # The order: signed with the merchant key (the fake verified it), for this rider's openid.
    call = wxpay.calls[-1]
    assert call.auth_ok, call.auth_error
    assert call.path == "/v3/pay/transactions/jsapi"
    assert call.body["payer"] == {"openid": rider.user.openid}
    assert call.body["amount"] == {"total": 1000, "currency": "CNY"}
    assert call.body["notify_url"].endswith("/payments/wechatpay/notify")
    order = wxpay.orders[call.body["out_trade_no"]]

    params = page_params(page)
    assert params["appId"] == APPID and params["signType"] == "RSA"
    assert params["package"] == f"prepay_id={order.prepay_id}"
    assert abs(int(params["timeStamp"]) - time.time()) < 60  # seconds, WeChat's own clock
    verify_pay_sign(params)
    async with server.http.get(server.url + pay_page.SCRIPT_PATH) as r:
        assert r.status == 200 and "getBrandWCPayRequest" in await r.text()

    # A reload is the same order: no second Payment, no second order at WeChat Pay.
    calls = len(wxpay.calls)
    status, again, _ = await open_page(server, url)
    assert status == 200 and page_params(again)["package"] == params["package"]
    verify_pay_sign(page_params(again))
    assert len(wxpay.calls) == calls
    assert await payments_of(server, rid) == [(order.out_trade_no, 1000, "created")]

    # The rider pays in WeChat; WeChat Pay notifies; the chat says so.
    assert await wxpay.pay(server.url, params=params, openid=rider.user.openid) == 204
    assert await money(server, rid) == (1000, [("topup", 1000)])
    told = await rider.wait_text(topped_up("¥10.00"))
    assert tr(ZH, "👛 Balance: {balance}", balance="¥10.00") in told

    # Replayed (byte for byte, and as WeChat's retry under a new id): no second credit or message.
    headers_, body = wxpay.sent[-1]
    assert await wxpay.post_notification(server.url, headers_, body) == 204
    assert await wxpay.notify(server.url, order.out_trade_no, 1000) == 204
    assert await money(server, rid) == (1000, [("topup", 1000)])
    assert await payment_notices(server, rid) == 1
    assert await payments_of(server, rid) == [(order.out_trade_no, 1000, "paid")]
    status, done, _ = await open_page(server, url)
    assert status == 200 and tr(ZH, "✅ Already paid. You can go back to the chat.") in done
    assert "pay-data" not in done
    assert sum(topped_up("¥10.00") in t for t in rider.texts()) == 1

    # A link opened twice at once (a double tap) is still one order.
    hundred = await wait_link(rider, "+¥100.00（送¥20.00）")
    pages = await asyncio.gather(open_page(server, hundred), open_page(server, hundred))
    assert [st for st, _, _ in pages] == [200, 200]
    assert page_params(pages[0][1])["package"] == page_params(pages[1][1])["package"]
    assert [a for _, a, _ in await payments_of(server, rid)] == [1000, 10000]


async def test_forged_or_wrong_amount_notifications_credit_nothing(
    server: Running, fakes: tuple[Any, Any], wxpay: FakeWechatPay,
) -> None:
    rider, rid = await wechat_rider(server, fakes)
    await rider.say("/wallet")
    status, page, _ = await open_page(server, await wait_link(rider, "+¥20.00"))
    assert status == 200
    otn = wxpay.calls[-1].body["out_trade_no"]

    for forge in ("signature", "serial", "ciphertext", "stale"):
        assert await wxpay.notify(server.url, otn, 2000, forge=forge) == 401, forge
    assert await wxpay.notify(server.url, otn, 1999) == 400  # not the amount ordered
    assert await wxpay.notify(server.url, otn, 20000) == 400
    assert await money(server, rid) == (0, [])
    assert await payments_of(server, rid) == [(otn, 2000, "created")]
    assert await payment_notices(server, rid) == 0

    # Another WeChat user cannot pay this rider's order; the rider can, once.
    with pytest.raises(PayRefused):
        await wxpay.pay(server.url, params=page_params(page), openid="o-someone-else")
    tampered = {**page_params(page), "package": "prepay_id=wx" + "0" * 32}
    with pytest.raises(PayRefused):
        await wxpay.pay(server.url, params=tampered)
    assert await wxpay.pay(server.url, params=page_params(page), openid=rider.user.openid) == 204
    # ¥20 earns no bonus; the default rules start at ¥50.
    assert await money(server, rid) == (2000, [("topup", 2000)])


async def test_due_bill_paid_in_wechat_and_the_rider_can_charge_again(
    server: Running, fakes: tuple[Any, Any], wxpay: FakeWechatPay, clock: HandClock,
) -> None:
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
    await pile.post([pile.event("heartbeat", clock.now)])
    rider, rid = await wechat_rider(server, fakes)
    charge_id, code = await due_charge(server, rid, 300)

    # The due bill blocks the next start; its Pay offers exactly the amount due, in WeChat.
    await rider.say(code)
    await rider.tap(tr(ZH, "⚡ Start charging"))
    await rider.wait_text(tr(ZH, "You have an unpaid bill of {amount}. Please pay it before "
                                 "starting a new charge.", amount="¥3.00"))
    await rider.tap(tr(ZH, "💳 Pay now"))
    url = await wait_link(rider, tr(ZH, "💳 Pay {amount} in WeChat", amount="¥3.00"))
    status, page, _ = await open_page(server, url)
    assert status == 200 and "¥3.00" in page and tr(ZH, "Pay your charging bill") in page
    assert wxpay.calls[-1].body["amount"]["total"] == 300
    params = page_params(page)
    verify_pay_sign(params)

    assert await wxpay.pay(server.url, params=params, openid=rider.user.openid) == 204
    assert await money(server, rid) == (0, [("topup", 300), ("charge", -300)])
    async with server.ctx.sm() as s:
        settled = await s.get(Charge, charge_id)
    assert settled is not None and settled.state == "settled" and settled.paid_fen == 300
    told = await rider.wait_text(tr(ZH, "Your unpaid bill is paid. You can charge again."))
    assert topped_up("¥3.00") in told

    # Replayed: the bill is not paid twice, the rider is not told twice.
    headers, body = wxpay.sent[-1]
    assert await wxpay.post_notification(server.url, headers, body) == 204
    assert await money(server, rid) == (0, [("topup", 300), ("charge", -300)])
    assert await payment_notices(server, rid) == 1

    # And the next start goes ahead.
    await rider.say(code)
    await rider.tap(tr(ZH, "⚡ Start charging"))
    await rider.wait_text(tr(ZH, "⏳ Starting port {code}… I'll tell you as soon as power "
                                 "flows.", code=code))


def _alter(token: str, **changes: int) -> str:
    """The token with fields of its body changed and its MAC kept (what a forger can do)."""
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    offsets = {"rider": (1, 4), "amount": (5, 4)}
    for name, value in changes.items():
        at, size = offsets[name]
        raw[at:at + size] = value.to_bytes(size, "big")
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


async def test_a_link_is_its_riders_expires_and_cannot_be_altered(
    server: Running, fakes: tuple[Any, Any], wxpay: FakeWechatPay, clock: HandClock,
) -> None:
    alice, alice_id = await wechat_rider(server, fakes)
    bob, bob_id = await wechat_rider(server, fakes)
    await alice.say("/wallet")
    alice_ten = await wait_link(alice, "+¥10.00")
    alice_fifty = await wait_link(alice, "+¥50.00（送¥8.00）")
    await bob.say("/wallet")
    bob_ten = await wait_link(bob, "+¥10.00")
    token = bob_ten.split("?t=", 1)[1]

    async def refused(url: str, status: int) -> str:
        got, page, headers = await open_page(server, url)
        assert got == status, (url, got, page)
        assert headers["Cache-Control"] == "no-store" and "pay-data" not in page
        return page

    # Altered: Bob's link made Alice's, or made cheaper: refused, nothing placed anywhere.
    base = bob_ten.split("?t=", 1)[0]
    page = await refused(f"{base}?t={_alter(token, rider=alice_id)}", 403)
    assert tr(ZH, "This payment link is not valid. Please ask for a new one in the chat.") in page
    await refused(f"{base}?t={_alter(token, amount=1)}", 403)
    for junk in ("", "x", token[:-2], token + "AA", "%00", "é" * 40, "A" * 40):
        await refused(f"{base}?t={junk}", 400 if junk != "A" * 40 else 403)
    await refused(base, 400)
    assert wxpay.calls == []
    assert await payments_of(server, alice_id) == await payments_of(server, bob_id) == []

    # Whoever opens Alice's link, the order is Alice's: her openid, her wallet; Bob cannot pay it.
    status, page, _ = await open_page(server, alice_ten)
    assert status == 200
    assert wxpay.calls[-1].body["payer"] == {"openid": alice.user.openid}
    with pytest.raises(PayRefused):
        await wxpay.pay(server.url, params=page_params(page), openid=bob.user.openid)
    assert [a for _, a, _ in await payments_of(server, alice_id)] == [1000]
    assert await payments_of(server, bob_id) == []

    # A Native (web chat) link is no pay page, and a rider without WeChat gets none.
    web = WebRider(server.http, server.url)
    await web.say("/start")
    web_id = await rider_id(server, "webchat", web.client_id)
    native = pay_page.link(server.ctx, alice_id, 1000, "topup", "native")
    assert native is not None
    await refused(f"{base}?t={native.split('?t=', 1)[1]}", 400)
    no_wechat = pay_page.link(server.ctx, web_id, 1000, "topup", "jsapi")
    assert no_wechat is not None
    page = await refused(no_wechat, 403)
    assert tr(ZH, "Please open this link from our chat in WeChat.") in page

    # 30 minutes on, every link has expired: the unused one places nothing, the used one shows
    # no pay parameters any more.
    calls = len(wxpay.calls)
    clock.advance(minutes=31)
    page = await refused(alice_fifty, 410)
    assert tr(ZH, "This payment link has expired. Please ask for a new one in the chat.") in page
    await refused(alice_ten, 410)
    assert len(wxpay.calls) == calls
    assert [a for _, a, _ in await payments_of(server, alice_id)] == [1000]


async def test_pay_page_speaks_the_riders_language(
    server: Running, fakes: tuple[Any, Any],
) -> None:
    rider, _rid = await wechat_rider(server, fakes)
    await rider.say("/language")
    await rider.tap("English")
    await rider.say("/wallet")
    await rider.wait_text("Top up with WeChat Pay (tap an amount):")
    status, page, _ = await open_page(server, await wait_link(rider, "+¥5.00"))
    assert status == 200
    assert '<html lang="en">' in page and "Top up your charging wallet" in page
    assert "Pay ¥5.00" in page
    assert json.loads(DATA_BLOCK.search(page).group(1))["text"]["paid"].startswith(  # type: ignore[union-attr]
        "✅ Paid.")


async def test_web_chat_rider_scans_a_native_qr_code(
    server: Running, wxpay: FakeWechatPay,
) -> None:
    web = WebRider(server.http, server.url)
    await web.press("lang:en")
    rid = await rider_id(server, "webchat", web.client_id)
    card = await web.press("wallet")
    data = [b["data"] for r in card for row in r["buttons"] for b in row if "data" in b]
    assert "topupvia:wechatpay:1000" in data
    assert not [d for d in data if d.startswith("topup:")]  # no sandbox in production

    reply = (await web.press("topupvia:wechatpay:1000"))[0]
    assert reply["text"].startswith("Scan this QR code with WeChat to pay ¥10.00.")
    assert wxpay.calls == []  # the order is placed when the QR is shown, not in the chat turn
    qr_url = local(server, reply["photo_url"])
    async with server.http.get(qr_url) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        assert r.headers["Cache-Control"] == "no-store"
        png = await r.read()
    call = wxpay.calls[-1]
    assert call.auth_ok and call.path == "/v3/pay/transactions/native"
    assert call.body["amount"]["total"] == 1000 and "payer" not in call.body
    order = wxpay.orders[call.body["out_trade_no"]]
    assert read_qr(png) in qr_matrices(order.code_url or "")

    async with server.http.get(qr_url) as r:  # shown again: the same order
        assert r.status == 200 and await r.read() == png
    assert len(wxpay.calls) == 1
    async with server.http.get(qr_url.replace("/pay/wechat/qr", "/pay/wechat")) as r:
        assert r.status == 400  # a QR link is no pay page

    assert await wxpay.pay(server.url, code_url=order.code_url) == 204
    assert await money(server, rid) == (1000, [("topup", 1000)])
    told = await web.wait_message("Topped up ¥10.00 via WeChat Pay.")
    assert "Balance: ¥10.00" in told["text"]
    headers, body = wxpay.sent[-1]
    assert await wxpay.post_notification(server.url, headers, body) == 204
    assert await money(server, rid) == (1000, [("topup", 1000)])
    assert await payment_notices(server, rid) == 1
    async with server.http.get(qr_url) as r:
        assert r.status == 410  # paid: nothing left to scan

    # An amount the card does not offer (and no bill is due for): no QR, the card again.
    other = (await web.press("topupvia:wechatpay:123"))[0]
    assert other["photo_url"] is None and "Balance: ¥10.00" in other["text"]


async def test_web_chat_rider_pays_a_due_bill_with_a_native_qr_code(
    server: Running, wxpay: FakeWechatPay,
) -> None:
    web = WebRider(server.http, server.url)
    await web.press("lang:en")
    rid = await rider_id(server, "webchat", web.client_id)
    charge_id, _ = await due_charge(server, rid, 450)

    answer = (await web.press("pay"))[0]
    assert answer["text"].startswith("Your balance ¥0.00 is not enough for ¥4.50. Pay it with "
                                     "WeChat Pay")
    assert answer["buttons"][0] == [{"label": "💳 Pay ¥4.50 in WeChat",
                                     "data": "topupvia:wechatpay:450"}]
    reply = (await web.press("topupvia:wechatpay:450"))[0]
    async with server.http.get(local(server, reply["photo_url"])) as r:
        assert r.status == 200
        png = await r.read()
    order = wxpay.orders[wxpay.calls[-1].body["out_trade_no"]]
    assert order.total == 450 and read_qr(png) in qr_matrices(order.code_url or "")

    assert await wxpay.pay(server.url, code_url=order.code_url) == 204
    told = await web.wait_message("Your unpaid bill is paid. You can charge again.")
    assert "Topped up ¥4.50 via WeChat Pay." in told["text"]
    assert await money(server, rid) == (0, [("topup", 450), ("charge", -450)])
    async with server.ctx.sm() as s:
        settled = await s.get(Charge, charge_id)
    assert settled is not None and settled.state == "settled"
