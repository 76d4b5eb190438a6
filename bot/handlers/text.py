"""Rider-facing wording shared by several handlers: money, durations, tariffs, bills."""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from bot.handlers.payloads import FaqEntry, History, Language, Nearby, Status, Wallet
from bot.i18n import tr
from core.billing.tariffs import round_half_up
from core.billing.wallet import yuan
from core.db import aware
from core.notices.charging import BillNotice
from notifications.replies import Button


def duration(lang: str, seconds: int) -> str:
    minutes = max(0, seconds) // 60
    h, m = divmod(minutes, 60)
    if h:
        return tr(lang, "{h} h {m:02d} min", h=h, m=m)
    return tr(lang, "{m} min", m=m)


def kwh(energy_wh: int | float) -> str:
    return f"{energy_wh / 1000:.2f} kWh"


def distance(lang: str, meters: float) -> str:
    if meters < 1000:
        return tr(lang, "{m} m", m=int(round(meters)))
    return tr(lang, "{km:.1f} km", km=meters / 1000)


def tariff_sentence(lang: str, t: dict[str, Any]) -> str:
    """The whole price in plain words, told before the rider starts: DESIGN §5's rules, each as
    a rider would say it (free minutes, how a started block counts, windows, minimum, cap, and
    that a charge which drew no power costs nothing)."""
    mode, free = t["mode"], int(t.get("free_minutes") or 0)
    unit = max(1, int(t.get("unit_minutes") or 1))
    if unit == 1:
        per_unit = tr(lang, "per started minute")
    else:
        per_unit = tr(lang, "per started {unit}-minute block (part of a block counts as a "
                            "whole one)", unit=unit)
    if mode == "power_tier":
        tiers = tr(lang, ", ").join(
            tr(lang, "up to {w} W {price}/h", w=x["up_to_w"], price=yuan(x["fen_per_hour"]))
            for x in sorted(t["tiers"], key=lambda x: x["up_to_w"])
        )
        if t.get("band_by") == "session_mean":
            rule = tr(lang, "priced by power ({tiers}), the band is your average power, "
                            "{per_unit}", tiers=tiers, per_unit=per_unit)
        else:
            rule = tr(lang, "priced by power ({tiers}), the band is your highest 1-minute "
                            "average, {per_unit}", tiers=tiers, per_unit=per_unit)
    elif mode == "time":
        rule = tr(lang, "{price}/h, {per_unit}", price=yuan(t["fen_per_hour"]), per_unit=per_unit)
    else:
        rule = tr(lang, "{elec}/kWh electricity + {svc}/kWh service",
                  elec=yuan(t["fen_per_kwh"]), svc=yuan(t.get("service_fen_per_kwh", 0)))
    clauses = []
    if free and mode == "energy":
        # Energy is billed whole once a charge outlasts the free minutes: only short ones are free.
        clauses += [tr(lang, "charges of {n} min or less are free", n=free), rule]
    elif free:
        clauses += [tr(lang, "first {n} min free", n=free),
                    tr(lang, "after that {rule}", rule=rule)]
    else:
        clauses.append(rule)
    if t.get("off_peak"):
        op = t["off_peak"]
        clauses.append(tr(lang, "{start}–{end} at {percent}% of the price", start=op["start"],
                          end=op["end"], percent=op["percent"]))
    if t.get("min_fee_fen"):
        clauses.append(tr(lang, "at least {fee} when there is something to pay",
                          fee=yuan(t["min_fee_fen"])))
    if t.get("cap_fen"):
        clauses.append(tr(lang, "never more than {cap} a charge", cap=yuan(t["cap_fen"])))
    clauses.append(tr(lang, "no power drawn, nothing to pay"))
    rules = tr(lang, "; ").join(clauses)
    # Clauses are lower-case so they can follow each other; the sentence starts with a capital
    # (a no-op for Chinese).
    rules = rules[:1].upper() + rules[1:]
    return tr(lang, "{rules}. You pay after charging, from your wallet.", rules=rules)


def end_reason(lang: str, reason: str) -> str:
    return {
        "full": tr(lang, "battery full, stopped automatically"),
        "user": tr(lang, "stopped by you"),
        "unplugged": tr(lang, "plug pulled out"),
        "no_load": tr(lang, "no charger drew power"),
        "fault": tr(lang, "stopped by a port fault"),
        "power_loss": tr(lang, "the pile lost power"),
        "limit": tr(lang, "time or energy limit reached"),
    }.get(reason, reason)


DAY = "%Y-%m-%d"


def local_day(ts: datetime, tz: str, fmt: str = "%m-%d") -> str:
    """A stored time as the rider's calendar shows it: 2026-03-01 20:00 UTC is 03-02 in
    Beijing. A naive time (SQLite hands them back so) is the UTC it was stored as."""
    return aware(ts).astimezone(ZoneInfo(tz)).strftime(fmt)


