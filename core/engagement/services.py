"""Value-added services at sites: temporary sites and a mobile charging van (on a schedule),
battery lockers in charging cabinets, and tool kits riders borrow and return."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import CursorResult, Index, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core.charging.lifecycle import ChargeBilled, after_billed
from core.charging.tables import OPEN_STATES, Charge
from core.db import utcnow
from core.piles import commands
from core.piles.tables import Pile, Site

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LOCKER_OPEN_AFTER_MIN = 30  # after the charge, the owner may open the door to take the battery


# --- temporary sites and the van --------------------------------------------------------------


def _hm(value: str) -> time:
    h, m = value.split(":")
    return time(int(h), int(m))


def current_stop(timetable: list[dict[str, Any]], now: datetime,
                 tz: str) -> dict[str, Any] | None:
    """The van's stop now: entries {days: ["mon", …], from: "08:00", to: "11:00", lat, lon,
    place}, in local time."""
    local = now.astimezone(ZoneInfo(tz))
    day = DAYS[local.weekday()]
    for stop in timetable:
        if day in stop.get("days", DAYS) and _hm(stop["from"]) <= local.time() < _hm(stop["to"]):
            return stop
    return None


def next_stop(timetable: list[dict[str, Any]], now: datetime,
              tz: str) -> tuple[datetime, dict[str, Any]] | None:
    """The next stop to start after now (within a week), with its local start time."""
    local = now.astimezone(ZoneInfo(tz))
    best: tuple[datetime, dict[str, Any]] | None = None
    for ahead in range(8):
        d = local.date() + timedelta(days=ahead)
        for stop in timetable:
            if DAYS[d.weekday()] not in stop.get("days", DAYS):
                continue
            start = datetime.combine(d, _hm(stop["from"]), tzinfo=local.tzinfo)
            if start > local and (best is None or start < best[0]):
                best = (start, stop)
        if best is not None:
            return best
    return None


async def apply_schedules(session: AsyncSession, now: datetime, tz: str) -> list[str]:
    """Put scheduled sites in or out of service (and move the van to its stop); returns the
    ids of sites that changed."""
    changed: list[str] = []
    rows = await session.execute(select(Site).where(
        (col(Site.timetable).is_not(None)) | (col(Site.active_from).is_not(None))
        | (col(Site.active_until).is_not(None))))
    for site in rows.scalars():
        serving = True
        if site.active_from is not None and now < site.active_from:
            serving = False
        if site.active_until is not None and now >= site.active_until:
            serving = False
        stop = current_stop(site.timetable, now, tz) if site.timetable else None
        if site.timetable:
            serving = serving and stop is not None
            if stop is not None and (site.lat, site.lon) != (stop["lat"], stop["lon"]):
                site.lat, site.lon = stop["lat"], stop["lon"]
                site.address = stop.get("place", site.address)
                await session.execute(update(Pile).where(col(Pile.site_id) == site.id)
                                      .values(lat=stop["lat"], lon=stop["lon"]))
                changed.append(site.id)
        # An UPDATE's result is a CursorResult (SQLAlchemy's stubs say only Result): rowcount.
        result = cast(CursorResult[Any], await session.execute(
            update(Pile).where(col(Pile.site_id) == site.id,
                               col(Pile.in_service).is_(not serving))
            .values(in_service=serving).execution_options(synchronize_session=False)))
        if result.rowcount and site.id not in changed:
            changed.append(site.id)
    return changed


# --- lockers ----------------------------------------------------------------------------------


async def open_locker(session: AsyncSession, charge: object, now: datetime) -> bool:
    """Unlock the charge's port door for its rider: while charging, or shortly after the end
    (to take the battery). False when the pile has no lockers or it is too late."""
    assert isinstance(charge, Charge)
    pile = await session.get(Pile, charge.pile_id)
    if pile is None or not pile.lockers:
        return False
    if charge.state not in OPEN_STATES:
        ended = charge.ended_at
        if ended is None or now - ended > timedelta(minutes=LOCKER_OPEN_AFTER_MIN):
            return False
    await commands.queue(session, charge.pile_id, "unlock", charge.port_number,
                         charge_id=charge.id, now=now)
    return True


@after_billed
async def lock_after_charge(session: AsyncSession, event: ChargeBilled) -> None:
    """The battery stays locked in after the charge until its owner opens the door."""
    charge, now = event.charge, event.now
    pile = await session.get(Pile, charge.pile_id)
    if pile is not None and pile.lockers:
        await commands.queue(session, charge.pile_id, "lock", charge.port_number,
                             charge_id=charge.id, now=now)


# --- tool kits --------------------------------------------------------------------------------


class ToolLoan(SQLModel, table=True):
    __tablename__ = "tool_loans"
    __table_args__ = (
        # One kit at a time per rider: a second borrow is the same loan.
        Index("uq_tool_loans_open_rider", "rider_id", unique=True,
              sqlite_where=text("returned_at IS NULL"),
              postgresql_where=text("returned_at IS NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    rider_id: int = Field(foreign_key="riders.id")
    site_id: str = Field(foreign_key="sites.id", index=True)
    borrowed_at: datetime = Field(default_factory=utcnow)
    returned_at: datetime | None = None


class NoKitLeft(Exception):
    pass


async def kits_out(session: AsyncSession, site_id: str) -> int:
    return int((await session.execute(select(func.count()).select_from(ToolLoan).where(
        col(ToolLoan.site_id) == site_id, col(ToolLoan.returned_at).is_(None)))).scalar() or 0)


async def borrow(session: AsyncSession, rider_id: int, site_id: str, now: datetime
                 ) -> tuple[ToolLoan, bool]:
    """(loan, new). The rider's open loan if any; NoKitLeft when all the site's kits are out."""
    current = (await session.execute(select(ToolLoan).where(
        col(ToolLoan.rider_id) == rider_id, col(ToolLoan.returned_at).is_(None)
    ))).scalars().first()
    if current is not None:
        return current, False
    site = await session.get(Site, site_id)
    if site is None or await kits_out(session, site_id) >= site.tool_kits:
        raise NoKitLeft(site_id)
    loan = ToolLoan(rider_id=rider_id, site_id=site_id, borrowed_at=now)
    try:
        async with session.begin_nested():
            session.add(loan)
            await session.flush()
    except IntegrityError:
        return await borrow(session, rider_id, site_id, now)
    return loan, True


async def give_back(session: AsyncSession, rider_id: int, now: datetime) -> ToolLoan | None:
    loan = (await session.execute(select(ToolLoan).where(
        col(ToolLoan.rider_id) == rider_id, col(ToolLoan.returned_at).is_(None)
    ))).scalars().first()
    if loan is not None:
        loan.returned_at = now
    return loan
