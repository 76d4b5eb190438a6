"""Charge sessions and their meter samples: the tables every service that reads a charge imports."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import AutoString, Field, SQLModel

from core.db import utcnow


class ChargeState(StrEnum):
    """requested → started → ended (billed, still due) → settled (paid); a start the pile
    rejected or never confirmed is failed, and a dispute can refund an ended or settled one."""

    requested = "requested"
    started = "started"
    ended = "ended"
    settled = "settled"
    refunded = "refunded"
    failed = "failed"


OPEN_STATES = (ChargeState.requested, ChargeState.started)


EndReason = Literal["full", "user", "unplugged", "no_load", "fault", "power_loss", "limit"]
END_REASONS: tuple[EndReason, ...] = get_args(EndReason)


class Charge(SQLModel, table=True):
    __tablename__ = "charges"
    __table_args__ = (
        # The database, not the code, guarantees one open charge per port: concurrent starts on
        # both SQLite and PostgreSQL end with exactly one row here.
        Index(
            "uq_charges_open_port", "port_id", unique=True,
            sqlite_where=text("state IN ('requested', 'started')"),
            postgresql_where=text("state IN ('requested', 'started')"),
        ),
        UniqueConstraint("pile_id", "session_ref"),
        Index("ix_charges_rider_state", "rider_id", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id")
    port_id: int = Field(foreign_key="ports.id")
    pile_id: str = Field(foreign_key="piles.id")
    port_number: int
    port_code: str
    site_id: str
    session_ref: str | None = Field(default=None, max_length=40)
    state: ChargeState = Field(default=ChargeState.requested, sa_type=AutoString)  # text, as before
    tariff: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    requested_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None  # the pile's clock
    ended_at: datetime | None = None
    end_reason: str | None = None
    failure: str | None = None
    duration_s: int | None = None
    energy_wh: float | None = None  # the pile's own counter, at its resolution (0.1 Wh)
    band_w: int | None = None
    bill: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    amount_fen: int = 0  # what the rider owes after plan, coupons and automatic refunds
    paid_fen: int = 0
    refunded_fen: int = 0
    payer_rider_id: int | None = None  # the family owner when a family wallet pays
    settled_at: datetime | None = None
    last_power_w: float | None = None
    last_energy_wh: float | None = None
    last_meter_at: datetime | None = None
    # Power fell from charging to nothing at this pile time (and we saw it then): without a
    # session_ended within the grace period the charge was interrupted (core.faults).
    power_dropped_at: datetime | None = None
    power_dropped_seen_at: datetime | None = Field(default=None, index=True)
    # Terminal heating per 100 W over the charge: the wear trend predictive maintenance reads.
    heat_per_100w: float | None = None


class MeterSample(SQLModel, table=True):
    __tablename__ = "meter_samples"
    __table_args__ = (Index("ix_meter_samples_charge_ts", "charge_id", "ts"),)

    id: int | None = Field(default=None, primary_key=True)
    charge_id: int = Field(foreign_key="charges.id")
    ts: datetime
    power_w: float
    energy_wh: float
    current_a: float | None = None
    temperature_c: float | None = None
