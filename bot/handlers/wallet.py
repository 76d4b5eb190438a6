"""Wallet: balance, coupons, top-up (Telegram Payments, WeChat Pay or the demo's sandbox), auto
top-up, paying a bill."""

from __future__ import annotations

from bot.handlers.payloads import AutoTopUp, PayDue, TopUp, TopUpVia, Wallet
from bot.handlers.routing import Router
from bot.handlers.text import DAY, local_day
from bot.handlers.topups import after_payment, credited_reply, topup_amounts
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from bot.payments import pay_page, telegram_pay, wechatpay
from bot.payments.sandbox import sandbox_topup
from core.billing import coupons, payments, wallet
from core.billing.coupons import Coupon
from core.billing.wallet import yuan
from core.charging import paying as charging
from core.charging.queries import owed_fen
from core.db import row_id
from notifications.replies import Button, Reply

router = Router(__name__)


def _telegram_invoices(turn: Turn) -> bool:
    return turn.inc.platform == "telegram" and telegram_pay.available(turn.ctx.settings)


def _wechat_pay(turn: Turn) -> str | None:
    """How this rider pays with WeChat Pay here: "jsapi" (the pay page, inside WeChat),
    "native" (a QR code to scan, in the web chat) or None. Where the demo's play money is
    listed too (only `chargebot demo` and tests can), the card keeps offering that."""
    if (wechatpay.client_for(turn.ctx) is None
            or "sandbox" in turn.ctx.settings.payments.providers):
        return None
    if turn.inc.platform == "wechat" and turn.ctx.settings.payments.wechatpay.appid:
        return "jsapi"  # JSAPI orders and the cashier need the official account's appid
    return "native" if turn.inc.platform == "webchat" else None


def _pay_links(turn: Turn, amounts: list[int], purpose: str) -> list[str] | None:
    links = [pay_page.link(turn.ctx, turn.rider_id, a, purpose, "jsapi")
             for a in amounts]
    ready = [link for link in links if link is not None]
    return ready if len(ready) == len(links) else None


def _rows(buttons: list[Button], per_row: int = 3) -> list[list[Button]]:
    """Amount buttons three to a row: five in one row wrap "+¥100.00" on a phone."""
    return [buttons[i:i + per_row] for i in range(0, len(buttons), per_row)]


async def topup_buttons(turn: Turn) -> list[list[Button]]:
    """The ways this rider can top up here: Telegram invoices, WeChat Pay (the pay page in
    WeChat, a QR code in the web chat), or the demo's sandbox."""
    amounts = topup_amounts(turn.ctx.settings)
    lang = turn.lang

    def label(a: int) -> str:
        # The bonus on the button itself: the rider sees what each amount really gives.
        if bonus := payments.bonus_for(turn.ctx.settings, a):
            return tr(lang, "+{amount} (+{bonus} bonus)", amount=yuan(a), bonus=yuan(bonus))
        return tr(lang, "+{amount}", amount=yuan(a))

    if _telegram_invoices(turn):
        return _rows([Button(label(a), data=TopUpVia("telegram", a).pack()) for a in amounts])
    mode = _wechat_pay(turn)
    if mode == "jsapi" and (links := _pay_links(turn, amounts, "topup")):
        return _rows([Button(label(a), url=u) for a, u in zip(amounts, links, strict=True)])
    if mode == "native":
        return _rows([Button(label(a), data=TopUpVia("wechatpay", a).pack()) for a in amounts])
    if "sandbox" not in turn.ctx.settings.payments.providers:
        return []
    # One server-issued nonce per card: one of its buttons pays, once.
    nonce = await payments.issue_offer(turn.session, turn.rider_id, turn.now)
    return _rows([Button(label(a), data=TopUp(a, nonce).pack()) for a in amounts])


def _topup_heading(turn: Turn) -> str | None:
    if _telegram_invoices(turn):
        return tr(turn.lang, "Top up with Telegram Payments:")
    if (mode := _wechat_pay(turn)) == "jsapi":
        return tr(turn.lang, "Top up with WeChat Pay (tap an amount):")
    if mode == "native":
        return tr(turn.lang, "Top up with WeChat Pay (tap an amount, then scan the QR code "
                             "with WeChat):")
    if "sandbox" in turn.ctx.settings.payments.providers:
        return tr(turn.lang, "Top up (sandbox payment, no real money):")
    return None




