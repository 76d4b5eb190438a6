"""Periodic jobs (apscheduler 3). Jobs only sweep rows with deadlines; they hold no state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.context import Context
from core import charging, commands, piles
from core.db import transaction

log = logging.getLogger("chargebot.scheduler")


async def sweep_offline(ctx: Context) -> list[str]:
    """Piles that missed heartbeats for `offline_after_s` drop out of search."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        gone = await piles.mark_offline(
            session, now - timedelta(seconds=ctx.settings.piles.offline_after_s)
        )
    if gone:
        log.warning("piles offline: %s", ", ".join(gone[:20]))
    return gone


async def sweep_requests(ctx: Context) -> None:
    """Starts never confirmed by the pile fail honestly; stale commands expire."""
    now = ctx.clock()
    p = ctx.settings.piles
    async with transaction(ctx.sm) as session:
        failed = await charging.expire_requests(session, now, p.start_timeout_s)
        await commands.expire(session, now, p.command_ttl_s)
    if failed:
        ctx.wake_outbox()


def build(ctx: Context) -> AsyncIOScheduler:
    s = ctx.settings.scheduler
    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                               "misfire_grace_time": 30})
    scheduler.add_job(sweep_offline, "interval", seconds=s.offline_sweep_s, args=[ctx],
                      id="sweep_offline")
    scheduler.add_job(sweep_requests, "interval", seconds=s.command_sweep_s, args=[ctx],
                      id="sweep_requests")
    return scheduler


def setup(app: web.Application, ctx: Context) -> None:
    if not ctx.settings.scheduler.enabled:
        return

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        scheduler = build(ctx)
        scheduler.start()
        yield
        scheduler.shutdown(wait=False)

    app.cleanup_ctx.append(lifecycle)
