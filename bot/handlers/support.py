"""Customer service in the conversation: one-tap reports with a photo, questions answered from
the FAQ or handed to a person, the emergency lane, and the staff side of tickets."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from bot.handlers.payloads import (
    AskPerson,
    Emergency,
    EndTicket,
    RateAnswer,
    ReportMenu,
    ReportProblem,
    SkipPhoto,
    TicketAction,
)
from bot.handlers.routing import Router
from bot.handlers.text import menu_buttons
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.billing.wallet import yuan
from core.charging.tables import Charge
from core.db import row_id, saved_id
from core.engagement import prompts, questions
from core.errors import UnknownPort
from core.piles.fleet import find_port
from core.piles.tables import port_code
from core.riders import limits
from core.riders.staff import NotStaff
from core.riders.tables import Rider
from core.support import emergencies
from core.support import tickets as support
from core.support.faq import Match
from core.support.faq_text import tokens
from core.support.photos import PhotoRejected
from core.support.tables import Ticket, TicketState
from notifications.replies import Button, Reply

log = logging.getLogger("chargebot.support")
router = Router(__name__)
DESK = ("private", "staff")  # ticket buttons and /tickets work in the staff group too
TICKET_REF = re.compile(r"#(\d+)")
PHOTO_PROMPT = "report_photo"
REPLY_PROMPT = "ticket_reply"
CLOSE_PROMPT = "ticket_close"
HUMAN = "human"  # the FAQ entry for "I want a person": answered by handing over


def problem_name(lang: str, problem: str | None) -> str:
    return {
        "wont_start": tr(lang, "won't start"),
        "stopped": tr(lang, "stopped while charging"),
        "damaged": tr(lang, "damaged socket"),
        "no_power": tr(lang, "no power"),
        "dirty": tr(lang, "dirty or blocked"),
        "other": tr(lang, "something else"),
    }.get(problem or "", problem or "")


def report_button(lang: str, target: str) -> Button:
    """target: a port code, or c<charge id>."""
    return Button(tr(lang, "🛠 Report a problem"), data=ReportMenu(target).pack())


# --- the rider's report -----------------------------------------------------------------------


async def _target(turn: Turn, target: str) -> tuple[str, int, int | None] | None:
    """(pile, port, charge) from a port code or one of the rider's own charges."""
    if target.startswith("c") and (charge_id := row_id(target[1:])) is not None:
        charge = await turn.session.get(Charge, charge_id)
        if charge is None or charge.rider_id != turn.rider_id:
            return None
        return charge.pile_id, charge.port_number, charge.id
    try:
        port, pile, _site = await find_port(turn.session, target)
    except UnknownPort:
        return None
    return pile.id, port.number, None


@router.button(ReportMenu)
async def report_menu_button(turn: Turn, p: ReportMenu) -> list[Reply]:
    return await report_menu(turn, p.target)


async def report_menu(turn: Turn, target: str) -> list[Reply]:
    found = await _target(turn, target)
    if found is None:
        return [Reply(tr(turn.lang, "I can't find that port or charge. Send the port code "
                                    "printed under the QR (like P0001-03)."))]
    pile_id, port, _ = found
    lang = turn.lang
    rows = [[Button(problem_name(lang, p), data=ReportProblem(target, p).pack()) for p in pair]
            for pair in zip(support.PROBLEMS[::2], support.PROBLEMS[1::2], strict=True)]
    return [Reply(tr(lang, "What is wrong with {where}?", where=port_code(pile_id, port)),
                  buttons=rows)]


async def _too_many(turn: Turn) -> Reply | None:
    if await limits.reports_allowed(turn.session, turn.rider_id, turn.now,
                                    turn.ctx.settings.limits.ticket_messages_per_10_min):
        return None
    return Reply(tr(turn.lang, "We have your messages; please give our team a few minutes to "
                               "answer before sending more."))


