"""Riders' voice: site reviews after a charge, /suggest, and the FAQ's most asked questions."""

from __future__ import annotations

from bot.handlers.payloads import (
    AskPerson,
    DecideIdea,
    FaqEntry,
    ReviewDone,
    ReviewStars,
    ReviewStart,
    ReviewTag,
    Vote,
)
from bot.handlers.routing import Router
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.charging.tables import Charge
from core.db import saved_id
from core.engagement import prompts, questions
from core.support import reviews, suggestions, votes
from core.support import tickets as support
from core.support.suggestions import SuggestionState
from notifications.replies import Button, Reply

router = Router(__name__)
SUGGEST_PROMPT = "suggest"
REVIEW_PROMPT = "review_note"


def tag_name(lang: str, tag: str) -> str:
    return {
        "fast": tr(lang, "charges fast"), "easy_to_find": tr(lang, "easy to find"),
        "clean": tr(lang, "clean"), "safe": tr(lang, "feels safe"),
        "good_price": tr(lang, "good price"), "slow": tr(lang, "slow"),
        "hard_to_find": tr(lang, "hard to find"), "dirty": tr(lang, "dirty"),
    }.get(tag, tag)


def summary_line(lang: str, avg: float | None, n: int, tags: list[str]) -> str | None:
    if not n or avg is None:
        return None
    line = tr(lang, "⭐ {avg:.1f} from {n} riders", avg=avg, n=n)
    if tags:
        line += " · " + tr(lang, ", ").join(tag_name(lang, t) for t in tags)
    return line


# --- site reviews -----------------------------------------------------------------------------


async def _own_charge(turn: Turn, charge_id: int) -> Charge | None:
    charge = await turn.session.get(Charge, charge_id)
    if charge is None or charge.rider_id != turn.rider_id or charge.ended_at is None:
        return None
    return charge


@router.button(ReviewStart)
async def review_start(turn: Turn, p: ReviewStart) -> list[Reply]:
    charge = await _own_charge(turn, p.charge_id)
    if charge is None:
        return [Reply(tr(turn.lang, "Only your own finished charges can be rated."))]
    return [Reply(tr(turn.lang, "How was charging at this site?"),
                  buttons=[[Button("⭐" * n, data=ReviewStars(saved_id(charge), n).pack())
                            for n in range(1, 6)]])]


@router.button(ReviewStars)
async def review_stars(turn: Turn, p: ReviewStars) -> list[Reply]:
    charge, stars = await _own_charge(turn, p.charge_id), p.stars
    if charge is None or not 1 <= stars <= 5:
        return [Reply(tr(turn.lang, "Only your own finished charges can be rated."))]
    review = await reviews.rate(turn.session, turn.rider_id, saved_id(charge), charge.site_id,
                                stars, turn.now)
    await prompts.ask(turn.session, turn.rider_id, REVIEW_PROMPT, saved_id(review), turn.now)
    return [_tags_reply(turn, review)]


def _tags_reply(turn: Turn, review: reviews.SiteReview) -> Reply:
    lang = turn.lang
    chosen = set(review.tags.split(","))
    buttons = [Button(("✅ " if t in chosen else "") + tag_name(lang, t),
                      data=ReviewTag(saved_id(review), t).pack()) for t in reviews.TAGS]
    rows = [buttons[i:i + 4] for i in range(0, len(buttons), 4)]
    rows.append([Button(tr(lang, "Done"), data=ReviewDone(saved_id(review)).pack())])
    return Reply(tr(lang, "Thanks! Tap what fits (optional); you can also send a few words or a "
                          "photo of the site."), buttons=rows)


@router.button(ReviewTag)
async def review_tag(turn: Turn, p: ReviewTag) -> list[Reply]:
    tag = p.tag
    review = await turn.session.get(reviews.SiteReview, p.review_id) if p.review_id else None
    if review is None or review.rider_id != turn.rider_id:
        return [Reply(tr(turn.lang, "Only your own finished charges can be rated."))]
    reviews.toggle_tag(review, tag)
    return [_tags_reply(turn, review)]


@router.button(ReviewDone)
async def review_done(turn: Turn) -> list[Reply]:
    await prompts.done(turn.session, turn.rider_id)
    return [Reply(tr(turn.lang, "⭐ Thank you! Your review helps other riders choose."))]


async def answer_prompt(turn: Turn, prompt: prompts.ChatPrompt) -> list[Reply] | None:
    text = (turn.inc.text or "").strip()
    if text.startswith("/"):
        return None
    if prompt.kind == REVIEW_PROMPT:
        review = await turn.session.get(reviews.SiteReview, prompt.ref)
        if review is None:
            return None
        if turn.inc.photo:
            review.photo = turn.inc.photo
        if text:
            review.text = text[:500]
        if not (text or turn.inc.photo):
            return None
        return await review_done(turn)
    if prompt.kind == SUGGEST_PROMPT:
        if not text:
            return [Reply(tr(turn.lang, "Please write your idea as text."))]
        await prompts.done(turn.session, turn.rider_id)
        return await suggest(turn, text)
    return None


