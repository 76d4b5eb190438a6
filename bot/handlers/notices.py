"""Outbox notices rendered for the rider at delivery time, in the rider's language: one
`@renders(Model)` per notice kind (models in `core.notices`). Account-linking, group-buy,
voucher and survey notices are rendered beside their handlers; importing this module
registers them all, so `render` here is the notifier's."""

from __future__ import annotations

from bot.handlers import account, groupbuy, surveys  # noqa: F401  (their renderers register)
from bot.handlers.payloads import (
    Alternatives,
    Emergency,
    MyYear,
    Nearby,
    PayDue,
    RateAnswer,
    RateRepair,
    ReportMenu,
    ReviewStart,
    Status,
    StopCharge,
    Wallet,
)
from bot.handlers.rendering import RENDERERS, Unrenderable, render, renders
from bot.handlers.staff import cause_name, order_buttons, order_card
from bot.handlers.support import kind_name, problem_name, ticket_buttons
from bot.handlers.text import bill_text, menu_buttons, tariff_sentence
from bot.i18n import tr
from core.billing.wallet import yuan
from core.notices.billing import AutoTopUpNotice, DisputeEscalatedNotice, PaymentNotice
from core.notices.charging import BillNotice, ChargeStartedNotice, StartFailedNotice
from core.notices.chat import RepliesNotice, TextNotice
from core.notices.engagement import (
    AnnualReadyNotice,
    BroadcastNotice,
    OffpeakReminderNotice,
    RedPacketNotice,
)
from core.notices.faults import (
    PromiseCouponNotice,
    RepairDoneNotice,
    WorkOrderClearedNotice,
    WorkOrderEscalatedNotice,
    WorkOrderNotice,
)
from core.notices.support import (
    BestPileNotice,
    FaqDigestNotice,
    ReportVerifiedNotice,
    SosReportsNotice,
    SuggestionDecidedNotice,
    TicketAnswerNotice,
    TicketClosedNotice,
    TicketEscalatedNotice,
    TicketIdleClosedNotice,
    TicketNotice,
)
from notifications.replies import Button, Reply, Venue


def provider_name(lang: str, provider: str) -> str:
    if provider == "telegram":
        return tr(lang, "Telegram Payments")
    if provider == "wechatpay":
        return tr(lang, "WeChat Pay")
    if provider == "sandbox":
        return tr(lang, "sandbox payment")
    return provider


def payment_text(lang: str, n: PaymentNotice) -> str:
    """What a credited payment says (and, when it paid due bills, that the rider can charge
    again)."""
    lines = [tr(lang, "✅ Topped up {amount} via {provider}.", amount=yuan(n.amount_fen),
                provider=provider_name(lang, n.provider))]
    if n.bonus_fen:
        lines.append(tr(lang, "🎁 Top-up bonus: +{bonus}", bonus=yuan(n.bonus_fen)))
    lines.append(tr(lang, "👛 Balance: {balance}", balance=yuan(n.balance_fen)))
    if n.bills_paid:
        lines.append(tr(lang, "Your unpaid bill is paid. You can charge again."))
    if n.still_due_fen:
        lines.append(tr(lang, "Still due: {amount}", amount=yuan(n.still_due_fen)))
    return "\n".join(lines)


def festival_greeting(lang: str, slug: str) -> str:
    return {
        "spring_festival": tr(lang, "🧨 Happy Spring Festival! Wishing you a safe ride home and "
                                    "a great year."),
        "mid_autumn": tr(lang, "🥮 Happy Mid-Autumn Festival! Enjoy the moon and the mooncakes."),
        "dragon_boat": tr(lang, "🐉 Happy Dragon Boat Festival! Enjoy your zongzi."),
        "national_day": tr(lang, "🇨🇳 Happy National Day! Have a good holiday."),
        "labor_day": tr(lang, "💪 Happy Labour Day! Thank you for riding green all year."),
        "new_year": tr(lang, "🎉 Happy New Year! Thank you for charging with us."),
    }.get(slug, tr(lang, "🎉 Happy holidays!"))


