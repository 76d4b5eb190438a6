"""Family wallet: the owner's balance pays members' charges, each within a monthly limit.

`/family` shows the card (owner or member view), `/family CODE` joins, and the buttons are
`family:inv:<limit fen>`, `family:rm:<rider>` → `family:rmok:<rider>`, `family:leave` →
`family:leaveok`.
"""

from __future__ import annotations

from bot.handlers.payloads import FamilyAction
from bot.handlers.routing import Router
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.billing import family, wallet
from core.billing.wallet import yuan
from core.db import row_id
from core.riders.tables import Rider
from notifications.replies import Button, Reply

router = Router(__name__)
INVITE_LIMITS_FEN = (0, 2000, 5000)  # none, ¥20, ¥50 a month


def _rider_id(turn: Turn) -> int:
    rid = turn.rider_id
    assert rid is not None
    return rid


def _back(lang: str) -> list[Button]:
    return [Button(tr(lang, "👨‍👩‍👧 Family wallet"), data=FamilyAction().pack())]


async def _members(turn: Turn) -> list[tuple[int, str, int, int]]:
    """(rider id, label, spent this month, limit); riders without a name are "Member n"."""
    rows = await family.spending(turn.session, _rider_id(turn), turn.now)
    return [(rid, name or tr(turn.lang, "Member {n}", n=i), spent, limit)
            for i, (rid, name, spent, limit) in enumerate(rows, start=1)]


async def _owner_name(turn: Turn, owner_id: int) -> str:
    """The payer's display name; "" when the platform gave none (e.g. the web chat)."""
    owner = await turn.session.get(Rider, owner_id)
    return owner.display_name if owner else ""


async def card(turn: Turn) -> list[Reply]:
    lang = turn.lang
    me = _rider_id(turn)
    found = await family.membership(turn.session, me)
    if found is not None:
        return [await _member_card(turn, *found)]
    if await family.owned_family(turn.session, me) is None:
        text = tr(lang, "👨‍👩‍👧 Family wallet: your family charges from your balance, each "
                        "within a monthly limit you choose.\nInvite someone below. Got a code? "
                        "Send: /family <code>")
        return [Reply(text, buttons=[_invite_buttons(lang)])]
    balance = await wallet.balance(turn.session, me)
    lines = [tr(lang, "👨‍👩‍👧 Family wallet. Your balance {balance} pays your members' charges.",
                balance=yuan(balance))]
    members = await _members(turn)
    for _rid, label, spent, limit in members:
        if limit:
            lines.append(tr(lang, "• {name}: {spent} this month, limit {limit}",
                            name=label, spent=yuan(spent), limit=yuan(limit)))
        else:
            lines.append(tr(lang, "• {name}: {spent} this month, no limit",
                            name=label, spent=yuan(spent)))
    if not members:
        lines.append(tr(lang, "No members yet."))
    lines.append(tr(lang, "Invite a member (one code per person, valid 24 h):"))
    buttons = [_invite_buttons(lang)]
    buttons += [[Button(tr(lang, "➖ Remove {name}", name=label),
                        data=FamilyAction("rm", str(rid)).pack())]
                for rid, label, _spent, _limit in members]
    return [Reply("\n".join(lines), buttons=buttons)]


def _invite_buttons(lang: str) -> list[Button]:
    return [
        Button(tr(lang, "➕ No limit"), data=FamilyAction("inv", "0").pack()) if not fen else
        Button(tr(lang, "➕ {limit}/month", limit=yuan(fen)),
               data=FamilyAction("inv", str(fen)).pack())
        for fen in INVITE_LIMITS_FEN
    ]


async def _member_card(turn: Turn, member: family.FamilyMember, fam: family.Family) -> Reply:
    lang = turn.lang
    owner = await _owner_name(turn, fam.owner_rider_id)
    spent = (await family.spent_this_month(
        turn.session, [member.rider_id], fam.owner_rider_id, turn.now))[member.rider_id]
    if owner:
        lines = [tr(lang, "👨‍👩‍👧 Family wallet: your charges are paid by {owner}.", owner=owner)]
    else:
        lines = [tr(lang, "👨‍👩‍👧 Family wallet: your charges are paid from the family balance.")]
    if member.monthly_limit_fen:
        lines.append(tr(lang, "This month: {spent} of your {limit} limit.",
                        spent=yuan(spent), limit=yuan(member.monthly_limit_fen)))
        lines.append(tr(lang, "Over the limit, or when the family balance is short, you pay "
                              "from your own balance."))
    else:
        lines.append(tr(lang, "This month: {spent} (no limit).", spent=yuan(spent)))
        lines.append(tr(lang, "When the family balance is short, you pay from your own "
                              "balance."))
    return Reply("\n".join(lines),
                 buttons=[[Button(tr(lang, "🚪 Leave family"), data=FamilyAction("leave").pack())]])


@router.command("family", help=N_("/family — family wallet"))
async def command(turn: Turn, arg: str) -> list[Reply]:
    if arg:
        return await _join(turn, arg)
    return await card(turn)