# --- suggestions ------------------------------------------------------------------------------


@router.command("suggest", help=N_("/suggest — an idea for us"))
async def suggest(turn: Turn, text: str) -> list[Reply]:
    if not text.strip():
        await prompts.ask(turn.session, turn.rider_id, SUGGEST_PROMPT, 0, turn.now)
        return [Reply(tr(turn.lang, "💡 What would make charging better for you? Write your "
                                    "idea; if we adopt it, you charge free for 3 months."))]
    s = await suggestions.submit(turn.session, turn.rider_id, text, turn.now)
    return [Reply(tr(turn.lang, "💡 Thank you! Idea #{id} is with our team.", id=s.id))]


@router.command("suggestions")
async def suggestion_list(turn: Turn) -> list[Reply]:
    if not await support.may_answer(turn.session, turn.rider_id):
        return [Reply(tr(turn.lang, "This is for our staff only."))]
    found = await suggestions.pending(turn.session)
    if not found:
        return [Reply(tr(turn.lang, "💡 No new ideas."))]
    return [Reply(f"💡 #{s.id}: {s.text}",
                  buttons=[[Button(tr(turn.lang, "👍 Adopt"),
                                   data=DecideIdea("yes", saved_id(s)).pack()),
                            Button(tr(turn.lang, "Decline"),
                                   data=DecideIdea("no", saved_id(s)).pack())]])
            for s in found]


@router.button(DecideIdea)
async def decide(turn: Turn, p: DecideIdea) -> list[Reply]:
    if not await support.may_answer(turn.session, turn.rider_id):
        return [Reply(tr(turn.lang, "This is for our staff only."))]
    s = await suggestions.decide(turn.session, p.suggestion_id, turn.rider_id,
                                 p.verdict == "yes", turn.now) if p.suggestion_id else None
    if s is None:
        return [Reply(tr(turn.lang, "That idea was already decided."))]
    if s.state == SuggestionState.adopted:
        return [Reply(tr(turn.lang, "👍 Idea #{id} adopted: its rider charges free for 3 "
                                    "months.", id=s.id))]
    return [Reply(tr(turn.lang, "Idea #{id} declined; the rider was thanked.", id=s.id))]


# --- the FAQ in the menu ----------------------------------------------------------------------


@router.command("faq", help=N_("/faq — common questions"))
async def faq_command(turn: Turn) -> list[Reply]:
    return await faq_menu(turn)


@router.button(FaqEntry)
async def faq_button(turn: Turn, p: FaqEntry) -> list[Reply]:
    return await faq_menu(turn, p.key)


async def faq_menu(turn: Turn, key: str = "") -> list[Reply]:
    lang = turn.lang
    idx = await questions.index(turn.session)
    if key and (entry := idx.get(key)) is not None:
        return [Reply(entry.answer_in(lang),
                      buttons=[[Button(tr(lang, "❓ More questions"), data=FaqEntry().pack()),
                                Button(tr(lang, "💬 Ask a person"), data=AskPerson().pack())]])]
    top = await questions.top_entries(turn.session)
    return [Reply(tr(lang, "❓ What riders ask most:"),
                  buttons=[[Button(e.question_in(lang)[:40], data=FaqEntry(e.key).pack())]
                           for e in top]
                  + [[Button(tr(lang, "💬 Ask a person"), data=AskPerson().pack())]])]


# --- the monthly best-pile vote ---------------------------------------------------------------


@router.command("vote", help=N_("/vote — best site of the month"))
async def vote_menu(turn: Turn) -> list[Reply]:
    lang = turn.lang
    sites = await votes.candidates(turn.session)
    if not sites:
        return [Reply(tr(lang, "No sites to vote for yet."))]
    return [Reply(tr(lang, "🏆 Which site was the best place to charge this month? One vote "
                           "per rider; you can change it until the month ends."),
                  buttons=[[Button(s.name[:40], data=Vote(s.id).pack())] for s in sites])]


@router.button(Vote)
async def vote(turn: Turn, p: Vote) -> list[Reply]:
    site_id = p.site_id
    month = votes.month_of(turn.now)
    if not await votes.cast(turn.session, month, turn.rider_id, site_id, turn.now):
        return [Reply(tr(turn.lang, "This vote is closed."))]
    return [Reply(tr(turn.lang, "🏆 Thanks! Your vote for {month} is counted.", month=month))]
