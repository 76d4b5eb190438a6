"""Port cards and the nearest free ports."""

from __future__ import annotations

from bot.handlers import engagement
from bot.handlers.feedback import summary_line
from bot.handlers.payloads import (
    Alternatives,
    Nearby,
    ShowPile,
    ShowPort,
    StartCharge,
    Status,
    StopCharge,
)
from bot.handlers.routing import Router
from bot.handlers.support import report_button
from bot.handlers.text import DAY, distance, local_day, tariff_sentence
from bot.handlers.turn import Turn
from bot.i18n import tr
from core.billing.wallet import yuan
from core.charging import sessions as charging
from core.charging.queries import open_charges
from core.charging.tables import Charge
from core.db import saved_id
from core.errors import UnknownPort
from core.faults import workorders
from core.piles.nearby import NearbyPile, free_ports, nearest_free
from core.piles.tables import Pile, Port, PortStatusValue, port_code
from core.support import reviews
from notifications.replies import Button, Reply, Venue

router = Router(__name__)


def status_text(lang: str, port: Port, pile: Pile, busy: bool) -> str:
    if not pile.online:
        return tr(lang, "⚫ pile offline")
    if pile.maintenance or port.maintenance:
        return tr(lang, "🛠 under repair")
    if port.status == PortStatusValue.fault:
        return tr(lang, "🔴 out of order")
    if busy or port.status in (PortStatusValue.charging, PortStatusValue.full):
        return tr(lang, "🟠 in use")
    if port.status == PortStatusValue.offline:
        return tr(lang, "⚫ port locked")
    if port.status == PortStatusValue.plugged:
        return tr(lang, "🟢 free (a plug is in)")
    return tr(lang, "🟢 free")


@router.button(ShowPort)
async def port_button(turn: Turn, p: ShowPort) -> list[Reply]:
    return await port_card(turn, p.code)


async def own_charge_on(turn: Turn, code: str) -> Charge | None:
    """The rider's own running charge on this port, if they have one."""
    return next((c for c in await open_charges(turn.session, turn.rider_id)
                 if c.port_code == code), None)


def charging_for_you(turn: Turn, charge: Charge) -> Reply:
    """A rider who scans or types the port they are charging on wants Status or Stop, not
    "in use" and other ports."""
    return Reply(tr(turn.lang, "⚡ Port {code} is charging for you.", code=charge.port_code),
                 buttons=[[Button(tr(turn.lang, "⚡ Status"), data=Status().pack()),
                           Button(tr(turn.lang, "⏹ Stop"),
                                  data=StopCharge(saved_id(charge)).pack())]])


async def port_card(turn: Turn, code: str) -> list[Reply]:
    lang = turn.lang
    try:
        port, pile, site, busy = await charging.port_view(turn.session, code)
    except UnknownPort:
        return [unknown_port(turn, code)]
    if busy and (mine := await own_charge_on(turn, port.code)) is not None:
        return [charging_for_you(turn, mine)]
    tariff = charging.tariff_for(turn.ctx.settings, site)
    text = "\n".join([
        tr(lang, "🔌 Port {code}", code=port.code),
        tr(lang, "📍 {site} · {address}", site=site.name, address=site.address),
        tr(lang, "Status: {status}", status=status_text(lang, port, pile, busy)),
        tr(lang, "💰 {tariff}", tariff=tariff_sentence(lang, tariff)),
        *_floor_line(turn),
        await calendar_line(turn, pile),
    ] + [line for line in [summary_line(lang, *await reviews.summary(turn.session, site.id))]
         if line] + (extra := await engagement.site_services(turn, site))[0])
    usable = charging.port_is_free_for_start(port, pile) and not busy
    buttons = []
    if usable:
        buttons.append([Button(tr(lang, "⚡ Start charging"), data=StartCharge(port.code).pack())])
    else:
        buttons.append([Button(tr(lang, "📍 Other free ports nearby"),
                               data=Alternatives(pile.id).pack())])
    buttons.append([report_button(lang, port.code), *extra[1]])
    return [Reply(text, buttons=buttons)]


def _floor_line(turn: Turn) -> list[str]:
    floor = turn.ctx.settings.billing.start_min_balance_fen
    if floor <= 0:
        return []
    return [tr(turn.lang, "💳 To start, keep at least {floor} in your wallet.",
               floor=yuan(floor))]


