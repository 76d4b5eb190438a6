"""Outbox messages rendered for the rider at delivery time, in the rider's language."""

from __future__ import annotations

from typing import Any

from bot.handlers import account, groupbuy
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
from bot.handlers.staff import cause_name, order_buttons, order_card
from bot.handlers.support import kind_name, problem_name, ticket_buttons
from bot.handlers.surveys import render_prompt, render_report
from bot.handlers.text import bill_text, tariff_sentence
from bot.i18n import tr
from core.billing.wallet import yuan
from notifications.replies import Button, Reply, Venue


def provider_name(lang: str, provider: str) -> str:
    if provider == "telegram":
        return tr(lang, "Telegram Payments")
    if provider == "wechatpay":
        return tr(lang, "WeChat Pay")
    if provider == "sandbox":
        return tr(lang, "sandbox payment")
    return provider


def payment_text(lang: str, payload: dict[str, Any]) -> str:
    """Payload {amount_fen, bonus_fen, balance_fen, provider, bills_paid?, still_due_fen?}: what
    a credited payment says (and, when it paid due bills, that the rider can charge again)."""
    lines = [tr(lang, "✅ Topped up {amount} via {provider}.", amount=yuan(payload["amount_fen"]),
                provider=provider_name(lang, payload.get("provider") or ""))]
    if payload.get("bonus_fen"):
        lines.append(tr(lang, "🎁 Top-up bonus: +{bonus}", bonus=yuan(payload["bonus_fen"])))
    lines.append(tr(lang, "👛 Balance: {balance}", balance=yuan(payload["balance_fen"])))
    if payload.get("bills_paid"):
        lines.append(tr(lang, "Your unpaid bill is paid. You can charge again."))
    if payload.get("still_due_fen"):
        lines.append(tr(lang, "Still due: {amount}", amount=yuan(payload["still_due_fen"])))
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


def ticket_post(lang: str, p: dict[str, Any]) -> str:
    """A ticket as the desk sees it: who, where, what, on which platform."""
    sos = p["priority"] == "emergency"
    head = (tr(lang, "🆘 EMERGENCY #{id}", id=p["ticket_id"]) if sos
            else tr(lang, "🎫 Ticket #{id}", id=p["ticket_id"]))
    if p.get("update"):
        head += " · " + tr(lang, "new message")
    what = problem_name(lang, p["problem"]) if p.get("problem") else kind_name(lang, p["kind"])
    lines = [f"{head} · {what}" + (f" · {p['where']}" if p.get("where") else "")]
    lines.append(tr(lang, "Rider: {name} (#{rid}, {platform})", name=p["rider"] or "—",
                    rid=p["rider_id"], platform=p["platform"]))
    if p.get("last_charge"):
        lines.append(tr(lang, "Last charge: {port}", port=p["last_charge"]))
    if p.get("text"):
        lines.append(f"“{p['text']}”")
    if p.get("photo"):
        lines.append(tr(lang, "📷 photo attached"))
    lines.append(tr(lang, "Reply to this message to answer the rider."))
    return "\n".join(lines)


def fault_text(lang: str, payload: dict[str, Any]) -> str:
    b = payload["bill"]
    port = payload["port"]
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


