"""The wallet card in the web chat: sandbox top-ups once per card, auto top-up, coupons."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.handlers import notices
from bot.i18n import tr
from bot.payments.sandbox import sandbox_topup
from core.billing import coupons, wallet
from core.billing.payments import Payment
from core.billing.wallet import LedgerEntry
from core.db import transaction
from core.riders.tables import Rider
from tests.support.journey import button, english_rider_and_id
from tests.support.server import Running


def data_of(replies: list[dict]) -> list[str]:
    return [b["data"] for r in replies for row in r["buttons"] for b in row if "data" in b]


async def balance(server: Running, rid: int) -> int:
    async with server.ctx.sm() as s:
        bal = await wallet.balance(s, rid)
        assert bal == await wallet.ledger_sum(s, rid)
        return bal


async def test_sandbox_top_up_once_per_card(server: Running) -> None:
    rider, rid = await english_rider_and_id(server)
    card = await rider.press("wallet")
    assert "Top up (sandbox payment, no real money):" in card[0]["text"]
    assert not [d for d in data_of(card) if d.startswith("topupvia:")]
    ten = button(card, "topup:1000:")

    first = await rider.press(ten)
    assert "Topped up ¥10.00" in first[0]["text"] and "Balance: ¥10.00" in first[0]["text"]
    again = await rider.press(ten)  # the same button on the same card: a double tap
    assert "already done" in again[0]["text"] and "¥10.00" in again[0]["text"]
    assert await balance(server, rid) == 1000

    # A new card has fresh buttons: the same amount tops up again.
    card2 = await rider.press("wallet")
    assert "Balance: ¥10.00" in card2[0]["text"]
    ten2 = button(card2, "topup:1000:")
    assert ten2 != ten
    await rider.press(ten2)
    assert await balance(server, rid) == 2000

    # Racing double taps still credit once.
    ten3 = button(await rider.press("wallet"), "topup:1000:")
    await asyncio.gather(*(rider.press(ten3) for _ in range(3)), return_exceptions=True)
    assert await balance(server, rid) == 3000

    # Sandbox top-ups are payments now: one paid row each, and ¥50 earns the ¥8 bonus.
    fifty = await rider.press(button(await rider.press("wallet"), "topup:5000:"))
    assert "+¥8.00" in fifty[0]["text"] and "Balance: ¥88.00" in fifty[0]["text"]
    async with server.ctx.sm() as s:
        rows = list((await s.execute(select(Payment).where(Payment.rider_id == rid))).scalars())
        kinds = [e.kind for e in (await s.execute(
            select(LedgerEntry).where(LedgerEntry.rider_id == rid))).scalars()]
    assert [(p.provider, p.state, p.amount_fen) for p in rows] == [
        ("sandbox", "paid", 1000)] * 3 + [("sandbox", "paid", 5000)]
    assert kinds == ["topup"] * 4 + ["bonus"]

    # An amount the card never offered is not topped up.
    await rider.press("topup:777:abcd")
    assert await balance(server, rid) == 8800


async def test_sandbox_topup_is_idempotent_by_key(server: Running) -> None:
    _rider, rid = await english_rider_and_id(server)
    settings, now = server.ctx.settings, server.ctx.clock()
    async with transaction(server.ctx.sm) as s:
        p1, first = await sandbox_topup(s, rid, 2000, f"{rid}:k1", settings, now)
        p2, second = await sandbox_topup(s, rid, 2000, f"{rid}:k1", settings, now)
    assert (first, second) == (True, False) and p1.id == p2.id
    assert p1.provider_txn_id == f"sandbox-{rid}:k1" and p1.details == {"key": f"{rid}:k1"}
    async with transaction(server.ctx.sm) as s:
        _p3, third = await sandbox_topup(s, rid, 2000, f"{rid}:k1", settings, now)
    assert third is False
    assert await balance(server, rid) == 2000


async def test_auto_top_up_opt_in_and_out(server: Running) -> None:
    rider, rid = await english_rider_and_id(server)
    card = await rider.press("wallet")
    assert "🔁 Auto top-up: off" in card[0]["text"]
    assert {"autotopup:2000", "autotopup:5000"} <= set(data_of(card))
    assert "autotopup:off" not in data_of(card)

    on = await rider.press("autotopup:2000")
    assert "Auto top-up on" in on[0]["text"]
    async with server.ctx.sm() as s:
        r = await s.get(Rider, rid)
    assert r is not None and (r.auto_topup_fen, r.auto_topup_below_fen) == (2000, 500)
    shown = await rider.press("wallet")
    assert "Auto top-up: ¥20.00 when the balance falls below ¥5.00" in shown[0]["text"]
    assert "autotopup:off" in data_of(shown) and "autotopup:5000" in data_of(shown)
    assert "autotopup:2000" not in data_of(shown)

    await rider.press("autotopup:5000")  # switch the amount
    assert "Auto top-up: ¥50.00" in (await rider.press("wallet"))[0]["text"]
    await rider.press("autotopup:1234")  # not an offered choice: nothing changes
    async with server.ctx.sm() as s:
        r = await s.get(Rider, rid)
    assert r is not None and r.auto_topup_fen == 5000

    off = await rider.press("autotopup:off")
    assert "Auto top-up is off." in off[0]["text"]
    async with server.ctx.sm() as s:
        r = await s.get(Rider, rid)
    assert r is not None and (r.auto_topup_fen, r.auto_topup_below_fen) == (0, 0)
    assert "🔁 Auto top-up: off" in (await rider.press("wallet"))[0]["text"]


async def test_coupons_and_bonus_rules_on_the_card(server: Running) -> None:
    rider, rid = await english_rider_and_id(server)
    card = await rider.press("wallet")
    assert "Coupons" not in card[0]["text"]
    assert "Top up ¥50.00, get ¥8.00 extra" in card[0]["text"]
    assert "Top up ¥100.00, get ¥20.00 extra" in card[0]["text"]
    # Every advertised bonus has a button that reaches it.
    assert any(d.startswith("topup:10000:") for d in data_of(card))

    now = server.ctx.clock()
    async with transaction(server.ctx.sm) as s:
        await coupons.issue(s, rid, amount_fen=300, reason="test", now=now)
        await coupons.issue(s, rid, amount_fen=500, days=10, reason="test", now=now)
        await coupons.issue(s, rid, percent_off=10, reason="test", now=now)
        used = await coupons.issue(s, rid, amount_fen=900, reason="used", now=now)
        used.used_at = now
        await coupons.issue(s, rid, amount_fen=800, days=1, reason="old",
                            now=now - timedelta(days=3))
    card = await rider.press("wallet")
    text = card[0]["text"]
    tz = ZoneInfo(server.ctx.settings.server.timezone)
    until = (now + timedelta(days=10)).astimezone(tz).strftime("%Y-%m-%d")
    assert f"🎟 Coupons: 3 (best: ¥5.00 off, valid until {until})" in text

    # In Chinese too.
    await rider.press("lang:zh_CN")
    zh = (await rider.press("wallet"))[0]["text"]
    assert tr("zh_CN", "{amount} off", amount="¥5.00") in zh
    assert "优惠券：3张" in zh


async def test_telegram_buttons_are_explained_outside_telegram(server: Running) -> None:
    rider, _rid = await english_rider_and_id(server)
    reply = await rider.press("topupvia:telegram:1000")
    assert "only in the Telegram chat" in reply[0]["text"]
    assert "Balance: ¥0.00" in reply[0]["text"]


def test_payment_and_auto_topup_notices_render() -> None:
    paid = notices.render("payment", {"amount_fen": 10000, "bonus_fen": 2000,
                                      "balance_fen": 12345, "provider": "wechatpay"}, "en")
    assert paid[0].text.splitlines() == [
        "✅ Topped up ¥100.00 via WeChat Pay.", "🎁 Top-up bonus: +¥20.00", "👛 Balance: ¥123.45"]
    assert paid[0].buttons[0][0].data == "wallet"
    zh = notices.render("payment", {"amount_fen": 500, "bonus_fen": 0, "balance_fen": 500,
                                    "provider": "telegram"}, "zh_CN")[0].text
    assert "¥5.00" in zh and "Telegram" in zh and "赠送" not in zh
    auto = notices.render("auto_topup", {"amount_fen": 2000, "balance_fen": 2300}, "en")
    assert auto[0].text == "🔁 Auto top-up: ¥20.00 added to your wallet. Balance: ¥23.00"
    assert "自动续费" in notices.render("auto_topup", {"amount_fen": 2000, "balance_fen": 2300},
                                      "zh_CN")[0].text


async def test_top_up_buttons_show_their_bonus(server: Running) -> None:
    """Issue 18 finding 7: the bonus rules (¥50 → +¥8, ¥100 → +¥20 by default) are on the
    buttons themselves, not only in a line above them."""
    rider, _ = await english_rider_and_id(server)
    card = await rider.press("wallet")
    labels = {b["data"].split(":")[1]: b["label"] for r in card for row in r["buttons"]
              for b in row if b.get("data", "").startswith("topup:")}
    assert labels["1000"] == "+¥10.00"
    assert labels["5000"] == "+¥50.00 (+¥8.00 bonus)"
    assert labels["10000"] == "+¥100.00 (+¥20.00 bonus)"
