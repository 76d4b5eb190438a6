"""`chargebot report monthly`: the satisfaction report as CSV and PNG charts."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from bot.cli.common import CliError, settings_for, with_session
from bot.handlers.surveys import text_summary
from core.engagement import reports


def cmd_report_monthly(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    try:
        reports.month_bounds(args.month, settings.server.timezone)
    except ValueError as exc:
        raise CliError(f"--month: {exc}") from exc

    async def go(session: AsyncSession) -> reports.MonthlyReport:
        return await reports.monthly(session, args.month, settings.server.timezone)

    report = asyncio.run(with_session(settings, go))
    for path in reports.write(report, Path(args.out)):
        print(path)
    print(text_summary(report, "en"))
