"""AP3000 ("DNY") boards over real TCP (issue 17): a board emulator written from the wire
contract (`../shared/AP3000.md`, `docs/ap3000.md`; tests/support/ap3000_board.py packs every
byte itself) against the gateway, through to the rider's chat, the bill, faults and commands.

Nothing here reads the gateway's code: its only handle is the `AP3000` app key (the TCP port it
bound, and `.stats` counters where it has them).

The board reports the charge as running for RUN_S = 30 min 5 s when its first progress
arrives, and ends it a few seconds later by the wall clock: 31 started minutes whatever the
test's own pace (anything below 54 s between the first progress and the record).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from bot.piles.ap3000 import AP3000
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.db import make_engine, make_sessionmaker, transaction
from core.faults.tables import Fault, WorkOrder
from core.outbox import OutboxMessage
from core.piles import commands as pile_commands
from core.piles import fleet
from core.piles.tables import Pile, PileCommand, PileEvent, PileProtocol, Port
from core.riders.tables import Rider
from tests.support.ap3000_board import (
    ALARM,
    CHARGING,
    DOOR_OPEN,
    GET_TIME,
    LOGIN,
    PLUGGED,
    PROGRESS,
    REBOOT,
    RECORD,
    REGISTER,
    SHORT_CIRCUIT,
    START_STOP,
    STATUS,
    STOP_FULL,
    STOP_PORT_HOT,
    STOP_REMOTE,
    Board,
    unix_now,
)
from tests.support.journey import (
    WebRider,
    button,
    english_rider_and_id,
    pile_online,
    wait_until,
    web_staff,
)
from tests.support.served import cli, free_port, serve
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings

DEVICE = 305419896  # 0x12345678, as printed on the board
PILE = "P0101"
OK = b"\x00"
RUN_S = 1805
MINUTES = 31  # RUN_S and the few seconds the test takes, in started minutes
HOUR = {"mode": "time", "fen_per_hour": 600, "unit_minutes": 1, "free_minutes": 0}
# The same price with a minimum fee: a fault ends a charge "paid only up to the fault, with no
# minimum fee" (README, DESIGN §5), so the refund is exactly the minimum's lift.
HOUR_MIN = {**HOUR, "min_fee_fen": 500}
MAX_MINUTES = 480  # bot.toml's piles.max_minutes: the start's limit in time mode


def _fen(tariff: dict[str, Any], minutes: int, *, minimum: bool = True) -> int:
    """An independent reading of a time tariff: rate × started minutes, rounded half up once,
    lifted to the minimum fee."""
    fen = math.floor(Fraction(tariff["fen_per_hour"], 60) * minutes + Fraction(1, 2))
    floor = tariff.get("min_fee_fen", 0) if minimum else 0
    return max(fen, floor) if fen else 0


def _yuan(fen: int) -> str:
    return f"¥{fen // 100}.{fen % 100:02d}"


# --- the city, the board, the rider -----------------------------------------------------------


@asynccontextmanager
async def _city(db_url: str, *, tariff: str = "hour", **ap3000: Any) -> AsyncIterator[Running]:
    settings = make_settings(
        db_url, scheduler={"enabled": False},
        piles={"ap3000": {"enabled": True, "port": 0, "host": "127.0.0.1", "sweep_s": 0.2,
                          **ap3000}},
        billing={"tariffs": {"hour": HOUR, "hour_min": HOUR_MIN}, "default_tariff": "hour"})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2, tariff=tariff)
        async with transaction(server.ctx.sm) as s:
            await fleet.add_pile(s, "T01", PILE, 10, protocol=PileProtocol.ap3000,
                                 wire_id=str(DEVICE))
        yield server


def _board(server: Running, device_id: int = DEVICE) -> Board:
    return Board("127.0.0.1", server.app[AP3000].port, device_id)


def _stat(server: Running, name: str) -> int:
    value: int = getattr(server.app[AP3000].stats, name)
    return value


async def _counted(server: Running, name: str, at_least: int) -> None:
    """Wait for the gateway's counter (docs/ap3000.md names them) to reach `at_least`."""
    await wait_until(lambda: _stat(server, name) >= at_least)


