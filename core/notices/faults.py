"""Notices about broken ports and their repair: to technicians, supervisors and the riders
who met the fault."""

from __future__ import annotations

from pydantic import Field

from core.notices.base import Notice, Stamp


class WorkOrderNotice(Notice):
    """Everything a technician's message shows, fixed when the order is sent."""

    kind = "work_order"
    order_id: int
    order_kind: str = Field(alias="kind")  # fault | preventive
    where: str
    pile: str
    port: int
    causes: str  # comma-separated, as on the work order
    severity: str
    site: str
    address: str
    lat: float
    lon: float
    planned_for: Stamp | None = None
    ack_due_at: Stamp | None = None
    tz: str = "Asia/Shanghai"  # times are shown in the site's zone, whatever the device says


class WorkOrderEscalatedNotice(WorkOrderNotice):
    """The 30-minute promise broken: the order card for a supervisor, and what it cost."""

    kind = "work_order_escalated"
    coupons: int  # riders who received a coupon
    minutes: int
    technician: str = ""


class WorkOrderClearedNotice(Notice):
    kind = "work_order_cleared"
    order_id: int
    where: str


class RepairDoneNotice(Notice):
    kind = "repair_done"
    order_id: int
    where: str
    technician: str = ""


class PromiseCouponNotice(Notice):
    kind = "promise_coupon"
    order_id: int
    where: str
    amount_fen: int
    minutes: int
