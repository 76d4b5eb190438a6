"""`/plans`: monthly plans (包月) bought from the wallet; the bill shows what a plan covered."""

from __future__ import annotations

import secrets

from bot.handlers.payloads import BuyPlan, Wallet
from bot.handlers.routing import Router
from bot.handlers.text import local_day
from bot.handlers.turn import Turn
from bot.i18n import N_, tr
from core.billing import plans
from core.billing.wallet import yuan
from core.charging.queries import last_port
from core.errors import InsufficientBalance
from notifications.replies import Button, Reply

router = Router(__name__)


def _name(lang: str, plan: str) -> str:
    return {"family_pack": tr(lang, "Family pack"),
            "courier_fast": tr(lang, "Courier fast-charge plan")}.get(plan, plan)


@router.command("plans", help=N_("/plans — monthly plans"))
async def show(turn: Turn) -> list[Reply]:
    lang, tz = turn.lang, turn.ctx.settings.server.timezone
    lines = [tr(lang, "📅 Monthly plans: prepaid charging time, used before your wallet.")]
    mine = await plans.active(turn.session, turn.rider_id, turn.now)
    for p in mine:
        lines.append(tr(lang, "Yours: {name}, {left} of {total} hours left until {until}",
                        name=_name(lang, p.plan), left=(p.minutes_total - p.minutes_used) // 60,
                        total=p.minutes_total // 60, until=local_day(p.ends_at, tz)))
    nonce = secrets.token_hex(3)
    buttons = []
    for name, spec in turn.ctx.settings.billing.plans.items():
        extra = tr(lang, " + a reserved port") if spec.dedicated_port else ""
        lines.append(tr(lang, "{name}: {hours} hours for {price} ({days} days){extra}",
                        name=_name(lang, name), hours=spec.minutes // 60,
                        price=yuan(spec.price_fen), days=spec.days, extra=extra))
        buttons.append([Button(tr(lang, "Buy {name} {price}", name=_name(lang, name),
                                  price=yuan(spec.price_fen)), data=BuyPlan(name, nonce).pack())])
    return [Reply("\n".join(lines), buttons=buttons)]


@router.button(BuyPlan)
async def button(turn: Turn, p: BuyPlan) -> list[Reply]:
    lang = turn.lang
    name, nonce = p.name, p.nonce
    spec = turn.ctx.settings.billing.plans.get(name)
    if spec is None or not nonce:
        return await show(turn)
    port_id = None
    if spec.dedicated_port:
        # The courier's usual port: where they charged last.
        port_id = await last_port(turn.session, turn.rider_id)
    try:
        plan = await plans.buy(turn.session, turn.rider_id, name, turn.ctx.settings,
                               turn.now, f"{turn.rider_id}:{nonce}", port_id=port_id)
    except InsufficientBalance:
        return [Reply(tr(lang, "Your balance is not enough for {price}. Top up first.",
                         price=yuan(spec.price_fen)),
                      buttons=[[Button(tr(lang, "👛 Wallet"), data=Wallet().pack())]])]
    return [Reply(tr(lang, "✅ {name} is active until {until}: {hours} hours of charging.",
                     name=_name(lang, name),
                     until=local_day(plan.ends_at, turn.ctx.settings.server.timezone),
                     hours=plan.minutes_total // 60))]