async def calendar_line(turn: Turn, pile: Pile) -> str:
    """Transparency: when the pile was last serviced, when next, and its technician's rating."""
    lang, tz = turn.lang, turn.ctx.settings.server.timezone
    cal = await workorders.calendar(turn.session, pile, turn.ctx.settings, turn.now)
    parts = [tr(lang, "🛠 Last service: {last} · next: {next}",
                last=local_day(cal["last"], tz, DAY) if cal["last"] else tr(lang, "none yet"),
                next=local_day(cal["next"], tz, DAY) if cal["next"] else tr(lang, "not planned"))]
    if cal["technician"]:
        if cal["ratings"]:
            parts.append(tr(lang, "Technician {name} ★{avg:.1f} ({n})", name=cal["technician"],
                            avg=cal["rating"], n=cal["ratings"]))
        else:
            parts.append(tr(lang, "Technician {name}", name=cal["technician"]))
    return tr(lang, " · ").join(parts)




def unknown_port(turn: Turn, code: str) -> Reply:
    return Reply(
        tr(turn.lang, "I can't find port {code}. Check the code printed under the QR (like "
                      "P0001-03), or share your location to find a free port.", code=code[:20]),
        buttons=[[Button(tr(turn.lang, "📍 Nearest free ports"), data=Nearby().pack())]],
        request_location=tr(turn.lang, "📍 Share my location"),
    )


def nearby_reply(turn: Turn, found: list[NearbyPile], title: str) -> Reply:
    lang = turn.lang
    if not found:
        return Reply(tr(lang, "No free port within reach right now. Please try again in a few "
                              "minutes."))
    lines = [title]
    buttons = []
    for i, n in enumerate(found, 1):
        lines.append(tr(
            lang, "{i}. {site} · {pile} · {free} free · {dist} · {walk} min walk",
            i=i, site=n.site_name, pile=n.pile_id, free=len(n.free_ports),
            dist=distance(lang, n.distance_m), walk=n.walk_minutes,
        ))
        buttons.append([Button(tr(lang, "{i}. {site} ({dist})", i=i, site=n.site_name,
                                  dist=distance(lang, n.distance_m)),
                               data=ShowPile(n.pile_id).pack())])
    return Reply("\n".join(lines), buttons=buttons)


async def nearest(turn: Turn, lat: float, lon: float) -> list[Reply]:
    found = await nearest_free(turn.session, lat, lon, 5)
    return [nearby_reply(turn, found, tr(turn.lang, "Nearest free ports:"))]


@router.button(Alternatives)
async def alternatives_button(turn: Turn, p: Alternatives) -> Reply:
    return await alternatives(turn, p.pile)


async def alternatives(turn: Turn, pile_id: str) -> Reply:
    pile = await turn.session.get(Pile, pile_id)
    if pile is None:
        return unknown_port(turn, pile_id)
    found = await nearest_free(turn.session, pile.lat, pile.lon, 3)
    return nearby_reply(turn, found, tr(turn.lang, "Free ports close to this one:"))


@router.button(ShowPile)
async def pile_button(turn: Turn, p: ShowPile) -> list[Reply]:
    return await pile_card(turn, p.pile)


async def pile_card(turn: Turn, pile_id: str) -> list[Reply]:
    """Where a pile is (a venue the rider can open in maps) and which of its ports are free."""
    lang = turn.lang
    found = await free_ports(turn.session, pile_id)
    if found is None:
        return [unknown_port(turn, pile_id)]
    pile, site, free = found
    title, address = site.name, site.address
    text = tr(lang, "{pile}: free ports {ports}", pile=pile.id,
              ports=", ".join(str(p) for p in free) or "—")
    rows = [[Button(tr(lang, "Port {n}", n=p), data=ShowPort(port_code(pile.id, p)).pack())
             for p in free[i:i + 4]] for i in range(0, len(free), 4)]  # every free port
    return [Reply(text, buttons=rows, venue=Venue(pile.lat, pile.lon, title, address))]


@router.command("nearby", "near")
@router.button(Nearby)
def ask_location(turn: Turn) -> list[Reply]:
    return [Reply(tr(turn.lang, "Share your location and I'll list the nearest free ports."),
                  request_location=tr(turn.lang, "📍 Share my location"))]
