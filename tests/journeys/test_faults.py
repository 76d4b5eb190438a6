"""Faults answered before the rider asks: refund + alternative, a work order in the technician's
chat, the port under repair until resolved; detection of interrupted charges and meter
anomalies; the 30-minute promise (ISSUE 5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from bot.scheduler import sweep_faults, sweep_offline
from core.billing.coupons import Coupon
from core.charging.tables import Charge
from core.db import transaction
from core.faults.tables import Fault, WorkOrder
from core.outbox import OutboxMessage
from core.piles.nearby import free_ports
from core.piles.tables import Pile, Port
from core.riders import staff
from core.riders.identities import rider_for
from tests.support.journey import HandClock, PileClient, WebRider, button, english_rider, web_staff
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


def _jpeg() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 10)).save(out, "JPEG")
    return out.getvalue()


JPEG = _jpeg()


@asynccontextmanager
async def _server(db_url: str, clock: HandClock, **sections: dict) -> AsyncIterator[Running]:
    settings = make_settings(db_url, scheduler={"enabled": False}, **sections)
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, piles_n=2, ports=4)
        yield server


async def _staff(server: Running, role: str, name: str,
                 hours: str = "00:00-24:00") -> WebRider:
    """A technician or supervisor of T01, logged in to the web chat."""
    return await web_staff(server, role, name=name, sites=("T01",), hours=hours)


async def _rider(server: Running) -> WebRider:
    return await english_rider(server)


async def _start(server: Running, rider: WebRider, pile: PileClient, port: int,
                 at: datetime) -> str:
    """Rider scans and starts; the pile starts the session and reports a few minutes of power."""
    replies = await rider.say(f"{pile.pile_id}-{port:02d}")
    await rider.press(button(replies, "start:"))
    cmds = await pile.commands()
    ref = next(c["session"] for c in cmds if c["type"] == "start")
    events = [pile.event("session_started", at, port=port, session=ref)]
    events += [pile.event("meter", at + timedelta(minutes=m), port=port, session=ref,
                          power_w=250.0, energy_wh=int(250 * m / 60), temperature_c=35.0)
               for m in range(1, 11)]
    await pile.post(events)
    return ref


async def _count(server: Running, model: type, *where: object) -> int:
    async with server.ctx.sm() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar()  # type: ignore[return-value]


async def _port(server: Running, pile_id: str, number: int) -> Port:
    async with server.ctx.sm() as s:
        return (await s.execute(select(Port).where(Port.pile_id == pile_id,
                                                   Port.number == number))).scalars().one()


async def test_fault_mid_charge_refund_work_order_repair_and_back(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        tech = await _staff(server, "technician", "Wang")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        pile2 = PileClient(server.http, server.url, "P0002", "test-secret-P0002")
        await pile2.post([pile2.event("heartbeat", clock.now)])
        rider = await _rider(server)
        t0 = clock.now - timedelta(minutes=30)
        ref = await _start(server, rider, pile, 2, t0)

        # The pile reports over-temperature at minute 10 and ends the session 2 minutes later.
        await pile.post([
            pile.event("fault", t0 + timedelta(minutes=10), port=2, code="over_temperature",
                       detail="端口过温"),
            pile.event("session_ended", t0 + timedelta(minutes=12), port=2, session=ref,
                       reason="fault", energy_wh=45, duration_s=720),
            pile.event("port_status", t0 + timedelta(minutes=12), port=2, status="idle"),
        ])
        # (1) the rider: stopped, what was refunded, and a button to the nearest free port.
        msg = await rider.wait_message("failed (over-temperature)")
        assert "refunded" in msg["text"] and "🧾" in msg["text"]
        alt = button([msg], "alt:")
        assert alt == "alt:P0001"
        # (2) the technician: a work order with the place and three buttons.
        order_msg = await tech.wait_message("Work order #")
        assert "P0001-02" in order_msg["text"] and "over-temperature" in order_msg["text"]
        assert order_msg["venue"]["title"] == "测试小区车棚"
        order_id = int(button([order_msg], "wo:ack:").rsplit(":", 1)[1])
        for prefix in ("wo:arr:", "wo:res:"):
            button([order_msg], prefix)
        # (3) the port is under repair: not in search, not startable, its card says so.
        assert (await _port(server, "P0001", 2)).maintenance
        async with server.ctx.sm() as s:
            found = await free_ports(s, "P0001")
        assert found is not None and 2 not in found[2] and found[2] == [1, 3, 4]
        card = await rider.say("P0001-02")
        assert "under repair" in card[0]["text"]
        assert not any(b.get("data", "").startswith("start:") for row in card[0]["buttons"]
                       for b in row)
        near = await rider.press(alt)
        assert "P0001" in near[0]["text"] or "P0002" in near[0]["text"]

        # One fault, one order, one message even when the pile repeats itself.
        await pile.post([pile.event("fault", t0 + timedelta(minutes=13), port=2,
                                    code="over_temperature")])
        assert await _count(server, Fault) == 1
        assert await _count(server, WorkOrder) == 1
        assert await _count(server, OutboxMessage, OutboxMessage.kind == "work_order") == 1

        # The technician acknowledges, arrives and resolves with a note and a photo.
        replies = await tech.press(f"wo:ack:{order_id}")
        assert "acknowledged" in replies[0]["text"]
        await tech.press(f"wo:arr:{order_id}")
        replies = await tech.press(f"wo:res:{order_id}")
        assert "note" in replies[0]["text"]
        assert (await tech.say("replaced the terminal block"))[0]["text"].startswith("✅")
        assert not (await _port(server, "P0001", 2)).maintenance
        async with server.ctx.sm() as s:
            found = await free_ports(s, "P0001")
            order = await s.get(WorkOrder, order_id)
        assert found is not None and found[2] == [1, 2, 3, 4]
        assert order is not None and order.state == "resolved"
        assert order.note == "replaced the terminal block"

        # The rider hears it is fixed and rates the technician; the card shows the average.
        done = await rider.wait_message("repaired by Wang")
        await rider.press(button([done], f"rate:{order_id}:5").replace(":5", ":4"))
        card = await rider.say("P0001-02")
        assert "Technician Wang ★4.0 (1)" in card[0]["text"]
        assert "Last service: " in card[0]["text"]


async def test_interrupted_charge_is_a_fault_but_a_full_one_never_is(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        await _staff(server, "technician", "Wang")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        full_rider, cut_rider = await _rider(server), await _rider(server)
        t0 = clock.now - timedelta(minutes=10)
        full_ref = await _start(server, full_rider, pile, 1, t0)
        cut_ref = await _start(server, cut_rider, pile, 3, t0)

        # Full: power tapers to a float of ~15 W for a long time, then the pile ends it.
        taper = [200, 150, 100, 60, 35, 20] + [15] * 30
        await pile.post([pile.event("meter", t0 + timedelta(minutes=11 + i), port=1,
                                    session=full_ref, power_w=float(p), energy_wh=45 + i)
                         for i, p in enumerate(taper)])
        # Interrupted: from 250 W straight to 0 W, and no session_ended.
        await pile.post([pile.event("meter", t0 + timedelta(minutes=11), port=3,
                                    session=cut_ref, power_w=0.0, energy_wh=42)])
        clock.advance(seconds=179)
        await sweep_faults(server.ctx)
        assert await _count(server, Fault) == 0  # still inside the grace period
        clock.advance(seconds=2)
        await sweep_faults(server.ctx)
        async with server.ctx.sm() as s:
            faults = list((await s.execute(select(Fault))).scalars())
            charges = {c.session_ref: c for c in (await s.execute(select(Charge))).scalars()}
        assert [(f.port, f.cause) for f in faults] == [(3, "interrupted")]
        assert faults[0].opened_at == t0 + timedelta(minutes=11)
        assert charges[cut_ref].state in ("ended", "settled")
        assert charges[cut_ref].bill["fault_code"] == "interrupted"  # type: ignore[index]
        assert charges[full_ref].state == "started"
        cmds = await pile.commands()
        assert any(c["type"] == "stop" and c["session"] == cut_ref for c in cmds)
        await cut_rider.wait_message("charging interrupted")

        # The full charge ends as the pile says: no fault ever.
        end = t0 + timedelta(minutes=11 + len(taper))
        await pile.post([pile.event("session_ended", end, port=1, session=full_ref,
                                    reason="full", energy_wh=80, duration_s=3000)])
        clock.advance(minutes=30)
        await sweep_faults(server.ctx)
        assert await _count(server, Fault, Fault.port == 1) == 0
        # The late session_ended of the interrupted charge bills nothing twice.
        async with server.ctx.sm() as s:
            before = (await s.get(Charge, charges[cut_ref].id)).bill  # type: ignore[union-attr]
        await pile.post([pile.event("session_ended", t0 + timedelta(minutes=20), port=3,
                                    session=cut_ref, reason="unplugged", energy_wh=42,
                                    duration_s=1200)])
        async with server.ctx.sm() as s:
            assert (await s.get(Charge, charges[cut_ref].id)).bill == before  # type: ignore[union-attr]


async def test_a_sudden_drop_seen_on_the_piles_clock_needs_no_sweep(db_url: str) -> None:
    """A pile that keeps reporting 0 W past the grace period is caught on ingest."""
    clock = HandClock()
    async with _server(db_url, clock) as server:
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        rider = await _rider(server)
        t0 = clock.now - timedelta(minutes=20)
        ref = await _start(server, rider, pile, 2, t0)
        await pile.post([pile.event("meter", t0 + timedelta(minutes=11, seconds=s), port=2,
                                    session=ref, power_w=0.0, energy_wh=42)
                         for s in (0, 60, 120, 185)])
        async with server.ctx.sm() as s:
            assert (await s.execute(select(Fault.cause))).scalars().all() == ["interrupted"]


async def test_over_temperature_from_meter_readings_is_debounced(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        rider = await _rider(server)
        t0 = clock.now - timedelta(minutes=30)
        ref = await _start(server, rider, pile, 1, t0)

        def meter(minute: int, temp: float) -> dict:
            return pile.event("meter", t0 + timedelta(minutes=minute), port=1, session=ref,
                              power_w=250.0, energy_wh=42 + minute, temperature_c=temp)

        # Two hot readings with a normal one between: noise, not a fault.
        await pile.post([meter(11, 75.0), meter(12, 76.0), meter(13, 40.0), meter(14, 80.0)])
        assert await _count(server, Fault) == 0
        await pile.post([meter(15, 81.0), meter(16, 82.0)])
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
            charge = (await s.execute(select(Charge))).scalars().one()
        assert (fault.cause, fault.source, fault.severity) == ("over_temperature", "detected",
                                                                "critical")
        assert fault.opened_at == t0 + timedelta(minutes=14)
        assert charge.state in ("ended", "settled") and charge.end_reason == "fault"
        assert (await _port(server, "P0001", 1)).maintenance
        await rider.wait_message("over-temperature")


async def test_meter_running_backwards_and_impossible_power(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        a, b = await _rider(server), await _rider(server)
        t0 = clock.now - timedelta(minutes=30)
        ref_a = await _start(server, a, pile, 1, t0)
        ref_b = await _start(server, b, pile, 2, t0)
        await pile.post([pile.event("meter", t0 + timedelta(minutes=11), port=1, session=ref_a,
                                    power_w=250.0, energy_wh=10)])
        await pile.post([pile.event("meter", t0 + timedelta(minutes=11 + i), port=2,
                                    session=ref_b, power_w=9000.0, energy_wh=50 + i)
                         for i in range(3)])
        async with server.ctx.sm() as s:
            found = sorted((f.port, f.cause) for f in (await s.execute(select(Fault))).scalars())
            open_ = (await s.execute(select(func.count()).select_from(Charge).where(
                Charge.state == "started"))).scalar()
        assert found == [(1, "meter_backwards"), (2, "impossible_power")]
        # Metering faults do not cut a charge (the metering promise protects the bill), but no
        # new rider is sent to those ports.
        assert open_ == 2
        assert (await _port(server, "P0001", 1)).maintenance
        assert (await _port(server, "P0001", 2)).maintenance


async def test_pile_offline_mid_charge_closes_the_charge_and_clears_on_return(
        db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        tech = await _staff(server, "technician", "Wang")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        rider = await _rider(server)
        ref = await _start(server, rider, pile, 1, clock.now - timedelta(minutes=10))
        clock.advance(seconds=181)
        await sweep_offline(server.ctx)
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
            charge = (await s.execute(select(Charge))).scalars().one()
        assert (fault.port, fault.cause) == (0, "offline")
        assert charge.state in ("ended", "settled") and charge.session_ref == ref
        await rider.wait_message("lost its connection")
        await tech.wait_message("Work order #")
        # Back online: the fault closes by itself and the technician is told.
        await pile.post([pile.event("heartbeat", clock.now)])
        await sweep_faults(server.ctx)
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
            order = (await s.execute(select(WorkOrder))).scalars().one()
        assert fault.resolved_at is not None and order.state == "cleared"
        await tech.wait_message("closed: the pile reports the fault cleared")


async def test_self_clearing_fault_closes_its_order_but_a_repair_waits_for_the_technician(
        db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        t = clock.now
        await pile.post([pile.event("heartbeat", t),
                         pile.event("fault", t, code="under_voltage"),
                         pile.event("fault", t, port=4, code="relay_stuck")])
        async with server.ctx.sm() as s:
            pile_row = await s.get(Pile, "P0001")
        assert pile_row is not None and not pile_row.maintenance  # grid faults: no repair
        assert (await _port(server, "P0001", 4)).maintenance
        await pile.post([pile.event("fault_cleared", t + timedelta(minutes=1),
                                    code="under_voltage"),
                         pile.event("fault_cleared", t + timedelta(minutes=1), port=4,
                                    code="relay_stuck")])
        async with server.ctx.sm() as s:
            states = dict((await s.execute(select(WorkOrder.causes, WorkOrder.state))).all())
        assert states == {"under_voltage": "cleared", "relay_stuck": "open"}
        assert (await _port(server, "P0001", 4)).maintenance


async def test_unacknowledged_order_escalates_once_with_one_coupon_per_rider(
        db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        await _staff(server, "technician", "Wang")
        sup = await _staff(server, "supervisor", "Li")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now)])
        riders = [await _rider(server) for _ in (1, 2)]
        t0 = clock.now - timedelta(minutes=20)
        refs = [await _start(server, r, pile, p, t0) for r, p in zip(riders, (1, 2), strict=True)]
        # A pile-wide fault hits both charges.
        await pile.post([pile.event("fault", t0 + timedelta(minutes=12), code="leakage")])
        for r in riders:
            await r.wait_message("current leakage")
        async with server.ctx.sm() as s:
            ended = (await s.execute(select(func.count()).select_from(Charge).where(
                Charge.session_ref.in_(refs), Charge.end_reason == "fault"))).scalar()
        assert ended == 2

        clock.advance(minutes=29, seconds=59)
        await sweep_faults(server.ctx)
        assert await _count(server, Coupon) == 0
        clock.advance(seconds=2)
        # The check runs twice at once (two workers) and then again: one escalation.
        await asyncio.gather(sweep_faults(server.ctx), sweep_faults(server.ctx))
        await sweep_faults(server.ctx)
        async with server.ctx.sm() as s:
            coupons = list((await s.execute(select(Coupon))).scalars())
            order = (await s.execute(select(WorkOrder))).scalars().one()
        assert sorted(c.amount_fen for c in coupons) == [500, 500]
        assert len({c.rider_id for c in coupons}) == 2
        assert order.escalated_at is not None
        assert await _count(server, OutboxMessage,
                            OutboxMessage.kind == "work_order_escalated") == 1
        assert await _count(server, OutboxMessage, OutboxMessage.kind == "promise_coupon") == 2
        msg = await sup.wait_message("Promise broken")
        assert "2 riders" in msg["text"]
        for r in riders:
            await r.wait_message("coupon is in your wallet")
        promises = await sup.say("/promises")
        assert "broken" in promises[0]["text"] and f"#{order.id}" in promises[0]["text"]


async def test_an_acknowledged_order_keeps_the_promise(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        tech = await _staff(server, "technician", "Wang")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now),
                         pile.event("fault", clock.now, port=1, code="overload")])
        order_msg = await tech.wait_message("Work order #")
        clock.advance(minutes=10)
        await tech.press(button([order_msg], "wo:ack:"))
        clock.advance(minutes=40)
        await sweep_faults(server.ctx)
        assert await _count(server, WorkOrder, WorkOrder.escalated_at.is_not(None)) == 0
        listing = await tech.say("/orders")
        assert "acknowledged" in listing[0]["text"]
        assert "kept" in (await tech.say("/promises"))[0]["text"]


async def test_staff_buttons_are_refused_to_riders(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as server:
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now),
                         pile.event("fault", clock.now, port=1, code="overload")])
        rider = await _rider(server)
        for action in ("ack", "arr", "res"):
            replies = await rider.press(f"wo:{action}:1")
            assert "technicians and supervisors only" in replies[0]["text"]
        assert "only" in (await rider.say("/orders"))[0]["text"]
        assert "only" in (await rider.say("/promises"))[0]["text"]
        async with server.ctx.sm() as s:
            assert (await s.get(WorkOrder, 1)).state == "open"  # type: ignore[union-attr]
        # Nobody's rating counts but a hit rider's.
        assert "Only riders" in (await rider.press("rate:1:1"))[0]["text"]


async def test_on_duty_technician_gets_the_order(db_url: str) -> None:
    clock = HandClock()
    # 03:00 in Shanghai (and after the real time): the night technician is on duty.
    clock.now = datetime(2030, 11, 25, 19, 0, tzinfo=UTC)
    async with _server(db_url, clock) as server:
        day = await _staff(server, "technician", "Day", hours="08:00-20:00")
        night = await _staff(server, "technician", "Night", hours="20:00-08:00")
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now),
                         pile.event("fault", clock.now, port=1, code="overload")])
        await night.wait_message("Work order #")
        assert "Open work orders (1)" in (await night.say("/orders"))[0]["text"]
        async with server.ctx.sm() as s:
            order = (await s.execute(select(WorkOrder))).scalars().one()
        assert order.technician_id == night.rider_id
        assert day.inbox == []


@pytest.mark.parametrize("platform", ["telegram", "wechat"])
async def test_technician_works_the_order_in_telegram_and_wechat(
        db_url: str, fakes: tuple, platform: str, tmp_path: Path) -> None:
    """The work order arrives in the technician's own chat; buttons (Telegram) or numbered
    options (WeChat) move it along; the note and photo come as ordinary messages."""
    from tests.support.riders import ACCOUNT, TelegramRider, WechatRider
    from tests.support.settings import all_skins_settings

    tg, wx = fakes
    clock = HandClock()
    settings = all_skins_settings(db_url, tg, wx, scheduler={"enabled": False},
                                  support={"photo_dir": str(tmp_path)})
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, piles_n=1, ports=4)
        tech = (TelegramRider(server, tg) if platform == "telegram"
                else WechatRider(server, wx, ACCOUNT))
        await tech.say("/start")  # the technician has talked to the bot before
        external = str(tech.user.user_id) if platform == "telegram" else tech.user.openid
        async with transaction(server.ctx.sm) as s:
            me = await rider_for(s, platform, external)
            me.language = "en"
            await staff.add(s, me.id, "technician", "T01", name="Wang")  # type: ignore[arg-type]
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", clock.now),
                         pile.event("fault", clock.now, port=3, code="relay_stuck")])
        card = await tech.wait_text("Work order #1")
        assert "P0001-03" in card and "relay stuck closed" in card
        if platform == "telegram":
            # The card carries its own buttons; the site's venue comes after it, without them.
            msg = next(m for m in tech._messages() if "Work order #1" in (m.get("text") or ""))
            labels = [b["text"] for row in msg["reply_markup"]["inline_keyboard"] for b in row]
            assert any("Acknowledge" in label for label in labels), labels
            venue = await tg.wait_for(lambda c: c.method == "sendVenue"
                                      and int(c.params["chat_id"]) == tech.user.user_id)
            assert "reply_markup" not in venue.params
        await tech.tap("Acknowledge")
        await tech.wait_text("acknowledged. On your way?")
        if platform == "telegram":
            await tech.tap("Resolved")
        else:
            # The options that count are those of the last reply (the acknowledgement).
            from tests.support.riders import OPTION

            await tech.say(next(n for n, label in OPTION.findall(tech.passive[-1])
                                if "Resolved" in label))
        await tech.wait_text("Write a short note")
        if platform == "telegram":
            tg.add_file("AgAC-fixed", JPEG)
            await tech._post(tech.user.photo("AgAC-fixed", caption="replaced relay K3"))
        else:
            wx.add_media("media-fixed", JPEG)
            await tech.post(tech.user.image(media_id="media-fixed"))
            await tech.wait_text("Photo saved")
            await tech.say("replaced relay K3")
        await tech.wait_text("back in service")
        async with server.ctx.sm() as s:
            order = await s.get(WorkOrder, 1)
            port = (await s.execute(select(Port).where(Port.number == 3))).scalars().one()
        assert order is not None and order.state == "resolved"
        assert order.note == "replaced relay K3"
        assert order.photo is not None and order.photo.endswith(".jpg")  # stored, by hash
        with Image.open(tmp_path / order.photo) as kept:  # re-encoded on intake
            assert (kept.format, kept.size) == ("JPEG", (32, 24))
        assert not port.maintenance
