"""`/dispute`: question a bill; evident cases are refunded at once, others answered within 24 h."""

from __future__ import annotations

from bot.handlers.payloads import Dispute
from bot.handlers.routing import Router
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.billing.disputes import (
    DisputeState,
    NothingToDispute,
    bill_to_dispute,
    open_dispute,
)
from core.billing.wallet import yuan
from core.db import row_id
from notifications.replies import Reply

router = Router(__name__)


@router.button(Dispute)
async def button(turn: Turn, p: Dispute) -> list[Reply]:
    return await open_(turn, p.ref)


@router.command("dispute", help=N_("/dispute — question a bill"))
async def open_(turn: Turn, arg: str) -> list[Reply]:
    lang = turn.lang
    charge = await bill_to_dispute(turn.session, turn.rider_id, row_id(arg.strip()))
    if charge is None:
        return [Reply(tr(lang, "There is no bill to dispute."))]
    try:
        d = await open_dispute(turn.session, charge, turn.rider_id, "rider",
                               turn.ctx.settings, turn.now)
    except NothingToDispute:
        return [Reply(tr(lang, "There is no bill to dispute."))]
    if d.state == DisputeState.resolved:
        return [Reply(tr(lang, "✅ We checked port {port}: {amount} is refunded ({why}).",
                         port=charge.port_code, amount=yuan(d.refund_fen),
                         why=tr(lang, d.resolution or "")))]
    hours = turn.ctx.settings.billing.dispute_hours
    return [Reply(tr(lang, "📝 Your question about the bill for port {port} is recorded (case "
                           "{id}). We will answer within {hours} hours.",
                     port=charge.port_code, id=d.id, hours=hours))]


# The evident reasons, marked for the catalog: they are stored in English and shown translated.
_REASONS = (
    lambda lang: tr(lang, "metering mismatch"),
    lambda lang: tr(lang, "charged during a reported fault"),
)