def render(kind: str, payload: dict[str, Any], lang: str) -> list[Reply]:
    if (replies := groupbuy.render(kind, payload, lang)) is not None:
        return replies
    if kind == "bill":
        buttons = []
        if not payload["paid"] and payload["bill"]["amount_fen"] > 0:
            buttons = [[Button(tr(lang, "💳 Pay now"), data=PayDue().pack()),
                        Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]]
        text = bill_text(lang, payload)
        b = payload["bill"]
        if b.get("fault_code") or payload["reason"] in ("fault", "power_loss"):
            # The fault first, in plain words, with what was refunded and where to go instead.
            text = fault_text(lang, payload) + "\n\n" + text
            if payload.get("pile"):
                buttons.insert(0, [Button(tr(lang, "📍 Nearest free port"),
                                          data=Alternatives(payload["pile"]).pack())])
            buttons.append([Button(tr(lang, "🆘 Talk to a person now"),
                                   data=Emergency(str(payload["charge_id"])).pack())])
        else:
            buttons.append([Button(tr(lang, "⭐ Rate this site"),
                                   data=ReviewStart(payload["charge_id"]).pack()),
                            Button(tr(lang, "🛠 Report a problem"),
                                   data=ReportMenu(f"c{payload['charge_id']}").pack())])
        return [Reply(text, buttons=buttons)]
    if kind == "ticket":
        return [Reply(ticket_post(lang, payload),
                      buttons=ticket_buttons(lang, payload["ticket_id"], payload["kind"]),
                      photo_url=payload.get("photo_url"))]
    if kind == "ticket_answer":
        return [Reply(tr(lang, "💬 Our team (ticket #{id}):", id=payload["ticket_id"]) + "\n"
                      + payload["text"])]
    if kind == "ticket_closed":
        return [Reply(
            tr(lang, "✅ Ticket #{id} is closed: {resolution}\nHow did we do?",
               id=payload["ticket_id"], resolution=payload["resolution"]),
            buttons=[[Button("⭐" * n, data=RateAnswer(payload["ticket_id"], n).pack())
                      for n in range(1, 6)]])]
    if kind == "ticket_escalated":
        return [Reply(tr(lang, "🆘 Emergency ticket #{id} was not taken within {s} seconds. "
                               "Please take it now.", id=payload["ticket_id"],
                         s=payload["seconds"]),
                      buttons=ticket_buttons(lang, payload["ticket_id"], "emergency"))]
    if kind == "suggestion_decided":
        if payload["adopted"]:
            return [Reply(tr(lang, "🎉 We are adopting your idea “{text}”. Thank you! You charge "
                                   "free for the next {days} days.", text=payload["text"],
                             days=payload["days"]))]
        return [Reply(tr(lang, "💡 Thank you for your idea “{text}”. We won't do it for now, "
                               "but keep them coming.", text=payload["text"]))]
    if kind == "faq_digest":
        lines = [tr(lang, "📊 This week's most asked questions:")]
        lines += [tr(lang, "{n}× {question}", n=t["count"], question=t["question"])
                  + ("" if t["key"] else " " + tr(lang, "(not in the FAQ yet)"))
                  for t in payload["topics"]]
        return [Reply("\n".join(lines))]
    if kind == "offpeak_reminder":
        return [Reply(tr(lang, "🌙 Tip: charging after 22:00 costs {percent}% of the day price at "
                               "night-tariff sites. Tap to find a port later tonight.",
                         percent=payload["percent"]),
                      buttons=[[Button(tr(lang, "📍 Nearest free ports"), data=Nearby().pack())]])]
    if kind == "broadcast":
        return [Reply(payload.get(lang) or payload["zh_CN"])]
    if kind == "red_packet":
        return [Reply(festival_greeting(lang, payload["festival"]) + "\n" + tr(
            lang, "🧧 A red packet of {amount} is in your wallet. Balance: {balance}",
            amount=yuan(payload["amount_fen"]), balance=yuan(payload["balance_fen"])),
            buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])]
    if kind == "nps_prompt":
        return render_prompt(payload, lang)
    if kind == "monthly_report":
        return render_report(payload, lang)
    if kind == "annual_ready":
        return [Reply(tr(lang, "📅 Your {year} in charging is ready: charges, hours, km ridden "
                               "and CO₂ avoided.", year=payload["year"]),
                      buttons=[[Button(tr(lang, "🖼 Show my year"), data=MyYear().pack())]])]
    if kind == "best_pile":
        return [Reply(tr(lang, "🏆 Riders voted {site} the best place to charge in {month} "
                               "({votes} votes). Thank you for keeping it that way!",
                         site=payload["site"], month=payload["month"], votes=payload["votes"]))]
    if kind == "report_verified":
        return [Reply(tr(lang, "🙏 Your report on {where} is confirmed. Thank you! A {amount} "
                               "coupon is in your wallet.", where=payload["where"],
                         amount=yuan(payload["amount_fen"])))]
    if kind == "work_order":
        return [Reply(order_card(lang, payload, payload.get("tz", "Asia/Shanghai")),
                      buttons=order_buttons(lang, payload["order_id"]),
                      venue=Venue(payload["lat"], payload["lon"], payload["site"],
                                  payload["address"]))]
    if kind == "work_order_cleared":
        return [Reply(tr(lang, "✔️ Work order #{id} ({where}) closed: the pile reports the "
                               "fault cleared, no visit needed.", id=payload["order_id"],
                         where=payload["where"]))]
    if kind == "work_order_escalated":
        return [Reply(
            tr(lang, "⏰ Promise broken: work order #{id} ({where}) was not acknowledged within "
                     "{m} minutes. Technician: {tech}. {n} riders received a coupon.",
               id=payload["order_id"], where=payload["where"], m=payload["minutes"],
               tech=payload["technician"] or tr(lang, "nobody assigned"),
               n=payload["coupons"]) + "\n"
            + order_card(lang, payload, payload.get("tz", "Asia/Shanghai")),
            buttons=order_buttons(lang, payload["order_id"]))]
    if kind == "promise_coupon":
        return [Reply(tr(lang, "🙏 Sorry: the repair of {where} was not picked up within {m} "
                               "minutes as we promise. A {amount} coupon is in your wallet for "
                               "your next charge.", where=payload["where"],
                         m=payload["minutes"], amount=yuan(payload["amount_fen"])),
                      buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])]
    if kind == "repair_done":
        who = payload.get("technician") or tr(lang, "our technician")
        return [Reply(
            tr(lang, "🔧 {where} is repaired by {who} and back in service. How was it?",
               where=payload["where"], who=who),
            buttons=[[Button("⭐" * n, data=RateRepair(payload["order_id"], n).pack())
                      for n in range(1, 6)]])]
    if kind == "charge_started":
        return [Reply(
            tr(lang, "⚡ Charging started at port {port}.", port=payload["port"]) + "\n"
            + tariff_sentence(lang, payload["tariff"]),
            buttons=[[Button(tr(lang, "⚡ Status"), data=Status().pack()),
                      Button(tr(lang, "⏹ Stop"), data=StopCharge(payload["charge_id"]).pack())]],
        )]
    if kind == "start_failed":
        return [Reply(
            tr(lang, "❌ Port {port} did not start, so nothing is charged. Please try another "
                     "port.", port=payload["port"]),
            buttons=[[Button(tr(lang, "📍 Nearest free ports"), data=Nearby().pack())]],
        )]
    if kind == "payment":  # money from a payment provider reached the wallet
        buttons = [[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]]
        if payload.get("still_due_fen"):
            buttons[0].insert(0, Button(tr(lang, "💳 Pay {amount}",
                                           amount=yuan(payload["still_due_fen"])),
                                        data=PayDue().pack()))
        return [Reply(payment_text(lang, payload), buttons=buttons)]
    if kind == "auto_topup":  # 自动续费 topped the wallet up
        return [Reply(
            tr(lang, "🔁 Auto top-up: {amount} added to your wallet. Balance: {balance}",
               amount=yuan(payload["amount_fen"]), balance=yuan(payload["balance_fen"])),
            buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]],
        )]
    if kind == "dispute_escalated":
        return [Reply(tr(lang, "⏰ Your bill question (case {id}) was not answered in time. It is "
                               "now with a supervisor, who will contact you.",
                         id=payload["dispute_id"]))]
    if kind == "link_request":  # someone typed this rider's /link code: only they decide
        return account.request_notice(lang, payload)
    if kind == "link_done":
        return account.done_notice(lang, payload)
    if kind == "link_refused":
        return account.refused_notice(lang)
    if kind == "sos_reports":
        return [Reply(tr(lang, "🆘 {n} emergency reports ({where}) within {m} minutes, paged "
                               "once as #{id}. Open /tickets for them all.",
                         n=payload["count"], where=payload["where"] or tr(lang, "no port named"),
                         m=payload["minutes"], id=payload["ticket_id"]),
                      buttons=ticket_buttons(lang, payload["ticket_id"], "emergency"))]
    if kind == "replies":  # a skin's replies that missed its synchronous answer window
        return [Reply.from_dict(d) for d in payload["replies"]]
    if kind == "text":
        return [Reply(payload["text"])]
    raise ValueError(f"unknown outbox kind {kind!r}")
