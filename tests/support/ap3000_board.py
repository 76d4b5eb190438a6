"""An AP3000 ("DNY") pile board on a real TCP socket, for the gateway's integration tests.

Written from the wire contract alone (`../shared/AP3000.md`, and `docs/ap3000.md` for what we
answer): every frame is packed and unpacked here with `struct`, byte by byte, and nothing is
imported from the gateway (`bot/piles/ap3000/`) or anywhere else in the project. That
independence is the point: a framing or scaling bug shared by both ends would otherwise pass.

The board speaks the real units of the wire: voltage 0.1 V, power 0.1 W, energy 0.01 kWh,
current 0.001 A, temperature byte − 65 °C, little-endian, 0-based ports, a NUL-padded 16-byte
order_no. Its methods take *our* port numbers (1-based, as the rider sees them) and put
`port − 1` on the wire; status lists are in wire order (index 0 is our port 1).

    async with Board(host, port, device_id=305419896) as board:
        await board.reply(REGISTER, await board.register())
        cmd = await board.start_stop()          # the next 0x82 the server sent, decoded
        ...

Every 0x82 and 0x87 the server sends is answered at once (`results` chooses the result byte);
0x81 is answered with the board's status report. Replies to the board's own reports are kept by
(command, msg_id), so a test can wait for one, count them, or see that none came.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HEADER = b"DNY"
MAX_LENGTH = 256  # `length` (device id + msg id + command + data) is at most this

# board → server
LOGIN, RECORD, PROGRESS = 0x01, 0x03, 0x06
REGISTER, STATUS, GET_TIME, ALARM = 0x20, 0x21, 0x22, 0x44
REPORTS = frozenset({LOGIN, RECORD, PROGRESS, REGISTER, STATUS, GET_TIME, ALARM})
# server → board
QUERY, START_STOP, REBOOT = 0x81, 0x82, 0x87
COMMANDS = frozenset({QUERY, START_STOP, REBOOT})

# Port status bytes (AP3000.md)
IDLE, CHARGING, PLUGGED, CHARGED, SHORT_CIRCUIT, FLOATING, STORAGE_FULL = 0, 1, 2, 3, 4, 5, 6
METER_STUCK, BREAKER_OPEN, RELAY_STUCK, METER_BROKEN, RELAY_WONT_CLOSE = 7, 8, 9, 0x0A, 0x0B

# Stop reasons of a charge record (0x03)
STOP_FULL, STOP_MANUAL, STOP_UNPLUGGED, STOP_OVERLOAD, STOP_REMOTE = 0, 1, 5, 6, 7
STOP_AMBIENT_HOT, STOP_PORT_HOT, STOP_NO_POWER = 0x0A, 0x0B, 0x0E

DOOR_OPEN = 1  # port alarm (0x44)


# --- bytes ------------------------------------------------------------------------------------


def checksum(body: bytes) -> int:
    """Sum of every byte from the first byte of `length` to the last byte of data, low 16 bits."""
    return sum(body) & 0xFFFF


def encode(device_id: int, msg_id: int, command: int, data: bytes = b"", *,
           bad_checksum: bool = False) -> bytes:
    """One frame: "DNY" | length u16 | device_id u32 | msg_id u16 | command u8 | data | sum u16."""
    body = struct.pack("<HIHB", 4 + 2 + 1 + len(data), device_id, msg_id, command) + data
    total = checksum(body)
    if bad_checksum:
        total = (total + 0x0101) & 0xFFFF  # off by a little: a line error, not a random frame
    return HEADER + body + struct.pack("<H", total)


@dataclass(frozen=True)
class Frame:
    device_id: int
    msg_id: int
    command: int
    data: bytes
    raw: bytes

    def __repr__(self) -> str:
        return (f"Frame(device={self.device_id}, msg_id={self.msg_id}, cmd=0x{self.command:02X}, "
                f"data={self.data.hex(' ')})")


class Deframer:
    """The board's own reading of the server's byte stream: frames may arrive split or several
    per read. Anything that is not a well-formed frame is kept in `junk` / `bad`, so a test can
    assert the server sent none."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.junk = bytearray()  # bytes before a header
        self.bad: list[bytes] = []  # frames with a wrong checksum or an impossible length

    def feed(self, chunk: bytes) -> list[Frame]:
        self.buf += chunk
        out: list[Frame] = []
        while True:
            at = self.buf.find(HEADER)
            if at < 0:
                keep = 2 if self.buf.endswith(b"DN") else 1 if self.buf.endswith(b"D") else 0
                self.junk += self.buf[:len(self.buf) - keep]
                del self.buf[:len(self.buf) - keep]
                return out
            if at:
                self.junk += self.buf[:at]
                del self.buf[:at]
            if len(self.buf) < 5:
                return out
            (length,) = struct.unpack_from("<H", self.buf, 3)
            if length < 7 or length > MAX_LENGTH:
                self.bad.append(bytes(self.buf[:5]))
                del self.buf[:3]
                continue
            end = 5 + length + 2
            if len(self.buf) < end:
                return out
            raw = bytes(self.buf[:end])
            del self.buf[:end]
            (total,) = struct.unpack_from("<H", raw, end - 2)
            if checksum(raw[3:end - 2]) != total:
                self.bad.append(raw)
                continue
            device_id, msg_id, command = struct.unpack_from("<IHB", raw, 5)
            out.append(Frame(device_id, msg_id, command, raw[12:end - 2], raw))