def worked_out(lang: str, b: dict[str, Any], tariff: dict[str, Any]) -> str | None:
    """How the charge's price was reached, in one line ("81 min × ¥0.40/h = ¥0.54", then the
    minimum fee or cap when one applied); None when off-peak minutes make it more than a line
    (the off-peak line says so) or nothing was billable."""
    minutes = int(b.get("billable_minutes") or 0)
    if not minutes or b.get("off_peak_minutes"):
        return None
    if b["mode"] in ("time", "power_tier") and b.get("fen_per_hour"):
        raw = round_half_up(Fraction(int(b["fen_per_hour"]) * minutes, 60))
        line = tr(lang, "{minutes} min × {rate}/h = {amount}", minutes=minutes,
                  rate=yuan(int(b["fen_per_hour"])), amount=yuan(raw))
    elif b["mode"] == "energy" and tariff.get("fen_per_kwh") is not None:
        per_kwh = int(tariff["fen_per_kwh"]) + int(tariff.get("service_fen_per_kwh", 0))
        energy = Fraction(str(b.get("energy_wh") or 0))
        raw = round_half_up(energy / 1000 * per_kwh)
        line = tr(lang, "{energy} × {rate}/kWh = {amount}", energy=kwh(float(energy)),
                  rate=yuan(per_kwh), amount=yuan(raw))
    else:
        return None
    amount = int(b["amount_fen"])
    if amount > raw:
        line += tr(lang, " → minimum fee {amount}", amount=yuan(amount))
    elif amount < raw:
        line += tr(lang, " → capped at {amount}", amount=yuan(amount))
    return line


def bill_text(lang: str, n: BillNotice) -> str:
    b = n.bill
    lines = [
        tr(lang, "🧾 Bill for port {port}", port=n.port),
        tr(lang, "Duration: {d} · Energy: {e}", d=duration(lang, b["duration_s"]),
           e=kwh(b["energy_wh"])),
    ]
    if b["mode"] == "power_tier" and b["band_w"] is not None:
        lines.append(tr(lang, "Power band: up to {tier} W (your power {w} W) · {rate}/h",
                        tier=b["tier_up_to_w"], w=b["band_w"], rate=yuan(b["fen_per_hour"])))
    how = worked_out(lang, b, n.tariff)
    if how:
        lines.append(how)
    elif b["mode"] == "time" and b["fen_per_hour"] is not None:  # None: nothing was billable
        lines.append(tr(lang, "Rate: {rate}/h", rate=yuan(b["fen_per_hour"])))
    if b["off_peak_minutes"]:
        lines.append(tr(lang, "Off-peak minutes: {n}", n=b["off_peak_minutes"]))
    lines.append(tr(lang, "Ended: {reason}", reason=end_reason(lang, n.reason)))
    gross = b.get("gross_fen", b["amount_fen"])
    if gross != b.get("net_fen", gross):
        lines.append(tr(lang, "Charge: {amount}", amount=yuan(gross)))
    if b.get("refund_fen"):
        lines.append(tr(lang, "− {amount} refunded: the port failed, you pay only up to the "
                              "fault and no minimum fee", amount=yuan(b["refund_fen"])))
    if b.get("plan_fen"):
        lines.append(tr(lang, "− {amount} covered by your plan ({n} min)",
                        amount=yuan(b["plan_fen"]), n=b["plan_minutes"]))
    if b.get("coupon_fen"):
        lines.append(tr(lang, "− {amount} coupon", amount=yuan(b["coupon_fen"])))
    if b.get("compensation_fen"):
        lines.append(tr(lang, "The pile's meter counted {gap}% more energy than its readings "
                              "show. Our metering promise pays you 10× the difference: "
                              "{amount} credited.", gap=b["metering_gap_percent"],
                        amount=yuan(b["compensation_fen"])))
    b = {**b, "amount_fen": b.get("net_fen", b["amount_fen"])}
    if n.family and n.paid and b["amount_fen"]:
        lines.append(tr(lang, "Amount: {amount}, paid from your family wallet.",
                        amount=yuan(b["amount_fen"])))
        return "\n".join(lines)
    if b["amount_fen"] == 0:
        lines.append(tr(lang, "Amount: ¥0.00 — this charge is free."))
    elif n.paid:
        lines.append(tr(lang, "Amount: {amount}, paid from your wallet. Balance: {balance}",
                        amount=yuan(b["amount_fen"]), balance=yuan(n.balance_fen)))
    else:
        lines.append(tr(lang, "Amount due: {amount}. Your balance is {balance}: top up to pay.",
                        amount=yuan(b["amount_fen"]), balance=yuan(n.balance_fen)))
    return "\n".join(lines)


def menu_buttons(lang: str) -> list[list[Button]]:
    return [
        [Button(tr(lang, "📍 Nearest free ports"), data=Nearby().pack()),
         Button(tr(lang, "⚡ My charge"), data=Status().pack())],
        [Button(tr(lang, "👛 Wallet"), data=Wallet().pack()),
         Button(tr(lang, "🧾 History"), data=History().pack())],
        [Button(tr(lang, "❓ FAQ"), data=FaqEntry().pack()),
         Button(tr(lang, "🌐 Language"), data=Language().pack())],
    ]