async def _join(turn: Turn, code: str) -> list[Reply]:
    lang = turn.lang
    try:
        member = await family.join(turn.session, code, _rider_id(turn), turn.now)
    except family.FamilyCodeInvalid:
        return [Reply(tr(lang, "That family code is wrong, used or expired. Ask the family "
                               "wallet owner for a new one."))]
    except family.FamilyOwnCode:
        return [Reply(tr(lang, "That is your own invite code. Send it to the person who "
                               "should join."))]
    except family.AlreadyInFamily as exc:
        if exc.params.get("reason") == "owner":
            return [Reply(tr(lang, "You pay for your own family wallet, so you can't join "
                                   "another one."))]
        return [Reply(tr(lang, "You are already in a family wallet. Leave it first (/family)."))]
    except family.FamilyJoinBusy:
        return [Reply(tr(lang, "Please finish your charge and pay any open bill first, then "
                               "send the code again."))]
    fam = await turn.session.get(family.Family, member.family_id)
    assert fam is not None
    owner = await _owner_name(turn, fam.owner_rider_id)
    if owner:
        text = tr(lang, "✅ You joined the family wallet of {owner}. Your charges are now paid "
                        "from it.", owner=owner)
    else:
        text = tr(lang, "✅ You joined a family wallet. Your charges are now paid from it.")
    if member.monthly_limit_fen:
        text += "\n" + tr(lang, "Limit: {limit} a month. Over the limit, or when the family "
                                "balance is short, you pay from your own balance.",
                          limit=yuan(member.monthly_limit_fen))
    else:
        text += "\n" + tr(lang, "When the family balance is short, you pay from your own "
                                "balance.")
    return [Reply(text, buttons=[_back(lang)])]


@router.button(FamilyAction)
async def button(turn: Turn, p: FamilyAction) -> list[Reply]:
    verb, n = p.action, row_id(p.ref)
    if verb == "inv" and n is not None and n in INVITE_LIMITS_FEN:
        return await _invite(turn, n)
    if verb in ("rm", "rmok") and n is not None:
        return await _remove(turn, n, confirmed=verb == "rmok")
    if verb in ("leave", "leaveok"):
        return await _leave(turn, confirmed=verb == "leaveok")
    return await card(turn)


async def _invite(turn: Turn, limit: int) -> list[Reply]:
    lang = turn.lang
    try:
        code = await family.invite(turn.session, _rider_id(turn), limit, turn.now)
    except family.AlreadyInFamily:
        return [Reply(tr(lang, "You are a member of a family wallet, so you can't invite. Leave "
                               "it first (/family)."))]
    text = tr(lang, "Invite code: {code} (valid 24 h, for one person). They send:\n"
                    "/family {code}", code=code)
    if limit:
        text += "\n" + tr(lang, "Their charges will then be paid from your balance, up to "
                                "{limit} a month.", limit=yuan(limit))
    else:
        text += "\n" + tr(lang, "Their charges will then be paid from your balance, with no "
                                "monthly limit.")
    return [Reply(text, buttons=[_back(lang)])]


async def _remove(turn: Turn, member_id: int, *, confirmed: bool) -> list[Reply]:
    lang = turn.lang
    label = next((lbl for rid, lbl, _s, _l in await _members(turn) if rid == member_id), None)
    if label is None:
        return [Reply(tr(lang, "That person is no longer in your family wallet."),
                      buttons=[_back(lang)])]
    if not confirmed:
        return [Reply(
            tr(lang, "Remove {name} from your family wallet? From now on they pay their "
                     "charges from their own balance.", name=label),
            buttons=[[Button(tr(lang, "✅ Yes, remove"),
                             data=FamilyAction("rmok", str(member_id)).pack()),
                      Button(tr(lang, "Cancel"), data=FamilyAction().pack())]],
        )]
    await family.remove(turn.session, _rider_id(turn), member_id)
    done = Reply(tr(lang, "✅ {name} removed. From now on they pay their charges from their "
                          "own balance.", name=label))
    return [done, *await card(turn)]


async def _leave(turn: Turn, *, confirmed: bool) -> list[Reply]:
    lang = turn.lang
    found = await family.membership(turn.session, _rider_id(turn))
    if found is None:
        return [Reply(tr(lang, "You are not in a family wallet."), buttons=[_back(lang)])]
    if not confirmed:
        owner = await _owner_name(turn, found[1].owner_rider_id)
        if owner:
            text = tr(lang, "Leave the family wallet of {owner}? From now on you pay your "
                            "charges from your own balance.", owner=owner)
        else:
            text = tr(lang, "Leave the family wallet? From now on you pay your charges from "
                            "your own balance.")
        return [Reply(
            text,
            buttons=[[Button(tr(lang, "✅ Yes, leave"), data=FamilyAction("leaveok").pack()),
                      Button(tr(lang, "Cancel"), data=FamilyAction().pack())]],
        )]
    await family.leave(turn.session, _rider_id(turn))
    balance = await wallet.balance(turn.session, _rider_id(turn))
    return [Reply(tr(lang, "✅ You left the family wallet. From now on you pay from your own "
                           "balance ({balance}).", balance=yuan(balance)))]