def ticket_post(lang: str, n: TicketNotice) -> str:
    """A ticket as the desk sees it: who, where, what, on which platform."""
    sos = n.priority == "emergency"
    head = (tr(lang, "🆘 EMERGENCY #{id}", id=n.ticket_id) if sos
            else tr(lang, "🎫 Ticket #{id}", id=n.ticket_id))
    if n.update:
        head += " · " + tr(lang, "new message")
    what = problem_name(lang, n.problem) if n.problem else kind_name(lang, n.ticket_kind)
    lines = [f"{head} · {what}" + (f" · {n.where}" if n.where else "")]
    lines.append(tr(lang, "Rider: {name} (#{rid}, {platform})", name=n.rider or "—",
                    rid=n.rider_id, platform=n.platform))
    if n.last_charge:
        lines.append(tr(lang, "Last charge: {port}", port=n.last_charge))
    if n.text:
        lines.append(f"“{n.text}”")
    if n.photo:
        lines.append(tr(lang, "📷 photo attached"))
    lines.append(tr(lang, "Reply to this message to answer the rider."))
    return "\n".join(lines)


def fault_text(lang: str, n: BillNotice) -> str:
    b = n.bill
    port = n.port
    cause = b.get("fault_code")
    if cause in ("offline", "comm_loss"):
        head = tr(lang, "⚠️ Charging at port {port} stopped: the pile lost its connection.",
                  port=port)
    elif cause:
        head = tr(lang, "⚠️ Charging stopped because port {port} failed ({cause}).", port=port,
                  cause=cause_name(lang, cause))
    else:
        head = tr(lang, "⚠️ Charging stopped because port {port} failed.", port=port)
    if b.get("refund_fen"):
        money = tr(lang, "{amount} refunded: you pay only until the fault.",
                   amount=yuan(b["refund_fen"]))
    else:
        money = tr(lang, "You pay only until the fault, with no minimum fee.")
    return head + " " + money + " " + tr(lang, "The port is reported for repair.")


# --- charges and money ------------------------------------------------------------------------


@renders(BillNotice)
def bill(n: BillNotice, lang: str) -> list[Reply]:
    buttons = []
    if not n.paid and n.bill["amount_fen"] > 0:
        buttons = [[Button(tr(lang, "💳 Pay now"), data=PayDue().pack()),
                    Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]]
    text = bill_text(lang, n)
    if n.bill.get("fault_code") or n.reason in ("fault", "power_loss"):
        # The fault first, in plain words, with what was refunded and where to go instead.
        text = fault_text(lang, n) + "\n\n" + text
        if n.pile:
            buttons.insert(0, [Button(tr(lang, "📍 Nearest free port"),
                                      data=Alternatives(n.pile).pack())])
        buttons.append([Button(tr(lang, "🆘 Talk to a person now"),
                               data=Emergency(str(n.charge_id)).pack())])
    else:
        buttons.append([Button(tr(lang, "⭐ Rate this site"),
                               data=ReviewStart(n.charge_id).pack()),
                        Button(tr(lang, "🛠 Report a problem"),
                               data=ReportMenu(f"c{n.charge_id}").pack())])
    return [Reply(text, buttons=buttons)]


@renders(ChargeStartedNotice)
def charge_started(n: ChargeStartedNotice, lang: str) -> list[Reply]:
    return [Reply(
        tr(lang, "⚡ Charging started at port {port}.", port=n.port) + "\n"
        + tariff_sentence(lang, n.tariff),
        buttons=[[Button(tr(lang, "⚡ Status"), data=Status().pack()),
                  Button(tr(lang, "⏹ Stop"), data=StopCharge(n.charge_id).pack())]],
    )]


@renders(StartFailedNotice)
def start_failed(n: StartFailedNotice, lang: str) -> list[Reply]:
    return [Reply(
        tr(lang, "❌ Port {port} did not start, so nothing is charged. Please try another "
                 "port.", port=n.port),
        buttons=[[Button(tr(lang, "📍 Nearest free ports"), data=Nearby().pack())]],
    )]