@router.button(ReportProblem)
async def report_button_pressed(turn: Turn, p: ReportProblem) -> list[Reply]:
    return await report(turn, p.target, p.problem)


async def report(turn: Turn, target: str, problem: str) -> list[Reply]:
    if (limited := await _too_many(turn)) is not None:
        return [limited]
    found = await _target(turn, target)
    if found is None or problem not in support.PROBLEMS:
        return await report_menu(turn, target)
    pile_id, port, charge_id = found
    ticket, _new = await support.open_ticket(
        turn.session, turn.rider, kind="report", now=turn.now, problem=problem,
        pile_id=pile_id, port=port, charge_id=charge_id)
    await prompts.ask(turn.session, turn.rider_id, PHOTO_PROMPT, saved_id(ticket), turn.now)
    # At the desk at once: a rider who walks away before the photo has still reported it.
    await support.post_to_desk(turn.session, ticket, turn.ctx.settings, turn.now)
    lang = turn.lang
    if problem == "other":
        return [Reply(tr(lang, "Tell us what is wrong with {where}: a few words, a photo, or "
                               "both.", where=port_code(pile_id, port)))]
    return [Reply(tr(lang, "📷 A photo helps the technician (and earns a bigger thank-you "
                           "coupon if the report is confirmed). Send one now, or tap Skip."),
                  buttons=[[Button(tr(lang, "Skip"), data=SkipPhoto(saved_id(ticket)).pack())]])]


@router.button(SkipPhoto)
async def skip_photo_button(turn: Turn, p: SkipPhoto) -> list[Reply]:
    return await skip_photo(turn, p.ticket_id)


async def skip_photo(turn: Turn, ticket_id: int) -> list[Reply]:
    ticket = await turn.session.get(Ticket, ticket_id)
    if ticket is None or ticket.rider_id != turn.rider_id:
        return [Reply(tr(turn.lang, "Sorry, that didn't work. Please try again."))]
    if ticket.problem == "other" and ticket.photo is None and not await _described(turn, ticket):
        # "Something else" with nothing said is an empty report: ask, keep the ticket open.
        return [Reply(tr(turn.lang, "Please tell us what is wrong first: a few words or a "
                                    "photo."))]
    await prompts.done(turn.session, turn.rider_id)
    return [_filed(turn, ticket)]


async def _described(turn: Turn, ticket: Ticket) -> bool:
    return await support.has_messages(turn.session, saved_id(ticket))


def _filed(turn: Turn, ticket: Ticket) -> Reply:
    return Reply(tr(turn.lang, "✅ Thank you! Report #{id} is with our team; answers come here. "
                               "Anything you write next is added to it.", id=ticket.id))


async def answer_prompt(turn: Turn, prompt: prompts.ChatPrompt) -> list[Reply] | None:
    """The rider's photo or words for a report, or a staff member's answer or resolution."""
    inc = turn.inc
    text = (inc.text or "").strip()
    if text.startswith("/"):
        return None  # a command wins over the question
    if prompt.kind == PHOTO_PROMPT:
        ticket = await turn.session.get(Ticket, prompt.ref)
        if ticket is None or ticket.state not in support.OPEN:
            await prompts.done(turn.session, turn.rider_id)
            return None
        if (refused := photo_refusal(turn)) is not None:
            return [refused]
        if not text and not inc.photo:
            return [Reply(tr(turn.lang, "Please describe the problem in a few words, or send a "
                                        "photo."))]
        photo = inc.photo
        msg = await support.add_message(turn.session, ticket, "rider", turn.rider_id, text,
                                        photo, turn.now)
        await prompts.done(turn.session, turn.rider_id)
        await support.post_to_desk(turn.session, ticket, turn.ctx.settings, turn.now,
                                   message=msg)
        return [_filed(turn, ticket)]
    if prompt.kind in (REPLY_PROMPT, CLOSE_PROMPT):
        if not text:
            return [Reply(tr(turn.lang, "Please write the answer as text."))]
        await prompts.done(turn.session, turn.rider_id)
        if prompt.kind == REPLY_PROMPT:
            return await staff_answer(turn, prompt.ref, text)
        return await staff_close(turn, prompt.ref, text)
    return None


