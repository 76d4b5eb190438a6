"""Start, live status, stop and history of charges."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from bot.handlers.payloads import (
    History,
    OpenLocker,
    PayDue,
    StartCharge,
    Status,
    StopCharge,
    Wallet,
)
from bot.handlers.ports import alternatives, charging_for_you, own_charge_on, unknown_port
from bot.handlers.routing import Router
from bot.handlers.support import report_button
from bot.handlers.text import bill_text, duration, kwh, menu_buttons
from bot.handlers.turn import Turn
from bot.handlers.wallet import topup_buttons
from bot.i18n import N_, ntr, tr
from core.billing.wallet import yuan
from core.charging import sessions as charging
from core.charging.queries import month_spend, open_charges
from core.charging.tables import OPEN_STATES, Charge, ChargeState
from core.db import saved_id
from core.errors import (
    BalanceTooLow,
    BillDue,
    NoOpenCharge,
    PortBusy,
    PortUnavailable,
    TooManyOpenCharges,
    UnknownPort,
)
from core.piles.fleet import parse_port_code
from core.piles.tables import Pile
from core.riders import limits
from notifications.replies import Button, Reply

router = Router(__name__)


@router.button(StartCharge)
async def start_button(turn: Turn, p: StartCharge) -> list[Reply]:
    return await start(turn, p.code)


async def start(turn: Turn, code: str) -> list[Reply]:
    lang = turn.lang
    if not await limits.starts_allowed(turn.session, turn.rider_id, turn.now,
                                       turn.ctx.settings.limits.starts_per_10_min):
        return [Reply(tr(lang, "That's a lot of starts in a few minutes. Please wait a little "
                               "and try again; if a port keeps failing, tap 🛠 Report a "
                               "problem."))]
    try:
        charge = await charging.start_charge(
            turn.session, turn.rider, code, turn.ctx.settings, turn.now
        )
    except UnknownPort:
        return [unknown_port(turn, code)]
    except BillDue as exc:
        return [Reply(
            tr(lang, "You have an unpaid bill of {amount}. Please pay it before starting a new "
                     "charge.", amount=yuan(exc.params["amount"])),
            buttons=[[Button(tr(lang, "💳 Pay now"), data=PayDue().pack())],
                     [Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]],
        )]
    except BalanceTooLow as exc:
        return await _top_up_first(turn, code, exc.params["floor"], exc.params["balance"])
    except TooManyOpenCharges as exc:
        return [Reply(tr(lang, "You already have {n} charges running, the most at once. Stop "
                               "one to start another.", n=exc.params["limit"]),
                      buttons=[[Button(tr(lang, "⚡ Status"), data=Status().pack())]])]
    except PortBusy:
        if (mine := await own_charge_on(turn, code)) is not None:  # a double tap, a rescan
            return [charging_for_you(turn, mine)]
        pile_id, _ = parse_port_code(code)
        alt = await alternatives(turn, pile_id)
        return [Reply(tr(lang, "Sorry, port {code} was just taken by another rider.", code=code)),
                alt]
    except PortUnavailable:
        pile_id, _ = parse_port_code(code)
        alt = await alternatives(turn, pile_id)
        return [Reply(tr(lang, "Port {code} can't be used right now.", code=code)), alt]
    turn.after_commit.append(lambda: turn.ctx.wake_pile(charge.pile_id))
    return [Reply(
        tr(lang, "⏳ Starting port {code}… I'll tell you as soon as power flows.", code=code),
        buttons=[[Button(tr(lang, "⚡ Status"), data=Status().pack()),
                  Button(tr(lang, "⏹ Stop"), data=StopCharge(saved_id(charge)).pack())]],
    )]


async def _top_up_first(turn: Turn, code: str, floor: int, balance: int) -> list[Reply]:
    """Post-pay with a floor: say what is needed and offer the ways to top up right here."""
    lang = turn.lang
    text = tr(lang, "You pay after charging, but a start needs at least {floor} in your wallet "
                    "(you have {balance}). Top up, then start again.",
              floor=yuan(floor), balance=yuan(balance))
    buttons = await topup_buttons(turn)
    buttons.append([Button(tr(lang, "⚡ Start port {code}", code=code),
                           data=StartCharge(code).pack()),
                    Button(tr(lang, "👛 Wallet"), data=Wallet().pack())])
    return [Reply(text, buttons=buttons)]


@router.command("status", help=N_("/status — my charge"))
@router.button(Status)
async def status(turn: Turn) -> list[Reply]:
    lang = turn.lang
    open_ = await open_charges(turn.session, turn.rider_id)
    if not open_:
        return [Reply(tr(lang, "You have no charge running."), buttons=menu_buttons(lang))]
    replies = []
    for charge in open_:
        if charge.state == ChargeState.requested:
            text = tr(lang, "⏳ Port {code} is starting…", code=charge.port_code)
        else:
            live = await charging.live(turn.session, charge, turn.ctx.settings, turn.now)
            text = "\n".join([
                tr(lang, "⚡ Charging at port {code}", code=charge.port_code),
                tr(lang, "Time: {d} · Power: {w} W · Energy: {e}",
                   d=duration(lang, live.minutes * 60), w=int(live.power_w or 0),
                   e=kwh(live.energy_wh)),
                tr(lang, "Cost so far: {cost}", cost=yuan(live.cost_fen)),
            ])
        replies.append(Reply(text, buttons=[[
            Button(tr(lang, "🔄 Refresh"), data=Status().pack()),
            Button(tr(lang, "⏹ Stop"), data=StopCharge(saved_id(charge)).pack()),
        ], [report_button(lang, f"c{charge.id}")] + ([Button(tr(lang, "🔓 Open locker"),
                                                             data=OpenLocker(saved_id(charge)).pack())]
                                                      if await _lockers(turn, charge) else [])]))
    return replies


async def _lockers(turn: Turn, charge: Charge) -> bool:
    pile = await turn.session.get(Pile, charge.pile_id)
    return bool(pile and pile.lockers)


@router.command("stop")
async def stop_command(turn: Turn) -> list[Reply]:
    return await stop(turn, None)


@router.button(StopCharge)
async def stop_button(turn: Turn, p: StopCharge) -> list[Reply]:
    return await stop(turn, p.charge_id)


async def stop(turn: Turn, charge_id: int | None) -> list[Reply]:
    lang = turn.lang
    try:
        charge = await charging.stop_charge(turn.session, turn.rider, charge_id, turn.now)
    except NoOpenCharge:
        return [Reply(tr(lang, "You have no charge running."), buttons=menu_buttons(lang))]
    turn.after_commit.append(lambda: turn.ctx.wake_pile(charge.pile_id))
    return [Reply(tr(lang, "⏹ Stopping port {code}… the bill follows in a moment.",
                     code=charge.port_code))]


@router.command("history", help=N_("/history — past charges"))
@router.button(History)
async def history(turn: Turn) -> list[Reply]:
    lang = turn.lang
    charges = await charging.recent(turn.session, turn.rider_id)
    if not charges:
        return [Reply(tr(lang, "No charges yet."), buttons=menu_buttons(lang))]
    tz = ZoneInfo(turn.ctx.settings.server.timezone)
    lines = [tr(lang, "🧾 Your recent charges:")]
    for c in charges:
        when = (c.started_at or c.requested_at).astimezone(tz).strftime("%m-%d %H:%M")
        if c.state in OPEN_STATES:
            state = tr(lang, "charging")
        elif c.state == ChargeState.settled:
            state = tr(lang, "paid {amount}", amount=yuan(c.amount_fen))
        else:
            state = tr(lang, "due {amount}", amount=yuan(c.amount_fen - c.paid_fen))
        lines.append(tr(lang, "{when} · {port} · {d} · {e} · {state}", when=when,
                        port=c.port_code, d=duration(lang, c.duration_s or 0),
                        e=kwh(c.energy_wh or 0), state=state))
    return [Reply("\n".join(lines), buttons=menu_buttons(lang))]


@router.command("spent", help=N_("/spent — this month's charging and its cost"))
async def spent(turn: Turn) -> list[Reply]:
    """This month's charging in one message, beside last month's for scale."""
    lang, tz = turn.lang, turn.ctx.settings.server.timezone
    this = await month_spend(turn.session, turn.rider_id, turn.now, tz)
    last = await month_spend(turn.session, turn.rider_id, turn.now, tz, months_back=1)
    if not this.charges:
        text = tr(lang, "📊 No charges yet in {month}.", month=this.month)
    else:
        text = ntr(lang, "📊 {month}: {n} charge, {energy}, {amount}.",
                   "📊 {month}: {n} charges, {energy}, {amount}.", this.charges,
                   month=this.month, energy=kwh(this.energy_wh), amount=yuan(this.billed_fen))
        if this.refunded_fen:
            text += "\n" + tr(lang, "Refunded to you: {amount}.",
                               amount=yuan(this.refunded_fen))
        if this.due_fen:
            text += "\n" + tr(lang, "Still to pay: {amount}.", amount=yuan(this.due_fen))
    if last.charges:
        text += "\n" + tr(lang, "{month}: {amount} in all.", month=last.month,
                           amount=yuan(last.billed_fen))
    return [Reply(text, buttons=menu_buttons(lang))]


__all__ = ["bill_text", "history", "spent", "start", "status", "stop"]
