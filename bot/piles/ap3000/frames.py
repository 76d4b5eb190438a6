"""The AP3000 ("DNY") wire (../shared/AP3000.md): frames on a byte stream, and the layouts of the
reports a board sends. Pure: bytes in, values out; no sockets, no clock, no database.

    "DNY" | length u16 | device_id u32 | msg_id u16 | command u8 | data | checksum u16

Every integer is little-endian; `length` counts device id, msg id, command and data; the
checksum is the low 16 bits of the sum of every byte from `length` to the end of `data`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = b"DNY"
MAX_LENGTH = 256  # `length` above this is no frame: the header was garbage
MIN_LENGTH = 7  # device id (4) + msg id (2) + command (1), no data
_HEAD = struct.Struct("<HIHB")  # length, device id, msg id, command (after "DNY")
_SUM = struct.Struct("<H")
ALL_PORTS = 0xFF

# Board → server
REGISTER, LOGIN, STATUS, GET_TIME, PROGRESS, RECORD, ALARM = (
    0x20, 0x01, 0x21, 0x22, 0x06, 0x03, 0x44)
# Server → board (the board answers with the same command byte)
START_STOP, QUERY_STATUS, REBOOT = 0x82, 0x81, 0x87


class Malformed(ValueError):
    """A frame whose data is too short for its command's layout."""


@dataclass(frozen=True, slots=True)
class Frame:
    device_id: int
    msg_id: int
    command: int
    data: bytes


def checksum(body: bytes | bytearray | memoryview) -> int:
    return sum(body) & 0xFFFF


def encode(device_id: int, msg_id: int, command: int, data: bytes = b"") -> bytes:
    length = 7 + len(data)
    if length > MAX_LENGTH:
        raise ValueError(f"frame data of {len(data)} bytes is over the {MAX_LENGTH} limit")
    body = _HEAD.pack(length, device_id, msg_id, command) + data
    return HEADER + body + _SUM.pack(checksum(body))


def reply(frame: Frame, data: bytes = b"\x00") -> bytes:
    """The answer to a board's frame: same device, msg id and command; result 0x00 = ok."""
    return encode(frame.device_id, frame.msg_id, frame.command, data)


class Deframer:
    """Feed it the bytes of one connection as they arrive; it returns the whole frames.

    Half a frame waits for the rest; bytes before a header are skipped and counted; a frame whose
    checksum is wrong is dropped and counted. A header whose length is impossible, or one that
    waits for bytes while a complete, valid frame already follows it, is garbage (a false "DNY"
    must not hold the real frame behind it hostage until more bytes come).
    """

    __slots__ = ("_buf", "garbage_bytes", "bad_checksums", "frames")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage_bytes = 0
        self.bad_checksums = 0
        self.frames = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        while buf:
            start = buf.find(HEADER)
            if start < 0:
                self._skip_keeping_partial_header()
                break
            if start:
                self._skip(start)
            if len(buf) < 5:
                break
            (length,) = _SUM.unpack_from(buf, 3)
            if not MIN_LENGTH <= length <= MAX_LENGTH:
                self._skip(1)
                continue
            total = 3 + 2 + length + 2
            if len(buf) < total:
                later = self._later_frame()
                if later is None:
                    break
                self._skip(later)
                continue
            end = 5 + length
            if checksum(memoryview(buf)[3:end]) != _SUM.unpack_from(buf, end)[0]:
                self.bad_checksums += 1
                # A header inside the dropped bytes may be a real frame the bad one overlapped.
                inner = buf.find(HEADER, 3, total)
                del buf[:inner if inner > 0 else total]
                continue
            _, device_id, msg_id, command = _HEAD.unpack_from(buf, 3)
            out.append(Frame(device_id, msg_id, command, bytes(buf[12:end])))
            del buf[:total]
        self.frames += len(out)
        return out

    def _skip(self, n: int) -> None:
        self.garbage_bytes += n
        del self._buf[:n]

    def _skip_keeping_partial_header(self) -> None:
        buf = self._buf
        keep = 2 if buf.endswith(b"DN") else 1 if buf.endswith(b"D") else 0
        self._skip(len(buf) - keep)

    def _later_frame(self) -> int | None:
        """Where a complete frame with a good checksum starts after the current header, if any."""
        buf = self._buf
        at = buf.find(HEADER, 1)
        while at > 0 and at + 5 <= len(buf):
            (length,) = _SUM.unpack_from(buf, at + 3)
            end = at + 5 + length
            if (MIN_LENGTH <= length <= MAX_LENGTH and end + 2 <= len(buf)
                    and checksum(memoryview(buf)[at + 3:end]) == _SUM.unpack_from(buf, end)[0]):
                return at
            at = buf.find(HEADER, at + 1)
        return None