def photo_refusal(turn: Turn) -> Reply | None:
    """A clear answer when the rider's photo could not be taken (the router tried already)."""
    exc = turn.photo_problem
    if exc is None:
        return None
    if isinstance(exc, PhotoRejected) and exc.reason == "too_large":
        mb = turn.ctx.settings.support.max_photo_bytes // (1024 * 1024)
        return Reply(tr(turn.lang, "That photo is too large (over {mb} MB). Please send a "
                                   "smaller one.", mb=mb))
    if isinstance(exc, PhotoRejected) and exc.reason == "too_many":
        return Reply(tr(turn.lang, "You have sent {n} photos today, the most we can take. "
                                   "Please describe the problem in words, or send the photo "
                                   "tomorrow.", n=exc.limit))
    if isinstance(exc, PhotoRejected):
        return Reply(tr(turn.lang, "That file is not a photo we can use (JPEG, PNG, WebP or "
                                   "GIF). Please send a picture."))
    return Reply(tr(turn.lang, "I couldn't get that photo. Please send it again."))


# --- free text: the open ticket, the emergency lane, the FAQ ----------------------------------


async def free_text(turn: Turn) -> list[Reply] | None:
    """Text that is not a command or a port code; None leaves it to the menu."""
    inc = turn.inc
    text = (inc.text or "").strip()
    if text and emergencies.is_emergency(text):
        return await emergency(turn, text)
    if (refused := photo_refusal(turn)) is not None:
        return [refused]
    current = await support.open_for(turn.session, turn.rider_id)
    if current is not None and (text or inc.photo):
        # In a question ticket, a question the FAQ answers is answered (issue 18 finding 1: an
        # open ticket swallowed every later question); the rider can still hand it on. A report
        # waiting for its description keeps every word.
        if current.kind == "question" and not inc.photo and text:
            match = await _match(turn, text)
            if match is not None and match.entry.key != HUMAN:
                return [_faq_reply(turn.lang, match, current)]
        if (limited := await _too_many(turn)) is not None:
            return [limited]
        photo = inc.photo
        msg = await support.add_message(turn.session, current, "rider", turn.rider_id, text,
                                        photo, turn.now)
        await support.post_to_desk(turn.session, current, turn.ctx.settings, turn.now,
                                   message=msg)
        return [Reply(tr(turn.lang, "✉️ Added to your ticket #{id}.", id=current.id),
                      buttons=_end_rows(turn.lang, current))]
    if inc.photo:
        return [Reply(tr(turn.lang, "Thanks for the photo. To report a broken port, open its "
                                    "card (scan the QR or send its code) and tap 🛠 Report a "
                                    "problem."))]
    if not tokens(text):
        return None  # a greeting or a slip: the menu answers it
    match = await _match(turn, text)
    lang = turn.lang
    if match is not None and match.entry.key != HUMAN:
        return [_faq_reply(lang, match, None)]
    if match is not None:  # "转人工": a person, asked for in words
        ticket, _ = await support.open_ticket(turn.session, turn.rider, kind="question",
                                              now=turn.now, text=text)
        await support.post_to_desk(turn.session, ticket, turn.ctx.settings, turn.now)
        return [Reply(tr(lang, "A person from our team will reply here (ticket #{id}).",
                         id=ticket.id), buttons=_end_rows(lang, ticket))]
    # No answer ready: a person is one tap away, but words we cannot place (a slip, a test)
    # do not open a ticket by themselves.
    return [Reply(tr(lang, "I don't have a ready answer to that. A person from our team can "
                           "reply here."),
                  buttons=[[Button(tr(lang, "💬 Ask a person"), data=AskPerson().pack())]])]


