"""WeChat official account: signatures, safe mode, retries, the 5 s window, templates, tokens."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from core.db import make_engine, make_sessionmaker, transaction
from core.outbox import OutboxMessage
from core.riders.tables import Identity, LinkCode, Rider
from notifications.wechat_client import WechatClient
from notifications.wechat_store import WechatInbound
from tests.fakes.wechat_user import DOC_TEXT_MESSAGE, WechatUser, sign, verify_echo
from tests.support.journey import PileClient, wait_until
from tests.support.riders import ACCOUNT, TelegramRider, WechatRider
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, all_skins_settings

ROOT = Path(__file__).resolve().parents[2]


async def _count(server: Running, model) -> int:  # type: ignore[no-untyped-def]
    async with server.ctx.sm() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_server_verification_echoes_only_for_a_good_signature(all_skins: Running) -> None:
    url = f"{all_skins.url}/wechat"
    async with all_skins.http.get(url, params=verify_echo(ACCOUNT, "hello123")) as r:
        assert r.status == 200 and await r.text() == "hello123"
    bad = verify_echo(ACCOUNT, "hello123") | {"signature": "0" * 40}
    async with all_skins.http.get(url, params=bad) as r:
        assert r.status == 401


@pytest.mark.parametrize("only", [None, "signature", "msg_signature"])
async def test_wrong_signature_is_401_and_changes_nothing(all_skins: Running, only) -> None:  # type: ignore[no-untyped-def]
    user = WechatUser("oWx-forged", ACCOUNT)
    forged = user.tamper(user.text("/wallet"), only=only)
    async with all_skins.http.post(**forged.post_args(all_skins.url)) as r:
        assert r.status == 401
    assert await _count(all_skins, Rider) == 0
    assert await _count(all_skins, WechatInbound) == 0


async def test_a_replayed_push_outside_the_window_is_refused(all_skins: Running) -> None:
    # Correctly signed, but with a timestamp ten minutes old: a captured request replayed.
    ts, nonce = str(int(time.time()) - 600), "n0nce"
    params = {"signature": sign(ACCOUNT.token, ts, nonce), "timestamp": ts, "nonce": nonce}
    body = ("<xml><ToUserName>gh_x</ToUserName><FromUserName>oWx-replay</FromUserName>"
            f"<CreateTime>{ts}</CreateTime><MsgType>text</MsgType><Content>/wallet</Content>"
            "<MsgId>1</MsgId></xml>").encode()
    async with all_skins.http.post(f"{all_skins.url}/wechat", params=params, data=body) as r:
        assert r.status == 401
    fresh = str(int(time.time()))
    params = {"signature": sign(ACCOUNT.token, fresh, nonce), "timestamp": fresh, "nonce": nonce}
    async with all_skins.http.post(f"{all_skins.url}/wechat", params=params, data=body) as r:
        assert r.status == 200
    assert await _count(all_skins, Rider) == 1


async def test_malformed_xml_gets_a_clear_400(all_skins: Running) -> None:
    ts, nonce = str(int(time.time())), "n0nce"
    params = {"signature": sign(ACCOUNT.token, ts, nonce), "timestamp": ts, "nonce": nonce}
    for body in (b"<xml><ToUserName>broken", b"not xml at all", b"<xml></xml>"):
        async with all_skins.http.post(f"{all_skins.url}/wechat", params=params, data=body) as r:
            assert r.status == 400, body
            assert "XML" in await r.text()
    # Safe mode with a correctly signed but undecryptable Encrypt field.
    encrypt = "bm90IGEgcmVhbCBjaXBoZXJ0ZXh0"
    aes = params | {"encrypt_type": "aes",
                    "msg_signature": sign(ACCOUNT.token, ts, nonce, encrypt)}
    body = f"<xml><ToUserName>x</ToUserName><Encrypt>{encrypt}</Encrypt></xml>".encode()
    async with all_skins.http.post(f"{all_skins.url}/wechat", params=aes, data=body) as r:
        assert r.status == 400
    assert await _count(all_skins, Rider) == 0


async def test_the_documented_plaintext_message_gets_a_passive_reply(all_skins: Running) -> None:
    ts, nonce = str(int(time.time())), "docnonce"
    params = {"signature": sign(ACCOUNT.token, ts, nonce), "timestamp": ts, "nonce": nonce}
    async with all_skins.http.post(f"{all_skins.url}/wechat", params=params,
                                   data=DOC_TEXT_MESSAGE.encode()) as r:
        assert r.status == 200
        xml = await r.text()
    assert "<MsgType><![CDATA[text]]></MsgType>" in xml and "<Encrypt>" not in xml


async def test_the_same_message_delivered_three_times_is_handled_once(all_skins: Running,
                                                                     fakes) -> None:  # type: ignore[no-untyped-def]
    rider = WechatRider(all_skins, fakes[1], ACCOUNT)
    delivery = rider.user.text("/link")  # each handling would mint a new link code
    statuses = [await rider.post(delivery) for _ in range(3)]
    assert [s for s, _ in statuses] == [200, 200, 200]
    assert statuses[0][1] is not None and "/link" in statuses[0][1]["Content"]
    assert statuses[1][1] is None and statuses[2][1] is None  # bare "success"
    assert await _count(all_skins, LinkCode) == 1
    # A retry with a fresh timestamp and nonce but the same MsgId is still the same message.
    status, reply = await rider.post(rider.user.resigned(delivery))
    assert status == 200 and reply is None
    assert await _count(all_skins, LinkCode) == 1


async def test_scan_subscribe_location_and_menu_clicks(all_skins: Running, fakes) -> None:  # type: ignore[no-untyped-def]
    await seed_city(all_skins.ctx, piles_n=2, ports=2)
    async with transaction(all_skins.ctx.sm) as s:
        from core.piles.tables import Pile

        for pile in (await s.execute(select(Pile))).scalars():
            pile.online, pile.last_seen_at = True, all_skins.ctx.clock()
    rider = WechatRider(all_skins, fakes[1], ACCOUNT)
    _, reply = await rider.post(rider.user.subscribe("port_P0001-02"))  # a new follower scans
    assert reply is not None and "P0001-02" in reply["Content"]
    _, reply = await rider.post(rider.user.scan("port_P0002-01"))  # an existing follower
    assert reply is not None and "P0002-01" in reply["Content"]
    _, reply = await rider.post(rider.user.location(30.2781, 120.1141, "测试路"))
    assert reply is not None and "P0001" in reply["Content"] and "msgmenucontent=1" in (
        reply["Content"])
    _, reply = await rider.post(rider.user.location_event(30.2781, 120.1141))
    assert reply is not None and "P0002" in reply["Content"]
    _, reply = await rider.post(rider.user.click("wallet"))
    assert reply is not None and "¥0.00" in reply["Content"]
    _, reply = await rider.post(rider.user.image())
    assert reply is not None  # a photo is accepted and answered, never dropped


async def test_slow_work_is_acknowledged_and_finished_by_a_customer_service_message(
    db_url: str, fakes,  # type: ignore[no-untyped-def]
) -> None:
    settings = all_skins_settings(db_url, *fakes, wechat={"reply_timeout_s": 0.0})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2)
        rider = WechatRider(server, fakes[1], ACCOUNT)
        status, reply = await rider.post(rider.user.scan("port_P0001-01"))
        assert status == 200 and reply is None  # "success" inside the 5 s window
        text = await rider.wait_text("P0001-01", timeout=10)
        assert "msgmenucontent=" in text or "P0001-01" in text
        async def sent() -> OutboxMessage | None:
            async with server.ctx.sm() as s:
                row = (await s.execute(select(OutboxMessage))).scalars().one()
            return row if row.state == "sent" else None

        await wait_until(sent)  # the notifier marks the row just after the API accepted it
        late = await sent()
        assert late is not None and late.kind == "replies" and late.channel == "wechat:custom"


async def _run_bill(server: Running, rider: WechatRider) -> None:
    from datetime import UTC, datetime

    await seed_city(server.ctx, ports=2)
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
    now = datetime.now(UTC)
    await pile.post([pile.event("heartbeat", now)])
    await rider.scan("P0001-01")
    await rider.tap("开始充电")
    cmd = (await pile.commands())[0]
    return cmd, pile, now


@pytest.mark.parametrize("closed_by", ["our_clock", "wechat_45015"])
async def test_bill_outside_the_48h_window_goes_out_as_a_template_message(
    db_url: str, fakes, closed_by: str,  # type: ignore[no-untyped-def]
) -> None:
    fakes[1].templates = {"TPL-BILL"}
    settings = all_skins_settings(db_url, *fakes, wechat={"templates": {"bill": "TPL-BILL"}})
    async with start_server(settings) as server:
        rider = WechatRider(server, fakes[1], ACCOUNT)
        cmd, pile, now = await _run_bill(server, rider)
        if closed_by == "our_clock":  # the rider last wrote 49 h ago
            async with transaction(server.ctx.sm) as s:
                ident = (await s.execute(select(Identity))).scalars().one()
                ident.last_inbound_at = server.ctx.clock() - timedelta(hours=49)
        else:  # our record says open, WeChat says closed: fall back to the template
            fakes[1].closed_window.add(rider.user.openid)
        await pile.run_charge(1, cmd["session"], now, minutes=40)
        call = await fakes[1].wait_for(lambda c: c.path.endswith("template/send"))
        assert call.body["template_id"] == "TPL-BILL"
        assert call.body["touser"] == rider.user.openid
        assert any("¥" in v["value"] for v in call.body["data"].values())

        async def bill_row() -> OutboxMessage | None:
            async with server.ctx.sm() as s:
                row = (await s.execute(select(OutboxMessage).where(
                    OutboxMessage.kind == "bill"))).scalars().one()
            return row if row.state == "sent" else None

        await wait_until(bill_row)
        bill = await bill_row()
        assert bill is not None and bill.channel == "wechat:template"


async def test_twenty_workers_asking_for_a_token_cause_one_refresh(db_url: str, fakes) -> None:  # type: ignore[no-untyped-def]
    wx = fakes[1]
    wx.set_delay("/cgi-bin/token", 0.3)  # long enough for all twenty to overlap
    settings = all_skins_settings(db_url, *fakes).wechat
    engines = [make_engine(db_url) for _ in range(20)]
    try:
        async with aiohttp.ClientSession() as http:
            workers = [WechatClient(make_sessionmaker(e), settings, http) for e in engines]
            tokens = await asyncio.gather(*(w.access_token() for w in workers))
            assert len(set(tokens)) == 1
            assert wx.token_requests == 1
            # WeChat says the token expired: one refresh, one retry, the message goes out.
            wx.set_delay("/cgi-bin/token", 0)
            wx.expire_tokens()
            await asyncio.gather(*(w.send_custom(f"o-{i}", "你好") for i, w in
                                   enumerate(workers[:5])))
            assert wx.token_requests == 2
    finally:
        for e in engines:
            await e.dispose()


async def test_link_wechat_and_telegram_share_wallet_and_history(all_skins: Running,
                                                                 fakes) -> None:  # type: ignore[no-untyped-def]
    wx_rider = WechatRider(all_skins, fakes[1], ACCOUNT)
    tg_rider = TelegramRider(all_skins, fakes[0])
    await tg_rider.say("/wallet")
    await tg_rider.tap("+¥5.00")
    await wx_rider.say("/link")
    code = re.findall(r"/link (\S+)", wx_rider.texts()[-1])[-1]
    assert len(code.replace("-", "")) == 10
    await tg_rider.say(f"/link {code}")
    await tg_rider.wait_text("确认")  # the code's owner decides, in their own chat
    async with all_skins.ctx.sm() as s:
        assert len({i.rider_id for i in (await s.execute(select(Identity))).scalars()}) == 2
    await wx_rider.tap("确认")
    # The merge's own notice (the top-up's confirmation also says ¥5.00), sent after its commit.
    await tg_rider.wait_text("绑定成功")
    async with all_skins.ctx.sm() as s:
        riders = {i.rider_id for i in (await s.execute(select(Identity))).scalars()}
    assert len(riders) == 1
    await wx_rider.say("/wallet")
    assert "¥5.00" in wx_rider.passive[-1]  # texts() ends with the pushed link question
    # The code is single-use.
    await tg_rider.say(f"/link {code}")
    await tg_rider.wait_text("过期")


async def test_cli_publishes_the_menu_and_prints_port_qr_signs(db_url: str, fakes,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the CLI is exercised once, on SQLite")
    settings = all_skins_settings(db_url, *fakes)
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=3)
    env = {"PATH": "/usr/bin:/bin", "CHARGEBOT_LOG": "WARNING",
           "CHARGEBOT_WECHAT__APPID": ACCOUNT.appid, "CHARGEBOT_WECHAT__SECRET": ACCOUNT.secret,
           "CHARGEBOT_WECHAT__API_BASE_URL": fakes[1].base_url}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "--database", db_url, *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, out = await cli("wechat", "menu")
    assert code == 0, out
    assert [b.get("key") for b in fakes[1].menu["button"]][:2] == ["near", "status"]
    code, out = await cli("piles", "qr", "--pile", "P0001", "--out", str(tmp_path / "qr"))
    assert code == 0, out
    assert sorted(p.name for p in (tmp_path / "qr").iterdir()) == [
        "P0001-01.png", "P0001-02.png", "P0001-03.png"]
    assert fakes[1].ticket_for("port_P0001-02") is not None
    assert "showqrcode?ticket=" in out
    code, out = await cli("piles", "qr", "--pile", "P0404", "--out", str(tmp_path))
    assert code != 0 and "unknown pile" in out



async def test_rate_limited_customer_message_is_retried_and_delivered_once(
    db_url: str, fakes,  # type: ignore[no-untyped-def]
) -> None:
    settings = all_skins_settings(db_url, *fakes, notifications={"poll_s": 0.05})
    async with start_server(settings, notifier=False) as server:
        from bot.app import NOTIFIER

        rider = WechatRider(server, fakes[1], ACCOUNT)
        cmd, pile, now = await _run_bill(server, rider)
        await pile.run_charge(1, cmd["session"], now, minutes=20)
        fakes[1].fail_next("/cgi-bin/message/custom/send", 45047, "out of response count limit")
        notifier = server.app[NOTIFIER]
        skew = [0]
        notifier.clock = lambda: server.ctx.clock() + timedelta(seconds=skew[0])
        await notifier.run_once()  # charge_started + bill: the first send is refused
        async with server.ctx.sm() as s:
            pending = (await s.execute(select(OutboxMessage).where(
                OutboxMessage.state == "pending"))).scalars().all()
        assert len(pending) == 1 and "45047" in (pending[0].last_error or "")
        skew[0] = 60  # past the back-off
        for _ in range(3):
            await notifier.run_once()
        texts = fakes[1].texts_to(rider.user.openid)
        assert len([t for t in texts if "🧾" in t]) == 1
        assert len([t for t in texts if "P0001-01" in t and "⚡" in t]) == 1
        async with server.ctx.sm() as s:
            states = (await s.execute(select(OutboxMessage.state))).scalars().all()
        assert set(states) == {"sent"}