# --- what the board reports ----------------------------------------------------------------


def order_no(raw: bytes) -> str:
    """An order number off the wire: ASCII up to the first NUL (the padding)."""
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace")


def pack_order_no(text: str) -> bytes:
    """Our session reference as the board's 16-byte NUL-padded order number."""
    raw = text.encode("ascii")
    if len(raw) > 16 or b"\x00" in raw:
        raise ValueError(f"order number {text!r} is not ASCII of at most 16 bytes")
    return raw.ljust(16, b"\x00")


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise Malformed(f"{what}: {len(data)} bytes of data, at least {n} expected")


@dataclass(frozen=True, slots=True)
class Register:  # 0x20
    board_type: int
    firmware: int
    port_count: int | None


def decode_register(data: bytes) -> Register:
    _need(data, 3, "register")
    board_type, firmware = struct.unpack_from("<BH", data)
    return Register(board_type, firmware, data[3] if len(data) > 3 else None)


@dataclass(frozen=True, slots=True)
class Status:  # 0x21 (and the board's answer to 0x81)
    voltage: int  # 0.1 V
    statuses: tuple[int, ...]  # index 0 = wire port 0 = our port 1
    signal: int | None  # 0-31
    temp: int | None  # byte − 65 °C, 0 = no sensor


def decode_status(data: bytes) -> Status:
    _need(data, 3, "status report")
    voltage, n = struct.unpack_from("<HB", data)
    _need(data, 3 + n, "status report")
    statuses = tuple(data[3:3 + n])
    tail = data[3 + n:]
    return Status(voltage, statuses, tail[0] if len(tail) > 0 else None,
                  tail[1] if len(tail) > 1 else None)


@dataclass(frozen=True, slots=True)
class Login:  # 0x01
    board_type: int
    firmware: int
    voltage: int
    statuses: tuple[int, ...]
    signal: int | None
    temp: int | None


def decode_login(data: bytes) -> Login:
    _need(data, 6, "login")
    board_type, firmware, voltage, n = struct.unpack_from("<BHHB", data)
    _need(data, 6 + 5 * n, "login")
    statuses = tuple(data[6:6 + n])
    # n × power u16 and n × peak power u16 follow the statuses; then node, signal, type_ext, temp
    tail = data[6 + 5 * n:]
    return Login(board_type, firmware, voltage, statuses,
                 tail[1] if len(tail) > 1 else None, tail[3] if len(tail) > 3 else None)


_PROGRESS = struct.Struct("<BBHHBHHHH16s")
_PROGRESS_TAIL = struct.Struct("<HHHHBB")


@dataclass(frozen=True, slots=True)
class Progress:  # 0x06
    port: int  # on the wire: 0-based
    status: int
    seconds: int
    energy: int  # 0.01 kWh, cumulative
    start_type: int
    power: int  # 0.1 W
    order_no: str
    voltage: int | None  # 0.1 V
    current: int | None  # 0.001 A
    port_temp: int | None  # byte − 65 °C, 0 = no sensor


def decode_progress(data: bytes) -> Progress:
    _need(data, _PROGRESS.size, "charging progress")
    port, status, seconds, energy, start_type, power, _max, _min, _avg, order = (
        _PROGRESS.unpack_from(data))
    voltage = current = port_temp = None
    if len(data) >= _PROGRESS.size + _PROGRESS_TAIL.size:
        _timed, _peak, voltage, current, _temp, port_temp = _PROGRESS_TAIL.unpack_from(
            data, _PROGRESS.size)
    return Progress(port, status, seconds, energy, start_type, power, order_no(order),
                    voltage, current, port_temp)


_RECORD = struct.Struct("<HHHBBIB16sHI")


@dataclass(frozen=True, slots=True)
class Record:  # 0x03
    seconds: int
    peak_power: int  # 0.1 W
    energy: int  # 0.01 kWh
    port: int  # 0-based
    start_type: int
    stop_reason: int
    order_no: str
    ended_at: int  # unix seconds, the board's clock


def decode_record(data: bytes) -> Record:
    _need(data, _RECORD.size, "charge record")
    seconds, peak, energy, port, start_type, _card, reason, order, _peak2, ended_at = (
        _RECORD.unpack_from(data))
    return Record(seconds, peak, energy, port, start_type, reason, order_no(order), ended_at)


@dataclass(frozen=True, slots=True)
class Alarm:  # 0x44
    port: int
    alarm: int


def decode_alarm(data: bytes) -> Alarm:
    _need(data, 2, "port alarm")
    return Alarm(data[0], data[1])


def decode_result(data: bytes) -> int:
    """The result byte of the board's answer to our command (0x00 = ok)."""
    _need(data, 1, "command reply")
    return data[0]
