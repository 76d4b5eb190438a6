"""Support tickets and their messages, read by questions, limits and reports."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, String, text
from sqlmodel import AutoString, Field, SQLModel

from core.db import utcnow


class TicketState(StrEnum):
    """open → assigned → closed"""

    open = "open"
    assigned = "assigned"
    closed = "closed"


class Ticket(SQLModel, table=True):
    __tablename__ = "tickets"
    __table_args__ = (
        # One open ticket per rider: their next messages have one obvious home.
        Index("uq_tickets_open_rider", "rider_id", unique=True,
              sqlite_where=text("state IN ('open', 'assigned')"),
              postgresql_where=text("state IN ('open', 'assigned')")),
        Index("ix_tickets_state_priority", "state", "priority"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id")
    platform: str = Field(max_length=16)
    kind: str = Field(default="report", max_length=16)  # report | question | emergency
    priority: str = Field(default="normal", max_length=16)  # normal | emergency
    problem: str | None = Field(default=None, max_length=16)
    pile_id: str | None = Field(default=None, max_length=32)
    port: int | None = None
    charge_id: int | None = None
    state: TicketState = Field(default=TicketState.open, sa_type=AutoString(16))
    assignee_id: int | None = Field(default=None, foreign_key="riders.id")
    created_at: datetime = Field(default_factory=utcnow)
    taken_at: datetime | None = None
    escalated_at: datetime | None = None
    closed_at: datetime | None = None
    resolution: str = ""
    verified_at: datetime | None = None
    coupon_id: int | None = None
    work_order_id: int | None = None
    rating: int | None = None
    photo: str | None = None  # the first photo's stored path, for the desk and work orders
    # An emergency reported while another one about the same site was paged: staff were paged
    # once (for that ticket), this one is counted in its follow-up instead of paging again.
    page_of: int | None = None


class TicketMessage(SQLModel, table=True):
    __tablename__ = "ticket_messages"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="tickets.id", index=True)
    author: str = Field(max_length=8)  # rider | staff
    author_id: int = Field(foreign_key="riders.id")
    text: str = Field(default="", sa_column=Column(String(2000), nullable=False, default=""))
    photo: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
