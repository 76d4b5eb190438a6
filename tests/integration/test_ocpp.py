"""OCPP 1.6J charge points (DESIGN §6) through the real app, on SQLite and PostgreSQL: a charge
point built with the `ocpp` package's own ChargePoint (tests/support/ocpp_point.py) over a real
WebSocket, a rider in the web chat, and the database read to prove exact effects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from ocpp.v16 import call
from sqlalchemy import func, select, update

from bot.piles.ocpp import OCPP
from bot.piles.ocpp.translate import end_reason, fault_code, reading
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge, MeterSample
from core.db import transaction
from core.faults.tables import Fault, WorkOrder
from core.outbox import OutboxMessage
from core.piles import commands
from core.piles.tables import CommandState, Pile, PileCommand, PileEvent, Port
from tests.support.journey import (
    HandClock,
    WebRider,
    button,
    english_rider_and_id,
    wait_until,
    web_staff,
)
from tests.support.ocpp_point import (
    TestPoint,
    add_charge_point,
    basic_auth,
    connected,
    ocpp_time,
)
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings

CP, PILE = "CP001", "P0201"
# By time, with a minimum fee: a fault's refund is the minimum fee it waives.
TARIFFS = {"billing": {"tariffs": {"hour": {
    "mode": "time", "fen_per_hour": 600, "unit_minutes": 1, "free_minutes": 0,
    "min_fee_fen": 300}}, "default_tariff": "hour"}}


@asynccontextmanager
async def _server(db_url: str, clock: HandClock) -> AsyncIterator[tuple[Running, str]]:
    settings = make_settings(db_url, piles={"ocpp": {"enabled": True}},
                             scheduler={"enabled": False}, **TARIFFS)
    async with start_server(settings, clock=clock) as server:
        await seed_city(server.ctx, ports=2, tariff="hour")
        secret = await add_charge_point(server.ctx, CP, PILE, ports=2)
        yield server, secret


async def _count(server: Running, model: type, *where: Any) -> int:
    async with server.ctx.sm() as s:
        return int((await s.execute(
            select(func.count()).select_from(model).where(*where))).scalar_one())


async def _charge(server: Running, rider_id: int) -> Charge:
    async with server.ctx.sm() as s:
        return (await s.execute(select(Charge).where(Charge.rider_id == rider_id))
                ).scalars().one()


async def _booted(server: Running, point: TestPoint, now: datetime) -> None:
    result = await point.boot()
    assert result.status == "Accepted"
    assert result.interval == server.ctx.settings.piles.ocpp.heartbeat_interval_s
    for connector in (1, 2):
        await point.status(connector, "Available", now)
    async with server.ctx.sm() as s:
        pile = await s.get(Pile, PILE)
        assert pile is not None and pile.online and pile.firmware == "1.6.2"


async def _rider_starts(server: Running, point: TestPoint, port: int
                        ) -> tuple[WebRider, int, str]:
    """A rider tops up and starts from the web chat; returns the idTag the point was given."""
    rider, rider_id = await english_rider_and_id(server)
    await rider.press(button(await rider.say("/wallet"), "topup:1000"))
    await rider.press(button(await rider.say(f"{PILE}-{port:02d}"), "start:"))
    start = await point.wait_for("RemoteStartTransaction")
    assert start["connector_id"] == port
    return rider, rider_id, start["id_tag"]


async def test_a_charge_from_chat_to_one_bill_over_ocpp(db_url: str) -> None:
    clock = HandClock()
    t0 = clock.now - timedelta(hours=2)
    async with _server(db_url, clock) as (server, secret), connected(
            server.url, CP, secret) as point:
        await _booted(server, point, t0 - timedelta(minutes=1))
        rider, rider_id, ref = await _rider_starts(server, point, 1)
        assert (await point.send(call.Authorize(id_tag=ref))).id_tag_info["status"] == "Accepted"

        start = call.StartTransaction(connector_id=1, id_tag=ref, meter_start=1000,
                                      timestamp=ocpp_time(t0))
        started = await point.send(start, unique_id="start-1")
        assert started.id_tag_info["status"] == "Accepted"
        tx = started.transaction_id
        # Resent (same unique id) and sent again (a fresh one): the same transaction.
        assert (await point.send(start, unique_id="start-1")).transaction_id == tx
        assert (await point.send(start)).transaction_id == tx
        await rider.wait_message("started")
        await point.status(1, "Charging", t0)

        # MeterValues in kWh decimals (register 1.0000 kWh at the start) and W.
        for m in range(1, 11):
            reply = await point.meter(1, tx, t0 + timedelta(minutes=m),
                                      energy=(f"{1 + 0.0041 * m:.4f}", "kWh"),
                                      power=("250.5", "W"), temperature=("36.5", "Celsius"),
                                      voltage=("229.9", "V"), current=("1.09", "A"))
            assert reply is not None
        async with server.ctx.sm() as s:
            samples = list((await s.execute(select(MeterSample).order_by(MeterSample.ts))
                            ).scalars())
        # Exactly the decimals sent: 1.0123 kWh − 1000 Wh = 12.3 Wh, not 12.299999999999955.
        assert [x.energy_wh for x in samples] == [float(Decimal("4.1") * m) for m in range(1, 11)]
        assert samples[0].power_w == 250.5 and samples[0].temperature_c == 36.5
        assert samples[0].current_a == 1.09

        # The rider stops from the chat: RemoteStopTransaction(transactionId) reaches the point.
        await rider.say("/stop")
        stop = await point.wait_for("RemoteStopTransaction")
        assert stop["transaction_id"] == tx
        await wait_until(lambda: _acked(server, "stop"))
        ended = call.StopTransaction(meter_stop=1041, timestamp=ocpp_time(t0 + timedelta(
            minutes=10, seconds=30)), transaction_id=tx, reason="Remote", id_tag=ref)
        assert (await point.send(ended, unique_id="stop-1")).id_tag_info["status"] == "Accepted"
        bill = await rider.wait_message("🧾")
        charge = await _charge(server, rider_id)
        assert charge.state in ("ended", "settled") and charge.end_reason == "user"
        assert charge.energy_wh == 41 and charge.duration_s == 630
        assert charge.id == tx
        # 11 started minutes at ¥6 an hour = ¥1.10; the minimum fee ¥3.00 applies.
        assert charge.amount_fen == 300 and "3.00" in bill["text"]

        # A replayed StopTransaction (same unique id) and a fresh one bill nothing more.
        await point.send(ended, unique_id="stop-1")
        await point.send(ended)
        await point.send(call.StopTransaction(meter_stop=5000, timestamp=ocpp_time(
            t0 + timedelta(hours=1)), transaction_id=tx, reason="Local"))
        again = await _charge(server, rider_id)
        assert (again.amount_fen, again.energy_wh, again.duration_s) == (300, 41, 630)
        assert await _count(server, PileEvent, PileEvent.type == "session_ended") == 1
        assert await _count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1
        assert await _count(server, LedgerEntry, LedgerEntry.kind == "charge") == 1
        assert await _count(server, PileEvent, PileEvent.type == "session_started") == 1
        assert await _count(server, MeterSample) == 10


async def _acked(server: Running, kind: str) -> bool:
    async with server.ctx.sm() as s:
        cmd = (await s.execute(select(PileCommand).where(
            PileCommand.pile_id == PILE, PileCommand.type == kind))).scalars().first()
    return cmd is not None and cmd.state == CommandState.acked


async def test_the_handshake_refuses_bad_logins_unknown_points_and_other_protocols(
        db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as (server, secret):
        async def refused(path: str, login: dict[str, str],
                          protocols: tuple[str, ...] = ("ocpp1.6",)) -> int:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                async with server.http.ws_connect(f"{server.url}/ocpp/{path}",
                                                  protocols=protocols, headers=login):
                    pass
            return caught.value.status

        assert await refused(CP, basic_auth(CP, secret + "x")) == 401
        assert await refused(CP, basic_auth("CP002", secret)) == 401  # not its id
        assert await refused(CP, {}) == 401
        assert await refused("CP404", basic_auth("CP404", secret)) == 401
        assert await refused("P0001", basic_auth("P0001", "test-secret-P0001")) == 401
        assert await refused(CP, basic_auth(CP, secret), ("ocpp2.0.1",)) == 400
        # The 401 comes before any upgrade, with the scheme to use; unknown ids get the same.
        for path, login in ((CP, basic_auth(CP, "wrong")), ("CP404", basic_auth("CP404", "x"))):
            async with server.http.get(f"{server.url}/ocpp/{path}", headers={
                    **login, "Upgrade": "websocket", "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Protocol": "ocpp1.6"}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Basic")
                assert await r.json() == {"error": "bad credentials"}
        assert server.app[OCPP].refused == 7

        # The right login connects; a second connection replaces the first.
        async with connected(server.url, CP, secret) as first:
            await first.boot()
            async with connected(server.url, CP, secret) as second:
                await wait_until(lambda: first.ws.closed)
                assert server.app[OCPP].connections[PILE].point.id == CP
                assert (await second.boot()).status == "Accepted"


async def test_our_commands_become_ocpp_calls_and_their_results_acks(db_url: str) -> None:
    clock = HandClock()
    async with _server(db_url, clock) as (server, secret), connected(
            server.url, CP, secret) as point:
        await _booted(server, point, clock.now)
        async with transaction(server.ctx.sm) as s:
            for kind, port in (("reboot", None), ("unlock", 2), ("lock", 2)):
                await commands.queue(s, PILE, kind, port, now=clock.now)
        server.ctx.wake_pile(PILE)
        assert (await point.wait_for("Reset"))["type"] == "Soft"
        assert (await point.wait_for("UnlockConnector"))["connector_id"] == 2

        async def settled() -> dict[str, tuple[str, str | None]]:
            async with server.ctx.sm() as s:
                rows = (await s.execute(select(PileCommand).where(
                    PileCommand.pile_id == PILE))).scalars()
                return {c.type: (c.state, c.error) for c in rows}

        await wait_until(lambda: _all_answered(settled()))
        states = await settled()
        assert states["reboot"] == ("acked", None) and states["unlock"] == ("acked", None)
        assert states["lock"][0] == "failed" and "lock" in (states["lock"][1] or "")
        assert await _count(server, PileEvent, PileEvent.type == "command_ack") == 3

        # Connector 0 is the whole pile: its fault is the pile's, and the pile goes Inoperative.
        await point.status(0, "Faulted", clock.now, error_code="ReaderFailure")
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
            pile = await s.get(Pile, PILE)
        assert (fault.cause, fault.port) == ("ocpp_ReaderFailure", 0)
        assert pile is not None and pile.maintenance
        assert await point.wait_for("ChangeAvailability") == {"connector_id": 0,
                                                                "type": "Inoperative"}


async def _all_answered(states: Any) -> bool:
    found = await states
    return len(found) == 3 and all(s in ("acked", "failed") for s, _ in found.values())


async def test_a_faulted_connector_mid_charge_gets_the_three_level_response(
        db_url: str) -> None:
    clock = HandClock()
    t0 = clock.now - timedelta(minutes=30)
    async with _server(db_url, clock) as (server, secret), connected(
            server.url, CP, secret) as point:
        tech = await web_staff(server, "technician", name="Wang", sites=("T01",))
        await _booted(server, point, t0 - timedelta(minutes=1))
        rider, rider_id, ref = await _rider_starts(server, point, 2)
        tx = (await point.send(call.StartTransaction(
            connector_id=2, id_tag=ref, meter_start=52_000, timestamp=ocpp_time(t0)))
        ).transaction_id
        await point.status(2, "Charging", t0)
        for m in range(1, 6):
            await point.meter(2, tx, t0 + timedelta(minutes=m),
                              energy=(f"{52 + 0.004 * m:.3f}", "kWh"), power=("240", "W"))

        # The connector overheats at minute 5.
        await point.status(2, "Faulted", t0 + timedelta(minutes=5, seconds=10),
                           error_code="HighTemperature", info="terminal 92C")
        # (1) the rider: stopped, refunded (the minimum fee is waived), where to go instead.
        msg = await rider.wait_message("failed (over-temperature)")
        assert "refunded" in msg["text"] and "🧾" in msg["text"]
        assert button([msg], "alt:") == f"alt:{PILE}"
        charge = await _charge(server, rider_id)
        assert charge.end_reason == "fault" and charge.refunded_fen > 0
        # (2) the technician: a work order for the port.
        order = await tech.wait_message("Work order #")
        assert f"{PILE}-02" in order["text"] and "over-temperature" in order["text"]
        # (3) the port is under repair, and the charge point is told: Inoperative, and stop.
        async with server.ctx.sm() as s:
            port = (await s.execute(select(Port).where(Port.pile_id == PILE,
                                                       Port.number == 2))).scalars().one()
            assert port.maintenance and port.status == "fault"
        change = await point.wait_for("ChangeAvailability")
        assert change == {"connector_id": 2, "type": "Inoperative"}
        assert (await point.wait_for("RemoteStopTransaction"))["transaction_id"] == tx

        # The point's own end arrives after: nothing more is billed.
        await point.send(call.StopTransaction(
            meter_stop=52_030, timestamp=ocpp_time(t0 + timedelta(minutes=6)),
            transaction_id=tx, reason="EmergencyStop"))
        assert (await _charge(server, rider_id)).amount_fen == charge.amount_fen
        assert await _count(server, Fault) == 1 and await _count(server, WorkOrder) == 1
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
        assert (fault.cause, fault.port, fault.pile_id) == ("over_temperature", 2, PILE)
        assert "terminal 92C" in fault.detail
        assert await _count(server, OutboxMessage, OutboxMessage.kind == "bill") == 1

        # Back to Available: the charge point's word that the condition is gone.
        await point.status(2, "Available", t0 + timedelta(minutes=20))
        async with server.ctx.sm() as s:
            fault = (await s.execute(select(Fault))).scalars().one()
        assert fault.cleared_at is not None

        # Repaired (the technician's verdict clears the flag): the connector is Operative again.
        async with transaction(server.ctx.sm) as s:
            await s.execute(update(Port).where(Port.pile_id == PILE, Port.number == 2)
                            .values(maintenance=False))
        await server.app[OCPP].availability({PILE})
        assert await point.wait_for("ChangeAvailability", 2) == {"connector_id": 2,
                                                                   "type": "Operative"}


# --- the mapping, without the app --------------------------------------------------------------


async def test_a_full_charge_ended_by_the_point_is_billed_as_full(db_url: str) -> None:
    """充满自停 over OCPP: the EV stops drawing (SuspendedEV), the point ends the transaction
    with reason Local (Finishing may come first). The rider did not stop it."""
    clock = HandClock()
    t0 = clock.now - timedelta(hours=3)
    async with _server(db_url, clock) as (server, secret), connected(
            server.url, CP, secret) as point:
        await _booted(server, point, t0 - timedelta(minutes=1))
        rider, rider_id, ref = await _rider_starts(server, point, 2)
        tx = (await point.send(call.StartTransaction(connector_id=2, id_tag=ref,
                                                     meter_start=0, timestamp=ocpp_time(t0)))
              ).transaction_id
        await point.status(2, "Charging", t0)
        await point.meter(2, tx, t0 + timedelta(hours=2), energy=("0.4123", "kWh"))
        await point.status(2, "SuspendedEV", t0 + timedelta(hours=2, minutes=30))
        await point.status(2, "Finishing", t0 + timedelta(hours=2, minutes=40))
        await point.send(call.StopTransaction(meter_stop=412, timestamp=ocpp_time(
            t0 + timedelta(hours=2, minutes=40)), transaction_id=tx, reason="Local"))
        await rider.wait_message("🧾")
        charge = await _charge(server, rider_id)
        assert charge.end_reason == "full" and charge.energy_wh == 412


def test_error_codes_and_stop_reasons_map_to_ours() -> None:
    assert [fault_code(c) for c in ("OverCurrentFailure", "HighTemperature", "GroundFailure",
                                    "OverVoltage", "UnderVoltage", "PowerMeterFailure",
                                    "ConnectorLockFailure", "ReaderFailure")] == [
        "overload", "over_temperature", "leakage", "over_voltage", "under_voltage",
        "meter_fault", "ocpp_ConnectorLockFailure", "ocpp_ReaderFailure"]
    assert [end_reason(r) for r in ("EVDisconnected", "Local", "Remote", None, "PowerLoss",
                                    "EmergencyStop", "Other", "DeAuthorized", "Reboot",
                                    "HardReset", "SoftReset")] == [
        "unplugged", "user", "user", "user", "power_loss", "fault", "fault", "user",
        "power_loss", "power_loss", "power_loss"]
    # After SuspendedEV the point itself ends a full charge; a rider's or unplug stays theirs.
    assert [end_reason(r, full=True) for r in ("Local", None, "Remote", "EVDisconnected")] == [
        "full", "full", "user", "unplugged"]
    assert [fault_code("OtherError", v) for v in ("E07", None, "", "E 0/7", "长码")] == [
        "ocpp_OtherError_E07", "ocpp_OtherError", "ocpp_OtherError", "ocpp_OtherError_E07",
        "ocpp_OtherError"]
    assert fault_code("HighTemperature", "T99") == "over_temperature"
    assert fault_code("NoError", "X1") == "ocpp_Faulted_X1"
    assert len(fault_code("OtherError", "V" * 100)) == 40


def test_meter_values_keep_their_decimals_in_our_units() -> None:
    at = datetime(2031, 1, 1, tzinfo=UTC)
    r = reading({"timestamp": "2031-01-01T00:01:00Z", "sampled_value": [
        {"value": "1.2345", "unit": "kWh"},  # the default measurand: the energy register
        {"value": "0.2505", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "98.6", "measurand": "Temperature", "unit": "Fahrenheit"},
        {"value": "NaN", "measurand": "Voltage"},
        {"value": "7", "measurand": "SoC", "unit": "Percent"},
    ]}, at)
    assert r is not None and r.ts == at + timedelta(minutes=1)
    assert r.register_wh == Decimal("1234.5") and r.power_w == Decimal("250.5")
    assert r.temperature_c == Decimal(37) and r.voltage_v is None
    phases = reading({"sampled_value": [
        {"value": "100", "measurand": "Power.Active.Import", "phase": p, "unit": "W"}
        for p in ("L1", "L2", "L3")]}, at)
    assert phases is not None and phases.power_w == 300 and phases.ts == at
    assert reading({"sampled_value": [{"value": "1", "format": "SignedData"}]}, at) is None