def _coupon_line(turn: Turn, usable: list[Coupon], owed: int) -> str:
    lang = turn.lang
    # The best one for the bill that is due, or for a typical ¥20 bill.
    reference = owed or 2000
    best = max(usable, key=lambda c: (coupons.discount(c, reference), -c.expires_at.timestamp()))
    if best.amount_fen:
        offer = tr(lang, "{amount} off", amount=yuan(best.amount_fen))
    else:
        offer = tr(lang, "{percent}% off", percent=best.percent_off)
    if best.min_spend_fen:
        offer = tr(lang, "{offer} on bills from {min}", offer=offer, min=yuan(best.min_spend_fen))
    return tr(lang, "🎟 Coupons: {count} (best: {offer}, valid until {date})",
              count=len(usable), offer=offer,
              date=local_day(best.expires_at, turn.ctx.settings.server.timezone, DAY))


def _bonus_lines(turn: Turn) -> list[str]:
    rules = sorted(turn.ctx.settings.billing.topup_bonuses, key=lambda r: r.min_fen)
    return [tr(turn.lang, "🎁 Top up {amount}, get {bonus} extra", amount=yuan(r.min_fen),
               bonus=yuan(r.bonus_fen)) for r in rules if r.bonus_fen > 0]


def _auto_topup_line(turn: Turn) -> str:
    rider = turn.rider
    if rider.auto_topup_fen > 0:
        return tr(turn.lang, "🔁 Auto top-up: {amount} when the balance falls below {below}",
                  amount=yuan(rider.auto_topup_fen), below=yuan(rider.auto_topup_below_fen))
    return tr(turn.lang, "🔁 Auto top-up: off")


def _auto_topup_buttons(turn: Turn) -> list[list[Button]]:
    lang = turn.lang
    if not charging.auto_topup_available(turn.ctx.settings) and not turn.rider.auto_topup_fen:
        return []
    row = [Button(tr(lang, "🔁 Auto top-up {amount}", amount=yuan(a)),
                  data=AutoTopUp(str(a)).pack())
           for a in turn.ctx.settings.billing.auto_topup_choices_fen
           if a != turn.rider.auto_topup_fen]
    if turn.rider.auto_topup_fen > 0:
        row.append(Button(tr(lang, "Turn off auto top-up"), data=AutoTopUp("off").pack()))
    return [row] if row else []


@router.command("wallet", help=N_("/wallet — balance and top-up"))
@router.button(Wallet)
async def show(turn: Turn) -> list[Reply]:
    lang = turn.lang
    rider_id = turn.rider_id
    assert rider_id is not None
    bal = await wallet.balance(turn.session, rider_id)
    owed = await owed_fen(turn.session, rider_id)
    lines = [tr(lang, "👛 Balance: {balance}", balance=yuan(bal))]
    buttons = await topup_buttons(turn)
    if owed:
        lines.append(tr(lang, "Unpaid bills: {amount}", amount=yuan(owed)))
        buttons.append([Button(tr(lang, "💳 Pay {amount}", amount=yuan(owed)),
                               data=PayDue().pack())])
    if usable := await coupons.usable(turn.session, rider_id, turn.now):
        lines.append(_coupon_line(turn, usable, owed))
    lines += _bonus_lines(turn)
    if charging.auto_topup_available(turn.ctx.settings) or turn.rider.auto_topup_fen > 0:
        lines.append(_auto_topup_line(turn))
    buttons += _auto_topup_buttons(turn)
    if (heading := _topup_heading(turn)) is not None:
        lines.append(heading)
    return [Reply("\n".join(lines), buttons=buttons)]


@router.button(TopUp)
async def topup_button(turn: Turn, p: TopUp) -> list[Reply]:
    return await topup(turn, p.amount, p.nonce)


async def topup(turn: Turn, amount: int, nonce: str) -> list[Reply]:
    """A sandbox top-up button: `topup:{amount}:{nonce}`; the card's server-issued nonce pays
    once, whichever of its buttons is pressed first."""
    settings = turn.ctx.settings
    if amount not in topup_amounts(settings) or "sandbox" not in settings.payments.providers:
        return await show(turn)
    rider_id = turn.rider_id
    assert rider_id is not None
    taken = await payments.take_offer(turn.session, rider_id, nonce, amount, turn.now)
    if taken == "unknown":
        return await _with_card(turn, tr(turn.lang, "That top-up card has expired. Here is a "
                                                    "fresh one:"))
    bonus = 0
    if taken == "ok":
        payment, _ = await sandbox_topup(turn.session, rider_id, amount, f"{rider_id}:{nonce}",
                                         settings, turn.now)
        bonus = payment.bonus_fen
    paid, remaining = await charging.pay_due(turn.session, rider_id, turn.now)
    bal = await wallet.balance(turn.session, rider_id)
    if taken == "used":
        return [Reply(tr(turn.lang, "This top-up was already done. Balance: {balance}",
                         balance=yuan(bal)) + after_payment(turn.lang, paid, remaining))]
    return [credited_reply(turn.lang, amount_fen=amount, bonus_fen=bonus, balance_fen=bal,
                           provider="sandbox", paid=paid, remaining=remaining)]


