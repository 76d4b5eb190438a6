"""Riders who come back: the year in charging, and their usual piles on the menu."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.annual_card import card
from bot.handlers.payloads import MyYear, OpenLocker, ShowPile, ToolKit
from bot.handlers.routing import Router
from bot.handlers.turn import Turn
from bot.i18n import tr
from core.billing.wallet import yuan
from core.charging.queries import usual_piles as usual_piles_since
from core.charging.tables import Charge
from core.engagement import annual, services
from core.piles.tables import Site
from core.support import photos
from notifications.replies import Button, Reply

router = Router(__name__)
USUAL_DAYS = 90


def year_text(lang: str, y: annual.Year, site: str | None) -> str:
    lines = [tr(lang, "📅 Your {year} in charging:", year=y.year),
             tr(lang, "{n} charges · {h:.0f} hours · {kwh:.1f} kWh · {spent} spent",
                n=y.charges, h=y.hours, kwh=y.energy_kwh, spent=yuan(y.spent_fen)),
             tr(lang, "≈ {km:,.0f} km ridden and {co2:,.0f} kg CO₂ avoided compared with a "
                      "petrol scooter (estimates).", km=y.km, co2=y.co2_kg)]
    if site:
        lines.append(tr(lang, "Your favourite site: {site}", site=site))
    return "\n".join(lines)


@router.command("myyear", "year")
@router.button(MyYear)
async def my_year(turn: Turn) -> list[Reply]:
    settings = turn.ctx.settings
    tz = settings.server.timezone
    year = turn.now.astimezone(ZoneInfo(tz)).year
    y = await annual.of(turn.session, turn.rider_id, year, tz)
    if y.charges == 0:
        return [Reply(tr(turn.lang, "No charges yet this year. Your yearly report fills up as "
                                    "you charge."))]
    site = await turn.session.get(Site, y.favourite_site) if y.favourite_site else None
    # Drawing the card (Pillow, fonts) and checking it as a photo are CPU work: in a worker
    # thread, so a rider's /myyear does not stall everyone else's chat.
    png = await asyncio.to_thread(card, y, turn.lang, turn.rider.display_name)
    stored = await asyncio.to_thread(photos.store, png, Path(settings.support.photo_dir),
                                     max_bytes=settings.support.max_photo_bytes)
    return [Reply(year_text(turn.lang, y, site.name if site else None),
                  photo_url=photos.signed_url(settings, stored.path, turn.now.timestamp()))]


async def usual_piles(turn: Turn, n: int = 2) -> list[Button]:
    """Where the rider charged most in the last 90 days: one tap back there."""
    since = turn.now - timedelta(days=USUAL_DAYS)
    piles = await usual_piles_since(turn.session, turn.rider_id, since, n)
    return [Button(tr(turn.lang, "⭐ {pile} (usual)", pile=pile), data=ShowPile(pile).pack())
            for pile in piles]


@router.command("offpeak")
async def offpeak(turn: Turn) -> list[Reply]:
    """Toggle the evening reminder to charge off-peak."""
    turn.rider.offpeak_reminders = not turn.rider.offpeak_reminders
    if turn.rider.offpeak_reminders:
        return [Reply(tr(turn.lang, "🌙 On: on evenings when you usually charge at the peak, "
                                    "I'll remind you that night charging is cheaper. /offpeak "
                                    "again turns it off."))]
    return [Reply(tr(turn.lang, "🌙 Off-peak reminders are off."))]


# --- services at the site ---------------------------------------------------------------------


async def site_services(turn: Turn, site: Site) -> tuple[list[str], list[Button]]:
    """Lines and buttons a port card adds for the site's services (van, dates, tool kits)."""
    lang, tz = turn.lang, turn.ctx.settings.server.timezone
    lines: list[str] = []
    buttons: list[Button] = []
    if site.timetable:
        stop = services.current_stop(site.timetable, turn.now, tz)
        if stop is not None:
            lines.append(tr(lang, "🚐 Mobile charging van: here ({place}) until {to}.",
                            place=stop.get("place", ""), to=stop["to"]))
        nxt = services.next_stop(site.timetable, turn.now, tz)
        if nxt is not None:
            start, where = nxt
            lines.append(tr(lang, "🚐 Next stop: {place}, {when}.", place=where.get("place", ""),
                            when=start.strftime("%m-%d %H:%M")))
    if site.active_until is not None:
        until = site.active_until.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d")
        lines.append(tr(lang, "⏳ Temporary site, open until {date}.", date=until))
    if site.tool_kits:
        free = site.tool_kits - await services.kits_out(turn.session, site.id)
        lines.append(tr(lang, "🧰 Tool kits to borrow: {free} of {n}.", free=free,
                        n=site.tool_kits))
        buttons.append(Button(tr(lang, "🧰 Borrow a tool kit"),
                              data=ToolKit("borrow", site.id).pack()))
    return lines, buttons


@router.button(ToolKit)
async def tools(turn: Turn, p: ToolKit) -> list[Reply]:
    action, site_id = p.action, p.site_id
    lang = turn.lang
    if action == "borrow":
        try:
            _loan, new = await services.borrow(turn.session, turn.rider_id, site_id, turn.now)
        except services.NoKitLeft:
            return [Reply(tr(lang, "Sorry, all tool kits here are out right now."))]
        text = (tr(lang, "🧰 Take a tool kit from the box at the site. Please bring it back "
                         "and tap Return.") if new
                else tr(lang, "🧰 You already have a tool kit. Please return it first."))
        return [Reply(text, buttons=[[Button(tr(lang, "↩️ Return the tool kit"),
                                             data=ToolKit("return").pack())]])]
    if action == "return":
        loan = await services.give_back(turn.session, turn.rider_id, turn.now)
        if loan is None:
            return [Reply(tr(lang, "You have no tool kit to return."))]
        return [Reply(tr(lang, "↩️ Thank you! The tool kit is back."))]
    return [Reply(tr(lang, "Sorry, that didn't work. Please try again."))]


@router.button(OpenLocker)
async def locker(turn: Turn, p: OpenLocker) -> list[Reply]:
    charge = await turn.session.get(Charge, p.charge_id) if p.charge_id else None
    if charge is None or charge.rider_id != turn.rider_id:
        return [Reply(tr(turn.lang, "Only your own charge's locker can be opened."))]
    if not await services.open_locker(turn.session, charge, turn.now):
        return [Reply(tr(turn.lang, "This locker can't be opened now. If your battery is "
                                    "still inside, tap 🛠 Report a problem."))]
    turn.after_commit.append(lambda: turn.ctx.wake_pile(charge.pile_id))
    return [Reply(tr(turn.lang, "🔓 Locker {port} is opening.", port=charge.port_code))]
