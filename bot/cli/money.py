"""Staff money commands: `refund`, `disputes list|resolve`, `coupons issue`, `vouchers redeem`."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.cli.common import CliError, settings_for, with_session
from core.billing import coupons, disputes
from core.charging.tables import Charge
from core.engagement import vouchers
from core.riders.tables import Rider


def cmd_refund(args: argparse.Namespace) -> None:
    """Staff: give back part of a bill, once per --key."""
    settings = settings_for(args)
    if args.fen <= 0:
        raise CliError("--fen must be a positive number of fen")

    async def go(session: AsyncSession) -> int:
        charge = await session.get(Charge, args.charge)
        if charge is None:
            raise CliError(f"unknown charge {args.charge}")
        try:
            return await disputes.refund(session, charge, args.fen, args.key or
                                         f"staff-{args.fen}-{args.reason[:20]}", args.reason,
                                         datetime.now(UTC))
        except disputes.RefundTooLarge as exc:
            raise CliError(f"at most {exc.params['max']} fen can be refunded") from None
        except disputes.NothingToDispute:
            raise CliError("that charge has no bill to refund") from None

    done = asyncio.run(with_session(settings, go))
    print(f"refunded {done} fen on charge {args.charge}" if done else
          "nothing refunded: this refund was already made")


def cmd_disputes(args: argparse.Namespace) -> None:
    settings = settings_for(args)

    async def go(session: AsyncSession) -> list[str]:
        if args.disputes_command == "list":
            rows = await session.execute(
                select(disputes.Dispute)
                .where(col(disputes.Dispute.state) != disputes.DisputeState.resolved)
                .order_by(col(disputes.Dispute.due_at)))
            return [f"{d.id}\tcharge {d.charge_id}\t{d.state}\tdue {d.due_at:%Y-%m-%d %H:%M}"
                    for d in rows.scalars()]
        d = await session.get(disputes.Dispute, args.id)
        if d is None:
            raise CliError(f"unknown dispute {args.id}")
        charge = await session.get(Charge, d.charge_id)
        if charge is None:
            raise CliError(f"dispute {d.id} names charge {d.charge_id}, which does not exist")
        now = datetime.now(UTC)
        if args.refund:
            try:
                d.refund_fen += await disputes.refund(session, charge, args.refund,
                                                      f"dispute-{d.id}", args.note, now)
            except disputes.RefundTooLarge as exc:
                raise CliError(f"at most {exc.params['max']} fen can be refunded") from None
        d.state, d.resolution, d.resolved_at = disputes.DisputeState.resolved, args.note, now
        return [f"dispute {d.id} resolved, {d.refund_fen} fen refunded"]

    for line in asyncio.run(with_session(settings, go)):
        print(line)


def cmd_coupons_issue(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    if (args.fen > 0) == (args.percent > 0):
        raise CliError("give either --fen or --percent")

    async def go(session: AsyncSession) -> str:
        if await session.get(Rider, args.rider) is None:
            raise CliError(f"unknown rider {args.rider}")
        c = await coupons.issue(session, args.rider, amount_fen=args.fen,
                                percent_off=args.percent, days=args.days, reason=args.reason,
                                now=datetime.now(UTC))
        return c.code

    print(f"coupon {asyncio.run(with_session(settings, go))} issued")


def cmd_vouchers_redeem(args: argparse.Namespace) -> None:
    """The merchant side: a voucher code is good once."""
    settings = settings_for(args)

    async def go(session: AsyncSession) -> str:
        try:
            v = await vouchers.redeem(session, args.code, args.merchant or None,
                                      datetime.now(UTC))
        except vouchers.VoucherError as exc:
            raise CliError(exc.explain()) from None
        return vouchers.redeemed_line(v)

    print(asyncio.run(with_session(settings, go)))