# --- units ------------------------------------------------------------------------------------


def order_bytes(order_no: str) -> bytes:
    raw = order_no.encode("ascii")
    assert len(raw) <= 16, f"order_no {order_no!r} is longer than 16 bytes"
    return raw.ljust(16, b"\x00")


def order_text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("ascii")


def tenths(value: float) -> int:
    """0.1 V, 0.1 W."""
    return _u16(round(value * 10))


def thousandths(value: float) -> int:
    """0.001 A."""
    return _u16(round(value * 1000))


def centi_kwh(energy_wh: float) -> int:
    """0.01 kWh = 10 Wh: the board's energy counter only knows whole steps."""
    steps = round(energy_wh / 10)
    assert steps * 10 == energy_wh, f"{energy_wh} Wh is not a whole number of 0.01 kWh"
    return _u16(steps)


def temp_byte(celsius: float | None) -> int:
    """Temperature byte − 65 °C; 0 means no sensor."""
    if celsius is None:
        return 0
    value = round(celsius) + 65
    assert 1 <= value <= 255, celsius
    return value


def _u16(value: int) -> int:
    assert 0 <= value <= 0xFFFF, value
    return value


@dataclass(frozen=True)
class StartStop:
    """A decoded 0x82: mode u8, amount u32, port u8, action u8, limit u16, order_no 16 B,
    reserved u8 (26 bytes). `port` is the byte on the wire (0-based)."""

    msg_id: int
    mode: int
    amount: int
    port: int
    action: int
    limit: int
    order_no: str
    reserved: int
    frame: Frame

    @classmethod
    def decode(cls, frame: Frame) -> StartStop:
        assert frame.command == START_STOP, frame
        assert len(frame.data) == 26, f"0x82 data is {len(frame.data)} bytes, not 26: {frame}"
        mode, amount, port, action, limit, order, reserved = struct.unpack("<BIBBH16sB",
                                                                           frame.data)
        return cls(frame.msg_id, mode, amount, port, action, limit, order_text(order), reserved,
                   frame)


# --- the board --------------------------------------------------------------------------------


