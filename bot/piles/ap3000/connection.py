"""One board's TCP connection and what the gateway remembers about boards between them."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.piles.ap3000 import frames, mapping
from bot.piles.ap3000.frames import Frame

WRITE_TIMEOUT_S = 30.0
# Sent bytes a board has not acknowledged for this long mean the board is gone (Linux): a
# connection that died silently is closed instead of swallowing commands until the idle timeout.
TCP_USER_TIMEOUT_MS = 60_000
RECENT_FRAMES = 16  # per board: first-arrival times of its last frames, so a resend is a duplicate


@dataclass
class Stats:
    """Counters since start (per worker): `/metrics` shows them as chargebot_ap3000_*."""

    connections: int = 0  # accepted (allow_from passed)
    frames: int = 0  # whole frames with a good checksum
    bad_checksums: int = 0
    garbage_bytes: int = 0
    unknown_devices: int = 0  # connections closed for a device id nobody registered
    replaced: int = 0  # connections closed because the same board connected again
    refused: int = 0  # addresses outside allow_from
    malformed: int = 0  # frames whose data is too short for their command (answered, dropped)
    unhandled: int = 0  # frames of commands we do not serve (not answered)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Memory:
    """What outlives one connection of a board (a reconnect lands on it again)."""

    # (command, msg id) → (data, first arrival in ms): a resent frame gets its first time back.
    recent: OrderedDict[tuple[int, int], tuple[bytes, int]] = field(default_factory=OrderedDict)
    # (command byte, msg id) of a command we sent → (our command id, monotonic time sent)
    pending: dict[tuple[int, int], tuple[str, float]] = field(default_factory=dict)
    seen: float = field(default_factory=time.monotonic)

    def key(self, frame: Frame, now: datetime) -> tuple[str, datetime]:
        """The frame's part of its events' ids, and their time: both the first arrival's."""
        k = (frame.command, frame.msg_id)
        got = self.recent.get(k)
        if got is not None and got[0] == frame.data:
            self.recent.move_to_end(k)
            ms = got[1]
        else:
            ms = int(now.timestamp() * 1000)
            self.recent[k] = (frame.data, ms)
            if len(self.recent) > RECENT_FRAMES:
                self.recent.popitem(last=False)
        crc = zlib.crc32(frame.data)
        return (f"{frame.command:02x}.{frame.msg_id}.{ms}.{crc:08x}",
                datetime.fromtimestamp(ms / 1000, UTC))


@dataclass
class Plan:
    """What one frame asks of us: events to store, then (only then) a reply."""

    frame: Frame
    events: list[mapping.Event]
    reply: bytes | None
    statuses: tuple[int, ...] | None = None  # the port statuses once the events are stored
    acked: tuple[int, int] | None = None  # the pending command this frame answers


class Connection:
    __slots__ = ("reader", "writer", "peer", "deframer", "device_id", "pile_id", "statuses",
                 "memory", "opened")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str) -> None:
        self.reader, self.writer, self.peer = reader, writer, peer
        self.deframer = frames.Deframer()
        self.device_id: int | None = None
        self.pile_id: str = ""
        self.statuses: tuple[int, ...] | None = None  # as last stored on this connection
        self.memory = Memory()
        self.opened = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        if self.writer.is_closing():
            return
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await self.writer.drain()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def peer_ip(peer: Any) -> str:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer or "")
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ip)
    return host


def tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
