"""The OCPP 1.6J endpoint: `GET /ocpp/{charge_point_id}`, one live WebSocket per charge point,
our commands sent as OCPP calls and their results stored as `command_ack` events.

The handshake is checked before the upgrade: HTTP Basic auth (user = the charge point id,
password = the pile's secret, compared in constant time; an unknown id gets the same 401) and
the `ocpp1.6` subprotocol (anything else is a 400). A newer connection of a charge point
replaces the older one, which is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSCloseCode, web
from ocpp.exceptions import OCPPError
from ocpp.v16 import call
from ocpp.v16.enums import AvailabilityType, ResetType

from bot.context import Context
from bot.piles.ingest import WRITER, take_due_commands
from bot.piles.ocpp import store
from bot.piles.ocpp.link import Closed, Connection, Socket, basic_auth
from bot.piles.ocpp.point import WIRE_LOG, CentralPoint
from bot.tasks import stop_task, wait_event
from core.charging.tables import ChargeState
from core.config_sections import OcppSettings
from core.piles import events
from core.piles.wire import BatchResult

log = logging.getLogger("chargebot.ocpp")

SUBPROTOCOL = "ocpp1.6"
CP_ID = re.compile(r"[A-Za-z0-9._-]{1,40}")
SWEEP_S = 1.0  # commands queued by another worker, and resends of unanswered ones
AVAILABILITY_S = 10.0  # ports taken out of service (or back) by a work order
CALL_TIMEOUT_S = 30.0
MAX_TRANSACTIONS = 100_000
# Compared against when the charge point id is unknown, so both refusals take the same time.
_NOBODY = "x" * 32


def _refused() -> web.Response:
    return web.json_response({"error": "bad credentials"}, status=401, headers={
        "WWW-Authenticate": 'Basic realm="chargebot OCPP", charset="UTF-8"'})


class Gateway:
    def __init__(self, app: web.Application, ctx: Context, cfg: OcppSettings) -> None:
        self.app, self.ctx, self.cfg = app, ctx, cfg
        self.connections: dict[str, Connection] = {}  # pile id → its live connection
        self.transactions: OrderedDict[tuple[str, int], store.TxInfo] = OrderedDict()
        self.refused = 0
        self._woken: set[str] = set()
        self._wake = asyncio.Event()
        self._check_availability: set[str] = set()

    # --- what the charge points' handlers use (point.Host) --------------------------------

    @property
    def heartbeat_interval_s(self) -> int:
        return self.cfg.heartbeat_interval_s

    async def submit(self, pile_id: str, raw: list[dict[str, Any]]) -> BatchResult:
        """Our §3 events through the same path as HTTP and MQTT; returns after the commit."""
        batch = events.parse_batch({"events": raw})
        result = await self.app[WRITER].submit(pile_id, batch)
        if result.rejected:
            log.warning("pile %s: %d OCPP event(s) rejected, first %s: %s", pile_id,
                        len(result.rejected), result.rejected[0]["field"],
                        result.rejected[0]["error"][:120])
        if result.commands and (conn := self.connections.get(pile_id)) is not None:
            for cmd in result.commands:  # taken (marked sent) in that commit: send them now
                conn.command(cmd)
        return result

    async def transaction(self, pile_id: str, tx: int) -> store.TxInfo | None:
        info = self.transactions.get((pile_id, tx))
        if info is None and (info := await store.transaction(self.ctx, pile_id, tx)) is not None:
            self.remember(pile_id, tx, info)
        return info

    def remember(self, pile_id: str, tx: int, info: store.TxInfo | None) -> None:
        if info is None:
            self.transactions.pop((pile_id, tx), None)
            return
        self.transactions[(pile_id, tx)] = info
        while len(self.transactions) > MAX_TRANSACTIONS:
            self.transactions.popitem(last=False)

    async def charge_by_ref(self, pile_id: str, ref: str) -> tuple[int, ChargeState] | None:
        return await store.charge_by_ref(self.ctx, pile_id, ref)

    async def open_faults(self, pile_id: str, port: int) -> list[str]:
        return await store.open_faults(self.ctx, pile_id, port)

    def faulted(self, pile_id: str) -> None:
        self._check_availability.add(pile_id)
        self._wake.set()

    # --- the handshake and the connection -------------------------------------------------

    async def _authenticate(self, request: web.Request, cp_id: str
                            ) -> store.ChargePointRow | None:
        given = basic_auth(request.headers.get("Authorization", ""))
        row = await store.charge_point(self.ctx, cp_id) if CP_ID.fullmatch(cp_id) else None
        expected = row.secret if row is not None else _NOBODY
        password = given[1] if given is not None else ""
        same = hmac.compare_digest(password.encode("utf-8", "replace"),
                                   expected.encode("utf-8"))
        if row is None or given is None or given[0] != cp_id or not same:
            return None
        return row

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cp_id = request.match_info["charge_point_id"]
        row = await self._authenticate(request, cp_id)
        if row is None:
            self.refused += 1
            log.warning("OCPP handshake of %r refused: bad credentials or unknown id",
                        cp_id[:40])
            return _refused()
        interval = self.cfg.heartbeat_interval_s
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=max(30.0, 2.0 * interval),
                                   max_msg_size=1024 * 1024)
        ready = ws.can_prepare(request)
        if not ready.ok:
            return web.json_response({"error": "a WebSocket upgrade is required"}, status=400)
        if ready.protocol != SUBPROTOCOL:
            return web.json_response(
                {"error": f"the WebSocket subprotocol must be {SUBPROTOCOL}"}, status=400)
        await ws.prepare(request)
        point = CentralPoint(cp_id, Socket(ws), self, row.pile_id, row.ports, self.ctx.clock,
                             response_timeout=CALL_TIMEOUT_S)
        conn = Connection(row.pile_id, cp_id, ws, point)
        if (old := self.connections.get(row.pile_id)) is not None:
            log.info("charge point %s connected again: the older connection is closed", cp_id)
            await old.ws.close(code=WSCloseCode.GOING_AWAY, message=b"replaced")
        self.connections[row.pile_id] = conn
        log.info("charge point %s (pile %s) connected", cp_id, row.pile_id)
        sender = asyncio.create_task(self._send_loop(conn), name=f"ocpp-send-{cp_id}")
        self.faulted(row.pile_id)  # its ports under repair are made Inoperative
        self.woken(row.pile_id)  # and commands waiting for it are sent
        try:
            await point.start()
        except Closed:
            pass
        except Exception:
            log.exception("charge point %s: connection failed", cp_id)
        finally:
            # Bookkeeping first: aiohttp cancels this handler when the peer goes, and that
            # cancel can land in any await below.
            if self.connections.get(row.pile_id) is conn:
                del self.connections[row.pile_id]
            log.info("charge point %s disconnected", cp_id)
            await stop_task(sender)
            await ws.close()
        return ws

    async def close_all(self, _app: web.Application | None = None) -> None:
        for conn in list(self.connections.values()):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    # --- our calls ------------------------------------------------------------------------

    async def _send_loop(self, conn: Connection) -> None:
        while True:
            kind, job = await conn.jobs.get()
            try:
                if kind == "command":
                    await self._command(conn, job)
                else:
                    await self._availability(conn, *job)
            except Closed:
                return
            except TimeoutError:
                log.warning("charge point %s did not answer %s %s in %.0f s", conn.cp_id,
                            kind, job, CALL_TIMEOUT_S)
            except Exception:
                log.exception("charge point %s: %s %s failed", conn.cp_id, kind, job)
            finally:
                if kind == "command":
                    conn.queued.discard(job["id"])
                else:
                    conn.availability.pop(job[0], None)

    async def _call(self, conn: Connection, payload: Any) -> tuple[Any, str | None]:
        """(result, None), or (None, the error) when the charge point answered with one.
        A timeout raises: the command stays `sent` and is resent after command_resend_s."""
        try:
            return await conn.point.call(payload, suppress=False), None
        except OCPPError as exc:
            return None, f"{type(exc).__name__}: {exc.description}"[:200]

    async def _command(self, conn: Connection, cmd: dict[str, Any]) -> None:
        """One of our commands (§3) as its OCPP call; the result is a `command_ack` event."""
        kind, port = cmd.get("type"), cmd.get("port")
        ok, error, result = False, None, None
        if kind == "start" and port and cmd.get("session"):
            result, error = await self._call(conn, call.RemoteStartTransaction(
                id_tag=cmd["session"], connector_id=port))
            ok = result is not None and result.status == "Accepted"
        elif kind == "stop":
            tx = await store.transaction_of(self.ctx, conn.pile_id, cmd.get("session"))
            if tx is None:
                error = "no transaction for this session"
            else:
                result, error = await self._call(conn, call.RemoteStopTransaction(
                    transaction_id=tx))
                ok = result is not None and result.status == "Accepted"
        elif kind == "reboot":
            result, error = await self._call(conn, call.Reset(type=ResetType.soft))
            ok = result is not None and result.status == "Accepted"
        elif kind == "unlock" and port:
            result, error = await self._call(conn, call.UnlockConnector(connector_id=port))
            ok = result is not None and result.status == "Unlocked"
        elif kind == "lock":
            error = "OCPP 1.6 has no call to lock a connector"
        else:
            error = f"{kind} is not supported over OCPP"
        if not ok and error is None:
            error = f"charge point answered {result.status if result is not None else '?'}"
        await self.submit(conn.pile_id, [{
            "id": f"{cmd['id']}:ack", "type": "command_ack", "ts": self.ctx.clock().isoformat(),
            "command": cmd["id"], "ok": ok, **({"error": error[:200]} if error else {})}])

    async def _availability(self, conn: Connection, connector: int, operative: bool) -> None:
        kind = AvailabilityType.operative if operative else AvailabilityType.inoperative
        result, error = await self._call(conn, call.ChangeAvailability(
            connector_id=connector, type=kind))
        # Whatever it answered (Accepted, Scheduled, Rejected, an error) is its word: asking
        # again every sweep would not change it. A timeout raises and is asked again.
        if operative:
            conn.inoperative.discard(connector)
        else:
            conn.inoperative.add(connector)
        log.info("charge point %s connector %s → %s: %s", conn.cp_id, connector, kind,
                 result.status if result is not None else error)

    # --- commands and ports under repair, found in the database ---------------------------

    def woken(self, pile_id: str) -> None:
        """`ctx.wake_pile` hook: a command was just committed for this pile in this process."""
        if pile_id in self.connections:
            self._woken.add(pile_id)
            self._wake.set()

    async def run(self) -> None:
        last_availability = 0.0
        while True:
            await wait_event(self._wake, SWEEP_S)
            self._wake.clear()
            woken, self._woken = self._woken, set()
            check, self._check_availability = self._check_availability, set()
            try:
                await self.sweep(woken)
                if time.monotonic() - last_availability >= AVAILABILITY_S:
                    last_availability = time.monotonic()
                    check = set(self.connections)
                if check:
                    await self.availability(check)
            except Exception:
                log.exception("OCPP sweep failed")

    async def sweep(self, woken: set[str] | None = None) -> int:
        """Hand the due commands of connected charge points to their connections."""
        out = await take_due_commands(self.ctx, set(self.connections), woken)
        for pile_id, cmds in out.items():
            if (conn := self.connections.get(pile_id)) is not None:
                for cmd in cmds:
                    conn.command(cmd)
        return len(out)

    async def availability(self, pile_ids: set[str]) -> None:
        """Ports under repair Inoperative, repaired ones Operative again."""
        wanted = await store.out_of_service(self.ctx, pile_ids & set(self.connections))
        for pile_id in pile_ids:
            if (conn := self.connections.get(pile_id)) is None:
                continue
            down = wanted.get(pile_id, set())
            for connector in sorted(down - conn.inoperative):
                conn.make_available(connector, False)
            for connector in sorted(conn.inoperative - down):
                conn.make_available(connector, True)


OCPP = web.AppKey("ocpp_gateway", Gateway)


def setup(app: web.Application, ctx: Context) -> Gateway | None:
    """Serve OCPP 1.6J charge points when `[piles.ocpp] enabled`. Call after
    `bot.piles.http.setup` (it uses that module's ingest writer)."""
    cfg = ctx.settings.piles.ocpp
    if not cfg.enabled:
        return None
    gateway = app[OCPP] = Gateway(app, ctx, cfg)
    if WIRE_LOG.level == logging.NOTSET:
        WIRE_LOG.setLevel(logging.WARNING)
    app.router.add_get("/ocpp/{charge_point_id}", gateway.handle)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        ctx.pile_listeners.append(gateway.woken)
        task = asyncio.create_task(gateway.run(), name="ocpp-sweep")
        try:
            yield
        finally:
            ctx.pile_listeners.remove(gateway.woken)
            await stop_task(task)
            await gateway.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(gateway.close_all)
    return gateway
