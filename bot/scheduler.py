"""Periodic jobs (apscheduler 3). Jobs only sweep rows with deadlines; they hold no state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select
from sqlmodel import col

from bot.context import Context
from bot.leader import Leadership

# Every job's modules at the top, never inside the job: a job's first run would otherwise import
# them on the event loop (core.maintenance brings numpy and scipy, seconds of it), late and in
# the way of riders. The server imports this module at start-up.
from bot.skins import rider_groups
from core import outbox
from core.billing import disputes
from core.charging import sessions as charging
from core.charging.tables import Charge, ChargeState
from core.db import saved_id, transaction
from core.engagement import (
    broadcasts,
    groupbuy,
    questions,
    recommendations,
    redpackets,
    reports,
    services,
)
from core.faults import maintenance, workorders
from core.faults import response as faults
from core.notices.billing import DisputeEscalatedNotice
from core.notices.engagement import AnnualReadyNotice
from core.notices.support import FaqDigestNotice, FaqTopic
from core.piles import commands
from core.piles import fleet as piles
from core.support import emergencies, photos, votes
from core.support import tickets as support

log = logging.getLogger("chargebot.scheduler")
LEADERSHIP = web.AppKey("leadership", Leadership)


async def sweep_offline(ctx: Context) -> list[str]:
    """Piles that missed heartbeats for `offline_after_s` drop out of search; charges running
    on them are closed from their last reading, and a technician is sent."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        gone = await piles.mark_offline(
            session, now - timedelta(seconds=ctx.settings.piles.offline_after_s)
        )
        ended = await faults.on_offline(session, gone, now, ctx.settings)
    if gone:
        log.warning("piles offline: %s", ", ".join(gone[:20]))
    if ended:
        ctx.wake_outbox()
    return gone


async def sweep_faults(ctx: Context) -> None:
    """Faults that show over time: interrupted charges, piles back online, broken promises."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        ended = await faults.sweep_interrupted(session, now, ctx.settings)
        await faults.sweep_back_online(session, now)
    async with transaction(ctx.sm) as session:
        # Each escalation claims its order with a conditional update: however many workers or
        # overlapping runs check, one escalates and gives the coupons.
        escalated = [i for i in await workorders.overdue(session, now)
                     if await workorders.escalate(session, i, now, ctx.settings)]
    for order_id in escalated:
        log.warning("work order %s missed its acknowledgement promise: escalated", order_id)
    if ended or escalated:
        ctx.wake_outbox()


async def sweep_requests(ctx: Context) -> None:
    """Starts never confirmed by the pile fail honestly; stale commands expire."""
    now = ctx.clock()
    p = ctx.settings.piles
    async with transaction(ctx.sm) as session:
        failed = await charging.expire_requests(session, now, p.start_timeout_s)
        await commands.expire(session, now, p.command_ttl_s)
    if failed:
        ctx.wake_outbox()


Job = Callable[[Context], Awaitable[None]]


class JobStats:
    """Per-job counts for /metrics: a sweep that keeps failing is an alert, not a log line."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.last_ok: dict[str, float] = {}

    def lines(self) -> list[str]:
        out = ["# TYPE chargebot_scheduler_job_runs_total counter"]
        out += [f'chargebot_scheduler_job_runs_total{{job="{j}"}} {n}'
                for j, n in sorted(self.runs.items())]
        out += ["# TYPE chargebot_scheduler_job_failures_total counter"]
        out += [f'chargebot_scheduler_job_failures_total{{job="{j}"}} {n}'
                for j, n in sorted(self.failures.items())]
        out += ["# TYPE chargebot_scheduler_job_last_success_timestamp_seconds gauge"]
        out += [f'chargebot_scheduler_job_last_success_timestamp_seconds{{job="{j}"}} {t:.0f}'
                for j, t in sorted(self.last_ok.items())]
        return out


JOB_STATS = web.AppKey("job_stats", JobStats)


class _Running:
    """Job runs in flight, so shutdown can let them finish before the engine goes away."""

    def __init__(self, stats: JobStats | None = None) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stats = stats or JobStats()

    def wrap(self, fn: Callable[[Context], Awaitable[object]]) -> Job:
        name = fn.__name__
        stats = self.stats

        async def run(ctx: Context) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            stats.runs[name] = stats.runs.get(name, 0) + 1
            try:
                await fn(ctx)
            except Exception:
                stats.failures[name] = stats.failures.get(name, 0) + 1
                raise  # apscheduler logs it with the traceback
            else:
                stats.last_ok[name] = time.time()
            finally:
                self.tasks.discard(task)

        run.__name__ = fn.__name__
        return run