async def _answered(board: Board, command: int, msg_id: int, count: int = 1) -> None:
    """The server replied ok: same command, same msg_id, our device id, result 0x00."""
    reply = await board.reply(command, msg_id, count=count)
    assert (reply.device_id, reply.data) == (board.device_id, OK), reply


async def _online(server: Running, board: Board) -> None:
    """register → heartbeat; the first status report gives every port its status."""
    await _answered(board, REGISTER, await board.register())
    await wait_until(lambda: pile_online(server.ctx, PILE))
    await _answered(board, STATUS, await board.status())


async def _rider(server: Running) -> tuple[WebRider, int]:
    rider, rider_id = await english_rider_and_id(server)
    await rider.press(button(await rider.say("/wallet"), "topup:2000"))
    return rider, rider_id


async def _latest_charge(server: Running) -> Charge:
    async with server.ctx.sm() as s:
        charge = (await s.execute(select(Charge).order_by(col(Charge.id).desc()))
                  ).scalars().first()
    assert charge is not None
    return charge


async def _command_state(server: Running, type_: str) -> str | None:
    async with server.ctx.sm() as s:
        cmd = (await s.execute(select(PileCommand).where(
            PileCommand.pile_id == PILE, PileCommand.type == type_)
            .order_by(col(PileCommand.id).desc()))).scalars().first()
    return cmd.state if cmd else None


async def _start(server: Running, rider: WebRider, board: Board,
                 port: int) -> tuple[str, list[dict]]:
    """The rider starts the port from the web chat; the 0x82 reaches the board and the board
    says yes. Returns the session reference and the rider's replies."""
    code = f"{PILE}-{port:02d}"
    started = await rider.press(button(await rider.say(code), f"start:{code}"))
    cmd = await board.start_stop()
    charge = await _latest_charge(server)
    assert charge.session_ref
    assert (cmd.mode, cmd.amount, cmd.port, cmd.action, cmd.limit, cmd.order_no,
            cmd.reserved) == (0, 0, port - 1, 1, MAX_MINUTES, charge.session_ref, 0), cmd
    assert cmd.frame.data[9:25] == charge.session_ref.encode().ljust(16, b"\x00")
    await wait_until(lambda: _state_is(server, "start", "acked"))
    return charge.session_ref, started


async def _state_is(server: Running, type_: str, state: str) -> bool:
    return await _command_state(server, type_) == state


async def _progress(board: Board, port: int, ref: str, *, seconds: int = RUN_S,
                    **kw: Any) -> float:
    """One progress frame, answered; returns when it was sent (the board's seconds count
    back from there)."""
    sent = time.time()
    kw.setdefault("energy_wh", 60)
    kw.setdefault("power_w", 300.0)
    await _answered(board, PROGRESS, await board.progress(port, ref, seconds=seconds, **kw))
    return sent


def _record_data(board: Board, port: int, ref: str, first_progress: float, *,
                 stop_reason: int = STOP_FULL, energy_wh: int = 120) -> bytes:
    """The record of a charge that started RUN_S before the first progress and ends now."""
    ended = unix_now()
    return board.record_data(port, ref, seconds=ended - round(first_progress - RUN_S),
                             energy_wh=energy_wh, peak_w=310.0, stop_reason=stop_reason,
                             ended_at=ended)


async def _billed(server: Running, rider_id: int) -> Charge:
    """The rider's one charge, once billed: one bill message, one ledger debit at most."""
    async def done() -> bool:
        charge = await _latest_charge(server)
        return charge.state in ("ended", "settled")

    await wait_until(done)
    async with server.ctx.sm() as s:
        charges = list((await s.execute(select(Charge).where(
            Charge.rider_id == rider_id))).scalars())
        bills = (await s.execute(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.rider_id == rider_id, OutboxMessage.kind == "bill"))).scalar()
        debits = list((await s.execute(select(LedgerEntry).where(
            LedgerEntry.rider_id == rider_id, LedgerEntry.kind == "charge"))).scalars())
        ended = (await s.execute(select(func.count()).select_from(PileEvent).where(
            PileEvent.pile_id == PILE, PileEvent.type == "session_ended"))).scalar()
    assert len(charges) == 1 and bills == 1, (charges, bills)
    assert len(debits) <= 1 and ended is not None and ended <= 1, (debits, ended)
    return charges[0]


