"""Notices about money reaching or questioned in the wallet."""

from __future__ import annotations

from core.notices.base import Notice


class PaymentNotice(Notice):
    """Money from a payment provider reached the wallet (and maybe paid due bills)."""

    kind = "payment"
    amount_fen: int
    bonus_fen: int = 0
    balance_fen: int
    provider: str = ""
    out_trade_no: str | None = None
    bills_paid: int = 0
    still_due_fen: int = 0


class AutoTopUpNotice(Notice):
    """自动续费 topped the wallet up before a bill."""

    kind = "auto_topup"
    amount_fen: int
    balance_fen: int


class DisputeEscalatedNotice(Notice):
    kind = "dispute_escalated"
    dispute_id: int
    charge_id: int | None = None
