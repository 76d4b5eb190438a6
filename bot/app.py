"""The aiohttp application: routes, skins, notifier and scheduler wired to one lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from aiohttp import web
from sqlalchemy.exc import DBAPIError

import core.subscribers  # noqa: F401  (registers what follows a billed charge)
from bot import logs, loop_lag, scheduler, warmup
from bot.context import CTX, Context
from bot.handlers import notices, topups
from bot.payments import pay_page, telegram_pay
from bot.payments import wechatpay as wechatpay_pay
from bot.piles import ap3000, mqtt
from bot.piles import http as piles_api
from bot.piles import ocpp as ocpp_piles
from bot.scheduler import JOB_STATS, LEADERSHIP
from bot.skins import photo_links, telegram, webchat, wechat
from bot.skins import photos as photo_intake
from bot.tasks import stop_task
from core import gauges
from core.config import Settings
from core.db import make_engine, make_read_sessionmaker, make_sessionmaker, utcnow
from core.support import photos
from notifications.worker import Notifier, Sender

log = logging.getLogger("chargebot.app")
NOTIFIER = web.AppKey("notifier", Notifier)


# PostgreSQL's SQLSTATEs for "not reachable right now": connection exceptions (class 08),
# admin/crash shutdown and "starting up" (57P01-57P03). They pass; a bug does not.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
RETRY_AFTER_S = 2


def database_unavailable(exc: BaseException) -> bool:
    """Whether a request failed because the database is restarting or unreachable."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        # asyncpg's connect raises these bare, not wrapped by SQLAlchemy.
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        code = getattr(e, "sqlstate", None)
        if isinstance(code, str) and code.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        e = e.__cause__ or e.__context__
    return False