def _aware(ts: datetime | None) -> datetime:
    assert ts is not None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _minutes(charge: Charge) -> int:
    return math.ceil((_aware(charge.ended_at) - _aware(charge.started_at)).total_seconds() / 60)


async def _bills_in_chat(rider: WebRider) -> int:
    await rider.poll()
    return sum("🧾" in m["text"] for m in rider.inbox)


async def _balance(server: Running, rider_id: int) -> int:
    async with server.ctx.sm() as s:
        rider = await s.get(Rider, rider_id)
    assert rider is not None
    return rider.balance_fen


async def _port(server: Running, number: int) -> Port:
    async with server.ctx.sm() as s:
        return (await s.execute(select(Port).where(Port.pile_id == PILE,
                                                   Port.number == number))).scalars().one()


async def _events(server: Running, type_: str) -> list[dict]:
    async with server.ctx.sm() as s:
        rows = (await s.execute(select(PileEvent).where(
            PileEvent.pile_id == PILE, PileEvent.type == type_)
            .order_by(PileEvent.id))).scalars()
        return [e.payload for e in rows]


def _clean(board: Board) -> None:
    junk, bad, unexpected = board.server_junk()
    assert (junk, bad, unexpected) == (b"", [], []), "the server sent bytes that are no frame"


async def _pile(server: Running) -> Pile:
    async with server.ctx.sm() as s:
        pile = await s.get(Pile, PILE)
    assert pile is not None
    return pile


async def test_unchanged_status_reports_are_answered_and_mark_the_board_seen(db_url: str
                                                                             ) -> None:
    """The minute-by-minute report of a board where nothing moved is answered at once and
    stored as no event (docs/ap3000.md); the pile's last-seen time, signal and temperature
    still follow it."""
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        before = await _events(server, "heartbeat")
        seen_before = (await _pile(server)).last_seen_at
        assert seen_before is not None
        for signal, temp in ((20, 28), (22, 29), (27, 33)):
            await _answered(board, STATUS, await board.status(signal=signal, temp_c=temp))
        assert await _events(server, "heartbeat") == before
        # signal 27 → −113 + 54 = −59 dBm, and the pile's temperature, as of the last report
        await wait_until(lambda: _pile_reads(server, -59, 33))
        assert (await _pile(server)).last_seen_at > seen_before
        # A report that moves a port is stored as before, with its heartbeat.
        board.set_port(4, PLUGGED)
        await _answered(board, STATUS, await board.status(signal=25, temp_c=31))
        await wait_until(lambda: _port_is(server, 4, "plugged"))
        assert len(await _events(server, "heartbeat")) == len(before) + 1
        _clean(board)


async def _pile_reads(server: Running, signal_dbm: float, temperature_c: float) -> bool:
    pile = await _pile(server)
    return (pile.signal_dbm, pile.temperature_c) == (signal_dbm, temperature_c)


async def _port_is(server: Running, number: int, status: str) -> bool:
    return (await _port(server, number)).status == status


# --- the whole charge -------------------------------------------------------------------------