@dataclass
class Link:
    """One TCP connection of the board."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    deframer: Deframer = field(default_factory=Deframer)
    frames: list[Frame] = field(default_factory=list)  # everything the server sent on it
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by_server: bool = False
    task: asyncio.Task[None] | None = None

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Until the server closes this connection (EOF or reset)."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open for {timeout} s; it sent "
                f"{self.frames}") from None


class Board:
    def __init__(self, host: str, port: int, device_id: int, *, ports: int = 10,
                 firmware: int = 100) -> None:
        self.host, self.port, self.device_id = host, port, device_id
        self.ports, self.firmware = ports, firmware
        self.statuses = [IDLE] * ports  # wire order: index 0 is our port 1
        self.results: dict[int, int] = {START_STOP: 0, REBOOT: 0}  # what we answer commands
        self.link: Link | None = None
        self.links: list[Link] = []
        self.replies: dict[tuple[int, int], list[Frame]] = {}  # (command, msg_id) → replies
        self.commands: list[Frame] = []  # 0x81/0x82/0x87 from the server, in order, all links
        self.unexpected: list[Frame] = []  # anything else the server sent
        self.taken = 0  # commands handed to the test by `next_command`
        self._msg_id = 0
        self._changed = asyncio.Event()

    # connection -------------------------------------------------------------------------------

    async def __aenter__(self) -> Board:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self) -> Link:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # small writes go out as they are: a split frame stays split
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(reader, writer)
        link.task = asyncio.create_task(self._read(link))
        self.link = link
        self.links.append(link)
        return link

    async def disconnect(self) -> None:
        """The board's side hangs up (a cellular link that drops)."""
        link, self.link = self.link, None
        if link is None:
            return
        link.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await link.writer.wait_closed()
        if link.task is not None:
            link.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.task

    async def reconnect(self) -> Link:
        await self.disconnect()
        return await self.connect()

    async def wait_closed(self, timeout: float = 10.0) -> None:
        assert self.link is not None
        await self.link.wait_closed(timeout)

    async def _read(self, link: Link) -> None:
        try:
            while True:
                chunk = await link.reader.read(4096)
                if not chunk:
                    break
                for frame in link.deframer.feed(chunk):
                    link.frames.append(frame)
                    await self._received(link, frame)
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        link.closed_by_server = True
        link.closed.set()
        self._changed.set()

    async def _received(self, link: Link, frame: Frame) -> None:
        if frame.command in REPORTS:
            self.replies.setdefault((frame.command, frame.msg_id), []).append(frame)
        elif frame.command in COMMANDS:
            self.commands.append(frame)
            await self._answer(link, frame)
        else:
            self.unexpected.append(frame)

    async def _answer(self, link: Link, frame: Frame) -> None:
        """A command's reply: same command, same msg_id."""
        if frame.command == START_STOP:
            cmd = StartStop.decode(frame)
            data = struct.pack("<B16sB", self.results[START_STOP], order_bytes(cmd.order_no),
                               cmd.port)
        elif frame.command == REBOOT:
            data = struct.pack("<B", self.results[REBOOT])
        else:  # QUERY: as 0x21
            data = self.status_data()
        with contextlib.suppress(ConnectionError, OSError):
            link.writer.write(encode(self.device_id, frame.msg_id, frame.command, data))
            await link.writer.drain()

    # sending ----------------------------------------------------------------------------------

    def next_msg_id(self) -> int:
        self._msg_id = (self._msg_id + 1) & 0xFFFF
        return self._msg_id

    def frame(self, command: int, data: bytes = b"", *, msg_id: int | None = None,
              bad_checksum: bool = False, device_id: int | None = None) -> tuple[int, bytes]:
        """(msg_id, bytes) of a frame, not sent: for split, merged or corrupted writes."""
        mid = self.next_msg_id() if msg_id is None else msg_id
        dev = self.device_id if device_id is None else device_id
        return mid, encode(dev, mid, command, data, bad_checksum=bad_checksum)

    async def write(self, raw: bytes) -> None:
        """Raw bytes in one write (garbage, half a frame, three frames)."""
        assert self.link is not None, "not connected"
        self.link.writer.write(raw)
        await self.link.writer.drain()

    async def write_in_pieces(self, raw: bytes, cuts: Sequence[int]) -> None:
        """`raw` in several writes, cut at these offsets."""
        bounds = [0, *cuts, len(raw)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            await self.write(raw[a:b])

    async def send(self, command: int, data: bytes = b"", *, msg_id: int | None = None,
                   bad_checksum: bool = False) -> int:
        mid, raw = self.frame(command, data, msg_id=msg_id, bad_checksum=bad_checksum)
        await self.write(raw)
        return mid

    # what a board reports ---------------------------------------------------------------------

    def register_data(self, *, type_: int = 0x05, node: int = 0, type_ext: int = 0,
                      work_mode: int = 0, power_fw: int = 100, timing: int = 0,
                      tc_mode: int = 0) -> bytes:
        """type u8, firmware u16, port_count u8, node u8, type_ext u8, work_mode u8,
        power_fw u16, timing u8, tc_mode u8."""
        return struct.pack("<BHBBBBHBB", type_, self.firmware, self.ports, node, type_ext,
                           work_mode, power_fw, timing, tc_mode)

    def login_data(self, *, type_: int = 0x05, voltage_v: float = 220.0, signal: int = 25,
                   temp_c: float | None = 30, node: int = 0, type_ext: int = 0,
                   work_mode: int = 0) -> bytes:
        """Old boards' 0x01: type u8, firmware u16, voltage u16, n u8, n × status u8,
        n × power u16, n × peak_power u16, node u8, signal u8, type_ext u8, temp u8,
        work_mode u8."""
        n = len(self.statuses)
        return (struct.pack("<BHHB", type_, self.firmware, tenths(voltage_v), n)
                + bytes(self.statuses) + struct.pack(f"<{n}H", *[0] * n)
                + struct.pack(f"<{n}H", *[0] * n)
                + struct.pack("<BBBBB", node, signal, type_ext, temp_byte(temp_c), work_mode))

    def status_data(self, *, voltage_v: float = 220.0, signal: int = 25,
                    temp_c: float | None = 30) -> bytes:
        """voltage u16, n u8, n × status u8, signal u8 (0–31), temp u8."""
        return (struct.pack("<HB", tenths(voltage_v), len(self.statuses))
                + bytes(self.statuses) + struct.pack("<BB", signal, temp_byte(temp_c)))

    @staticmethod
    def progress_data(port: int, order_no: str, *, seconds: int, energy_wh: float,
                      power_w: float, voltage_v: float = 220.0, current_a: float | None = None,
                      port_temp_c: float | None = 35, temp_c: float | None = 30,
                      status: int = CHARGING, start_type: int = 1,
                      peak_w: float | None = None) -> bytes:
        """port u8, status u8, seconds u16, energy u16, start_type u8, power u16,
        period_max u16, period_min u16, period_avg u16, order_no 16 B, timed_energy u16,
        peak_power u16, voltage u16, current u16, temp u8, port_temp u8."""
        current = power_w / voltage_v if current_a is None else current_a
        power = tenths(power_w)
        return struct.pack(
            "<BBHHBHHHH16sHHHHBB", port - 1, status, _u16(seconds), centi_kwh(energy_wh),
            start_type, power, power, power, power, order_bytes(order_no), 0,
            tenths(power_w if peak_w is None else peak_w), tenths(voltage_v),
            thousandths(current), temp_byte(temp_c), temp_byte(port_temp_c))

    @staticmethod
    def record_data(port: int, order_no: str, *, seconds: int, energy_wh: float,
                    peak_w: float, stop_reason: int, ended_at: int, start_type: int = 1,
                    card_or_code: int = 0, second_peak_w: float = 0) -> bytes:
        """seconds u16, peak_power u16, energy u16, port u8, start_type u8, card_or_code u32,
        stop_reason u8, order_no 16 B, second_peak u16, ended_at u32 (unix)."""
        return struct.pack(
            "<HHHBBIB16sHI", _u16(seconds), tenths(peak_w), centi_kwh(energy_wh), port - 1,
            start_type, card_or_code, stop_reason, order_bytes(order_no),
            tenths(second_peak_w), ended_at)

    @staticmethod
    def alarm_data(port: int, alarm: int) -> bytes:
        """port u8, alarm u8, … (one more byte, as boards send)."""
        return struct.pack("<BBB", port - 1, alarm, 0)

    async def register(self, **kw: int) -> int:
        return await self.send(REGISTER, self.register_data(**kw))

    async def login(self, statuses: Sequence[int] | None = None, **kw: Any) -> int:
        if statuses is not None:
            assert len(statuses) == self.ports
            self.statuses = list(statuses)
        return await self.send(LOGIN, self.login_data(**kw))

    async def status(self, statuses: Sequence[int] | None = None, **kw: Any) -> int:
        if statuses is not None:
            assert len(statuses) == self.ports
            self.statuses = list(statuses)
        return await self.send(STATUS, self.status_data(**kw))

    def set_port(self, port: int, status: int) -> None:
        self.statuses[port - 1] = status

    async def get_time(self) -> int:
        return await self.send(GET_TIME)

    async def progress(self, port: int, order_no: str, **kw: Any) -> int:
        return await self.send(PROGRESS, self.progress_data(port, order_no, **kw))

    async def record(self, port: int, order_no: str, *, msg_id: int | None = None,
                     **kw: Any) -> int:
        return await self.send(RECORD, self.record_data(port, order_no, **kw),
                               msg_id=msg_id)

    async def alarm(self, port: int, alarm: int = DOOR_OPEN) -> int:
        return await self.send(ALARM, self.alarm_data(port, alarm))

    # waiting for the server -------------------------------------------------------------------

    async def _until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{what}: nothing in {timeout} s; the server sent "
                                     f"{[f for link in self.links for f in link.frames]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def replies_to(self, command: int, msg_id: int) -> list[Frame]:
        return self.replies.get((command, msg_id), [])

    async def reply(self, command: int, msg_id: int, *, count: int = 1,
                    timeout: float = 10.0) -> Frame:
        """The server's reply to our frame (the `count`-th one, for a frame sent again)."""
        await self._until(lambda: len(self.replies_to(command, msg_id)) >= count,
                          f"reply #{count} to 0x{command:02X} msg_id {msg_id}", timeout)
        return self.replies_to(command, msg_id)[count - 1]

    async def next_command(self, command: int | None = None, *,
                           timeout: float = 10.0) -> Frame:
        """The next command from the server not yet handed to the test (of `command`, if
        given; others before it are skipped)."""
        def found() -> bool:
            while self.taken < len(self.commands):
                if command is None or self.commands[self.taken].command == command:
                    return True
                self.taken += 1
            return False

        await self._until(found, f"a command 0x{command or 0:02X} from the server", timeout)
        self.taken += 1
        return self.commands[self.taken - 1]

    async def start_stop(self, *, timeout: float = 10.0) -> StartStop:
        return StartStop.decode(await self.next_command(START_STOP, timeout=timeout))

    def server_junk(self) -> tuple[bytes, list[bytes], list[Frame]]:
        """Bytes the server sent that were not clean frames for us: junk, bad frames, frames
        with a command we do not know."""
        junk = b"".join(bytes(link.deframer.junk) for link in self.links)
        bad = [b for link in self.links for b in link.deframer.bad]
        return junk, bad, self.unexpected


def unix_now() -> int:
    return int(time.time())
