"""Simulated AP3000 ("DNY") boards: a PileController on a TCP link to the AP3000 gateway.

Each board wraps the same controller as an HTTP pile (simulator/controller.py) and translates:
what the controller emits becomes AP3000 frames (heartbeat/port changes → 0x21 status report,
session start and meter → 0x06 progress with order_no = session, session_ended → 0x03 record),
and the server's 0x82/0x87 become controller commands, answered with the controller's ack.
Status bytes and stop reasons are docs/ap3000.md's tables read in reverse. Framing is the
gateway's own pure codec (bot/piles/ap3000/frames.py).

The board's clock: a charge's record says it ended at (wall time the charge started + its
virtual duration), so a demo compressed in time still bills virtual durations, as over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from bot.piles.ap3000 import frames
from simulator.charger import ChargerProfile
from simulator.clock import VirtualClock
from simulator.controller import PileController, SimSettings
from simulator.pile import cancel_all, drive, report_crash

log = logging.getLogger("chargebot.simulator")

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
RECORD_RESEND_S = 15.0  # a record the server has not answered goes again (real boards do)
FIRMWARE = 100  # "V1.00"
BOARD_TYPE = 0x05
SEEN_COMMANDS = 1024

# Port status bytes (docs/ap3000.md, reverse direction)
IDLE, CHARGING, PLUGGED = 0, 1, 2
FAULT_BYTES = {"short_circuit": 4, "meter_fault": 7, "relay_open": 8, "relay_stuck": 9}
# session_ended reasons → stop reasons; a fault's stop reason comes from its fault code.
STOP_REASONS = {"full": 0, "user": 7, "limit": 2, "unplugged": 5, "no_load": 0x0C,
                "power_loss": 0x0E}
FAULT_STOP_REASONS = {"overload": 6, "over_temperature": 0x0B, "relay_open": 0x0F,
                      "flooding": 0x10, "door_open": 0x14, "over_voltage": 0x1A,
                      "under_voltage": 0x1B}
SYSTEM_ERROR = 0x18  # a fault the table has no stop reason for

_START_STOP = struct.Struct("<BIBBH16sB")  # mode, amount, port, action, limit, order_no, reserved
_PROGRESS = struct.Struct("<BBHHBHHHH16sHHHHBB")
_RECORD = struct.Struct("<HHHBBIB16sHI")


def _u16(value: float) -> int:
    return max(0, min(0xFFFF, round(value)))


def _temp_byte(celsius: Any) -> int:
    if not isinstance(celsius, int | float):
        return 0  # no sensor
    return max(1, min(0xFF, round(celsius) + 65))


def _signal_byte(dbm: Any) -> int:
    if not isinstance(dbm, int | float):
        return 99  # unknown
    return max(0, min(31, round((dbm + 113) / 2)))


def _order(session: str) -> bytes | None:
    try:
        return frames.pack_order_no(session)
    except ValueError:
        return None


@dataclass(frozen=True)
class BoardSpec:
    pile_id: str
    device_id: int
    ports: int


class Ap3000Board:
    """One board: a ticker for the controller and a link that reconnects with backoff."""

    def __init__(self, controller: PileController, device_id: int, host: str, port: int) -> None:
        self.controller = controller
        self.pile_id = controller.pile_id
        self.device_id = device_id
        self.host, self.port = host, port
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._msg_id = 0
        self._wake = asyncio.Event()
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Command key → result byte, so a resent 0x82/0x87 is answered, not run twice.
        self._answers: OrderedDict[str, int] = OrderedDict()
        self._pending: dict[str, tuple[int, int, bytes]] = {}  # command id → msg_id, cmd, data
        self._unacked: dict[int, tuple[float, bytes]] = {}  # record msg_id → (sent, frame)
        self._fault_code: dict[int, str] = {}  # port → last fault code (for its stop reason)
        self._started_wall: dict[str, float] = {}  # session → wall time it started
        self._peak_w: dict[str, float] = {}
        controller.notify = self._on_change

    def _on_change(self) -> None:
        self._wake.set()
        self._queued.set()

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.controller.boot()
        self._tasks = [asyncio.create_task(self._tick_loop(), name=f"ap3000-{self.pile_id}-tick"),
                       asyncio.create_task(self._link_loop(), name=f"ap3000-{self.pile_id}-link")]
        for task in self._tasks:
            task.add_done_callback(report_crash)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)

    async def _tick_loop(self) -> None:
        await drive(self.controller, self._wake)

    # ---- the link -------------------------------------------------------------------------
    async def _link_loop(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                log.debug("%s: AP3000 connect failed (%s)", self.pile_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2.0, BACKOFF_MAX_S)
                continue
            self._writer = writer
            pump = asyncio.create_task(self._pump(), name=f"ap3000-{self.pile_id}-pump")
            try:
                self._send(frames.REGISTER, struct.pack(
                    "<BHB", BOARD_TYPE, FIRMWARE, len(self.controller.ports)))
                self._send_status()
                for _, raw in list(self._unacked.values()):
                    writer.write(raw)
                self._flush()
                self.connected.set()
                await self._read_loop(reader)
                backoff = BACKOFF_START_S  # it was up; the drop is news, not a refusal
            except (ConnectionError, OSError) as exc:
                log.info("%s: AP3000 link dropped (%s)", self.pile_id, exc.__class__.__name__)
            finally:
                self.connected.clear()
                self._writer = None
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2.0, BACKOFF_MAX_S)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        deframer = frames.Deframer()
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                return
            for frame in deframer.feed(chunk):
                self._on_frame(frame)
            self._flush()
            if self._writer is not None:
                await self._writer.drain()

    async def _pump(self) -> None:
        """Events the controller emits on its own (ticks, the world) go out as they come."""
        while True:
            self._queued.clear()
            self._flush()
            if self._writer is not None:
                await self._writer.drain()
            self._resend_records()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECORD_RESEND_S / 3):
                    await self._queued.wait()

    def _resend_records(self) -> None:
        now = time.monotonic()
        for msg_id, (sent, raw) in list(self._unacked.items()):
            if now - sent >= RECORD_RESEND_S and self._writer is not None:
                self._writer.write(raw)
                self._unacked[msg_id] = (now, raw)

    def _next_msg_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def _send(self, command: int, data: bytes) -> int:
        msg_id = self._next_msg_id()
        raw = frames.encode(self.device_id, msg_id, command, data)
        if command == frames.RECORD:
            self._unacked[msg_id] = (time.monotonic(), raw)  # until the server answers
        if self._writer is not None:
            self._writer.write(raw)
        return msg_id

    # ---- server → board -------------------------------------------------------------------
    def _on_frame(self, frame: frames.Frame) -> None:
        if frame.device_id != self.device_id:
            return
        if frame.command == frames.START_STOP:
            self._start_stop(frame)
        elif frame.command == frames.REBOOT:
            self._command(f"{frame.msg_id}:reboot", frame, {"type": "reboot"}, b"")
        elif frame.command == frames.QUERY_STATUS:
            self._reply(frame, self._status_data())
        elif frame.command == frames.RECORD:
            self._unacked.pop(frame.msg_id, None)
        # Replies to our other reports need nothing.

    def _start_stop(self, frame: frames.Frame) -> None:
        if len(frame.data) < _START_STOP.size:
            log.warning("%s: short 0x82 %r", self.pile_id, frame.data)
            return
        _mode, _amount, port, action, limit, raw_order, _ = _START_STOP.unpack_from(frame.data)
        order = frames.order_no(raw_order)
        cmd: dict[str, Any] = {"port": port + 1, "session": order}
        if action == 1:
            cmd.update(type="start", max_minutes=limit or None)
        else:
            cmd.update(type="stop")
        self._command(f"{frame.msg_id}:{action}:{order}", frame, cmd,
                      raw_order[:16].ljust(16, b"\x00") + bytes([port]))

    def _command(self, key: str, frame: frames.Frame, cmd: dict[str, Any], tail: bytes) -> None:
        cid = f"ap3000:{key}"
        if cid in self._answers:  # a resend (same msg_id): the same answer again
            self._reply(frame, bytes([self._answers[cid]]) + tail)
            return
        self._pending[cid] = (frame.msg_id, frame.command, tail)
        self.controller.handle_command({**cmd, "id": cid})  # its ack comes out in _flush

    def _reply(self, frame: frames.Frame, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(frames.reply(frame, data))

    # ---- controller → wire ----------------------------------------------------------------
    def _flush(self) -> None:
        """Turn everything the controller emitted into frames (only while connected: events
        wait in the controller's outbox while the link is down)."""
        if self._writer is None:
            return
        status = False
        for event in self.controller.take_batch():
            kind = event["type"]
            if kind in ("heartbeat", "port_status", "fault_cleared"):
                status = True
            elif kind == "fault":
                port = event.get("port")
                for n in [port] if port else list(self.controller.ports):
                    self._fault_code[n] = event["code"]
                status = True
            elif kind == "command_ack":
                self._acked(event)
            elif kind == "session_started":
                self._started_wall[event["session"]] = time.time()
                self._progress(event["port"], event["session"], 0.0, 0.0, {})
            elif kind == "meter":
                self._meter(event)
            elif kind == "session_ended":
                self._record(event)
        if status:
            self._send_status()

    def _acked(self, event: dict[str, Any]) -> None:
        cid = event["command"]
        pending = self._pending.pop(cid, None)
        if pending is None:
            return
        msg_id, command, tail = pending
        result = 0 if event.get("ok") else 1
        self._answers[cid] = result
        if len(self._answers) > SEEN_COMMANDS:
            self._answers.popitem(last=False)
        if self._writer is not None:
            self._writer.write(frames.encode(self.device_id, msg_id, command,
                                             bytes([result]) + tail))

    def _status_data(self) -> bytes:
        c = self.controller
        statuses = bytes(self._status_byte(n) for n in sorted(c.ports))
        return struct.pack("<HB", 2200, len(statuses)) + statuses + bytes(
            [_signal_byte(c.rng.randint(-95, -60)), _temp_byte(25.0)])

    def _status_byte(self, number: int) -> int:
        port = self.controller.ports[number]
        status = self.controller.status_of(port)
        if status == "charging":
            return CHARGING
        if status == "plugged":
            return PLUGGED
        if status == "fault":
            for code in sorted(port.faults | self.controller.pile_faults):
                if code in FAULT_BYTES:
                    return FAULT_BYTES[code]
        # idle, locked (AP3000 has no locker) and faults without a status byte of their own
        return IDLE

    def _send_status(self) -> None:
        self._send(frames.STATUS, self._status_data())

    def _meter(self, event: dict[str, Any]) -> None:
        session = event["session"]
        port = self.controller.ports.get(event["port"])
        s = port.session if port is not None else None
        seconds = 0.0
        if s is not None and s.id == session:
            seconds = self.controller.clock.now() - s.start_v
        power = float(event.get("power_w") or 0.0)
        self._peak_w[session] = max(self._peak_w.get(session, 0.0), power)
        self._progress(event["port"], session, seconds, float(event.get("energy_wh") or 0.0),
                       event)

    def _progress(self, port: int, session: str, seconds: float, energy_wh: float,
                  event: dict[str, Any]) -> None:
        order = _order(session)
        if order is None:
            return
        power = _u16(float(event.get("power_w") or 0.0) * 10)
        self._send(frames.PROGRESS, _PROGRESS.pack(
            port - 1, CHARGING, _u16(seconds), _u16(energy_wh / 10), 1, power, power, power,
            power, order, 0, power, _u16(float(event.get("voltage_v") or 220.0) * 10),
            _u16(float(event.get("current_a") or 0.0) * 1000), _temp_byte(25.0),
            _temp_byte(event.get("temperature_c"))))

    def _record(self, event: dict[str, Any]) -> None:
        session, port = event["session"], event["port"]
        order = _order(session)
        started = self._started_wall.pop(session, None)
        peak = self._peak_w.pop(session, 0.0)
        if order is None:
            return
        reason = event.get("reason", "")
        if reason == "fault":
            stop = FAULT_STOP_REASONS.get(self._fault_code.get(port, ""), SYSTEM_ERROR)
        else:
            stop = STOP_REASONS.get(reason, 1)
        duration = float(event.get("duration_s") or 0)
        ended_at = (started if started is not None else time.time()) + duration
        self._send(frames.RECORD, _RECORD.pack(
            _u16(duration), _u16(peak * 10), _u16(float(event.get("energy_wh") or 0) / 10),
            port - 1, 1, 0, stop, order, 0, min(0xFFFFFFFF, math.floor(ended_at))))


class Ap3000Fleet:
    """Several simulated AP3000 boards on one virtual clock, all against one gateway."""

    def __init__(self, host: str, port: int, boards: list[BoardSpec], *, speed: float = 1.0,
                 heartbeat_s: float = 60.0, meter_every_s: float = 30.0,
                 fault_rate_per_hour: float = 0.0, fault_share: float = 0.0,
                 seed: int | None = None,
                 default_profile: ChargerProfile | None = None) -> None:
        self.clock = VirtualClock(speed)
        settings = SimSettings(heartbeat_s=heartbeat_s, meter_every_s=meter_every_s,
                               fault_rate_per_hour=fault_rate_per_hour,
                               fault_share=fault_share,
                               default_profile=default_profile)
        self.boards: dict[str, Ap3000Board] = {}
        for spec in boards:
            rng = random.Random(f"{seed}:{spec.pile_id}") if seed is not None else random.Random()
            controller = PileController(spec.pile_id, spec.ports, self.clock, settings, rng)
            self.boards[spec.pile_id] = Ap3000Board(controller, spec.device_id, host, port)

    def controller(self, pile_id: str) -> PileController:
        return self.boards[pile_id].controller

    async def start(self) -> None:
        self.clock.restart()
        for board in self.boards.values():
            board.start()
        log.info("simulated AP3000 boards: %d", len(self.boards))

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.boards.values()))