async def test_register_heartbeat_start_from_chat_progress_record_one_bill(db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _answered(board, REGISTER, await board.register())
        await wait_until(lambda: pile_online(server.ctx, PILE))
        assert any(h.get("firmware") == "V1.00" for h in await _events(server, "heartbeat"))
        # The heartbeat: signal 25 → −113 + 50 dBm, 96 → 31 °C; port 3 (wire index 2) plugged.
        board.set_port(3, PLUGGED)
        await _answered(board, STATUS, await board.status(signal=25, temp_c=31, voltage_v=229.8))
        beats = await _events(server, "heartbeat")
        assert any(h.get("signal_dbm") == -63 and h.get("temperature_c") == 31 for h in beats)
        assert (await _port(server, 3)).status == "plugged"
        assert (await _port(server, 2)).status == "idle"
        asked = time.time()
        reply = await board.reply(GET_TIME, await board.get_time())
        assert len(reply.data) == 4
        assert abs(int.from_bytes(reply.data, "little") - asked) < 5, reply

        rider, rider_id = await _rider(server)
        ref, started = await _start(server, rider, board, 2)
        assert button(started, "stop:")
        first = await _progress(board, 2, ref, energy_wh=60, power_w=253.4, voltage_v=220.1,
                                current_a=1.152, port_temp_c=36, temp_c=30)
        await rider.wait_message("Charging started at port P0101-02")
        charge = await _latest_charge(server)
        assert charge.state == "started"
        # session_started is dated now − the board's seconds
        assert abs(_aware(charge.started_at).timestamp() - (first - RUN_S)) < 3
        meter = (await _events(server, "meter"))[-1]
        assert meter["session"] == ref and meter["port"] == 2
        assert meter.get("power_w") == pytest.approx(253.4)
        assert meter.get("energy_wh") == pytest.approx(60)
        assert meter.get("voltage_v") == pytest.approx(220.1)
        assert meter.get("current_a") == pytest.approx(1.152)
        assert meter.get("temperature_c") == pytest.approx(36)
        await _progress(board, 2, ref, seconds=RUN_S + round(time.time() - first),
                        energy_wh=90, power_w=300.0)

        await _answered(board, RECORD, await board.send(RECORD, _record_data(
            board, 2, ref, first, stop_reason=STOP_FULL, energy_wh=120)))
        bill = await rider.wait_message("🧾")
        charge = await _billed(server, rider_id)
        fen = _fen(HOUR, MINUTES)
        assert _minutes(charge) == MINUTES
        assert (charge.amount_fen, charge.energy_wh, charge.end_reason, charge.state) == (
            fen, 120, "full", "settled")
        assert _yuan(fen) in bill["text"]
        assert await _balance(server, rider_id) == 2000 - fen
        assert await _bills_in_chat(rider) == 1
        _clean(board)


async def test_split_merged_garbage_and_a_bad_checksum(db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        # The register frame one byte per write.
        mid, raw = board.frame(REGISTER, board.register_data())
        await board.write_in_pieces(raw, range(1, len(raw)))
        await _answered(board, REGISTER, mid)
        # Garbage (with a "DN" that is no header, and a "DNY" whose length is over 256), then a
        # status report and a get-time in the same write.
        garbage = b"\x00\xff\x13AT+CSQ\r\nDN" + b"DNY\x00\x10"
        s_mid, status = board.frame(STATUS, board.status_data())
        t_mid, get_time = board.frame(GET_TIME)
        await board.write(garbage + status + get_time)
        await _answered(board, STATUS, s_mid)
        assert len((await board.reply(GET_TIME, t_mid)).data) == 4
        await _counted(server, "garbage_bytes", len(garbage) - 5)

        rider, rider_id = await _rider(server)
        ref, _ = await _start(server, rider, board, 2)
        # The first progress cut inside the header, inside the length and inside the data.
        first = time.time()
        p_mid, progress = board.frame(PROGRESS, board.progress_data(
            2, ref, seconds=RUN_S, energy_wh=60, power_w=300.0))
        await board.write_in_pieces(progress, [2, 4, 20])
        await _answered(board, PROGRESS, p_mid)
        await rider.wait_message("Charging started")

        # A record with a line error (and other numbers): dropped, counted, never answered.
        bad_mid, bad = board.frame(RECORD, _record_data(board, 2, ref, first, energy_wh=990),
                                   bad_checksum=True)
        await board.write(bad)
        await _counted(server, "bad_checksums", 1)
        # Two progress frames and half the real record in one write, the rest in the next.
        more = [board.frame(PROGRESS, board.progress_data(
            2, ref, seconds=RUN_S + n, energy_wh=70 + 10 * n, power_w=300.0)) for n in (1, 2)]
        r_mid, record = board.frame(RECORD, _record_data(board, 2, ref, first, energy_wh=120))
        merged = more[0][1] + more[1][1] + record
        await board.write_in_pieces(merged, [len(merged) - len(record) // 2])
        for m, _ in more:
            await _answered(board, PROGRESS, m)
        await _answered(board, RECORD, r_mid)

        await rider.wait_message("🧾")
        charge = await _billed(server, rider_id)
        assert charge.energy_wh == 120  # the good record's, not the corrupted one's 990
        assert charge.amount_fen == _fen(HOUR, MINUTES) and _minutes(charge) == MINUTES
        # The bad frame was sent before everything answered since, on the same stream.
        assert board.replies_to(RECORD, bad_mid) == [], board.replies_to(RECORD, bad_mid)
        assert await _bills_in_chat(rider) == 1
        _clean(board)


async def test_a_record_resent_three_times_is_answered_each_time_and_billed_once(
        db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        rider, rider_id = await _rider(server)
        ref, _ = await _start(server, rider, board, 2)
        first = await _progress(board, 2, ref)
        await rider.wait_message("Charging started")

        r_mid, record = board.frame(RECORD, _record_data(board, 2, ref, first))
        # A board whose reply was late sends the record again right behind the first copy.
        await board.write(record + record)
        await _answered(board, RECORD, r_mid, count=2)
        await board.write(record)  # and once more, 15 s later on a real board
        await _answered(board, RECORD, r_mid, count=3)
        # After a reboot its msg_ids start over: the same record under a new msg_id.
        again = await board.send(RECORD, record[12:-2])
        assert again != r_mid
        await _answered(board, RECORD, again)

        await rider.wait_message("🧾")
        charge = await _billed(server, rider_id)
        assert charge.amount_fen == _fen(HOUR, MINUTES)
        assert len(await _events(server, "session_ended")) == 1
        assert await _balance(server, rider_id) == 2000 - charge.amount_fen
        assert await _bills_in_chat(rider) == 1
        _clean(board)


async def test_a_disconnect_mid_charge_and_a_reconnect_bill_once(db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        rider, rider_id = await _rider(server)
        ref, _ = await _start(server, rider, board, 2)
        first = await _progress(board, 2, ref)
        await rider.wait_message("Charging started")

        # The cellular link drops; the board comes back on a new connection and registers.
        await board.reconnect()
        await _answered(board, REGISTER, await board.register())
        board.set_port(2, CHARGING)
        await _answered(board, STATUS, await board.status())
        await _progress(board, 2, ref, seconds=RUN_S + round(time.time() - first),
                        energy_wh=90)
        # The record goes out and the link drops before its reply can arrive...
        r_mid, record = board.frame(RECORD, _record_data(board, 2, ref, first))
        await board.write(record)
        await board.reconnect()
        # ...so the board registers again and sends it again, same msg_id.
        await _answered(board, REGISTER, await board.register())
        await board.write(record)
        await _answered(board, RECORD, r_mid)

        await rider.wait_message("🧾")
        charge = await _billed(server, rider_id)
        assert charge.amount_fen == _fen(HOUR, MINUTES) and _minutes(charge) == MINUTES
        assert await _bills_in_chat(rider) == 1
        _clean(board)


# --- faults -----------------------------------------------------------------------------------


async def _fault_bill(server: Running, rider: WebRider, rider_id: int, cause_words: str,
                      code: str) -> Charge:
    """The rider's fault message with the refund the fault rules give, and the charge."""
    fen, fair = _fen(HOUR_MIN, MINUTES), _fen(HOUR_MIN, MINUTES, minimum=False)
    msg = await rider.wait_message(f"port P0101-02 failed ({cause_words})")
    assert f"{_yuan(fen - fair)} refunded" in msg["text"], msg["text"]
    assert button([msg], "alt:")
    charge = await _billed(server, rider_id)
    assert charge.end_reason == "fault" and charge.bill is not None
    assert _minutes(charge) == MINUTES
    assert (charge.bill["fault_code"], charge.bill["refund_fen"], charge.amount_fen) == (
        code, fen - fair, fair)
    return charge


async def _work_order(server: Running, tech: WebRider, code: str, words: str) -> None:
    order = await tech.wait_message("Work order #")
    assert "P0101-02" in order["text"] and words in order["text"]
    async with server.ctx.sm() as s:
        faults = list((await s.execute(select(Fault))).scalars())
        orders = (await s.execute(select(func.count()).select_from(WorkOrder))).scalar()
    assert [(f.pile_id, f.port, f.cause) for f in faults] == [(PILE, 2, code)]
    assert orders == 1
    assert (await _port(server, 2)).maintenance


async def test_port_over_temperature_stop_reason_refund_and_work_order(db_url: str) -> None:
    async with _city(db_url, tariff="hour_min") as server, _board(server) as board:
        tech = await web_staff(server, "technician", name="Wang", sites=("T01",))
        await _online(server, board)
        rider, rider_id = await _rider(server)
        ref, _ = await _start(server, rider, board, 2)
        first = await _progress(board, 2, ref)
        await rider.wait_message("Charging started")

        await _answered(board, RECORD, await board.send(RECORD, _record_data(
            board, 2, ref, first, stop_reason=STOP_PORT_HOT, energy_wh=150)))
        charge = await _fault_bill(server, rider, rider_id, "over-temperature",
                                   "over_temperature")
        assert charge.energy_wh == 150
        await _work_order(server, tech, "over_temperature", "over-temperature")
        _clean(board)


async def test_a_fault_status_byte_mid_charge_stops_the_port_refunds_and_opens_an_order(
        db_url: str) -> None:
    async with _city(db_url, tariff="hour_min") as server, _board(server) as board:
        tech = await web_staff(server, "technician", name="Wang", sites=("T01",))
        await _online(server, board)
        rider, rider_id = await _rider(server)
        ref, _ = await _start(server, rider, board, 2)
        first = await _progress(board, 2, ref, energy_wh=140)
        await rider.wait_message("Charging started")

        # The next heartbeat says port 2 (wire index 1) has a short circuit.
        board.set_port(2, SHORT_CIRCUIT)
        await _answered(board, STATUS, await board.status())
        charge = await _fault_bill(server, rider, rider_id, "short circuit", "short_circuit")
        assert charge.energy_wh == 140  # the last reading: the board never ended it itself
        assert (await _port(server, 2)).status == "fault"
        # We stop the port: 0x82 with action 0 and the session, then the board's own record.
        stop = await board.start_stop()
        assert (stop.mode, stop.amount, stop.port, stop.action, stop.limit, stop.order_no) == (
            0, 0, 1, 0, 0, ref), stop
        await wait_until(lambda: _state_is(server, "stop", "acked"))
        await _answered(board, RECORD, await board.send(RECORD, _record_data(
            board, 2, ref, first, stop_reason=STOP_REMOTE, energy_wh=150)))
        await _work_order(server, tech, "short_circuit", "short circuit")
        again = await _billed(server, rider_id)
        assert again.bill == charge.bill and again.amount_fen == charge.amount_fen
        assert await _bills_in_chat(rider) == 1
        _clean(board)


async def test_a_hot_port_in_progress_frames_is_caught_and_stopped(db_url: str) -> None:
    """Three progress frames in a row with the port at 80 °C (byte 145; the board's own
    ambient byte says 30 °C): the pile model's 70 °C limit, seen in our telemetry."""
    async with _city(db_url, tariff="hour_min") as server, _board(server) as board:
        await _online(server, board)
        rider, rider_id = await _rider(server)
        ref, _ = await _start(server, rider, board, 2)
        first = await _progress(board, 2, ref, port_temp_c=36)
        await rider.wait_message("Charging started")
        for n in (1, 2, 3):
            await _progress(board, 2, ref, seconds=RUN_S + n, energy_wh=60 + 10 * n,
                            port_temp_c=80, temp_c=30)
        await _fault_bill(server, rider, rider_id, "over-temperature", "over_temperature")
        stop = await board.start_stop()
        assert (stop.port, stop.action, stop.order_no) == (1, 0, ref), stop
        # The board's record of the same end changes nothing.
        await _answered(board, RECORD, await board.send(RECORD, _record_data(
            board, 2, ref, first, stop_reason=STOP_PORT_HOT, energy_wh=100)))
        async with server.ctx.sm() as s:
            orders = (await s.execute(select(func.count()).select_from(WorkOrder))).scalar()
        assert orders == 1
        assert await _bills_in_chat(rider) == 1
        _clean(board)


async def test_a_door_alarm_is_a_door_open_fault_on_that_port(db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        await _answered(board, ALARM, await board.alarm(3, DOOR_OPEN))

        async def raised() -> bool:
            async with server.ctx.sm() as s:
                return [(f.port, f.cause) for f in (await s.execute(select(Fault))).scalars()
                        ] == [(3, "door_open")]

        await wait_until(raised)
        _clean(board)


# --- connections ------------------------------------------------------------------------------


async def test_an_unknown_device_is_never_answered_and_is_hung_up_on(db_url: str) -> None:
    async with _city(db_url) as server:
        async with _board(server, device_id=DEVICE + 1) as stranger:
            mid = await stranger.register()
            await stranger.wait_closed()
            assert stranger.replies_to(REGISTER, mid) == [] and stranger.commands == []
        await _counted(server, "unknown_devices", 1)
        async with server.ctx.sm() as s:
            assert not (await s.get(Pile, PILE)).online  # type: ignore[union-attr]

        # A connection carries one device id: a frame naming another board, registered too,
        # closes it.
        async with transaction(server.ctx.sm) as s:
            await fleet.add_pile(s, "T01", "P0102", 10, protocol=PileProtocol.ap3000,
                                 wire_id=str(DEVICE + 2))
        async with _board(server) as board:
            await _answered(board, REGISTER, await board.register())
            _, other = board.frame(GET_TIME, device_id=DEVICE + 2)
            await board.write(other)
            await board.wait_closed()
            assert len(board.replies) == 1


async def test_an_old_board_logs_in_with_0x01_and_its_ports_take_their_status(
        db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        statuses = [0] * 10
        statuses[2], statuses[5] = PLUGGED, SHORT_CIRCUIT
        await _answered(board, LOGIN, await board.login(statuses, signal=28, temp_c=41))
        await wait_until(lambda: pile_online(server.ctx, PILE))

        async def ports() -> dict[int, str]:
            async with server.ctx.sm() as s:
                return {p.number: p.status for p in (await s.execute(
                    select(Port).where(Port.pile_id == PILE))).scalars()}

        async def shown() -> bool:
            now = await ports()
            return now[3] == "plugged" and now[6] == "fault"

        await wait_until(shown)
        assert (await ports())[1] == "idle"
        async with server.ctx.sm() as s:
            pile = await s.get(Pile, PILE)
            assert pile is not None and pile.signal_dbm is not None
            assert pile.temperature_c == 41
        _clean(board)


async def test_addresses_outside_allow_from_are_refused_at_accept(db_url: str) -> None:
    async with _city(db_url, allow_from=["10.64.0.0/16"]) as server, _board(server) as board:
        mid = await board.register()
        await board.wait_closed()
        assert board.replies_to(REGISTER, mid) == []
        await _counted(server, "refused", 1)
        assert _stat(server, "connections") == 0


async def test_an_address_inside_allow_from_is_served(db_url: str) -> None:
    async with _city(db_url, allow_from=["10.64.0.0/16", "127.0.0.0/8"]) as server, \
            _board(server) as board:
        await _answered(board, REGISTER, await board.register())
        assert _stat(server, "refused") == 0


async def test_a_silent_connection_is_closed_after_the_idle_timeout(db_url: str) -> None:
    async with _city(db_url, idle_timeout_s=0.5) as server:
        async with _board(server) as mute:  # never says who it is
            await mute.wait_closed()
        async with _board(server) as board:  # registered, then silent
            await _answered(board, REGISTER, await board.register())
            await board.wait_closed()
        await wait_until(lambda: not server.app[AP3000].connected(PILE))


async def test_a_second_connection_for_the_same_board_takes_over(db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as old, _board(server) as new:
        await _answered(old, REGISTER, await old.register())
        await wait_until(lambda: pile_online(server.ctx, PILE))
        await _answered(new, REGISTER, await new.register())
        await old.wait_closed()
        await _answered(new, STATUS, await new.status())
        # Commands now go to the new connection.
        rider, _ = await _rider(server)
        await _start(server, rider, new, 4)
        assert old.commands == []
        _clean(new)


# --- commands ---------------------------------------------------------------------------------


async def test_the_rider_stops_from_chat_and_0x82_action_0_reaches_the_board(
        db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        rider, rider_id = await _rider(server)
        ref, started = await _start(server, rider, board, 10)
        first = await _progress(board, 10, ref)
        await rider.wait_message("Charging started at port P0101-10")

        await rider.press(button(started, "stop:"))
        stop = await board.start_stop()
        assert (stop.mode, stop.amount, stop.port, stop.action, stop.limit, stop.order_no,
                len(stop.frame.data)) == (0, 0, 9, 0, 0, ref, 26), stop
        await wait_until(lambda: _state_is(server, "stop", "acked"))
        await _answered(board, RECORD, await board.send(RECORD, _record_data(
            board, 10, ref, first, stop_reason=STOP_REMOTE)))
        await rider.wait_message("🧾")
        charge = await _billed(server, rider_id)
        assert charge.end_reason == "user" and charge.amount_fen == _fen(HOUR, MINUTES)
        _clean(board)


async def test_a_start_the_board_refuses_fails_for_the_rider(db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        board.results[START_STOP] = 1
        rider, _ = await _rider(server)
        code = f"{PILE}-02"
        await rider.press(button(await rider.say(code), f"start:{code}"))
        cmd = await board.start_stop()
        assert (cmd.port, cmd.action) == (1, 1)
        await rider.wait_message("did not start")
        await wait_until(lambda: _state_is(server, "start", "failed"))
        charge = await _latest_charge(server)
        assert charge.state == "failed" and charge.amount_fen == 0


async def test_reboot_and_lock_queued_by_another_worker_reach_the_board_by_the_sweep(
        db_url: str) -> None:
    async with _city(db_url) as server, _board(server) as board:
        await _online(server, board)
        # Queued straight in the database, as another worker would: no wake-up in this process.
        async with transaction(server.ctx.sm) as s:
            await pile_commands.queue(s, PILE, "lock", 3, now=datetime.now(UTC))
            await pile_commands.queue(s, PILE, "reboot", None, now=datetime.now(UTC))
        reboot = await board.next_command(REBOOT)
        assert reboot.data == b""
        await wait_until(lambda: _state_is(server, "reboot", "acked"))
        await wait_until(lambda: _state_is(server, "lock", "failed"))
        async with server.ctx.sm() as s:
            lock = (await s.execute(select(PileCommand).where(
                PileCommand.type == "lock"))).scalars().one()
        assert lock.error == "not supported by AP3000"
        assert [c.command for c in board.commands] == [REBOOT]
        _clean(board)


async def test_a_board_added_with_the_cli_talks_to_chargebot_serve(db_url: str,
                                                                   tmp_path: Path) -> None:
    work = tmp_path / "served"
    work.mkdir()
    sites = work / "sites.csv"
    sites.write_text("id,name,address,lat,lon,kind,tariff\n"
                     "T01,测试小区车棚,测试路1号,30.278,120.114,community,standard\n",
                     encoding="utf-8")
    cli(["sites", "import", str(sites)], db_url, work)
    out = cli(["piles", "add", "--site", "T01", "--id", PILE, "--ports", "10",
               "--protocol", "ap3000", "--device-id", str(DEVICE)], db_url, work)
    assert f"AP3000 device id {DEVICE}" in out
    tcp = free_port()
    env = {"CHARGEBOT_PILES__AP3000__ENABLED": "true",
           "CHARGEBOT_PILES__AP3000__HOST": "127.0.0.1",
           "CHARGEBOT_PILES__AP3000__PORT": str(tcp)}
    engine = make_engine(db_url)
    try:
        async with serve(db_url, work, env=env):
            async with Board("127.0.0.1", tcp, DEVICE) as board:
                await _answered(board, REGISTER, await board.register())
                await _answered(board, STATUS, await board.status())
                sm = make_sessionmaker(engine)

                async def online() -> bool:
                    async with sm() as s:
                        pile = await s.get(Pile, PILE)
                        return bool(pile and pile.online)

                await wait_until(online)
                _clean(board)
            async with Board("127.0.0.1", tcp, DEVICE + 7) as stranger:
                mid = await stranger.register()
                await stranger.wait_closed()
                assert stranger.replies_to(REGISTER, mid) == []
    finally:
        await engine.dispose()

