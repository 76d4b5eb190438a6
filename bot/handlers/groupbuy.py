"""Community offers on the rider's side: group-buy top-ups and partner vouchers.

Callback data: `gb:join:<deal id>` (the card's Join: shows what joining costs, moves nothing)
and `gb:pay:<deal id>` (pays the price into the deal's hold). Both are pressed in the rider's
own chat; a Join pressed on a group's card is answered in private by the skin.
"""

from __future__ import annotations

from typing import Any

from bot.handlers.payloads import GroupBuyAction, Wallet
from bot.handlers.rendering import render_notice, renders
from bot.handlers.routing import Router
from bot.handlers.staff import local
from bot.handlers.turn import Turn
from bot.i18n import tr
from core import outbox
from core.billing import wallet
from core.billing.wallet import yuan
from core.db import saved_id
from core.engagement import groupbuy, vouchers
from core.engagement.groupbuy import DealState, DealTerms, GroupDeal
from core.notices import KINDS
from core.notices.chat import RepliesNotice
from core.notices.engagement import (
    GroupBuyExpiredNotice,
    GroupBuyFilledNotice,
    VoucherIssuedNotice,
    VoucherRedeemedNotice,
)
from notifications.replies import Button, Reply

router = Router(__name__)
DEFAULT_TZ = "Asia/Shanghai"


def _tz(turn: Turn) -> str:
    return turn.ctx.settings.server.timezone


# --- deal cards -------------------------------------------------------------------------------


def deal_card(lang: str, p: dict[str, Any], tz: str = DEFAULT_TZ) -> Reply:
    """The deal as posted in a group (or to its creator): `groupbuy.card_payload(deal)`."""
    lines = [tr(lang, "👥 Group top-up: {size} riders each pay {price} and get {topup} "
                      "({percent}% off).", size=p["size"], price=yuan(p["price_fen"]),
                topup=yuan(p["topup_fen"]), percent=p["percent_off"])]
    if p["state"] == "filled":
        lines.append(tr(lang, "🎉 Full: every member got {topup} for {price}.",
                        topup=yuan(p["topup_fen"]), price=yuan(p["price_fen"])))
        return Reply("\n".join(lines))
    if p["state"] == "expired":
        lines.append(tr(lang, "⌛ Ended without a full group: every member got their money "
                              "back."))
        return Reply("\n".join(lines))
    lines.append(tr(lang, "{joined}/{size} joined · open until {until}", joined=p["joined"],
                    size=p["size"], until=local(p["expires_at"], tz)))
    lines.append(tr(lang, "On WeChat or web chat, join with: /groupbuy {code}", code=p["code"]))
    return Reply("\n".join(lines),
                 buttons=[[Button(tr(lang, "🙋 Join"),
                                  data=GroupBuyAction("join", p["deal_id"]).pack())]])


def _offer(turn: Turn, deal: GroupDeal, balance_fen: int) -> Reply:
    """What joining means, before any money moves."""
    lang = turn.lang
    text = tr(lang, "👥 Group top-up {code}: pay {price} from your wallet now. When {size} "
                    "riders have joined by {until}, each gets {topup}. If the group does not "
                    "fill, your {price} comes back.", code=deal.code,
              price=yuan(deal.price_fen), size=deal.size, until=local(deal.expires_at, _tz(turn)),
              topup=yuan(deal.topup_fen))
    text += "\n" + tr(lang, "{joined}/{size} joined. Your balance: {balance}", joined=deal.joined,
                      size=deal.size, balance=yuan(balance_fen))
    if balance_fen < deal.price_fen:
        return Reply(text + "\n" + tr(lang, "Top up first, then join."),
                     buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])
    return Reply(text, buttons=[[Button(tr(lang, "✅ Pay {price} and join",
                                           price=yuan(deal.price_fen)),
                                        data=GroupBuyAction("pay", saved_id(deal)).pack())]])


