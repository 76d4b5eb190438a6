"""Technicians and supervisors in the same chat: work orders, their buttons, the promises."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.handlers.payloads import RateRepair, WebLogout, WorkOrderAction
from bot.handlers.routing import Router
from bot.handlers.support import problem_name
from bot.handlers.text import local_day
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.billing.wallet import yuan
from core.db import row_id
from core.engagement import prompts
from core.faults import workorders
from core.faults.tables import WorkOrder, WorkOrderState
from core.notices.faults import WorkOrderNotice
from core.riders import staff, web_sessions
from notifications.replies import Button, Reply

router = Router(__name__)
RESOLVE_PROMPT = "resolve_note"


def cause_name(lang: str, code: str) -> str:
    names = {
        "overload": tr(lang, "overload"),
        "over_temperature": tr(lang, "over-temperature"),
        "over_voltage": tr(lang, "over-voltage"),
        "under_voltage": tr(lang, "under-voltage"),
        "leakage": tr(lang, "current leakage"),
        "short_circuit": tr(lang, "short circuit"),
        "relay_stuck": tr(lang, "relay stuck closed"),
        "relay_open": tr(lang, "relay does not close"),
        "meter_fault": tr(lang, "meter fault"),
        "comm_loss": tr(lang, "communication lost"),
        "power_loss": tr(lang, "power loss"),
        "smoke": tr(lang, "smoke alarm"),
        "flooding": tr(lang, "flooding"),
        "door_open": tr(lang, "cabinet door open"),
        "over_current": tr(lang, "over-current"),
        "interrupted": tr(lang, "charging interrupted"),
        "offline": tr(lang, "pile offline"),
        "meter_backwards": tr(lang, "energy meter ran backwards"),
        "impossible_power": tr(lang, "impossible power reading"),
        "predicted_wear": tr(lang, "predicted wear-out"),
    }
    if code in names:
        return names[code]
    # No code reaches a person raw (issue 18 finding 6): a rider's report by its problem, a
    # charge point's own error by its words, anything else named as a fault code.
    if code.startswith("reported_"):
        return tr(lang, "reported by a rider: {problem}",
                  problem=problem_name(lang, code.removeprefix("reported_")))
    if code.startswith("ocpp_"):
        return tr(lang, "charge point error {code}", code=code.removeprefix("ocpp_"))
    return tr(lang, "fault code {code}", code=code)


def causes_text(lang: str, causes: str) -> str:
    return tr(lang, ", ").join(cause_name(lang, c) for c in causes.split(",") if c)


def local(ts: datetime | str | None, tz: str) -> str:
    if ts is None:
        return "—"
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return local_day(ts, tz, "%m-%d %H:%M")


def state_name(lang: str, state: str) -> str:
    return {
        "open": tr(lang, "waiting for a technician"),
        "acknowledged": tr(lang, "acknowledged"),
        "arrived": tr(lang, "technician on site"),
        "resolved": tr(lang, "resolved"),
        "cleared": tr(lang, "cleared by the pile"),
    }.get(state, state)


def order_buttons(lang: str, order_id: int, state: str = "open") -> list[list[Button]]:
    row = []
    ref = str(order_id)
    if state == WorkOrderState.open:
        row.append(Button(tr(lang, "👌 Acknowledge"), data=WorkOrderAction("ack", ref).pack()))
    if state in (WorkOrderState.open, WorkOrderState.acknowledged):
        row.append(Button(tr(lang, "📍 Arrived"), data=WorkOrderAction("arr", ref).pack()))
    if state in workorders.ACTIVE:
        row.append(Button(tr(lang, "✅ Resolved"), data=WorkOrderAction("res", ref).pack()))
    return [row] if row else []


def order_line(lang: str, o: WorkOrder, tz: str) -> str:
    kind = tr(lang, "planned service") if o.kind == "preventive" else causes_text(lang, o.causes)
    return tr(lang, "#{id} {where} · {what} · {state} · since {since}", id=o.id, where=o.where,
              what=kind, state=state_name(lang, o.state), since=local(o.created_at, tz))


async def _refuse(turn: Turn) -> list[Reply]:
    return [Reply(tr(turn.lang, "This is for our technicians and supervisors only."))]


@router.command("orders", "workorders", help=N_("/orders — work orders"), staff=True)
async def orders(turn: Turn) -> list[Reply]:
    if not await staff.roles_of(turn.session, turn.rider_id):
        return await _refuse(turn)
    tz = turn.ctx.settings.server.timezone
    found = await workorders.active_for(turn.session, turn.rider_id)
    if not found:
        return [Reply(tr(turn.lang, "🔧 No open work orders. 👍"))]
    lines = [tr(turn.lang, "🔧 Open work orders ({n}):", n=len(found))]
    lines += [order_line(turn.lang, o, tz) for o in found[:20]]
    buttons = [[Button(tr(turn.lang, "#{id} {where}", id=o.id, where=o.where),
                       data=WorkOrderAction("show", str(o.id)).pack())] for o in found[:8]]
    return [Reply("\n".join(lines), buttons=buttons)]


async def show(turn: Turn, order_id: int) -> list[Reply]:
    order = await turn.session.get(WorkOrder, order_id)
    if order is None or not await workorders.may_act(turn.session, order, turn.rider_id):
        return await _refuse(turn)
    tz = turn.ctx.settings.server.timezone
    info = await workorders.card(turn.session, order, tz=tz)
    return [Reply(order_card(turn.lang, info, tz, order.state),
                  buttons=order_buttons(turn.lang, order_id, order.state))]


def order_card(lang: str, p: WorkOrderNotice, tz: str, state: str = "open") -> str:
    if p.order_kind == "preventive":
        head = tr(lang, "🗓 Planned service #{id}: {where}", id=p.order_id, where=p.where)
        what = tr(lang, "Predicted wear-out; visit by {when}.", when=local(p.planned_for, tz))
    else:
        head = tr(lang, "🔧 Work order #{id}: {where}", id=p.order_id, where=p.where)
        what = tr(lang, "Fault: {causes} ({severity})", causes=causes_text(lang, p.causes),
                  severity=severity_name(lang, p.severity))
    lines = [head, what, tr(lang, "📍 {site} · {address}", site=p.site, address=p.address)]
    if p.ack_due_at and state == WorkOrderState.open:
        lines.append(tr(lang, "Please acknowledge by {when}.", when=local(p.ack_due_at, tz)))
    if state != WorkOrderState.open:
        lines.append(tr(lang, "State: {state}", state=state_name(lang, state)))
    return "\n".join(lines)


def severity_name(lang: str, severity: str) -> str:
    return {"critical": tr(lang, "critical"), "warning": tr(lang, "warning")}.get(
        severity, severity)


@router.button(WorkOrderAction)
async def button(turn: Turn, p: WorkOrderAction) -> list[Reply]:
    action = p.action
    if (order_id := row_id(p.ref)) is None:
        return await orders(turn)
    if action == "show":
        return await show(turn, order_id)
    rider_id = turn.rider_id
    try:
        if action == "ack":
            order = await workorders.acknowledge(turn.session, order_id, rider_id, turn.now)
            text = tr(turn.lang, "👌 Work order #{id} acknowledged. On your way?", id=order_id)
        elif action == "arr":
            order = await workorders.arrive(turn.session, order_id, rider_id, turn.now)
            text = tr(turn.lang, "📍 Arrival at #{id} noted.", id=order_id)
        elif action == "res":
            target = await turn.session.get(WorkOrder, order_id)
            if target is None or not await workorders.may_act(turn.session, target, rider_id):
                raise workorders.NotAllowed(order_id)
            if target.state not in workorders.ACTIVE:
                return [Reply(tr(turn.lang, "Work order #{id} is already closed.", id=order_id))]
            await prompts.ask(turn.session, rider_id, RESOLVE_PROMPT, order_id, turn.now)
            return [Reply(tr(turn.lang, "✍️ What did you find and fix at {where}? Write a short "
                                        "note; you can send a photo first (or with the note "
                                        "as its caption).", where=target.where))]
        else:
            return await orders(turn)
    except workorders.NotAllowed:
        return await _refuse(turn)
    if order.state not in workorders.ACTIVE:
        return [Reply(tr(turn.lang, "Work order #{id} is already closed.", id=order_id))]
    return [Reply(text, buttons=order_buttons(turn.lang, order_id, order.state))]


async def answer_prompt(turn: Turn, prompt: prompts.ChatPrompt) -> list[Reply] | None:
    """A technician's note (and photo) for the order they are resolving; None: not for us."""
    if prompt.kind != RESOLVE_PROMPT:
        return None
    inc = turn.inc
    note = (inc.text or "").strip()
    if note.startswith("/"):
        return None  # a command wins over the question
    rider_id = turn.rider_id
    order = await turn.session.get(WorkOrder, prompt.ref)
    if order is None:
        await prompts.done(turn.session, rider_id)
        return None
    if inc.photo and not note:
        order.photo = inc.photo
        return [Reply(tr(turn.lang, "📷 Photo saved. Now the note, please."))]
    if not note:
        return [Reply(tr(turn.lang, "Please write a short note on what you fixed."))]
    try:
        order, closed = await workorders.resolve(turn.session, prompt.ref, rider_id, note,
                                                 inc.photo, turn.now)
    except workorders.NotAllowed:
        await prompts.done(turn.session, rider_id)
        return await _refuse(turn)
    await prompts.done(turn.session, rider_id)
    if not closed:
        return [Reply(tr(turn.lang, "Work order #{id} is already closed.", id=order.id))]
    return [Reply(tr(turn.lang, "✅ Work order #{id} resolved: {where} is back in service. "
                                "Thank you!", id=order.id, where=order.where))]