@renders(PaymentNotice)
def payment(n: PaymentNotice, lang: str) -> list[Reply]:
    buttons = [[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]]
    if n.still_due_fen:
        buttons[0].insert(0, Button(tr(lang, "💳 Pay {amount}", amount=yuan(n.still_due_fen)),
                                    data=PayDue().pack()))
    return [Reply(payment_text(lang, n), buttons=buttons)]


@renders(AutoTopUpNotice)
def auto_topup(n: AutoTopUpNotice, lang: str) -> list[Reply]:
    return [Reply(
        tr(lang, "🔁 Auto top-up: {amount} added to your wallet. Balance: {balance}",
           amount=yuan(n.amount_fen), balance=yuan(n.balance_fen)),
        buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]],
    )]


@renders(DisputeEscalatedNotice)
def dispute_escalated(n: DisputeEscalatedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "⏰ Your bill question (case {id}) was not answered in time. It is "
                           "now with a supervisor, who will contact you.", id=n.dispute_id))]


# --- the help desk ----------------------------------------------------------------------------


@renders(TicketNotice)
def ticket(n: TicketNotice, lang: str) -> list[Reply]:
    return [Reply(ticket_post(lang, n), buttons=ticket_buttons(lang, n.ticket_id, n.ticket_kind),
                  photo_url=n.photo_url)]


@renders(TicketAnswerNotice)
def ticket_answer(n: TicketAnswerNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "💬 Our team (ticket #{id}):", id=n.ticket_id) + "\n" + n.text)]


@renders(TicketClosedNotice)
def ticket_closed(n: TicketClosedNotice, lang: str) -> list[Reply]:
    return [Reply(
        tr(lang, "✅ Ticket #{id} is closed: {resolution}\nHow did we do?",
           id=n.ticket_id, resolution=n.resolution),
        buttons=[[Button("⭐" * k, data=RateAnswer(n.ticket_id, k).pack())
                  for k in range(1, 6)]])]


@renders(TicketIdleClosedNotice)
def ticket_idle_closed(n: TicketIdleClosedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "💤 Conversation #{id} closed after {h} hours without messages. "
                           "Write any time if you need us again.", id=n.ticket_id, h=n.hours),
                  buttons=menu_buttons(lang))]


@renders(TicketEscalatedNotice)
def ticket_escalated(n: TicketEscalatedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🆘 Emergency ticket #{id} was not taken within {s} seconds. "
                           "Please take it now.", id=n.ticket_id, s=n.seconds),
                  buttons=ticket_buttons(lang, n.ticket_id, "emergency"))]


@renders(SosReportsNotice)
def sos_reports(n: SosReportsNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🆘 {n} emergency reports ({where}) within {m} minutes, paged "
                           "once as #{id}. Open /tickets for them all.",
                     n=n.count, where=n.where or tr(lang, "no port named"),
                     m=n.minutes, id=n.ticket_id),
                  buttons=ticket_buttons(lang, n.ticket_id, "emergency"))]


@renders(ReportVerifiedNotice)
def report_verified(n: ReportVerifiedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🙏 Your report on {where} is confirmed. Thank you! A {amount} "
                           "coupon is in your wallet.", where=n.where,
                     amount=yuan(n.amount_fen)))]


@renders(SuggestionDecidedNotice)
def suggestion_decided(n: SuggestionDecidedNotice, lang: str) -> list[Reply]:
    if n.adopted:
        return [Reply(tr(lang, "🎉 We are adopting your idea “{text}”. Thank you! You charge "
                               "free for the next {days} days.", text=n.text, days=n.days))]
    return [Reply(tr(lang, "💡 Thank you for your idea “{text}”. We won't do it for now, "
                           "but keep them coming.", text=n.text))]


@renders(FaqDigestNotice)
def faq_digest(n: FaqDigestNotice, lang: str) -> list[Reply]:
    lines = [tr(lang, "📊 This week's most asked questions:")]
    lines += [tr(lang, "{n}× {question}", n=t.count, question=t.question)
              + ("" if t.key else " " + tr(lang, "(not in the FAQ yet)"))
              for t in n.topics]
    return [Reply("\n".join(lines))]


