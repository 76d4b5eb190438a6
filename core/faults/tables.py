"""Fault and work-order tables: what services of faults, support, engagement and billing read."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, String, UniqueConstraint, text
from sqlmodel import AutoString, Field, SQLModel

from core.db import utcnow
from core.piles.tables import port_code


class Fault(SQLModel, table=True):
    __tablename__ = "faults"
    __table_args__ = (
        Index("uq_faults_active", "pile_id", "port", "cause", unique=True,
              sqlite_where=text("resolved_at IS NULL"),
              postgresql_where=text("resolved_at IS NULL")),
        Index("ix_faults_pile_opened", "pile_id", "opened_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pile_id: str = Field(foreign_key="piles.id")
    port: int = 0  # 0: the whole pile
    site_id: str = Field(max_length=32)
    cause: str = Field(max_length=40)
    source: str = Field(default="pile", max_length=8)  # pile | detected
    severity: str = Field(default="warning", max_length=8)
    detail: str = Field(default="", sa_column=Column(String(200), nullable=False, default=""))
    opened_at: datetime  # the pile's clock: when the condition began
    detected_at: datetime = Field(default_factory=utcnow)  # ours
    last_seen_at: datetime | None = None
    occurrences: int = 1
    cleared_at: datetime | None = None  # the pile says the condition is gone
    resolved_at: datetime | None = None  # closed (technician, or self-clearing)
    work_order_id: int | None = Field(default=None, foreign_key="work_orders.id", index=True)


class WorkOrderState(StrEnum):
    """open → acknowledged → arrived → resolved (the technician's verdict); an order nobody has
    arrived at yet is cleared instead when the pile clears its self-clearing fault."""

    open = "open"
    acknowledged = "acknowledged"
    arrived = "arrived"
    resolved = "resolved"
    cleared = "cleared"


ACTIVE = (WorkOrderState.open, WorkOrderState.acknowledged, WorkOrderState.arrived)


KINDS = ("repair", "preventive")


class WorkOrder(SQLModel, table=True):
    __tablename__ = "work_orders"
    __table_args__ = (
        # One active order per kind and place: a second fault there joins the first order.
        Index("uq_work_orders_active", "pile_id", "port", "kind", unique=True,
              sqlite_where=text("state IN ('open', 'acknowledged', 'arrived')"),
              postgresql_where=text("state IN ('open', 'acknowledged', 'arrived')")),
        Index("ix_work_orders_state_due", "state", "ack_due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(default="repair", max_length=16)
    pile_id: str = Field(foreign_key="piles.id", index=True)
    port: int = 0  # 0: the whole pile
    site_id: str = Field(max_length=32)
    state: WorkOrderState = Field(default=WorkOrderState.open, sa_type=AutoString(16))
    severity: str = Field(default="warning", max_length=16)
    causes: str = ""  # fault codes, comma-separated, for the technician's message
    out_of_service: bool = False
    technician_id: int | None = Field(default=None, foreign_key="riders.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    ack_due_at: datetime | None = None
    acknowledged_at: datetime | None = None
    arrived_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: int | None = None
    escalated_at: datetime | None = None
    note: str = ""
    photo: str | None = None  # the platform's file reference (Telegram file_id, WeChat media)
    planned_for: datetime | None = None  # preventive: when to visit
    predicted_failure_at: datetime | None = None

    @property
    def where(self) -> str:
        return port_code(self.pile_id, self.port) if self.port else self.pile_id


class WorkOrderRider(SQLModel, table=True):
    """A rider a fault hit (their charge stopped) or who reported it: owed news and a promise."""

    __tablename__ = "work_order_riders"
    __table_args__ = (UniqueConstraint("work_order_id", "rider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    work_order_id: int = Field(foreign_key="work_orders.id", index=True)
    rider_id: int = Field(foreign_key="riders.id")
    relation: str = Field(default="hit", max_length=16)  # hit | reported
    charge_id: int | None = None


class TechnicianRating(SQLModel, table=True):
    __tablename__ = "technician_ratings"
    __table_args__ = (UniqueConstraint("work_order_id", "rider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    work_order_id: int = Field(foreign_key="work_orders.id")
    rider_id: int = Field(foreign_key="riders.id")
    technician_id: int = Field(foreign_key="riders.id", index=True)
    stars: int
    created_at: datetime = Field(default_factory=utcnow)