def _closed(lang: str, state: str) -> Reply:
    if state == DealState.expired:
        return Reply(tr(lang, "⌛ This group-buy has ended; nobody can join it any more."))
    return Reply(tr(lang, "This group-buy is already full. Look out for the next one!"))


def _already(lang: str, deal: GroupDeal) -> Reply:
    return Reply(tr(lang, "You're already in this group-buy ({joined}/{size} joined).",
                    joined=deal.joined, size=deal.size))


# --- commands and buttons ---------------------------------------------------------------------


@router.command("groupbuy", scopes=("private", "riders"))
async def command(turn: Turn, arg: str, terms: DealTerms | None = None) -> list[Reply]:
    """`/groupbuy` starts a deal (in a group: that group's deal); `/groupbuy CODE` offers to join.

    `terms` come from the caller's settings; the defaults are 3 riders, 10 % off ¥50, 24 h.
    """
    if arg.strip():
        return await _show_offer(turn, arg.strip())
    inc = turn.inc
    deal = await groupbuy.create(
        turn.session, turn.rider_id, turn.now, terms,
        platform=inc.platform if inc.group else None, chat_id=inc.chat_id if inc.group else None)
    card = deal_card(turn.lang, groupbuy.card_payload(deal), _tz(turn))
    if inc.group:
        return [card]
    return [card, Reply(tr(turn.lang, "Share the code {code} with friends: they join with "
                                      "/groupbuy {code}.", code=deal.code))]


async def button(turn: Turn, arg: str) -> list[Reply]:
    """`gb:{arg}` pressed in the rider's own chat."""
    p = GroupBuyAction.unpack(f"{GroupBuyAction.prefix}:{arg}")
    if p is None:
        return [Reply(tr(turn.lang, "That group-buy no longer exists."))]
    return await pressed(turn, p)


@router.button(GroupBuyAction)
async def pressed(turn: Turn, p: GroupBuyAction) -> list[Reply]:
    """`gb:join:<id>` → what joining costs; `gb:pay:<id>` → pay into the hold and join."""
    if p.action == "join":
        return await _show_offer(turn, p.deal_id)
    if p.action == "pay":
        return await _join(turn, p.deal_id)
    return [Reply(tr(turn.lang, "That group-buy no longer exists."))]


@router.button(GroupBuyAction, scopes=("riders",))
async def pressed_in_group(turn: Turn, p: GroupBuyAction) -> list[Reply]:
    """A Join on a riders' group card: what it costs (and the rider's balance) goes to their
    private chat; the group hears only where to look."""
    inc = turn.inc
    private = await pressed(turn, p)
    await outbox.enqueue(turn.session, turn.rider_id,
                         RepliesNotice(replies=[r.as_dict() for r in private]),
                         f"gb-private:{inc.platform}:{inc.nonce}", now=turn.now)
    deal = await groupbuy.find(turn.session, p.deal_id)
    link = f"https://t.me/{turn.ctx.settings.telegram.bot_username}?start=gb_{deal.code}"
    return [Reply(tr(turn.lang, "{name}: the details are in your private chat with me. "
                                "Nothing there? Open {link}", name=inc.display_name or "👋",
                     link=link))]


async def _show_offer(turn: Turn, ref: int | str) -> list[Reply]:
    lang = turn.lang
    try:
        deal = await groupbuy.find(turn.session, ref)
    except groupbuy.UnknownDeal:
        return [Reply(tr(lang, "No group-buy has the code {code}.",
                         code=groupbuy.normalise_code(str(ref))))]
    assert deal.id is not None
    if await groupbuy.member(turn.session, deal.id, turn.rider_id) is not None:
        return [_already(lang, deal)]
    if (state := groupbuy.closed_state(deal, turn.now)) is not None:
        return [_closed(lang, state)]
    return [_offer(turn, deal, await wallet.balance(turn.session, turn.rider_id))]


