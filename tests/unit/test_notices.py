"""Typed outbox notices: every kind has a model and a renderer, payloads round-trip, rows the
old dict code wrote still read the same, and a row nobody can read is refused and logged."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from bot.handlers import notices
from core.engagement.reports import MonthlyReport, SiteNps, as_payload
from core.notices import KINDS, Notice, parse
from core.notices.billing import PaymentNotice
from core.notices.charging import BillNotice
from core.notices.faults import WorkOrderEscalatedNotice, WorkOrderNotice

TARIFF = {"mode": "time", "fen_per_hour": 100, "free_minutes": 5, "unit_minutes": 1,
          "min_fee_fen": 50, "cap_fen": 2000}
BILL = {"duration_s": 3725, "energy_wh": 812.5, "mode": "time", "band_w": None,
        "tier_up_to_w": None, "fen_per_hour": 100, "off_peak_minutes": 12, "amount_fen": 130,
        "gross_fen": 130, "net_fen": 100, "refund_fen": 30, "plan_fen": 0, "plan_minutes": 0,
        "coupon_fen": 0, "compensation_fen": 0, "metering_gap_percent": 0,
        "fault_code": "overload"}
WORK_ORDER = {"order_id": 7, "kind": "fault", "where": "P0001-03", "pile": "P0001", "port": 3,
              "causes": "overload,smoke", "severity": "critical", "site": "North Gate",
              "address": "1 Road", "lat": 31.2, "lon": 121.4, "planned_for": None,
              "ack_due_at": "2031-03-01T02:30:00+00:00", "tz": "Asia/Shanghai"}
REPORT = as_payload(MonthlyReport(month="2031-03", tz="Asia/Shanghai", nps=42.0, responses=10,
                                  promoters=6, passives=2, detractors=2,
                                  by_site=[SiteNps("S1", "North Gate", 50.0, 4)],
                                  reasons=[("price", 2)], charges=100))
VOUCHER = {"voucher_id": 1, "code": "ABCDEFGHJK", "merchant": "mall-cafe", "value_fen": 500,
           "title": {"zh_CN": "商场咖啡店", "en": "cafe"},
           "expires_at": "2031-04-01T00:00:00+00:00", "redeemed_at": None}
DEAL = {"deal_id": 2, "code": "ABC234", "size": 3, "topup_fen": 5000, "price_fen": 4500,
        "percent_off": 10, "balance_fen": 5000}

# One payload per kind, keyed and shaped as the dict-writing code stored them.
OLD_PAYLOADS: dict[str, dict[str, Any]] = {
    "bill": {"charge_id": 12, "port": "P0001-03", "pile": "P0001", "reason": "fault",
             "bill": BILL, "paid": False, "balance_fen": 0, "tariff": TARIFF},
    "charge_started": {"charge_id": 11, "port": "P0001-03", "tariff": TARIFF},
    "start_failed": {"charge_id": 11, "port": "P0001-03", "error": "timeout"},
    "payment": {"amount_fen": 10000, "bonus_fen": 2000, "balance_fen": 12345,
                "provider": "wechatpay", "out_trade_no": "CB1", "bills_paid": 1,
                "still_due_fen": 300},
    "auto_topup": {"amount_fen": 2000, "balance_fen": 2300},
    "dispute_escalated": {"dispute_id": 3, "charge_id": 11},
    "ticket": {"ticket_id": 5, "kind": "fault", "priority": "emergency", "problem": "smoke",
               "rider": "Li", "rider_id": 3, "platform": "telegram", "where": "P0001-03",
               "charge_id": 9, "last_charge": "P0001-02", "text": "smoke!", "photo": True,
               "photo_url": "https://x/p.jpg", "update": True},
    "ticket_answer": {"ticket_id": 5, "text": "On our way"},
    "ticket_closed": {"ticket_id": 5, "resolution": "fixed"},
    "ticket_escalated": {"ticket_id": 5, "seconds": 120},
    "ticket_idle_closed": {"ticket_id": 5, "hours": 24},
    "sos_reports": {"ticket_id": 5, "count": 3, "where": None, "minutes": 10},
    "report_verified": {"ticket_id": 5, "amount_fen": 300, "where": "P0001-03"},
    "suggestion_decided": {"suggestion_id": 1, "adopted": True, "days": 7, "text": "more"},
    "faq_digest": {"topics": [{"question": "How to pay?", "count": 4, "key": "pay"},
                              {"question": "Why slow?", "count": 2, "key": None}]},
    "best_pile": {"month": "2031-03", "site": "North Gate", "votes": 12},
    "work_order": WORK_ORDER,
    "work_order_escalated": {**WORK_ORDER, "coupons": 2, "minutes": 30, "technician": ""},
    "work_order_cleared": {"order_id": 7, "where": "P0001-03"},
    "repair_done": {"order_id": 7, "where": "P0001-03", "technician": "Wang"},
    "promise_coupon": {"order_id": 7, "where": "P0001-03", "amount_fen": 500, "minutes": 30},
    "offpeak_reminder": {"percent": 60},
    "broadcast": {"zh_CN": "通知", "en": "notice"},
    "red_packet": {"festival": "mid_autumn", "campaign": "mid_autumn-2031", "amount_fen": 188,
                   "balance_fen": 1188},
    "nps_prompt": {"charge_id": 11, "port": "P0001-03"},
    "monthly_report": REPORT,
    "annual_ready": {"year": 2031},
    "groupbuy_filled": DEAL,
    "groupbuy_expired": DEAL,
    "voucher_issued": VOUCHER,
    "voucher_redeemed": {**VOUCHER, "redeemed_at": "2031-03-02T00:00:00+00:00"},
    "link_request": {"attempt_id": 4, "platform": "wechat", "name": "Li"},
    "link_done": {"balance_fen": 1234},
    "link_refused": {},
    "replies": {"replies": [{"text": "hi", "buttons": [[{"label": "A", "data": "wallet"}]]}]},
    "text": {"text": "hello"},
}


def test_every_kind_has_a_model_a_renderer_and_a_sample() -> None:
    assert {cls.kind for cls in notices.RENDERERS} == set(KINDS) == set(OLD_PAYLOADS)
    assert all(KINDS[cls.kind] is cls for cls in notices.RENDERERS)
    assert all(len(kind) <= 32 for kind in KINDS)  # outbox.kind is VARCHAR(32)


@pytest.mark.parametrize("kind", sorted(OLD_PAYLOADS))
def test_each_notice_round_trips_through_its_payload_unchanged(kind: str) -> None:
    notice = parse(kind, OLD_PAYLOADS[kind])
    assert type(notice).kind == kind
    payload = notice.to_payload()
    assert type(notice).from_payload(payload) == notice
    # The stored keys stay what the old code wrote: rows need no migration.
    assert set(OLD_PAYLOADS[kind]) <= set(payload)
    for lang in ("en", "zh_CN"):
        assert notices.render(kind, payload, lang)


def test_times_are_stored_as_iso_text_with_their_offset() -> None:
    notice = WorkOrderNotice.from_payload(WORK_ORDER)
    assert notice.ack_due_at == datetime(2031, 3, 1, 2, 30, tzinfo=UTC)
    assert notice.to_payload()["ack_due_at"] == "2031-03-01T02:30:00+00:00"
    assert notice.to_payload()["kind"] == "fault"  # the order's kind, not the notice's
    assert WorkOrderEscalatedNotice.kind == "work_order_escalated"


def test_a_misspelt_or_missing_field_fails_when_the_notice_is_made() -> None:
    with pytest.raises(ValidationError):
        PaymentNotice(amount_fen=100, balance_fen=100, bonus=5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        BillNotice(charge_id=1, port="P0001-01", reason="full", bill={}, paid=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        class Twice(Notice):
            kind = "bill"


def test_rows_the_dict_code_wrote_render_as_they_did() -> None:
    [bill] = notices.render("bill", OLD_PAYLOADS["bill"], "en")
    assert bill.text == (
        "⚠️ Charging stopped because port P0001-03 failed (overload). ¥0.30 refunded: you pay "
        "only until the fault. The port is reported for repair.\n\n"
        "🧾 Bill for port P0001-03\nDuration: 1 h 02 min · Energy: 0.81 kWh\nRate: ¥1.00/h\n"
        "Off-peak minutes: 12\nEnded: stopped by a port fault\nCharge: ¥1.30\n"
        "− ¥0.30 refunded: the port failed, you pay only up to the fault and no minimum fee\n"
        "Amount due: ¥1.00. Your balance is ¥0.00: top up to pay.")
    assert [[b.data for b in row] for row in bill.buttons] == [
        ["alt:P0001"], ["pay", "wallet"], ["sos:12"]]
    [ticket] = notices.render("ticket", OLD_PAYLOADS["ticket"], "en")
    assert ticket.text == (
        "🆘 EMERGENCY #5 · new message · smoke · P0001-03\nRider: Li (#3, telegram)\n"
        "Last charge: P0001-02\n“smoke!”\n📷 photo attached\n"
        "Reply to this message to answer the rider.")
    assert ticket.photo_url == "https://x/p.jpg"
    [order] = notices.render("work_order", WORK_ORDER, "en")
    assert order.text == ("🔧 Work order #7: P0001-03\nFault: overload, smoke alarm (critical)\n"
                          "📍 North Gate · 1 Road\nPlease acknowledge by 03-01 10:30.")
    assert order.venue is not None and order.venue.title == "North Gate"
    [started] = notices.render("charge_started", OLD_PAYLOADS["charge_started"], "en")
    assert started.text.startswith("⚡ Charging started at port P0001-03.\nFirst 5 min free; ")
    [expired] = notices.render("groupbuy_expired", DEAL, "en")
    assert expired.text == ("⌛ Group-buy ABC234 did not fill in time, so nobody was charged: "
                            "your ¥45.00 is back. Balance: ¥50.00")


def test_keys_a_later_release_dropped_are_ignored_when_reading_a_row() -> None:
    old = {**OLD_PAYLOADS["auto_topup"], "currency": "CNY"}
    [reply] = notices.render("auto_topup", old, "en")
    assert reply.text == "🔁 Auto top-up: ¥20.00 added to your wallet. Balance: ¥23.00"


@pytest.mark.parametrize(("kind", "payload"), [
    ("bll", OLD_PAYLOADS["bill"]),  # a kind nobody claims
    ("bill", {"charge_id": "twelve", "port": "P0001-03"}),  # a payload that does not fit
])
def test_a_row_nobody_can_read_is_refused_and_logged_for_the_notifier_to_retry(
    kind: str, payload: dict[str, Any], caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.handlers.rendering"), \
            pytest.raises(notices.Unrenderable):
        notices.render(kind, payload, "en")
    assert any(repr(kind) in r.getMessage() for r in caplog.records)
    # The notifier's catch-all takes a ValueError: logged, retried, dead after its attempts.
    assert issubclass(notices.Unrenderable, ValueError)
