"""The AP3000 TCP gateway: boards' frames in, DESIGN §3 events through the webhook's own path,
our queued commands out (docs/ap3000.md is the contract, ../shared/AP3000.md the wire).

Each report becomes our events, which go through `events.parse_batch` and the ingest writer's
group commit exactly as an HTTP batch does (validation, event-id idempotency, billing); the
board's reply is written only after the commit, so a report whose events were not stored is not
answered and the board resends it (same bytes, same event ids: duplicates, never a second
event). Commands are taken from the queue for boards connected to this process: with an ingest
(the group commit hands them out), at once when queued here (`ctx.wake_pile`), and by a sweep
every `sweep_s` for commands queued by another worker and for resends. A status report that
changes no port is only a sign of life: it is answered at once, and the sweep writes every such
board's last-seen time in one statement every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.context import Context
from bot.piles.ap3000 import frames, mapping
from bot.piles.ap3000.connection import Connection, Memory, Plan, Stats, peer_ip, tune
from bot.piles.ap3000.frames import Frame, Malformed
from bot.piles.ingest import TOUCH_EVERY_S, WRITER, take_due_commands
from bot.tasks import stop_task, wait_event
from core.config_sections import Ap3000Settings
from core.db import transaction
from core.errors import InvalidEvent
from core.piles import events as pile_events
from core.piles.fleet import pile_on_wire
from core.piles.tables import PileProtocol
from core.piles.wire import MAX_BATCH, BatchResult

log = logging.getLogger("chargebot.ap3000")
READ_SIZE = 4096
FORGET_AFTER_S = 900.0  # a board gone this long loses that memory
PRUNE_EVERY_S = 60.0
REPORTS = (frames.REGISTER, frames.LOGIN, frames.STATUS, frames.GET_TIME, frames.PROGRESS,
           frames.RECORD, frames.ALARM)


class Gateway:
    def __init__(self, app: web.Application, ctx: Context, cfg: Ap3000Settings) -> None:
        self.app, self.ctx, self.cfg = app, ctx, cfg
        self.stats = Stats()
        # A bad CIDR is a configuration error: the app does not start with it.
        self._networks = [ipaddress.ip_network(c, strict=False) for c in cfg.allow_from]
        self._server: asyncio.Server | None = None
        self._by_device: dict[int, Connection] = {}
        self._by_pile: dict[str, Connection] = {}
        self._memory: dict[int, Memory] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._woken: set[str] = set()
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        # Boards heard from with nothing to store: pile id → (when, signal dBm, temperature °C)
        self._heard: dict[str, tuple[datetime, float | None, float | None]] = {}

    # --- the listener -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (`port = 0` in the settings binds any free one)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the AP3000 gateway is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def live(self) -> int:
        """Boards connected to this process now."""
        return len(self._by_device)

    def connected(self, pile_id: str) -> bool:
        return pile_id in self._by_pile

    async def start(self) -> None:
        # SO_REUSEPORT, as `serve --workers N` does for HTTP: every worker listens on the same
        # port and the kernel spreads the boards' connections among them. Port 0 (tests) needs
        # no sharing.
        reuse = self.cfg.port != 0 and hasattr(socket, "SO_REUSEPORT")
        self._server = await asyncio.start_server(
            self._accept, self.cfg.host, self.cfg.port, reuse_port=reuse or None)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="ap3000-commands")
        log.info("AP3000 gateway listening on %s:%d", self.cfg.host, self.port)

    async def stop(self) -> None:
        await stop_task(self._sweeper)
        with contextlib.suppress(Exception):  # stopping: the database may be gone already
            await self.flush_heard()
        if self._server is not None:
            self._server.close()
        tasks = list(self._handlers)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _allowed(self, ip: str) -> bool:
        if not self._networks:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in self._networks)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        conn = Connection(reader, writer, peer_ip(writer.get_extra_info("peername")))
        try:
            if not self._allowed(conn.peer):
                self.stats.refused += 1
                log.warning("AP3000 connection from %s refused (not in allow_from)", conn.peer)
                return
            self.stats.connections += 1
            tune(writer)
            await self._serve(conn)
        except asyncio.CancelledError:
            # stop() cancels the handlers; ending quietly here, at the connection's top, keeps
            # Python 3.11's start_server from logging each of thousands of boards as an error.
            pass
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("AP3000 connection %s (device %s) lost: %s", conn.peer, conn.device_id,
                     exc or type(exc).__name__)
        except Exception:
            log.exception("AP3000 connection %s (device %s) failed", conn.peer, conn.device_id)
        finally:
            self._forget(conn)
            conn.close()
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, conn: Connection) -> None:
        """Read until the board hangs up, goes quiet, or says something that ends it."""
        idle = self.cfg.idle_timeout_s
        d = conn.deframer
        while not conn.closed:
            try:
                async with asyncio.timeout(idle):
                    data = await conn.reader.read(READ_SIZE)
            except TimeoutError:
                log.info("AP3000 connection %s (device %s) idle for %.0f s, closed", conn.peer,
                         conn.device_id, idle)
                return
            if not data:
                return
            garbage, bad = d.garbage_bytes, d.bad_checksums
            got = d.feed(data)
            self.stats.garbage_bytes += d.garbage_bytes - garbage
            self.stats.bad_checksums += d.bad_checksums - bad
            self.stats.frames += len(got)
            if got and not await self._frames(conn, got):
                return
            if conn.device_id is None and time.monotonic() - conn.opened > idle:
                log.info("AP3000 connection %s sent no frame in %.0f s, closed", conn.peer, idle)
                return

    # --- who is on the line ---------------------------------------------------------------

    async def _identify(self, conn: Connection, frame: Frame) -> bool:
        if conn.device_id is not None:
            if frame.device_id == conn.device_id:
                return True
            log.warning("AP3000 connection %s of device %d sent a frame as device %d: closed",
                        conn.peer, conn.device_id, frame.device_id)
            return False
        async with self.ctx.reader()() as session:
            pile = await pile_on_wire(session, PileProtocol.ap3000, str(frame.device_id))
        if pile is None:
            self.stats.unknown_devices += 1
            log.warning("AP3000 device %d (from %s) is not registered: connection closed",
                        frame.device_id, conn.peer)
            return False
        if conn.closed:
            return False
        conn.device_id, conn.pile_id = frame.device_id, pile.id
        conn.memory = self._memory.setdefault(frame.device_id, conn.memory)
        old = self._by_device.get(frame.device_id)
        if old is not None and old is not conn:
            # The board came back on a new link (the old one is most likely dead): newest wins.
            self.stats.replaced += 1
            log.info("AP3000 device %d reconnected from %s: closing its connection from %s",
                     frame.device_id, conn.peer, old.peer)
            self._forget(old)
            old.close()
        self._by_device[frame.device_id] = conn
        self._by_pile[pile.id] = conn
        log.info("AP3000 device %d (pile %s) connected from %s", frame.device_id, pile.id,
                 conn.peer)
        return True

    def _forget(self, conn: Connection) -> None:
        if conn.device_id is None:
            return
        if self._by_device.get(conn.device_id) is conn:
            del self._by_device[conn.device_id]
        if self._by_pile.get(conn.pile_id) is conn:
            del self._by_pile[conn.pile_id]
        conn.memory.seen = time.monotonic()

    # --- board → server -------------------------------------------------------------------

    async def _frames(self, conn: Connection, got: list[Frame]) -> bool:
        """Store the events of the frames of one read (in as few batches as fit), then answer
        them. False: the connection is to be closed."""
        batch: list[Plan] = []
        size = 0
        base = conn.statuses
        for frame in got:
            if not await self._identify(conn, frame):
                return False
            plan = self._plan(conn, frame, base)
            if plan is None:
                continue
            if plan.statuses is not None:
                base = plan.statuses
            if batch and size + len(plan.events) > MAX_BATCH:
                if not await self._commit(conn, batch):
                    return True  # not stored: nothing more is answered, the board resends
                batch, size = [], 0
            batch.append(plan)
            size += len(plan.events)
        if batch:
            await self._commit(conn, batch)
        return not conn.closed

    def _plan(self, conn: Connection, frame: Frame, base: tuple[int, ...] | None
              ) -> Plan | None:
        conn.memory.seen = time.monotonic()
        try:
            return self._plan_frame(conn, frame, base)
        except Malformed as exc:
            self.stats.malformed += 1
            log.warning("AP3000 device %d: %s (frame %s)", frame.device_id, exc,
                        frame.data.hex()[:200])
            # A report is answered anyway: resending the same short frame would not mend it.
            return Plan(frame, [], frames.reply(frame)) if frame.command in REPORTS else None

    def _plan_frame(self, conn: Connection, frame: Frame, base: tuple[int, ...] | None
                    ) -> Plan | None:
        now = self.ctx.clock()
        cmd, ok = frame.command, frames.reply(frame)
        if cmd == frames.GET_TIME:
            return Plan(frame, [], frames.reply(frame, struct.pack("<I", int(now.timestamp()))))
        if cmd == frames.PROGRESS:
            return Plan(frame, mapping.progress_events(frames.decode_progress(frame.data), now),
                        ok)
        if cmd == frames.RECORD:
            return Plan(frame, mapping.record_events(frames.decode_record(frame.data), now), ok)
        if cmd in (frames.START_STOP, frames.REBOOT):
            result = frames.decode_result(frame.data)
            sent = conn.memory.pending.get((cmd, frame.msg_id))
            if sent is None:
                log.info("AP3000 device %d answered a command we do not know (0x%02X msg %d)",
                         frame.device_id, cmd, frame.msg_id)
                return None
            return Plan(frame, [mapping.ack_for_result(sent[0], result, now)], None,
                        acked=(cmd, frame.msg_id))
        key, ts = conn.memory.key(frame, now)
        if cmd == frames.REGISTER:
            reg = frames.decode_register(frame.data)
            return Plan(frame, [mapping.heartbeat(f"reg:{key}", ts, firmware_version=reg.firmware)],
                        ok)
        if cmd == frames.LOGIN:
            login = frames.decode_login(frame.data)
            beat = mapping.heartbeat(f"hb:{key}", ts, firmware_version=login.firmware,
                                     signal=login.signal, temp=login.temp)
            return Plan(frame, [beat, *mapping.port_changes(key, ts, base, login.statuses)], ok,
                        statuses=login.statuses)
        if cmd in (frames.STATUS, frames.QUERY_STATUS):
            st = frames.decode_status(frame.data)
            beat = mapping.heartbeat(f"hb:{key}", ts, signal=st.signal, temp=st.temp)
            changes = mapping.port_changes(key, ts, base, st.statuses)
            reply = ok if cmd == frames.STATUS else None
            if not changes:
                # Nothing moved: the minute's report is only a sign of life. It is written with
                # every other such board's in one statement every few seconds (_flush_heard),
                # not as an event and a transaction per board.
                self._heard[conn.pile_id] = (ts, beat.get("signal_dbm"),
                                             beat.get("temperature_c"))
                return Plan(frame, [], reply, statuses=st.statuses)
            return Plan(frame, [beat, *changes], reply, statuses=st.statuses)
        if cmd == frames.ALARM:
            return Plan(frame, mapping.alarm_events(frames.decode_alarm(frame.data), key, ts), ok)
        self.stats.unhandled += 1
        log.info("AP3000 device %d sent command 0x%02X, which we do not serve", frame.device_id,
                 cmd)
        return None

    async def _commit(self, conn: Connection, plans: list[Plan]) -> bool:
        """Store the plans' events; only then answer the frames and hand out commands."""
        events = [e for p in plans for e in p.events]
        handed: list[dict[str, Any]] = []
        if events:
            result = await self._store(conn.pile_id, events)
            if result is None:
                return False
            handed = result.commands
        for p in plans:
            if p.statuses is not None:
                conn.statuses = p.statuses
            if p.acked is not None:
                conn.memory.pending.pop(p.acked, None)
            if p.reply is not None:
                conn.send(p.reply)
        if handed:
            await self.send_commands(conn, handed)
        await conn.drain()
        return True

    async def _store(self, pile_id: str, events: list[mapping.Event]) -> BatchResult | None:
        """Our events through the webhook's path: the same validation and the same group
        commit. None when they were not stored (the frames stay unanswered)."""
        try:
            batch = pile_events.parse_batch({"events": events})
        except InvalidEvent as exc:  # 1..500 events of ours: never, but never silently either
            log.error("AP3000 pile %s: events not a batch: %s", pile_id, exc)
            return None
        try:
            result = await self.app[WRITER].submit(pile_id, batch)
        except Exception:
            log.warning("AP3000 pile %s: events not stored, the board will resend", pile_id)
            return None
        if result.rejected:
            log.warning("AP3000 pile %s: %d event(s) rejected, first %s: %s", pile_id,
                        len(result.rejected), result.rejected[0]["field"],
                        result.rejected[0]["error"][:120])
        return result

    # --- server → board -------------------------------------------------------------------

    async def send_commands(self, conn: Connection, cmds: list[dict[str, Any]]) -> None:
        """Write our commands to the board; a command it cannot run is acknowledged as failed
        at once (through the same path as a board's answer)."""
        if conn.device_id is None:
            return
        refused: list[mapping.Event] = []
        now = self.ctx.clock()
        for cmd in cmds:
            cid = str(cmd.get("id"))
            try:
                msg_id, byte, frame = mapping.command_frame(conn.device_id, cmd)
            except mapping.Unsupported as exc:
                refused.append(mapping.command_ack(cid, False, str(exc), now))
                continue
            conn.memory.pending[(byte, msg_id)] = (cid, time.monotonic())
            conn.send(frame)
            log.info("AP3000 device %d: %s %s sent as 0x%02X msg %d", conn.device_id,
                     cmd.get("type"), cid, byte, msg_id)
        if refused:
            result = await self._store(conn.pile_id, refused)
            if result is not None and result.commands:
                await self.send_commands(conn, result.commands)

    def woken(self, pile_id: str) -> None:
        """`ctx.wake_pile` hook: a command was just committed for this pile in this process."""
        if pile_id in self._by_pile:
            self._woken.add(pile_id)
            self._wake.set()

    async def _sweep_loop(self) -> None:
        pruned = flushed = time.monotonic()
        while True:
            await wait_event(self._wake, self.cfg.sweep_s)
            self._wake.clear()
            woken, self._woken = self._woken, set()
            try:
                await self.sweep(woken)
            except Exception:
                log.exception("AP3000 command sweep failed")
            if time.monotonic() - flushed >= TOUCH_EVERY_S:
                flushed = time.monotonic()
                try:
                    await self.flush_heard()
                except Exception:  # a lost last-seen write is mended by the next one
                    log.exception("AP3000 last-seen write failed")
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                pruned = time.monotonic()
                self._prune()

    async def sweep(self, woken: set[str] | None = None) -> int:
        """Write the due commands of every board connected here; returns boards served."""
        out = await take_due_commands(self.ctx, set(self._by_pile), woken)
        for pile_id, cmds in out.items():
            if (conn := self._by_pile.get(pile_id)) is not None:
                await self.send_commands(conn, cmds)
        return len(out)

    async def flush_heard(self) -> None:
        """Write the last-seen time, signal and temperature of the boards heard from since."""
        heard, self._heard = self._heard, {}
        if heard:
            async with transaction(self.ctx.sm) as session:
                await pile_events.mark_seen(session, heard)

    def _prune(self) -> None:
        now = time.monotonic()
        horizon = 2 * self.ctx.settings.piles.command_ttl_s
        for device_id, memory in list(self._memory.items()):
            for k in [k for k, (_, at) in memory.pending.items() if now - at > horizon]:
                del memory.pending[k]
            if device_id not in self._by_device and now - memory.seen > FORGET_AFTER_S:
                del self._memory[device_id]

    # --- what an operator sees --------------------------------------------------------------

    def metric_lines(self) -> list[str]:
        lines = ["# TYPE chargebot_ap3000_connected gauge",
                 f"chargebot_ap3000_connected {self.live}"]
        for name, value in self.stats.as_dict().items():
            lines += [f"# TYPE chargebot_ap3000_{name}_total counter",
                      f"chargebot_ap3000_{name}_total {value}"]
        return lines
