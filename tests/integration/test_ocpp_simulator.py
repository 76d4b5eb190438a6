"""The simulator's OCPP 1.6J charge point (simulator/ocpp.py): a PileController on a real WebSocket
that the gateway takes for a real charge point — booted, started from the web chat, metered,
ended by the rider unplugging and billed once; a fault on a connector puts its port under
repair; a dropped link is reconnected and the charge that ended meanwhile still billed once; a
Reset reboots it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from bot.piles.ocpp import OCPP
from core.charging.tables import Charge, MeterSample
from core.db import transaction
from core.faults.tables import Fault, WorkOrder
from core.outbox import OutboxMessage
from core.piles import commands
from core.piles.tables import CommandState, PileCommand, PileEvent, Port
from simulator.charger import ChargerProfile
from simulator.ocpp import OcppFleet, PointSpec
from tests.support.journey import (
    WebRider,
    button,
    english_rider_and_id,
    expected_power_tier_fen,
    pile_online,
    pile_session,
    wait_until,
)
from tests.support.ocpp_point import add_charge_point
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings

CP, PILE = "CP-T01-01", "P0201"


@asynccontextmanager
async def _city(db_url: str) -> AsyncIterator[tuple[Running, OcppFleet]]:
    """The app with OCPP on, one 2-connector charge point registered, and its simulation
    connected and booted."""
    settings = make_settings(db_url, scheduler={"enabled": False},
                             piles={"ocpp": {"enabled": True}})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2)
        secret = await add_charge_point(server.ctx, CP, PILE, ports=2)
        # ×300, a meter every 0.5 s: a reading each 2.5 virtual minutes.
        points = OcppFleet(f"{server.url.replace('http', 'ws', 1)}/ocpp",
                           [PointSpec(PILE, CP, secret, 2)], speed=300, heartbeat_s=5,
                           meter_every_s=0.5, seed=1, default_profile=ChargerProfile())
        await points.start()
        try:
            await wait_until(lambda: pile_online(server.ctx, PILE))
            await wait_until(lambda: points.connected == 1 and PILE in server.app[OCPP].connections)
            # Both connectors reported (StatusNotification Available after the boot).
            await wait_until(lambda: _is(_reported(server), 2))
            assert await _port_status(server, 1) == await _port_status(server, 2) == "idle"
            yield server, points
        finally:
            await points.stop()
            # Gone from the gateway too (its last message handled) before the app stops.
            await wait_until(lambda: PILE not in server.app[OCPP].connections)


async def _port_status(server: Running, number: int) -> str:
    async with server.ctx.sm() as s:
        return str((await s.execute(select(col(Port.status)).where(
            col(Port.pile_id) == PILE, col(Port.number) == number))).scalar_one())


async def _reported(server: Running) -> int:
    return await _count(server, Port, col(Port.pile_id) == PILE, col(Port.status_at).is_not(None))


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def _count(server: Running, model: type, *where: Any) -> int:
    async with server.ctx.sm() as s:
        return int((await s.execute(
            select(func.count()).select_from(model).where(*where))).scalar_one())


async def _samples(server: Running, charge_id: int | None) -> int:
    return await _count(server, MeterSample, col(MeterSample.charge_id) == charge_id)


async def _rider_charging(server: Running, points: OcppFleet, port: int
                          ) -> tuple[WebRider, int, Charge]:
    """A rider tops up and starts `port` from the web chat; the charge point runs it."""
    rider, rider_id = await english_rider_and_id(server)
    await rider.press(button(await rider.say("/wallet"), "topup:2000"))
    code = f"{PILE}-{port:02d}"
    await rider.press(button(await rider.say(code), f"start:{code}"))
    await rider.wait_message(f"Charging started at port {code}")
    await wait_until(lambda: _is(_port_status(server, port), "charging"))
    assert points.controller(PILE).port_state(port)["status"] == "charging"
    async with server.ctx.sm() as s:
        charge = (await s.execute(select(Charge).where(col(Charge.rider_id) == rider_id))
                  ).scalars().one()
    assert charge.id is not None and charge.session_ref is not None
    # The transactionId the central system gave the point is our charge's id.
    assert points.points[PILE].transactions.get(charge.session_ref) == charge.id
    return rider, rider_id, charge


async def _bills(server: Running, rider_id: int) -> tuple[list[Charge], int, int]:
    async with server.ctx.sm() as s:
        charges = list((await s.execute(select(Charge).where(
            col(Charge.rider_id) == rider_id))).scalars())
    bills = await _count(server, OutboxMessage, OutboxMessage.rider_id == rider_id,
                         OutboxMessage.kind == "bill")
    ended = await _count(server, PileEvent, col(PileEvent.pile_id) == PILE,
                         col(PileEvent.type) == "session_ended")
    return charges, bills, ended


async def test_a_simulated_ocpp_charge_point_charges_from_chat_and_bills_once(
        db_url: str) -> None:
    async with _city(db_url) as (server, points):
        rider, rider_id, charge = await _rider_charging(server, points, 2)
        # MeterValues arrive and become samples, in decimals as the point sent them.
        await wait_until(lambda: _is(_at_least(_samples(server, charge.id), 4), True))

        points.controller(PILE).unplug(2)  # the rider takes the bike away
        bill = await rider.wait_message("🧾", timeout=30)
        charges, bills, ended = await _bills(server, rider_id)
        assert len(charges) == 1 and bills == 1 and ended == 1, (charges, bills, ended)
        charge = charges[0]
        assert charge.end_reason == "unplugged"  # StopTransaction(EVDisconnected)
        assert charge.state in ("ended", "settled")

        # The bill is what the tariff gives for what the point reported: the virtual duration
        # (×300) from StartTransaction to StopTransaction, and its meter readings.
        assert charge.session_ref is not None
        reported = await pile_session(server.ctx, PILE, charge.session_ref)
        assert charge.duration_s == int((reported["ended"] - reported["started"])
                                        .total_seconds())
        assert charge.duration_s is not None and charge.duration_s >= 7 * 60
        start, end = await _transaction_events(server)
        async with server.ctx.sm() as s:
            samples = list((await s.execute(select(MeterSample).where(
                col(MeterSample.charge_id) == charge.id))).scalars())
        assert end.payload["ocpp_reason"] == "EVDisconnected"
        assert start.payload["transaction_id"] == end.payload["transaction_id"] == charge.id
        # meterStop − meterStart, in whole Wh as OCPP 1.6 counts them.
        assert charge.energy_wh == end.payload["meter_stop_wh"] - start.payload["meter_start_wh"]
        assert charge.energy_wh is not None and charge.energy_wh > 0
        # 0.1 Wh resolution survives kWh on the wire: 1.2345 kWh − meterStart, not a float's tail.
        assert all(round(x.energy_wh, 1) == x.energy_wh for x in samples)
        tariff = server.ctx.settings.billing.tariffs["standard"]
        expected = expected_power_tier_fen(reported["started"], reported["ended"],
                                           reported["samples"],
                                           [t.model_dump() for t in tariff.tiers],
                                           tariff.free_minutes)
        assert expected > 0 and charge.amount_fen == expected
        assert f"¥{expected // 100}.{expected % 100:02d}" in bill["text"]
        await wait_until(lambda: _is(_port_status(server, 2), "idle"))
        # Its StopTransaction was answered: the point holds no transaction any more.
        await wait_until(lambda: not points.points[PILE].transactions)


async def _transaction_events(server: Running) -> tuple[PileEvent, PileEvent]:
    """The session_started and session_ended the gateway stored for the one transaction."""
    async with server.ctx.sm() as s:
        rows = {e.type: e for e in (await s.execute(select(PileEvent).where(
            col(PileEvent.pile_id) == PILE,
            col(PileEvent.type).in_(("session_started", "session_ended"))))).scalars()}
    return rows["session_started"], rows["session_ended"]


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n


async def test_a_fault_on_a_simulated_connector_puts_the_port_under_repair(
        db_url: str) -> None:
    async with _city(db_url) as (server, points):
        rider, rider_id, charge = await _rider_charging(server, points, 1)
        await wait_until(lambda: _is(_at_least(_samples(server, charge.id), 2), True))

        # The connector overheats mid-charge: StatusNotification(Faulted, HighTemperature).
        points.controller(PILE).inject_fault(1, "over_temperature")
        msg = await rider.wait_message("failed (over-temperature)", timeout=30)
        assert "🧾" in msg["text"]
        await wait_until(lambda: _is(_count(server, WorkOrder), 1))
        # The port under repair reaches the point: ChangeAvailability(Inoperative) locks it.
        await wait_until(lambda: points.controller(PILE).ports[1].locked)
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
            port = (await s.execute(select(Port).where(
                col(Port.pile_id) == PILE, col(Port.number) == 1))).scalars().one()
        assert (fault.cause, fault.port, fault.pile_id) == ("over_temperature", 1, PILE)
        assert "HighTemperature" in fault.detail
        # Still Faulted on the wire (a locked, faulty connector says Faulted, not Unavailable),
        # so the fault stays open until the point reports it gone.
        assert port.maintenance and port.status == "fault"
        assert fault.cleared_at is None
        charges, bills, ended = await _bills(server, rider_id)
        assert len(charges) == 1 and bills == 1, (charges, bills)
        assert charges[0].end_reason == "fault"
        # The other connector stays in service.
        assert await _port_status(server, 2) == "idle"


async def test_a_dropped_link_reconnects_and_a_charge_ended_meanwhile_is_billed_once(
        db_url: str) -> None:
    async with _city(db_url) as (server, points):
        rider, rider_id, charge = await _rider_charging(server, points, 2)
        point = points.points[PILE]
        # The link drops (a mobile network, a restarted proxy) and the rider leaves meanwhile.
        await server.app[OCPP].connections[PILE].ws.close()
        await wait_until(lambda: not point.connected.is_set())
        points.controller(PILE).unplug(2)
        await wait_until(lambda: points.controller(PILE).port_state(2)["session"] is None)

        # Back online: boot, fresh statuses, then the StopTransaction that waited.
        await wait_until(lambda: point.connected.is_set(), timeout=30)
        await rider.wait_message("🧾", timeout=30)
        charges, bills, ended = await _bills(server, rider_id)
        assert len(charges) == 1 and bills == 1 and ended == 1, (charges, bills, ended)
        assert charges[0].end_reason == "unplugged"
        await wait_until(lambda: _is(_port_status(server, 2), "idle"))


async def test_a_reset_from_the_service_ends_the_charge_and_the_point_boots_again(
        db_url: str) -> None:
    async with _city(db_url) as (server, points):
        rider, rider_id, charge = await _rider_charging(server, points, 1)
        boots = await _count(server, PileEvent, col(PileEvent.pile_id) == PILE,
                             col(PileEvent.event_id).startswith("boot:"))
        async with transaction(server.ctx.sm) as s:
            await commands.queue(s, PILE, "reboot", None, now=server.ctx.clock())
        server.ctx.wake_pile(PILE)

        # Reset(Soft) is accepted, the charge ends with StopTransaction(SoftReset), and the
        # point, rebooted, connects and sends BootNotification again.
        await rider.wait_message("🧾", timeout=30)
        await wait_until(lambda: _is(_count(server, PileEvent, col(PileEvent.pile_id) == PILE,
                                            col(PileEvent.event_id).startswith("boot:")),
                                     boots + 1))
        await wait_until(lambda: points.points[PILE].connected.is_set())
        charges, bills, ended = await _bills(server, rider_id)
        assert len(charges) == 1 and bills == 1 and ended == 1, (charges, bills, ended)
        assert charges[0].end_reason == "power_loss"
        _, end = await _transaction_events(server)
        assert end.payload["ocpp_reason"] == "SoftReset"
        # Its Reset.conf (Accepted) is the reboot command's ack.
        await wait_until(lambda: _is(_reboot_state(server), CommandState.acked))


async def _reboot_state(server: Running) -> str:
    async with server.ctx.sm() as s:
        return str((await s.execute(select(col(PileCommand.state)).where(
            col(PileCommand.pile_id) == PILE, col(PileCommand.type) == "reboot"))).scalar_one())
