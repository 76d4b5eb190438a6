"""The rider's core journey through the local web chat: scan → start → charge → bill."""

from __future__ import annotations

from sqlalchemy import select

from core.charging.tables import Charge
from simulator import ChargerProfile, Fleet, PileSpec
from tests.support.journey import (
    WebRider,
    button,
    expected_power_tier_fen,
    pile_online,
    pile_session,
    wait_until,
)
from tests.support.server import seed_city


async def test_rider_scans_starts_and_gets_the_bill_the_tariff_gives(server) -> None:  # type: ignore[no-untyped-def]
    specs = await seed_city(server.ctx, ports=4)
    fleet = Fleet(server.url, [PileSpec(*s) for s in specs], speed=3600, heartbeat_s=1,
                  meter_every_s=0.05, long_poll_s=2, seed=1)
    # A lithium pack at 250 W: ~2 h constant current, then tapering, then 充满自停.
    fleet.set_profile("P0001", 3, ChargerProfile(cc_power_w=250, cc_minutes=120,
                                                 taper_minutes=40, float_power_w=12))
    await fleet.start()
    try:
        await wait_until(lambda: pile_online(server.ctx, "P0001"))
        rider = WebRider(server.http, server.url)
        card = await rider.say("/start port_P0001-03")
        assert "P0001-03" in card[0]["text"]
        assert "¥0.40" in card[0]["text"]  # the tariff in plain words before starting
        started = await rider.press(button(card, "start:P0001-03"))
        assert "P0001-03" in started[0]["text"]

        await rider.wait_message("P0001-03", timeout=20)
        bill = await rider.wait_message("¥", timeout=60)
        while "🧾" not in bill["text"]:
            bill = await rider.wait_message("🧾", timeout=60)

        async with server.ctx.sm() as s:
            charge = (await s.execute(select(Charge))).scalars().one()
        assert charge.state == "ended"  # post-pay: an empty wallet leaves the bill due
        assert charge.end_reason == "full"
        reported = await pile_session(server.ctx, "P0001", charge.session_ref)
        tariff = server.ctx.settings.billing.tariffs["standard"]
        expected = expected_power_tier_fen(
            reported["started"], reported["ended"], reported["samples"],
            [t.model_dump() for t in tariff.tiers], tariff.free_minutes,
        )
        assert expected > 0
        assert charge.amount_fen == expected
        assert f"¥{expected // 100}.{expected % 100:02d}" in bill["text"]
        assert charge.band_w is not None and 200 < charge.band_w <= 400

        # The due bill blocks the next start until it is paid.
        again = await rider.press("start:P0001-02")
        assert button(again, "pay")
        wallet = await rider.press("wallet")
        paid = await rider.press(button(wallet, "topup:1000"))
        assert "¥10.00" in paid[0]["text"]
        card = await rider.say("/start port_P0001-02")
        ok = await rider.press(button(card, "start:P0001-02"))
        assert button(ok, "stop:")
    finally:
        await fleet.stop()


async def test_rider_watches_status_and_stops_early(server) -> None:  # type: ignore[no-untyped-def]
    specs = await seed_city(server.ctx, ports=4)
    fleet = Fleet(server.url, [PileSpec(*s) for s in specs], speed=600, heartbeat_s=1,
                  meter_every_s=0.05, long_poll_s=2, seed=4,
                  default_profile=ChargerProfile(cc_power_w=180, cc_minutes=300))
    await fleet.start()
    try:
        await wait_until(lambda: pile_online(server.ctx, "P0001"))
        rider = WebRider(server.http, server.url)
        card = await rider.say("P0001-01")  # typing the code works like scanning it
        await rider.press(button(card, "start:P0001-01"))
        await rider.wait_message("P0001-01")

        async def metered() -> bool:
            status = await rider.press("status")
            return "W" in status[0]["text"] and "¥" in status[0]["text"] and " 0 W" not in (
                status[0]["text"])

        async def past_the_free_minute() -> bool:
            # At ×600 the first reading can come seconds (pile time) after the start, and a
            # charge of a minute or less is free: it would have no power band to check.
            async with server.ctx.sm() as s:
                c = (await s.execute(select(Charge))).scalars().one()
            return (c.started_at is not None and c.last_meter_at is not None
                    and (c.last_meter_at - c.started_at).total_seconds() > 150)

        await wait_until(metered, timeout=20)
        await wait_until(past_the_free_minute, timeout=20)
        status = await rider.say("/status")
        assert "P0001-01" in status[0]["text"]
        stopping = await rider.press(button(status, "stop:"))
        assert "P0001-01" in stopping[0]["text"]
        bill = await rider.wait_message("🧾", timeout=20)
        assert "P0001-01" in bill["text"]
        async with server.ctx.sm() as s:
            charge = (await s.execute(select(Charge))).scalars().one()
        assert charge.end_reason == "user"
        assert charge.band_w is not None and charge.band_w <= 200
        # Nothing left running: /status says so, and the port is free again in search.
        assert "P0001-01" not in (await rider.say("/status"))[0]["text"]
    finally:
        await fleet.stop()


async def test_unknown_port_in_a_qr_gets_a_friendly_answer(server) -> None:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx, ports=2)
    rider = WebRider(server.http, server.url)
    for text in ("/start port_P9999-01", "/start port_garbage", "P0001-07"):
        replies = await rider.say(text)
        assert button(replies, "near") == "near"  # offered the way to a free port instead
        assert not any(b.get("data", "").startswith("start:")
                       for r in replies for row in r["buttons"] for b in row)