def _end_rows(lang: str, ticket: Ticket) -> list[list[Button]]:
    """"End conversation #N" — not on an emergency: staff close those, once all is safe."""
    if ticket.priority == "emergency":
        return []
    return [[Button(tr(lang, "✅ End conversation #{id}", id=ticket.id),
                    data=EndTicket(saved_id(ticket)).pack())]]


async def _match(turn: Turn, text: str) -> Match | None:
    """The FAQ entry `text` asks about, if any; every question is logged for the digest."""
    match = (await questions.index(turn.session)).answer(text)
    await questions.log(turn.session, turn.rider_id, text, turn.lang,
                        match.entry.key if match else None, turn.now)
    return match


def _faq_reply(lang: str, match: Match, current: Ticket | None) -> Reply:
    """The FAQ's answer; with a conversation open, it offers to add the question to it."""
    if current is None:
        return Reply(match.entry.answer_in(lang),
                     buttons=[[Button(tr(lang, "💬 Not what I asked: a person"),
                                      data=AskPerson().pack())]])
    return Reply(match.entry.answer_in(lang),
                 buttons=[[Button(tr(lang, "💬 Not solved: add it to #{id}", id=current.id),
                                  data=AskPerson().pack())],
                          *_end_rows(lang, current)])


@router.button(AskPerson)
async def ask_person(turn: Turn) -> list[Reply]:
    """The FAQ answer did not help: the last question goes to a person."""
    # The question the rider just asked goes with it, so they need not type it again.
    asked = await questions.last_question(turn.session, turn.rider_id,
                                          turn.now - timedelta(hours=1))
    ticket = await support.open_for(turn.session, turn.rider_id)
    if ticket is None:
        ticket, _ = await support.open_ticket(turn.session, turn.rider, kind="question",
                                              now=turn.now, text=asked or "")
        await support.post_to_desk(turn.session, ticket, turn.ctx.settings, turn.now)
    elif asked:
        msg = await support.add_message(turn.session, ticket, "rider", turn.rider_id, asked,
                                        None, turn.now)
        await support.post_to_desk(turn.session, ticket, turn.ctx.settings, turn.now,
                                   message=msg)
    return [Reply(tr(turn.lang, "A person from our team will answer here (ticket #{id}). Write "
                                "your question; everything you send is added to it.",
                     id=ticket.id), buttons=_end_rows(turn.lang, ticket))]


@router.button(EndTicket)
async def end_ticket(turn: Turn, p: EndTicket) -> list[Reply]:
    """The rider leaves the conversation: what they write next is answered as usual again."""
    ended = await support.end_by_rider(turn.session, p.ticket_id, turn.rider_id, turn.now)
    if ended is None:
        return [Reply(tr(turn.lang, "That conversation is already over."),
                      buttons=menu_buttons(turn.lang))]
    return [Reply(tr(turn.lang, "✅ Conversation #{id} ended. Write any time if you need us "
                                "again.", id=ended.id), buttons=menu_buttons(turn.lang))]


@router.button(Emergency)
async def emergency_button(turn: Turn, p: Emergency) -> list[Reply]:
    return await emergency(turn, charge_id=row_id(p.ref))


async def emergency(turn: Turn, text: str = "", charge_id: int | None = None) -> list[Reply]:
    pile_id = port = None
    if charge_id is not None:
        charge = await turn.session.get(Charge, charge_id)
        if charge is not None and charge.rider_id == turn.rider_id:
            pile_id, port = charge.pile_id, charge.port_number
        else:
            charge_id = None
    ticket = await emergencies.report_emergency(
        turn.session, turn.rider, turn.ctx.settings, turn.now, text=text, pile_id=pile_id,
        port=port, charge_id=charge_id)
    return [Reply(tr(turn.lang, "⚠️ Safety first: if you can do it safely, switch off and "
                                "unplug your charger, and keep away from the pile. If there is "
                                "fire or smoke, call 119. Our staff are alerted now (ticket "
                                "#{id}) and will contact you here within a minute.",
                     id=ticket.id))]