@router.button(TopUpVia)
async def topup_via_button(turn: Turn, p: TopUpVia) -> list[Reply]:
    return await topup_via(turn, p.provider, p.amount)


async def topup_via(turn: Turn, provider: str, amount: int) -> list[Reply]:
    """`topupvia:{provider}:{amount}`: WeChat Pay's QR code in the web chat; Telegram sends its
    invoice itself, so one that reaches here says why nothing happened."""
    if provider == "wechatpay" and _wechat_pay(turn) == "native":
        return await _wechat_qr(turn, amount)
    if provider == "telegram":
        text = tr(turn.lang, "Paying with Telegram works only in the Telegram chat, when it is "
                             "switched on. Please pick another way to top up.")
        return await _with_card(turn, text)
    return await show(turn)


async def _wechat_qr(turn: Turn, amount: int) -> list[Reply]:
    """A Native order's QR code for one of the card's amounts, or for exactly what is due. The
    order is placed when the QR is first shown (bot.payments.pay_page), not in this turn."""
    owed = await owed_fen(turn.session, turn.rider_id)
    purpose = ("bill" if 0 < amount == owed
               else "topup" if amount in topup_amounts(turn.ctx.settings) else None)
    link = purpose and pay_page.link(turn.ctx, turn.rider_id, amount, purpose, "native")
    if not link:
        return await show(turn)
    text = tr(turn.lang, "Scan this QR code with WeChat to pay {amount}. It is valid for 30 "
                         "minutes; I will tell you here as soon as the money arrives.",
              amount=yuan(amount))
    return [Reply(text, photo_url=link, buttons=[[Button(tr(turn.lang, "👛 Wallet"),
                                                         data=Wallet().pack())]])]


@router.button(AutoTopUp)
async def auto_topup_button(turn: Turn, p: AutoTopUp) -> list[Reply]:
    return await auto_topup(turn, p.choice)


async def auto_topup(turn: Turn, arg: str) -> list[Reply]:
    """`autotopup:{amount}` opts in to 自动续费, `autotopup:off` opts out."""
    lang = turn.lang
    amount = 0 if arg == "off" else (row_id(arg) or -1)  # "0" is not "off"
    if not charging.set_auto_topup(turn.rider, amount, turn.ctx.settings):
        return await show(turn)
    if amount == 0:
        text = tr(lang, "Auto top-up is off.")
    else:
        text = tr(lang, "✅ Auto top-up on: we add {amount} whenever your balance falls below "
                        "{below}.", amount=yuan(amount), below=yuan(charging.AUTO_TOPUP_BELOW_FEN))
    return await _with_card(turn, text)


async def _with_card(turn: Turn, text: str) -> list[Reply]:
    """One message: `text` above the wallet card (WeChat answers a tap with one message)."""
    card = (await show(turn))[0]
    return [Reply(text + "\n\n" + card.text, buttons=card.buttons)]


@router.command("pay")
@router.button(PayDue)
async def pay(turn: Turn) -> list[Reply]:
    lang = turn.lang
    rider_id = turn.rider_id
    assert rider_id is not None
    paid, remaining = await charging.pay_due(turn.session, rider_id, turn.now)
    bal = await wallet.balance(turn.session, rider_id)
    if remaining:
        buttons = await topup_buttons(turn)
        text = tr(lang, "Your balance {balance} is not enough for {amount}. Top up first:",
                  balance=yuan(bal), amount=yuan(remaining))
        label = tr(lang, "💳 Pay {amount} in WeChat", amount=yuan(remaining))
        mode = _wechat_pay(turn)
        # Exactly what is due, in one payment: the notification credits it and pays the bills.
        if mode == "jsapi" and (links := _pay_links(turn, [remaining], "bill")):
            buttons.insert(0, [Button(label, url=links[0])])
        elif mode == "native":
            buttons.insert(0, [Button(label, data=TopUpVia("wechatpay", remaining).pack())])
        if mode is not None and buttons:
            text = tr(lang, "Your balance {balance} is not enough for {amount}. Pay it with "
                            "WeChat Pay, or top up more:", balance=yuan(bal),
                      amount=yuan(remaining))
        return [Reply(text, buttons=buttons)]
    if paid:
        return [Reply(tr(lang, "✅ Paid. Balance: {balance}. You can charge again.",
                         balance=yuan(bal)))]
    return [Reply(tr(lang, "Nothing to pay. Balance: {balance}", balance=yuan(bal)))]