@renders(BestPileNotice)
def best_pile(n: BestPileNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🏆 Riders voted {site} the best place to charge in {month} "
                           "({votes} votes). Thank you for keeping it that way!",
                     site=n.site, month=n.month, votes=n.votes))]


# --- repairs ----------------------------------------------------------------------------------


@renders(WorkOrderNotice)
def work_order(n: WorkOrderNotice, lang: str) -> list[Reply]:
    return [Reply(order_card(lang, n, n.tz), buttons=order_buttons(lang, n.order_id),
                  venue=Venue(n.lat, n.lon, n.site, n.address))]


@renders(WorkOrderClearedNotice)
def work_order_cleared(n: WorkOrderClearedNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "✔️ Work order #{id} ({where}) closed: the pile reports the "
                           "fault cleared, no visit needed.", id=n.order_id, where=n.where))]


@renders(WorkOrderEscalatedNotice)
def work_order_escalated(n: WorkOrderEscalatedNotice, lang: str) -> list[Reply]:
    return [Reply(
        tr(lang, "⏰ Promise broken: work order #{id} ({where}) was not acknowledged within "
                 "{m} minutes. Technician: {tech}. {n} riders received a coupon.",
           id=n.order_id, where=n.where, m=n.minutes,
           tech=n.technician or tr(lang, "nobody assigned"), n=n.coupons) + "\n"
        + order_card(lang, n, n.tz),
        buttons=order_buttons(lang, n.order_id))]


@renders(PromiseCouponNotice)
def promise_coupon(n: PromiseCouponNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🙏 Sorry: the repair of {where} was not picked up within {m} "
                           "minutes as we promise. A {amount} coupon is in your wallet for "
                           "your next charge.", where=n.where, m=n.minutes,
                     amount=yuan(n.amount_fen)),
                  buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])]


@renders(RepairDoneNotice)
def repair_done(n: RepairDoneNotice, lang: str) -> list[Reply]:
    who = n.technician or tr(lang, "our technician")
    return [Reply(
        tr(lang, "🔧 {where} is repaired by {who} and back in service. How was it?",
           where=n.where, who=who),
        buttons=[[Button("⭐" * k, data=RateRepair(n.order_id, k).pack())
                  for k in range(1, 6)]])]


# --- greetings and broadcasts -----------------------------------------------------------------


@renders(OffpeakReminderNotice)
def offpeak_reminder(n: OffpeakReminderNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "🌙 Tip: charging after 22:00 costs {percent}% of the day price at "
                           "night-tariff sites. Tap to find a port later tonight.",
                     percent=n.percent),
                  buttons=[[Button(tr(lang, "📍 Nearest free ports"), data=Nearby().pack())]])]


@renders(BroadcastNotice)
def broadcast(n: BroadcastNotice, lang: str) -> list[Reply]:
    return [Reply(n.text(lang))]


@renders(RedPacketNotice)
def red_packet(n: RedPacketNotice, lang: str) -> list[Reply]:
    return [Reply(festival_greeting(lang, n.festival) + "\n" + tr(
        lang, "🧧 A red packet of {amount} is in your wallet. Balance: {balance}",
        amount=yuan(n.amount_fen), balance=yuan(n.balance_fen)),
        buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])]


@renders(AnnualReadyNotice)
def annual_ready(n: AnnualReadyNotice, lang: str) -> list[Reply]:
    return [Reply(tr(lang, "📅 Your {year} in charging is ready: charges, hours, km ridden "
                           "and CO₂ avoided.", year=n.year),
                  buttons=[[Button(tr(lang, "🖼 Show my year"), data=MyYear().pack())]])]


# --- chat text as it is -----------------------------------------------------------------------


@renders(RepliesNotice)
def replies(n: RepliesNotice, lang: str) -> list[Reply]:
    return [Reply.from_dict(d) for d in n.replies]


@renders(TextNotice)
def text(n: TextNotice, lang: str) -> list[Reply]:
    return [Reply(n.text)]


__all__ = ["RENDERERS", "Unrenderable", "payment_text", "provider_name", "render", "renders"]