@router.command("promises", help=N_("/promises — the repair promise"), staff=True)
async def promises(turn: Turn) -> list[Reply]:
    """The service promise and where every open repair stands against it."""
    if not await staff.roles_of(turn.session, turn.rider_id):
        return await _refuse(turn)
    p = turn.ctx.settings.service_promises
    tz = turn.ctx.settings.server.timezone
    lang = turn.lang
    lines = [tr(lang, "⏱ Our promise: every fault is acknowledged by a technician within {m} "
                      "minutes; if not, a supervisor takes over and each rider it hit gets a "
                      "{coupon} coupon.", m=p.ack_minutes, coupon=_yuan(p.breach_coupon_fen))]
    found = [o for o in await workorders.active_for(turn.session, turn.rider_id)
             if o.kind == "repair"]
    if not found:
        lines.append(tr(lang, "No open repairs."))
    for o in found:
        if o.escalated_at is not None:
            status = tr(lang, "❌ broken at {when}, escalated", when=local(o.ack_due_at, tz))
        elif o.acknowledged_at is not None:
            status = tr(lang, "✅ kept (acknowledged {when})", when=local(o.acknowledged_at, tz))
        elif o.ack_due_at is None:
            status = "—"  # a repair gets its deadline when opened: nothing to count down
        else:
            due = o.ack_due_at if o.ack_due_at.tzinfo else o.ack_due_at.replace(
                tzinfo=ZoneInfo("UTC"))
            left = int((due - turn.now).total_seconds() // 60)
            status = (tr(lang, "⏳ {m} min left", m=left) if left >= 0
                      else tr(lang, "⚠️ overdue by {m} min", m=-left))
        lines.append(tr(lang, "#{id} {where}: {status}", id=o.id, where=o.where, status=status))
    return [Reply("\n".join(lines))]


def _yuan(fen: int) -> str:
    return yuan(fen)


@router.button(RateRepair)
async def rate(turn: Turn, p: RateRepair) -> list[Reply]:
    order_id, n = p.order_id, p.stars
    ok = await workorders.rate(turn.session, order_id, turn.rider_id,
                               n, turn.now)
    if not ok:
        return [Reply(tr(turn.lang, "Only riders whose charge this repair was about can rate "
                                    "it."))]
    return [Reply(tr(turn.lang, "⭐ Thanks! Your {n}-star rating is shown on the pile's card.",
                     n=n))]


# --- the web chat: staff log in from their own chat ------------------------------------------


@router.command("weblogin", help=N_(
    "/weblogin — a one-time link to work in the web chat (or log in there with the password an "
    "operator set)"), staff=True)
async def web_login(turn: Turn) -> list[Reply]:
    """/weblogin: a one-time link (10 minutes) that opens the web chat as this staff member."""
    lang = turn.lang
    if turn.inc.platform == "webchat":
        if web_sessions.staff_rider_of(turn.inc.user_id) is not None:
            return [Reply(tr(lang, "You are logged in to the web chat as staff. /logout ends "
                                   "it."))]
        return [Reply(tr(lang, "Staff: send /weblogin in your Telegram or WeChat chat with us "
                               "for a login link, or log in here with your password "
                               "(/login)."))]
    if not await staff.roles_of(turn.session, turn.rider_id):
        return [Reply(tr(lang, "This is for our staff only."))]
    token = await web_sessions.new_login_link(turn.session, turn.rider_id,
                                              turn.inc.platform, turn.now)
    url = f"{turn.ctx.settings.server.public_url.rstrip('/')}/webchat/login?t={token}"
    minutes = int(web_sessions.LINK_TTL.total_seconds() // 60)
    return [Reply(tr(lang, "🔑 Your web chat login link, for {m} minutes and one use:\n{url}\n"
                           "Open it in the browser you want to work in. Don't forward it: "
                           "whoever opens it acts as you.", m=minutes, url=url),
                  buttons=[[Button(tr(lang, "🔑 Open the web chat"), url=url)]])]


@router.command("logout", help=N_("/logout — end your web chat sessions"), staff=True)
@router.button(WebLogout)
async def web_logout(turn: Turn) -> list[Reply]:
    """/logout in their own chat: every web chat session of this staff member ends. (In the web
    chat itself, a logged-in /logout is answered by the web chat route.)"""
    lang = turn.lang
    if turn.inc.platform == "webchat":
        return [Reply(tr(lang, "You are not logged in as staff here."))]
    if not await staff.roles_of(turn.session, turn.rider_id):
        return [Reply(tr(lang, "This is for our staff only."))]
    ended = await web_sessions.end_all(turn.session, turn.rider_id, turn.now)
    if not ended:
        return [Reply(tr(lang, "You were not logged in to the web chat."))]
    return [Reply(tr(lang, "🚪 Logged out of the web chat ({n} session(s) ended).", n=ended))]
