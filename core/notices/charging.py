"""Notices about a rider's own charge: started, refused, billed."""

from __future__ import annotations

from typing import Any

from core.notices.base import Notice


class ChargeStartedNotice(Notice):
    kind = "charge_started"
    charge_id: int
    port: str
    tariff: dict[str, Any]  # the charge's tariff as stored on it (`core.billing.tariffs`)


class StartFailedNotice(Notice):
    kind = "start_failed"
    charge_id: int
    port: str
    error: str = ""  # the pile's words, or "timeout"


class BillNotice(Notice):
    kind = "bill"
    charge_id: int
    port: str
    pile: str | None = None
    reason: str  # how the charge ended (`charges.END_REASONS`)
    bill: dict[str, Any]  # the charge's whole breakdown (`charges.bill`, see settlement)
    paid: bool
    balance_fen: int  # the payer's balance after paying (or not)
    tariff: dict[str, Any] = {}
    family: bool = False  # paid from the family owner's wallet