# --- staff ------------------------------------------------------------------------------------


def ticket_buttons(lang: str, ticket_id: int, kind: str = "report") -> list[list[Button]]:
    row = [Button(tr(lang, "✋ Take"), data=TicketAction("take", str(ticket_id)).pack()),
           Button(tr(lang, "💬 Reply"), data=TicketAction("reply", str(ticket_id)).pack())]
    second = [Button(tr(lang, "✅ Close"), data=TicketAction("close", str(ticket_id)).pack())]
    if kind == "report":
        second.insert(0, Button(tr(lang, "✔️ Verify report"),
                                data=TicketAction("ver", str(ticket_id)).pack()))
    else:
        second.insert(0, Button(tr(lang, "📚 Save as FAQ"),
                                data=TicketAction("faq", str(ticket_id)).pack()))
    return [row, second]


@router.button(TicketAction, scopes=DESK)
async def staff_button(turn: Turn, p: TicketAction) -> list[Reply]:
    action, ref = p.action, p.ref
    lang = turn.lang
    if not await support.may_answer(turn.session, turn.rider_id):
        return [Reply(tr(lang, "This is for our staff only."))]
    if action == "list" or (ticket_id := row_id(ref)) is None:
        return await tickets(turn)
    try:
        if action == "take":
            t = await support.take(turn.session, ticket_id, turn.rider_id, turn.now)
            return [Reply(tr(lang, "✋ Ticket #{id} is yours.", id=t.id),
                          buttons=ticket_buttons(lang, ticket_id, t.kind))]
        if action in ("reply", "close"):
            ticket = await turn.session.get(Ticket, ticket_id)
            if ticket is None:
                raise LookupError(ticket_id)
            if ticket.state == TicketState.closed:
                raise support.TicketClosed(ticket_id)
            kind = REPLY_PROMPT if action == "reply" else CLOSE_PROMPT
            await prompts.ask(turn.session, turn.rider_id, kind, ticket_id, turn.now)
            if action == "reply":
                return [Reply(tr(lang, "💬 Write your answer to #{id}; it goes to the rider.",
                                 id=ticket_id))]
            return [Reply(tr(lang, "✅ How was #{id} resolved? One line for the rider.",
                             id=ticket_id))]
        if action == "faq":
            return await save_as_faq(turn, ticket_id)
        if action == "ver":
            t, fen = await support.verify(turn.session, ticket_id, turn.rider_id,
                                          turn.now, turn.ctx.settings)
            if not fen:
                return [Reply(tr(lang, "Report #{id} was already verified.", id=t.id))]
            return [Reply(tr(lang, "✔️ Report #{id} verified: the rider gets a {amount} coupon; "
                                   "work order #{order}.", id=t.id, amount=yuan(fen),
                             order=t.work_order_id))]
    except support.TicketClosed:
        return [Reply(tr(lang, "Ticket #{id} is already closed; nothing was sent.",
                         id=ticket_id))]
    except LookupError:
        return [Reply(tr(lang, "There is no report #{id} to do that with.", id=ticket_id))]
    return await tickets(turn)


async def save_as_faq(turn: Turn, ticket_id: int) -> list[Reply]:
    """The rider's question and the last staff answer become an FAQ entry (rider's language)."""
    ticket = await turn.session.get(Ticket, ticket_id)
    if ticket is None:
        raise LookupError(ticket_id)
    asked, answer = await support.question_and_answer(turn.session, ticket_id)
    if not asked or not answer:
        return [Reply(tr(turn.lang, "#{id} needs the rider's question and a staff answer "
                                    "before it can become an FAQ entry.", id=ticket_id))]
    rider = await turn.session.get(Rider, ticket.rider_id)
    entry = await questions.save_from_ticket(turn.session, ticket_id, asked, answer,
                                             rider.language if rider else "zh_CN",
                                             turn.rider_id, turn.now)
    return [Reply(tr(turn.lang, "📚 Saved: riders asking like #{id} now get this answer "
                                "(FAQ {key}).", id=ticket_id, key=entry.key))]