async def _join(turn: Turn, deal_id: int) -> list[Reply]:
    lang = turn.lang
    try:
        done = await groupbuy.join(turn.session, deal_id, turn.rider_id, turn.now)
    except groupbuy.UnknownDeal:
        return [Reply(tr(lang, "That group-buy no longer exists."))]
    except groupbuy.AlreadyJoined:
        return [_already(lang, await groupbuy.find(turn.session, deal_id))]
    except groupbuy.DealClosed as exc:
        return [_closed(lang, exc.state)]
    except groupbuy.NotEnoughForDeal as exc:
        return [Reply(tr(lang, "Your balance {balance} is not enough for {price}. Top up first.",
                         balance=yuan(exc.balance_fen), price=yuan(exc.deal.price_fen)),
                      buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])]
    deal = done.deal
    if done.filled:
        return [Reply(tr(lang, "🎉 You completed the group! Every member gets {topup} for "
                               "{price}.", topup=yuan(deal.topup_fen),
                         price=yuan(deal.price_fen)))]
    return [Reply(tr(lang, "✅ You're in: {price} is held for the group. {joined}/{size} joined; "
                           "{left} more needed by {until}. Friends join with /groupbuy {code}.",
                     price=yuan(deal.price_fen), joined=deal.joined, size=deal.size,
                     left=deal.size - deal.joined, until=local(deal.expires_at, _tz(turn)),
                     code=deal.code))]


# --- partner vouchers -------------------------------------------------------------------------


def voucher_line(lang: str, v: VoucherIssuedNotice, tz: str = DEFAULT_TZ) -> str:
    return tr(lang, "🎟 {title} · code {code} · valid until {until}", title=v.title_in(lang),
              code=vouchers.display_code(v.code), until=local(v.expires_at, tz))


@router.command("vouchers")
async def vouchers_list(turn: Turn) -> list[Reply]:
    """`/vouchers`: the rider's unused partner vouchers."""
    found = await vouchers.of_rider(turn.session, turn.rider_id, turn.now)
    if not found:
        return [Reply(tr(turn.lang, "🎟 You have no partner vouchers right now."))]
    lines = [tr(turn.lang, "🎟 Your vouchers (show the code at the shop):")]
    lines += [voucher_line(turn.lang, vouchers.notice(v), _tz(turn)) for v in found]
    return [Reply("\n".join(lines))]


# --- outbox notices ---------------------------------------------------------------------------


def render(kind: str, payload: dict[str, Any], lang: str) -> list[Reply] | None:
    """A stored row of one of this module's kinds (None for any other kind)."""
    cls = KINDS.get(kind)
    if cls not in (GroupBuyFilledNotice, GroupBuyExpiredNotice, VoucherIssuedNotice,
                   VoucherRedeemedNotice):
        return None
    return render_notice(cls.from_payload(payload), lang)


@renders(GroupBuyFilledNotice)
def deal_filled(n: GroupBuyFilledNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🎉 Group-buy {code} is full: you got {topup} for {price}. "
                           "Balance: {balance}", code=n.code, topup=yuan(n.topup_fen),
                     price=yuan(n.price_fen), balance=yuan(n.balance_fen)))]


@renders(GroupBuyExpiredNotice)
def deal_expired(n: GroupBuyExpiredNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "⌛ Group-buy {code} did not fill in time, so nobody was charged: "
                           "your {price} is back. Balance: {balance}", code=n.code,
                     price=yuan(n.price_fen), balance=yuan(n.balance_fen)))]


@renders(VoucherIssuedNotice)
def voucher_issued(n: VoucherIssuedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🎁 You earned a partner voucher!") + "\n" + voucher_line(lang, n))]


@renders(VoucherRedeemedNotice)
def voucher_redeemed(n: VoucherRedeemedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🎟 Voucher {code} ({title}) was used. Enjoy!",
                     code=vouchers.display_code(n.code), title=n.title_in(lang)))]
