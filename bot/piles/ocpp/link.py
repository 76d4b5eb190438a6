"""One charge point's connection: the WebSocket as the `ocpp` package wants it, and the calls
waiting to go to it."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bot.piles.ocpp.point import CentralPoint


class Closed(Exception):
    """The WebSocket is gone: the `ocpp` package's receive loop ends with this."""


class Socket:
    """The connection object the `ocpp` package wants (`recv()`, `send()`) over aiohttp's
    WebSocketResponse. OCPP-J is text frames; binary ones are ignored."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def recv(self) -> str:
        while True:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.TEXT:
                return str(msg.data)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                raise Closed()

    async def send(self, text: str) -> None:
        if self.ws.closed:
            raise Closed()
        try:
            await self.ws.send_str(text)
        except ConnectionError as exc:
            raise Closed() from exc


@dataclass
class Connection:
    pile_id: str
    cp_id: str
    ws: web.WebSocketResponse
    point: CentralPoint
    jobs: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    queued: set[str] = field(default_factory=set)  # command ids waiting or in flight
    inoperative: set[int] = field(default_factory=set)  # connectors we made Inoperative
    availability: dict[int, bool] = field(default_factory=dict)  # changes waiting or in flight

    def command(self, cmd: dict[str, Any]) -> None:
        if cmd["id"] not in self.queued:
            self.queued.add(cmd["id"])
            self.jobs.put_nowait(("command", cmd))

    def make_available(self, connector: int, operative: bool) -> None:
        if self.availability.get(connector) is not operative:
            self.availability[connector] = operative
            self.jobs.put_nowait(("availability", (connector, operative)))


def basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None