async def _staff_write(turn: Turn, ticket_id: int, write: Any) -> Reply | None:
    """Run a staff write on a ticket; a refusal as the staff member's reply, else None."""
    try:
        await write(turn.session, ticket_id, turn.rider_id)
    except NotStaff:
        return Reply(tr(turn.lang, "This is for our staff only."))
    except support.TicketClosed:
        return Reply(tr(turn.lang, "Ticket #{id} is already closed; nothing was sent.",
                        id=ticket_id))
    except LookupError:
        return Reply(tr(turn.lang, "There is no ticket #{id}.", id=ticket_id))
    return None


async def desk_reply(turn: Turn, text: str) -> list[Reply]:
    """The staff group: a reply to a ticket's post answers its rider; anything else is staff
    talking among themselves."""
    if turn.inc.reply_to and text and (m := TICKET_REF.search(turn.inc.reply_to)):
        return await staff_answer(turn, int(m.group(1)), text)
    return []


async def staff_answer(turn: Turn, ticket_id: int, text: str) -> list[Reply]:
    refused = await _staff_write(turn, ticket_id, lambda s, t, by: support.answer(
        s, t, by, text, turn.now))
    return [refused or Reply(tr(turn.lang, "📨 Sent to the rider of #{id}.", id=ticket_id),
                             buttons=ticket_buttons(turn.lang, ticket_id, "question"))]


async def staff_close(turn: Turn, ticket_id: int, resolution: str) -> list[Reply]:
    refused = await _staff_write(turn, ticket_id, lambda s, t, by: support.close(
        s, t, by, resolution, turn.now))
    return [refused or Reply(tr(turn.lang, "✅ Ticket #{id} closed; the rider was told.",
                                id=ticket_id))]


@router.command("tickets", scopes=DESK, help=N_("/tickets — riders' tickets"), staff=True)
async def tickets(turn: Turn) -> list[Reply]:
    lang = turn.lang
    if not await support.may_answer(turn.session, turn.rider_id):
        return [Reply(tr(lang, "This is for our staff only."))]
    found = await support.queue(turn.session)
    if not found:
        return [Reply(tr(lang, "🎫 No open tickets. 👍"))]
    lines = [tr(lang, "🎫 Open tickets ({n}):", n=len(found))]
    for t in found:
        mark = "🆘 " if t.priority == "emergency" else ""
        what = problem_name(lang, t.problem) if t.problem else kind_name(lang, t.kind)
        where = port_code(t.pile_id, t.port) if t.pile_id and t.port else (t.pile_id or "")
        lines.append(f"{mark}#{t.id} {what} {where}".rstrip())
    buttons = [[Button(f"#{t.id}", data=TicketAction("take", str(t.id)).pack())
                for t in found[i:i + 4]]
               for i in range(0, min(len(found), 8), 4)]
    return [Reply("\n".join(lines), buttons=buttons)]


def kind_name(lang: str, kind: str) -> str:
    return {"report": tr(lang, "report"), "question": tr(lang, "question"),
            "emergency": tr(lang, "emergency")}.get(kind, kind)


@router.button(RateAnswer)
async def rate(turn: Turn, p: RateAnswer) -> list[Reply]:
    ticket_id, n = p.ticket_id, p.stars
    if not await support.rate(turn.session, ticket_id, turn.rider_id, n):
        return [Reply(tr(turn.lang, "Sorry, that didn't work. Please try again."))]
    return [Reply(tr(turn.lang, "⭐ Thank you for rating our answer."))]
