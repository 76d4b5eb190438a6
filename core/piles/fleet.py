"""Sites, piles and ports: where riders charge, and the state search and starts rely on."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.errors import UnknownPile, UnknownPort
from core.piles.auth import new_secret
from core.piles.tables import (
    PORT_CODE,
    Pile,
    PileProtocol,
    Port,
    PortStatusValue,
    Site,
    port_code,
)


def parse_port_code(code: str) -> tuple[str, int]:
    m = PORT_CODE.match(code.strip().upper())
    if not m:
        raise UnknownPort(code=code[:40])
    return m.group(1), int(m.group(2))

async def add_site(
    session: AsyncSession, site_id: str, name: str, lat: float, lon: float, *,
    address: str = "", kind: str = "community", tariff: str = "standard",
) -> Site:
    site = Site(id=site_id, name=name, address=address, lat=lat, lon=lon, kind=kind, tariff=tariff)
    await session.merge(site)
    return site

async def add_pile(
    session: AsyncSession, site_id: str, pile_id: str, ports: int, *,
    model: str = "generic-10", secret: str | None = None,
    lat: float | None = None, lon: float | None = None,
    protocol: PileProtocol = PileProtocol.json, wire_id: str | None = None,
) -> Pile:
    """A pile and its ports. `wire_id` is the id the pile gives itself on its protocol's wire:
    an AP3000 device id (decimal, 1 to 2³²−1), an OCPP charge point id."""
    site = await session.get(Site, site_id)
    if site is None:
        raise ValueError(f"unknown site {site_id!r}")
    if not 1 <= ports <= 99:
        raise ValueError("a pile has 1 to 99 ports")
    if protocol == PileProtocol.json:
        wire_id = None
    elif not wire_id:
        raise ValueError(f"a {protocol} pile needs the id it uses on its wire")
    elif protocol == PileProtocol.ap3000 and not (
            wire_id.isdigit() and 0 < int(wire_id) < 2**32):
        raise ValueError("an AP3000 device id is a number from 1 to 4294967295")
    elif protocol == PileProtocol.ocpp16 and not re.fullmatch(r"[A-Za-z0-9._-]{1,40}", wire_id):
        raise ValueError("an OCPP charge point id is 1 to 40 letters, digits, '.', '_' or '-'")
    if wire_id is not None and await pile_on_wire(session, protocol, wire_id) is not None:
        raise ValueError(f"a {protocol} pile with id {wire_id} exists already")
    pile = Pile(
        id=pile_id, site_id=site_id, model=model, secret=secret or new_secret(), ports=ports,
        lat=site.lat if lat is None else lat, lon=site.lon if lon is None else lon,
        protocol=protocol, wire_id=wire_id,
    )
    session.add(pile)
    for n in range(1, ports + 1):
        session.add(Port(pile_id=pile_id, number=n, code=port_code(pile_id, n)))
    await session.flush()
    return pile

async def pile_on_wire(session: AsyncSession, protocol: PileProtocol, wire_id: str
                       ) -> Pile | None:
    """The pile that calls itself `wire_id` on `protocol`'s wire, if it is registered."""
    return (await session.execute(select(Pile).where(
        col(Pile.protocol) == protocol, col(Pile.wire_id) == wire_id))).scalars().first()


async def get_pile(session: AsyncSession, pile_id: str) -> Pile:
    pile = await session.get(Pile, pile_id)
    if pile is None:
        raise UnknownPile(pile=pile_id)
    return pile

async def find_port(session: AsyncSession, code: str) -> tuple[Port, Pile, Site]:
    pile_id, number = parse_port_code(code)
    row = (
        await session.execute(
            select(Port, Pile, Site)
            .join(Pile, col(Pile.id) == col(Port.pile_id))
            .join(Site, col(Site.id) == col(Pile.site_id))
            .where(col(Port.pile_id) == pile_id, col(Port.number) == number)
        )
    ).first()
    if row is None:
        raise UnknownPort(code=port_code(pile_id, number))
    return row[0], row[1], row[2]

def port_is_free(port: Port, pile: Pile) -> bool:
    return (
        pile.online and pile.in_service and not pile.maintenance and not port.maintenance
        and port.status == PortStatusValue.idle
    )

async def mark_offline(session: AsyncSession, before: datetime) -> list[str]:
    """Piles silent since `before` go offline; returns their ids."""
    rows = await session.execute(
        update(Pile)
        .where(col(Pile.online).is_(True), col(Pile.last_seen_at) < before)
        .values(online=False)
        .returning(col(Pile.id))
    )
    return [r[0] for r in rows]

async def touch(session: AsyncSession, pile_id: str, now: datetime, *, min_gap_s: float) -> None:
    """Record that the pile is alive; skip the write when it was seen moments ago."""

    await session.execute(
        update(Pile)
        .where(
            col(Pile.id) == pile_id,
            (col(Pile.last_seen_at).is_(None))
            | (col(Pile.last_seen_at) < now - timedelta(seconds=min_gap_s))
            | (col(Pile.online).is_(False)),
        )
        .values(last_seen_at=now, online=True)
    )