async def sweep_disputes(ctx: Context) -> None:
    """A dispute not answered within its deadline is escalated and the rider is told."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        for d in await disputes.overdue(session, now):
            log.warning("dispute %s missed its deadline: escalated", d.id)
            await outbox.enqueue(session, d.rider_id,
                                 DisputeEscalatedNotice(dispute_id=saved_id(d),
                                                        charge_id=d.charge_id),
                                 f"dispute_escalated:{d.id}", now=now)
            ctx.wake_outbox()


async def sweep_support(ctx: Context) -> None:
    """Emergency tickets nobody took in time page the supervisors (once); conversations idle
    for `support.idle_close_h` close themselves with a note."""
    async with transaction(ctx.sm) as session:
        escalated = await emergencies.escalate_emergencies(session, ctx.clock(), ctx.settings)
        idle = await support.close_idle(session, ctx.clock(), ctx.settings.support.idle_close_h)
    if idle:
        ctx.wake_outbox()
    if escalated:
        log.warning("emergency tickets not taken in time: %s", escalated)
        ctx.wake_outbox()


async def faq_digest(ctx: Context) -> None:
    """Weekly: the most asked questions to the customer-service staff and the desk; the top
    ones lead the FAQ menu."""
    now = ctx.clock()
    async with transaction(ctx.sm) as session:
        topics = await questions.weekly_digest(session, now)
        if not topics:
            return
        digest = FaqDigestNotice(topics=[FaqTopic(question=t.question, count=t.count, key=t.key)
                                         for t in topics])
        week = questions.week_of(now)
        for rid in await support.desk_riders(session, ctx.settings, now, None):
            await outbox.enqueue(session, rid, digest, f"faq_digest:{week}:{rid}",
                                 now=now)
    ctx.wake_outbox()


async def monthly_vote(ctx: Context) -> None:
    """On the 1st: last month's best pile is counted (once) and this month's polls go out."""
    now = ctx.clock()
    last = votes.month_of(now.replace(day=1) - timedelta(days=1))
    async with transaction(ctx.sm) as session:
        best = await votes.close(session, last, now)
    if best is not None:
        log.info("best pile of %s: %s (%d votes)", last, best.site_id, best.votes)
        ctx.wake_outbox()
    await rider_groups.post_polls(ctx, votes.month_of(now))


async def monthly_report(ctx: Context) -> None:
    """On the 1st: last month's satisfaction report to the staff desk (text; the PNG charts and
    CSV are written under `var/reports/`)."""
    now = ctx.clock()
    local = now.astimezone(ZoneInfo(ctx.settings.server.timezone))
    month = (local.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    async with ctx.sm() as session:
        report = await reports.monthly(session, month, ctx.settings.server.timezone)
    # Drawing the charts (matplotlib) is CPU work: in a worker thread, not on the event loop,
    # and with no transaction held open meanwhile.
    await asyncio.to_thread(reports.write, report, Path("var/reports") / month)
    async with transaction(ctx.sm) as session:
        await reports.post(session, report,
                           await support.desk_riders(session, ctx.settings, now, None), now)
    ctx.wake_outbox()


async def red_packets(ctx: Context) -> None:
    """Festival red packets: today's campaign (if any) and any unfinished one, exactly once per
    rider however often this runs or how many workers run it."""
    rp = ctx.settings.red_packets
    if not rp.enabled:
        return
    stats = await redpackets.daily(
        ctx.sm, now=ctx.clock(), tz=ctx.settings.server.timezone, amounts_fen=rp.amounts_fen,
        greet_at_local=rp.greet_at_local, quiet_after_local=rp.quiet_after_local,
        active_days=rp.active_days, batch=rp.batch)
    if any(s.credited for s in stats):
        log.info("red packets: %s", ", ".join(f"{s.campaign} +{s.credited}" for s in stats))
        ctx.wake_outbox()


async def community_broadcasts(ctx: Context) -> None:
    """Due broadcasts to the riders' groups; on Monday evenings, the week's safety tip."""
    groups = ctx.settings.support.rider_groups
    if not groups:
        return
    now = ctx.clock()
    local = now.astimezone(ZoneInfo(ctx.settings.server.timezone))
    async with transaction(ctx.sm) as session:
        if local.weekday() == 0 and local.hour >= 19:
            await broadcasts.weekly_tip(session, now)
        sent = await broadcasts.send_due(session, now, groups)
    if sent:
        ctx.wake_outbox()


async def offpeak_reminders(ctx: Context) -> None:
    """17:00 local: opted-in riders with an evening-peak habit hear about night prices."""
    percents = [t.off_peak.percent for t in ctx.settings.billing.tariffs.values() if t.off_peak]
    if not percents:
        return
    async with transaction(ctx.sm) as session:
        sent = await recommendations.offpeak_reminders(
            session, ctx.clock(), ctx.settings.server.timezone, min(percents))
    if sent:
        ctx.wake_outbox()


async def expire_group_buys(ctx: Context) -> None:
    """Group-buys that did not fill in time: every member's hold comes back, once."""
    async with transaction(ctx.sm) as session:
        expired = await groupbuy.expire(session, ctx.clock())
    if expired:
        log.info("group-buys expired: %s", expired)
        ctx.wake_outbox()


