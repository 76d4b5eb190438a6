"""The demo city: a few sites in Hangzhou, ~20 piles of 10 ports, and their simulated fleet."""

from __future__ import annotations

import random

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.db import saved_id
from core.piles import fleet as piles
from core.piles.tables import Pile, PileProtocol, Site
from core.riders import staff
from core.riders.identities import rider_for

# Real neighbourhoods, made-up venues: riders charge at residential compounds, malls and
# courier stations.
DEMO_SITES = [
    ("HZ01", "西溪花园3幢车棚", "杭州市西湖区文二西路西溪花园", 30.2780, 120.1140, "community",
     "standard"),
    ("HZ02", "万象城地下非机动车库", "杭州市上城区富春路701号", 30.2530, 120.2180, "mall",
     "by_time"),
    ("HZ03", "下沙快递驿站", "杭州市钱塘区学源街", 30.3100, 120.3850, "courier", "night_saver"),
    ("HZ04", "滨江科技园南门", "杭州市滨江区江南大道", 30.2080, 120.2110, "office", "by_energy"),
]
PILES_PER_SITE = 5
PORTS_PER_PILE = 10
# Web chat identities for trying the staff side: /?as=demo-technician (or demo-supervisor), only
# while server.webchat_demo_identities is on, which `chargebot demo` does and `serve` refuses.
# Two AP3000 ("DNY") boards at the mall, on TCP through the gateway (bot/piles/ap3000): (pile id,
# device id printed on the board). `chargebot demo` runs them with simulator/ap3000.py.
DEMO_AP3000_SITE = "HZ02"
DEMO_AP3000 = [("P0101", 305419896), ("P0102", 305419897)]
# Two OCPP 1.6J charge points of 2 connectors at the tech park, on a WebSocket through the
# gateway (bot/piles/ocpp): (pile id, the charge point id they call themselves). `chargebot demo`
# runs them with simulator/ocpp.py, each logging in with its pile's secret.
DEMO_OCPP_SITE = "HZ04"
DEMO_OCPP = [("P0201", "CP-HZ04-01"), ("P0202", "CP-HZ04-02")]
OCPP_PORTS = 2
DEMO_STAFF = [("demo-technician", "technician", "王师傅"),
              ("demo-supervisor", "supervisor", "李主管")]


async def seed(session: AsyncSession, *, rng: random.Random | None = None) -> int:
    """Create the demo city unless it is there; returns the number of piles created. A city
    seeded before the OCPP charge points existed gets them."""
    rng = rng or random.Random(7)
    if await session.scalar(select(func.count()).select_from(Pile)):
        # Only into the demo's own city (its first AP3000 board is there), never another's.
        board = await session.get(Pile, DEMO_AP3000[0][0])
        if board is None or board.wire_id != str(DEMO_AP3000[0][1]):
            return 0
        return await _seed_ocpp(session, rng)
    n = 0
    for sid, name, addr, lat, lon, kind, tariff in DEMO_SITES:
        await piles.add_site(session, sid, name, lat, lon, address=addr, kind=kind, tariff=tariff)
        await session.flush()
        for _ in range(PILES_PER_SITE):
            n += 1
            # Piles of one site stand a few metres apart along a wall.
            await piles.add_pile(
                session, sid, f"P{n:04d}", PORTS_PER_PILE, model="generic-10",
                lat=lat + rng.uniform(-0.0003, 0.0003), lon=lon + rng.uniform(-0.0003, 0.0003),
            )
    site = next(row for row in DEMO_SITES if row[0] == DEMO_AP3000_SITE)
    for pile_id, device_id in DEMO_AP3000:
        n += 1
        await piles.add_pile(
            session, DEMO_AP3000_SITE, pile_id, PORTS_PER_PILE, model="ap3000-10",
            lat=site[3] + rng.uniform(-0.0003, 0.0003), lon=site[4] + rng.uniform(-0.0003, 0.0003),
            protocol=PileProtocol.ap3000, wire_id=str(device_id),
        )
    n += await _seed_ocpp(session, rng)
    # Services to try: tool kits at the courier station, a charging cabinet (lockers) there too.
    courier = await session.get(Site, "HZ03")
    if courier is not None:
        courier.tool_kits = 3
        first = await session.scalar(select(col(Pile.id)).where(col(Pile.site_id) == "HZ03")
                                     .order_by(col(Pile.id)))
        pile = await session.get(Pile, first) if first is not None else None
        if pile is not None:
            pile.lockers = True
    for client_id, role, name in DEMO_STAFF:
        person = await rider_for(session, "webchat", client_id, display_name=name)
        await staff.add(session, saved_id(person), role, staff.ALL_SITES, name=name)
    return n


async def _seed_ocpp(session: AsyncSession, rng: random.Random) -> int:
    site = await session.get(Site, DEMO_OCPP_SITE)
    if site is None:
        return 0
    n = 0
    for pile_id, cp_id in DEMO_OCPP:
        if await session.get(Pile, pile_id) is not None:
            continue
        await piles.add_pile(
            session, DEMO_OCPP_SITE, pile_id, OCPP_PORTS, model="ocpp-2",
            lat=site.lat + rng.uniform(-0.0003, 0.0003),
            lon=site.lon + rng.uniform(-0.0003, 0.0003),
            protocol=PileProtocol.ocpp16, wire_id=cp_id,
        )
        n += 1
    return n
