"""Staff: technicians and supervisors are riders with roles, assigned to sites, with duty hours."""

from __future__ import annotations

import re
from datetime import datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy import Column, String, UniqueConstraint, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.db import utcnow

ROLES = ("technician", "supervisor", "agent")  # agent: customer service
ALL_SITES = "*"
HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class StaffRole(SQLModel, table=True):
    __tablename__ = "staff_roles"
    __table_args__ = (UniqueConstraint("rider_id", "role", "site_id"),)

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id", index=True)
    role: str = Field(max_length=16)
    site_id: str = Field(sa_column=Column(String(32), nullable=False, index=True))  # or "*"
    hours: str = Field(default="00:00-24:00", max_length=11)  # local on-duty hours
    name: str = ""  # how riders see the technician, e.g. 王师傅
    created_at: datetime = Field(default_factory=utcnow)


class NotStaff(Exception):
    """A rider tried a staff action."""


def parse_hours(hours: str) -> tuple[time, time]:
    m = HOURS.match(hours.strip())
    if not m:
        raise ValueError(f"hours must look like 08:00-20:00, not {hours!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
    return time(h1, m1), end


def on_duty(hours: str, now: datetime, tz: str) -> bool:
    """Within the local hours; a range like 20:00-08:00 runs over midnight."""
    start, end = parse_hours(hours)
    local = now.astimezone(ZoneInfo(tz)).time()
    if start <= end:
        return start <= local <= end
    return local >= start or local <= end


async def add(session: AsyncSession, rider_id: int, role: str, site_id: str, *,
              hours: str = "00:00-24:00", name: str = "") -> StaffRole:
    """Give a rider a role at a site (or every site); adding it again updates hours and name."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    parse_hours(hours)
    row = (await session.execute(select(StaffRole).where(
        col(StaffRole.rider_id) == rider_id, col(StaffRole.role) == role,
        col(StaffRole.site_id) == site_id,
    ))).scalars().first()
    if row is None:
        row = StaffRole(rider_id=rider_id, role=role, site_id=site_id)
        session.add(row)
    row.hours, row.name = hours, name or row.name
    await session.flush()
    return row


async def roles_of(session: AsyncSession, rider_id: int) -> list[StaffRole]:
    rows = await session.execute(select(StaffRole).where(col(StaffRole.rider_id) == rider_id))
    return list(rows.scalars())


async def has_role(session: AsyncSession, rider_id: int, *roles: str) -> bool:
    return any(r.role in roles for r in await roles_of(session, rider_id))


async def with_role(session: AsyncSession, role: str) -> list[StaffRole]:
    rows = await session.execute(select(StaffRole).where(col(StaffRole.role) == role)
                                 .order_by(col(StaffRole.id)))
    return list(rows.scalars())


async def for_site(session: AsyncSession, site_id: str, role: str) -> list[StaffRole]:
    rows = await session.execute(
        select(StaffRole).where(col(StaffRole.role) == role,
                                col(StaffRole.site_id).in_((site_id, ALL_SITES)))
        # the site's own people first
        .order_by(col(StaffRole.site_id) == ALL_SITES, col(StaffRole.id))
    )
    return list(rows.scalars())


async def pick_technician(session: AsyncSession, site_id: str, now: datetime, tz: str,
                          open_orders: dict[int, int]) -> int | None:
    """The on-duty technician of the site with the fewest open orders; anyone assigned to the
    site when nobody is on duty (the order must still reach a person); else None."""
    techs = await for_site(session, site_id, "technician")
    if not techs:
        return None
    duty = [t for t in techs if on_duty(t.hours, now, tz)] or techs
    return min(duty, key=lambda t: (open_orders.get(t.rider_id, 0), t.id)).rider_id


async def display_name(session: AsyncSession, rider_id: int) -> str:
    name = (await session.execute(
        select(func.max(col(StaffRole.name))).where(col(StaffRole.rider_id) == rider_id)
    )).scalar()
    return name or ""