@web.middleware
async def answer_503_while_the_database_is_away(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """A database restart is an outage, not a bug: 503 + Retry-After tells piles, browsers and
    load balancers to come back, where a 500 would page someone and look like a crash."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning("database unavailable for %s %s: %s", request.method, request.path,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return web.json_response({"error": "temporarily unavailable, retry"}, status=503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _peer_address(request: web.Request) -> str | None:
    """The socket's peer, never a header: X-Forwarded-For and friends are the client's word."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return None
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
        return str(ip)
    return host


def metrics_refusal(request: web.Request, settings: Settings) -> web.Response | None:
    """Why /metrics is not for this request (401 without the configured bearer token, 403 from
    another address when no token is set), or None. The counts name nobody, but they tell an
    outsider the fleet's size and load, so they are not public."""
    token = settings.server.metrics_token
    if token is not None and token.get_secret_value().strip():
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            return web.json_response({"error": "metrics need a bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return None
    allowed = settings.server.metrics_host
    with contextlib.suppress(ValueError):
        allowed = str(ipaddress.ip_address(allowed))
    if _peer_address(request) != allowed:
        return web.json_response({"error": "metrics are not served to this address"},
                                 status=403)
    return None


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: what an operator watches (and alerts on) across the workers."""
    if (refused := metrics_refusal(request, request.app[CTX].settings)) is not None:
        return refused
    ctx = request.app[CTX]
    now = ctx.clock()
    async with ctx.reader()() as session:
        g = await gauges.read(session, now)
    leadership = request.app.get(LEADERSHIP)
    notifier = request.app.get(NOTIFIER)
    lines = ["# TYPE chargebot_charges gauge"]
    lines += [f'chargebot_charges{{state="{s}"}} {n}' for s, n in g.charges.items()]
    lines += ["# TYPE chargebot_outbox_messages gauge"]
    lines += [f'chargebot_outbox_messages{{state="{s}"}} {n}' for s, n in sorted(g.outbox.items())]
    lines += [
        "# TYPE chargebot_outbox_pending gauge",
        f"chargebot_outbox_pending {g.outbox.get('pending', 0)}",
        "# TYPE chargebot_outbox_lag_seconds gauge",
        f"chargebot_outbox_lag_seconds {g.outbox_lag_s:.1f}",
        "# TYPE chargebot_delivery_errors_total counter",
        f"chargebot_delivery_errors_total {g.outbox.get('dead', 0)}",
        "# TYPE chargebot_pile_events_total counter",
        f"chargebot_pile_events_total {g.pile_events}",
        "# TYPE chargebot_pile_events_rejected_total counter",
        f"chargebot_pile_events_rejected_total {g.rejected_events}",
        "# TYPE chargebot_work_orders_open gauge",
        f"chargebot_work_orders_open {g.work_orders_open}",
        "# TYPE chargebot_tickets_open gauge", f"chargebot_tickets_open {g.tickets_open}",
        "# TYPE chargebot_scheduler_leader gauge",
        f"chargebot_scheduler_leader {int(bool(leadership and leadership.leading))}",
        "# TYPE chargebot_delivered_total counter",
        f"chargebot_delivered_total {notifier.delivered if notifier else 0}",
    ]
    if (stats := request.app.get(JOB_STATS)) is not None:
        lines += stats.lines()
    if (loop := request.app.get(loop_lag.LAG)) is not None:
        lines += loop.lines()
    if (gateway := request.app.get(ap3000.AP3000)) is not None:
        lines += gateway.metric_lines()
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def create_app(
    settings: Settings, *, clock: Callable[[], datetime] = utcnow, notifier: bool = True,
) -> web.Application:
    logs.install(settings)
    engine = make_engine(settings.database.url, echo=settings.database.echo)
    ctx = Context(settings=settings, engine=engine, sm=make_sessionmaker(engine), clock=clock,
                  read_sm=make_read_sessionmaker(engine))
    app = web.Application(client_max_size=2 * 1024 * 1024, middlewares=[
        logs.request_ids, answer_503_while_the_database_is_away])
    app[CTX] = ctx
    # cleanup_ctx unwinds in reverse: the engine goes last, after everything that uses it.
    app.cleanup_ctx.append(_dispose_engine)
    # Before every other start-up step: the loop is watched from the start, and the warm-up
    # (bot.warmup) is done before the notifier, the scheduler or any request can need it.
    loop_lag.setup(app, settings)
    app.cleanup_ctx.append(warmup.ready)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    piles_api.setup(app, ctx)
    mqtt.setup(app, ctx)  # after piles_api: it shares the ingest writer and the secret cache
    ap3000.setup(app, ctx)  # AP3000 boards over TCP, through the same ingest writer
    ocpp_piles.setup(app, ctx)  # OCPP 1.6J charge points at /ocpp/{id}, when enabled
    senders: dict[str, Sender] = {}
    if settings.server.webchat:
        webchat.setup(app, ctx)
        senders["webchat"] = webchat.WebchatSender(ctx)
    wx = wechat.setup(app, ctx)
    if wx is not None:
        senders["wechat"] = wechat.WechatSender(ctx, wx)
    tg = telegram.setup(app, ctx)
    if tg is not None:
        senders["telegram"] = telegram.TelegramSender(tg)
    # What the chat says around a Telegram top-up is the wallet conversation's, above payments.
    telegram_pay.setup(ctx, telegram_pay.TopupFace(amounts=topups.topup_amounts,
                                                   credited=topups.credited_reply))
    if (wxpay := wechatpay_pay.setup(app, ctx)) is not None:
        pay_page.setup(app, ctx, wxpay)  # the pay page and QR links riders get in chat
    # Photos, rider groups' polls and jobs use the app's own Telegram/WeChat clients; the
    # handlers take riders' photos through ctx.photo_intake.
    photo_intake.setup(app, ctx)
    photo_links.setup(app)
    app.cleanup_ctx.append(_photo_link_key)
    n = settings.notifications
    app[NOTIFIER] = Notifier(
        ctx.sm, senders, notices.render, read_sm=ctx.reader(), poll_s=n.poll_s,
        batch=n.batch, lease_s=n.lease_s, max_attempts=n.max_attempts, clock=clock,
        wait=lambda t: ctx.wakeups.wait("outbox", t),
    )
    if notifier:
        app.cleanup_ctx.append(_notifier_task)
    scheduler.setup(app, ctx)
    return app


async def _notifier_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[NOTIFIER].run(), name="notifier")
    yield
    await stop_task(task)


async def _photo_link_key(app: web.Application) -> AsyncIterator[None]:
    """The photo-link key stored in the database (core.photos), read before the first link is
    signed; a database that is away at start-up is waited for in the background."""
    ctx = app[CTX]

    async def retry() -> None:
        while True:
            await asyncio.sleep(RETRY_AFTER_S)
            try:
                await photos.load_link_key(ctx.settings, ctx.sm)
                return
            except Exception as exc:
                if not database_unavailable(exc):
                    raise

    task: asyncio.Task[None] | None = None
    try:
        await photos.load_link_key(ctx.settings, ctx.sm)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning("photo-link key not loaded yet, the database is away; retrying")
        task = asyncio.create_task(retry(), name="photo-link-key")
    yield
    await stop_task(task)


async def _dispose_engine(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[CTX].engine.dispose()
