"""The foundation journey, written once, run on Telegram, WeChat and the web chat."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.i18n import tr
from core.charging.tables import Charge
from simulator import ChargerProfile, Fleet, PileSpec
from tests.support.journey import (
    expected_power_tier_fen,
    pile_online,
    pile_session,
    wait_until,
)
from tests.support.riders import ACCOUNT, TelegramRider, WebChatRider, WechatRider
from tests.support.server import Running, seed_city


def make_rider(platform: str, server: Running, fakes):  # type: ignore[no-untyped-def]
    if platform == "telegram":
        return TelegramRider(server, fakes[0])
    if platform == "wechat":
        return WechatRider(server, fakes[1], ACCOUNT)
    return WebChatRider(server)


@pytest.mark.parametrize("platform", ["telegram", "wechat", "webchat"])
async def test_scan_start_charge_and_get_the_bill(platform: str, all_skins: Running,
                                                  fakes) -> None:  # type: ignore[no-untyped-def]
    server = all_skins
    specs = await seed_city(server.ctx, ports=4)
    fleet = Fleet(server.url, [PileSpec(*s) for s in specs], speed=3600, heartbeat_s=1,
                  meter_every_s=0.05, long_poll_s=2, seed=11)
    fleet.set_profile("P0001", 3, ChargerProfile(cc_power_w=260, cc_minutes=100,
                                                 taper_minutes=30, float_power_w=12))
    await fleet.start()
    try:
        await wait_until(lambda: pile_online(server.ctx, "P0001"))
        rider = make_rider(platform, server, fakes)
        await rider.scan("P0001-03")
        card = await rider.wait_text("P0001-03")
        assert "¥0.40" in card  # the tariff in one plain sentence before starting
        await rider.tap(tr("zh_CN", "⚡ Start charging"))
        await rider.wait_text(tr("zh_CN", "⚡ Charging started at port {port}.",
                                 port="P0001-03"))
        bill = await rider.wait_text("🧾", timeout=60)
        async with server.ctx.sm() as s:
            charge = (await s.execute(select(Charge))).scalars().one()
        reported = await pile_session(server.ctx, "P0001", charge.session_ref)
        tariff = server.ctx.settings.billing.tariffs["standard"]
        expected = expected_power_tier_fen(
            reported["started"], reported["ended"], reported["samples"],
            [t.model_dump() for t in tariff.tiers], tariff.free_minutes)
        assert charge.amount_fen == expected > 0
        assert f"¥{expected // 100}.{expected % 100:02d}" in bill
        # History shows the charge as due (Chinese by default).
        await rider.say("/history")
        assert "P0001-03" in await rider.wait_text(tr("zh_CN", "🧾 Your recent charges:"))
        # Post-pay: the due bill blocks the next start until the rider tops up.
        await rider.say("/wallet")
        await rider.tap("+¥10.00")
        await rider.wait_text(tr("zh_CN", "Your unpaid bill is paid. You can charge again."))
    finally:
        await fleet.stop()