async def annual_reports(ctx: Context) -> None:
    """Late December: every rider who charged this year hears their year is ready (once)."""
    now = ctx.clock()
    year = now.astimezone(ZoneInfo(ctx.settings.server.timezone)).year
    start = now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    async with transaction(ctx.sm) as session:
        riders = (await session.execute(select(col(Charge.rider_id)).distinct().where(
            col(Charge.state).in_((ChargeState.ended, ChargeState.settled)),
            col(Charge.ended_at) >= start))).scalars()
        for rider_id in riders:
            await outbox.enqueue(session, rider_id, AnnualReadyNotice(year=year),
                                 f"annual:{year}:{rider_id}", now=now)
    ctx.wake_outbox()


async def site_schedules(ctx: Context) -> None:
    """Temporary sites open and close on their dates; the van moves to its current stop."""
    async with transaction(ctx.sm) as session:
        changed = await services.apply_schedules(session, ctx.clock(),
                                                 ctx.settings.server.timezone)
    if changed:
        log.info("sites changed by schedule: %s", ", ".join(changed))


async def plan_maintenance(ctx: Context) -> None:
    """Daily: fit the wear models on all history and plan visits ahead of predicted failures."""
    async with transaction(ctx.sm) as session:
        planned = await maintenance.plan(session, ctx.clock(), ctx.settings)
    if planned:
        log.info("planned %d preventive visits", len(planned))
        ctx.wake_outbox()


async def sweep_photos(ctx: Context) -> list[str]:
    """Uploads nothing took within 24 hours are deleted, files after the rows are gone."""
    directory = Path(ctx.settings.support.photo_dir)
    removed: list[str] = []
    while True:
        async with transaction(ctx.sm) as session:
            paths = await photos.sweep_unreferenced(session, ctx.clock())
        if not paths:
            break
        removed += await asyncio.to_thread(photos.remove_files, directory, paths)
    if removed:
        log.info("deleted %d unreferenced photos", len(removed))
    return removed


def build(ctx: Context, running: _Running | None = None) -> AsyncIOScheduler:
    running = running or _Running()
    s = ctx.settings.scheduler
    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                               "misfire_grace_time": 30})
    jobs: list[tuple[Callable[[Context], Awaitable[object]], float]] = [
        (sweep_offline, s.offline_sweep_s),
        (sweep_requests, s.command_sweep_s),
        (sweep_disputes, 60.0),
        (sweep_faults, ctx.settings.faults.sweep_s),
        (sweep_support, max(1.0, ctx.settings.support.emergency_take_s / 6)),
        (plan_maintenance, ctx.settings.maintenance.plan_every_h * 3600),
        (site_schedules, 60.0),
        (community_broadcasts, 300.0),
        (expire_group_buys, 60.0),
        (red_packets, 1800.0),  # a finished campaign is a quick no-op
        (sweep_photos, 3600.0),  # an hour late on a 24-hour deadline is nobody's problem
    ]
    for fn, every in jobs:
        scheduler.add_job(running.wrap(fn), "interval", seconds=every, args=[ctx], id=fn.__name__)
    # Monday morning, local time: the week's questions, before the staff's week starts.
    scheduler.add_job(running.wrap(faq_digest), "cron", day_of_week="mon", hour=9,
                      timezone=ctx.settings.server.timezone, args=[ctx], id="faq_digest")
    scheduler.add_job(running.wrap(monthly_report), "cron", day=1, hour=9,
                      timezone=ctx.settings.server.timezone, args=[ctx], id="monthly_report")
    scheduler.add_job(running.wrap(monthly_vote), "cron", day=1, hour=10,
                      timezone=ctx.settings.server.timezone, args=[ctx], id="monthly_vote")
    scheduler.add_job(running.wrap(offpeak_reminders), "cron", hour=17,
                      timezone=ctx.settings.server.timezone, args=[ctx], id="offpeak_reminders")
    scheduler.add_job(running.wrap(annual_reports), "cron", month=12, day=28, hour=10,
                      timezone=ctx.settings.server.timezone, args=[ctx], id="annual_reports")
    return scheduler


def setup(app: web.Application, ctx: Context) -> None:
    if not ctx.settings.scheduler.enabled:
        return

    stats = app[JOB_STATS] = JobStats()

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        running = _Running(stats)
        scheduler: AsyncIOScheduler | None = None

        async def lead() -> None:
            nonlocal scheduler
            scheduler = build(ctx, running)
            scheduler.start()

        async def follow() -> None:
            nonlocal scheduler
            if scheduler is not None:
                scheduler.shutdown(wait=False)
                scheduler = None
            if running.tasks:
                await asyncio.wait(running.tasks, timeout=15)

        # With N workers on PostgreSQL only the advisory-lock holder runs the jobs.
        leadership = Leadership(ctx.engine, lead, follow,
                                retry_s=ctx.settings.scheduler.leader_retry_s)
        app[LEADERSHIP] = leadership
        leadership.start()
        yield
        await leadership.stop()

    app.cleanup_ctx.append(lifecycle)
