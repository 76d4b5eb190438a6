"""Every table of the piles package: sites, piles, ports, the commands we queue for them and
the events they send."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, String, Text, UniqueConstraint
from sqlmodel import AutoString, Field, SQLModel

from core.db import utcnow


class PortStatusValue(StrEnum):
    """A port's status as its pile last reported it (the `port_status` event): idle, plugged
    (a cable in, not charging), charging, full, fault, offline."""

    idle = "idle"
    plugged = "plugged"
    charging = "charging"
    full = "full"
    fault = "fault"
    offline = "offline"


# The statuses a pile may report, as plain text (the wire format validates against the enum).
PORT_STATUSES: tuple[str, ...] = tuple(s.value for s in PortStatusValue)


PORT_CODE = re.compile(r"^(P\d{4,})-(\d{2})$")


class Site(SQLModel, table=True):
    __tablename__ = "sites"

    id: str = Field(primary_key=True, max_length=32)
    name: str
    address: str = ""
    lat: float
    lon: float
    kind: str = "community"  # community | mall | courier | office | van | temporary
    tariff: str = "standard"
    # A temporary site serves between these times; a van follows `timetable` (core.services).
    active_from: datetime | None = None
    active_until: datetime | None = None
    timetable: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    tool_kits: int = 0  # tool kits riders can borrow here


class PileProtocol(StrEnum):
    """What a pile speaks: our JSON events (HTTP webhook or MQTT), an AP3000 board over TCP, or
    OCPP 1.6J over a WebSocket (DESIGN §6)."""

    json = "json"
    ap3000 = "ap3000"
    ocpp16 = "ocpp16"


class Pile(SQLModel, table=True):
    __tablename__ = "piles"
    __table_args__ = (
        Index("ix_piles_lat_lon", "lat", "lon"),
        # The id the pile gives itself on its wire (an AP3000 device id, an OCPP charge point
        # id) names one pile per protocol.
        Index("uq_piles_protocol_wire_id", "protocol", "wire_id", unique=True),
    )

    id: str = Field(primary_key=True, max_length=32)
    site_id: str = Field(foreign_key="sites.id", index=True)
    model: str = "generic-10"
    # The HMAC key must be readable to verify signatures; it is never logged or shown again.
    secret: str = Field(sa_column=Column(String(128), nullable=False))
    ports: int
    lat: float
    lon: float
    online: bool = False
    maintenance: bool = False
    # Out of service by schedule (a temporary site outside its dates, a van between stops).
    in_service: bool = True
    lockers: bool = False  # a charging cabinet: each port has a door the controller unlocks
    last_seen_at: datetime | None = None
    firmware: str | None = None
    signal_dbm: float | None = None
    temperature_c: float | None = None
    protocol: PileProtocol = Field(default=PileProtocol.json, sa_type=AutoString(8))
    wire_id: str | None = Field(default=None, max_length=40)


class Port(SQLModel, table=True):
    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("pile_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    pile_id: str = Field(foreign_key="piles.id", index=True)
    number: int
    code: str = Field(unique=True, max_length=40)
    status: PortStatusValue = Field(default=PortStatusValue.idle, sa_type=AutoString)  # text
    status_at: datetime | None = None
    maintenance: bool = False


def port_code(pile_id: str, number: int) -> str:
    return f"{pile_id}-{number:02d}"


COMMAND_TYPES = ("start", "stop", "lock", "unlock", "reboot")


class CommandState(StrEnum):
    """queued → sent → acked | failed | expired (a resend keeps it `sent`)"""

    queued = "queued"
    sent = "sent"
    acked = "acked"
    failed = "failed"
    expired = "expired"


class PileCommand(SQLModel, table=True):
    __tablename__ = "pile_commands"
    __table_args__ = (Index("ix_pile_commands_pending", "pile_id", "state"),)

    id: int | None = Field(default=None, primary_key=True)
    pile_id: str = Field(foreign_key="piles.id")
    type: str = Field(max_length=16)
    port: int | None = None
    charge_id: int | None = Field(default=None, index=True)
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: CommandState = Field(default=CommandState.queued, sa_type=AutoString)  # text
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    acked_at: datetime | None = None
    error: str | None = None

    @property
    def public_id(self) -> str:
        return f"c{self.id}"

    def wire(self) -> dict[str, Any]:
        return {"id": self.public_id, "type": self.type, "port": self.port, **self.args}


class PileEvent(SQLModel, table=True):
    __tablename__ = "pile_events"
    __table_args__ = (Index("uq_pile_events_pile_event", "pile_id", "event_id", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    pile_id: str = Field(max_length=32)
    event_id: str = Field(sa_column=Column(String(80), nullable=False))
    type: str = Field(max_length=24)
    ts: datetime
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime


class RejectedEvent(SQLModel, table=True):
    """An event a pile sent that we could not apply, kept for operators with the reason.

    The rest of its batch was applied (DESIGN §3): a pile that resends a refused batch forever
    would go dark and lose every bill behind it. A resend of the same bad event is stored once.
    """

    __tablename__ = "rejected_events"
    __table_args__ = (
        Index("uq_rejected_events_pile_digest", "pile_id", "digest", unique=True),
        Index("ix_rejected_events_received", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pile_id: str = Field(max_length=32, index=True)
    event_id: str | None = Field(default=None, max_length=81)
    position: int  # its index in the batch it came in
    field: str = Field(max_length=200)
    error: str = Field(max_length=500)
    # The event as received, re-serialised as ASCII JSON text: NaN and ±Infinity stay readable
    # (no JSON column takes them) and so do NUL and lone surrogates (escaped).
    raw: str = Field(sa_column=Column(Text, nullable=False))
    digest: str = Field(max_length=64)
    received_at: datetime = Field(default_factory=utcnow)
