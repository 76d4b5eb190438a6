"""One pile controller's brain: ports, sessions, commands in, events out. No I/O.

The network side (simulator/pile.py) feeds commands in and drains `outbox`; the ticker calls
`tick()` at `next_deadline()`. Keeping this synchronous makes every ordering guarantee of the
DESIGN §3 contract (ack → status → session_started, session_ended → status) easy to see.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from simulator import charger
from simulator.charger import ChargePlan, ChargerProfile
from simulator.clock import VirtualClock, iso
from simulator.state import (
    FAULT_DETAILS,
    RANDOM_PORT_FAULTS,
    Port,
    Session,
    SimSettings,
)

log = logging.getLogger("chargebot.simulator")

FIRMWARE = "chargebot-sim/1.0"

SEEN_COMMANDS = 1024
REACK_AFTER_S = 2.0
# A pile that is offline for hours must not eat the host's memory; meters are the only
# events a server can afford to lose (billing uses session_started/ended).
MAX_OUTBOX = 20_000
# Float error between virtual and monotonic time must not make a due end look "not yet".
DUE_SLACK_S = 1e-4


class PileController:
    def __init__(
        self,
        pile_id: str,
        ports: int,
        clock: VirtualClock,
        settings: SimSettings,
        rng: random.Random,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        if not 1 <= ports <= 64:
            raise ValueError(f"{pile_id}: ports must be 1..64, got {ports}")
        self.pile_id = pile_id
        self.clock = clock
        self.settings = settings
        self.rng = rng
        self.notify = notify
        self.ports = {n: Port(n) for n in range(1, ports + 1)}
        self.pile_faults: set[str] = set()
        self.outbox: deque[dict[str, Any]] = deque()
        self.silent = False
        # Not from the seeded rng: a re-run of a seeded demo must not reuse event ids the
        # server already stored, or it would silently drop them as duplicates.
        self.boot_id = secrets.token_hex(4)
        self._seq = 0
        self._done: OrderedDict[str, tuple[bool, str | None, float]] = OrderedDict()
        self._next_heartbeat = math.inf

    # ---- outbound -------------------------------------------------------------------------
    def _emit(self, type_: str, at_v: float | None = None, **fields: Any) -> None:
        self._seq += 1
        ts = self.clock.now() if at_v is None else at_v
        event = {"id": f"{self.boot_id}-{self._seq}", "type": type_, "ts": iso(ts), **fields}
        self.outbox.append(event)
        if len(self.outbox) > MAX_OUTBOX:
            self._drop_oldest_meter()
        self.notify()

    def _drop_oldest_meter(self) -> None:
        for i, event in enumerate(self.outbox):
            if event["type"] == "meter":
                del self.outbox[i]
                return

    def take_batch(self, limit: int = 500) -> list[dict[str, Any]]:
        n = min(limit, len(self.outbox))
        return [self.outbox.popleft() for _ in range(n)]

    def _heartbeat(self) -> None:
        now_v = self.clock.now()
        load = sum(p.session.power_w(now_v) for p in self.ports.values() if p.session)
        self._emit(
            "heartbeat",
            signal_dbm=self.rng.randint(-95, -60),
            temperature_c=round(25.0 + load / 150.0 + self.rng.uniform(-0.5, 0.5), 1),
            firmware=FIRMWARE,
        )

    def _status(self, port: Port, at_v: float | None = None) -> None:
        self._emit("port_status", at_v, port=port.number, status=self.status_of(port))

    def status_of(self, port: Port) -> str:
        if port.session is not None:
            return "charging"
        if port.locked:
            return "offline"
        if port.faults or self.pile_faults:
            return "fault"
        return "plugged" if port.plugged else "idle"

    # ---- lifecycle ------------------------------------------------------------------------
    def boot(self) -> None:
        """Login after power-up: who I am, then every port's state."""
        self._heartbeat()
        for port in self.ports.values():
            self._status(port)
        self._next_heartbeat = self.clock.mono() + self._heartbeat_gap()

    def _heartbeat_gap(self) -> float:
        # ±10 % so a fleet started at once does not hit the server in lockstep forever.
        return self.settings.heartbeat_s * self.rng.uniform(0.9, 1.1)

    def set_silent(self, silent: bool) -> None:
        was = self.silent
        self.silent = silent
        if was and not silent:
            # Back online: re-login straight away so offline detection clears promptly.
            self._heartbeat()
            self._next_heartbeat = self.clock.mono() + self._heartbeat_gap()

    # ---- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float:
        """Monotonic time of the next thing that must happen without outside input."""
        times = [self._next_heartbeat]
        for port in self.ports.values():
            s = port.session
            if s is None:
                continue
            times.append(s.next_meter_mono)
            end = s.end_v
            if math.isfinite(end):
                times.append(self.clock.mono_at(end))
            if s.fault_at_v is not None and s.fault_at_v < end:
                times.append(self.clock.mono_at(s.fault_at_v))
        return min(times)

    def tick(self, mono: float | None = None) -> None:
        """Do everything that has come due by `mono`: ends and faults first, oldest first,
        then meters, then the heartbeat, so event timestamps mostly rise in outbox order."""
        mono = self.clock.mono() if mono is None else mono
        due_v = self.clock.virtual_at(mono + DUE_SLACK_S)
        endings: list[tuple[float, Port, str]] = []
        for port in self.ports.values():
            s = port.session
            if s is None:
                continue
            if s.fault_at_v is not None and s.fault_at_v < s.end_v and s.fault_at_v <= due_v:
                endings.append((s.fault_at_v, port, "random_fault"))
            elif s.end_v <= due_v:
                endings.append((s.end_v, port, s.plan.reason))
        for at_v, port, reason in sorted(endings, key=lambda e: (e[0], e[1].number)):
            if reason == "random_fault":
                code = self.rng.choice(RANDOM_PORT_FAULTS)
                log.info("%s port %d: random fault %s", self.pile_id, port.number, code)
                self._fault([port], port.number, code, end_session=True, at_v=at_v)
            else:
                self._end(port, reason, at_v)
        for port in self.ports.values():
            s = port.session
            if s is not None and mono >= s.next_meter_mono:
                self._meter(port, s, self.clock.virtual_at(mono))
                s.next_meter_mono += self.settings.meter_every_s
                if s.next_meter_mono <= mono:
                    s.next_meter_mono = mono + self.settings.meter_every_s
        if mono >= self._next_heartbeat:
            if not self.silent:
                self._heartbeat()
            self._next_heartbeat = mono + self._heartbeat_gap()

    def _meter(self, port: Port, s: Session, now_v: float) -> None:
        minute = s.minute(now_v)
        power = charger.reported_power_w(s.profile, minute, self.rng, unplugged_at=s.unplugged_at)
        volts = charger.line_voltage_v(self.rng)
        self._emit(
            "meter",
            now_v,
            port=port.number,
            session=s.id,
            power_w=power,
            energy_wh=round(s.energy_wh(now_v), 1),  # 0.1 Wh, as boards count
            voltage_v=volts,
            current_a=round(power / volts, 3),
            temperature_c=charger.port_temperature_c(power, self.rng),
        )

    def _end(self, port: Port, reason: str, at_v: float, *, send_status: bool = True) -> None:
        s = port.session
        if s is None:
            return
        self._emit(
            "session_ended",
            at_v,
            port=port.number,
            session=s.id,
            reason=reason,
            energy_wh=round(s.energy_wh(at_v), 1),
            duration_s=round(at_v - s.start_v),
        )
        port.session = None
        # Whatever the reason, the contract reports the port idle afterwards; a rider who
        # leaves the bike connected shows up again with `plug`.
        port.plugged = False
        if send_status:
            self._status(port, at_v)

    # ---- commands -------------------------------------------------------------------------
    def handle_commands(self, commands: list[dict[str, Any]]) -> None:
        for cmd in commands:
            if isinstance(cmd, dict):
                self.handle_command(cmd)
            else:
                log.warning("%s: ignoring malformed command %r", self.pile_id, cmd)

    def _repeat(self, command_id: str) -> bool:
        """True for a command already run; answers it again when the server seems to have
        missed our ack (it resends unacknowledged commands with the same id)."""
        done = self._done.get(command_id)
        if done is None:
            return False
        ok, error, acked_at = done
        now = self.clock.mono()
        # The same command also arrives twice within moments (POST answer + long poll):
        # only a later resend deserves a second ack.
        if now - acked_at >= REACK_AFTER_S:
            self._done[command_id] = (ok, error, now)
            self._emit_ack(command_id, ok, error)
        return True

    def handle_command(self, cmd: dict[str, Any]) -> None:
        cid = str(cmd.get("id", ""))
        # The same command can arrive both in a POST answer and in a long-poll answer.
        if not cid or self._repeat(cid):
            return
        self.tick()  # an end that is already due wins over a command arriving after it
        handler = {
            "start": self._cmd_start,
            "stop": self._cmd_stop,
            "lock": self._cmd_lock,
            "unlock": self._cmd_unlock,
            "reboot": self._cmd_reboot,
        }.get(str(cmd.get("type")))
        log.debug("%s: command %s %s", self.pile_id, cmd.get("type"), cid)
        if handler is None:
            self._ack(cid, False, "unsupported")
            return
        handler(cid, cmd)

    def _ack(self, cid: str, ok: bool, error: str | None = None) -> None:
        self._done[cid] = (ok, None if ok else error, self.clock.mono())
        if len(self._done) > SEEN_COMMANDS:
            self._done.popitem(last=False)
        self._emit_ack(cid, ok, error)

    def _emit_ack(self, cid: str, ok: bool, error: str | None) -> None:
        if ok:
            self._emit("command_ack", command=cid, ok=True)
        else:
            self._emit("command_ack", command=cid, ok=False, error=error)

    def _port_arg(self, cmd: dict[str, Any], *, allow_all: bool) -> list[Port] | None:
        raw = cmd.get("port")
        if raw in (None, 0) and allow_all:
            return list(self.ports.values())
        try:
            port = self.ports.get(int(raw)) if raw is not None else None
        except (TypeError, ValueError):
            port = None
        return [port] if port else None

    def _cmd_start(self, cid: str, cmd: dict[str, Any]) -> None:
        ports = self._port_arg(cmd, allow_all=False)
        session_id = cmd.get("session")
        if not ports or not session_id:
            self._ack(cid, False, "bad_port" if not ports else "bad_session")
            return
        port = ports[0]
        if port.session is not None:
            # A retried start for the charge already running is a success, not a clash.
            self._ack(cid, port.session.id == session_id, "busy")
            return
        if port.locked:
            self._ack(cid, False, "locked")
            return
        if port.faults or self.pile_faults:
            self._ack(cid, False, "fault")
            return
        profile = port.next_profile or self.settings.default_profile
        port.next_profile = None
        if profile is None:
            profile = ChargerProfile.random(self.rng)
        mono = self.clock.mono()
        now_v = self.clock.virtual_at(mono)
        limits = (_positive(cmd.get("max_minutes")), _positive(cmd.get("max_energy_wh")))
        s = Session(
            id=str(session_id),
            profile=profile,
            start_v=now_v,
            max_minutes=limits[0],
            max_energy_wh=limits[1],
            plan=self._plan(profile, limits[0], limits[1], None),
            next_meter_mono=mono + self.settings.meter_every_s,
        )
        rate = self.settings.fault_rate_per_hour
        if rate > 0:
            s.fault_at_v = now_v + self.rng.expovariate(rate) * 3600.0
        if self.settings.fault_share > 0 and self.rng.random() < self.settings.fault_share:
            minutes = s.plan.end_minute if math.isfinite(s.plan.end_minute) else 240.0
            at = now_v + self.rng.uniform(0.2, 0.9) * minutes * 60.0
            s.fault_at_v = at if s.fault_at_v is None else min(s.fault_at_v, at)
        port.session = s
        port.plugged = True
        self._ack(cid, True)
        self._status(port, now_v)
        self._emit("session_started", now_v, port=port.number, session=s.id)

    def _plan(self, profile: ChargerProfile, max_minutes: float | None,
              max_energy_wh: float | None, unplugged_at: float | None) -> ChargePlan:
        return charger.plan_charge(
            profile,
            full_threshold_w=self.settings.full_threshold_w,
            float_window_min=self.settings.float_window_min,
            max_minutes=max_minutes,
            max_energy_wh=max_energy_wh,
            unplugged_at=unplugged_at,
        )

    def _cmd_stop(self, cid: str, cmd: dict[str, Any]) -> None:
        ports = self._port_arg(cmd, allow_all=False)
        if not ports:
            self._ack(cid, False, "bad_port")
            return
        port = ports[0]
        wanted = cmd.get("session")
        if port.session is None or (wanted and str(wanted) != port.session.id):
            self._ack(cid, False, "no_session")
            return
        self._ack(cid, True)
        self._end(port, "user", self.clock.now())

    def _cmd_lock(self, cid: str, cmd: dict[str, Any]) -> None:
        self._set_locked(cid, cmd, True)

    def _cmd_unlock(self, cid: str, cmd: dict[str, Any]) -> None:
        self._set_locked(cid, cmd, False)

    def _set_locked(self, cid: str, cmd: dict[str, Any], locked: bool) -> None:
        ports = self._port_arg(cmd, allow_all=True)
        if not ports:
            self._ack(cid, False, "bad_port")
            return
        self._ack(cid, True)
        for port in ports:
            port.locked = locked
            # A running charge is not cut by maintenance mode; the port reports `offline`
            # once it ends (status_of) and refuses the next start.
            if port.session is None:
                self._status(port)

    def _cmd_reboot(self, cid: str, cmd: dict[str, Any]) -> None:
        self._ack(cid, True)
        now_v = self.clock.now()
        for port in self.ports.values():
            self._end(port, "power_loss", now_v, send_status=False)
        # Faults are latched in RAM on these boards: a reboot is how operators clear them.
        for code in sorted(self.pile_faults):
            self._emit("fault_cleared", code=code)
        self.pile_faults.clear()
        for port in self.ports.values():
            for code in sorted(port.faults):
                self._emit("fault_cleared", port=port.number, code=code)
            port.faults.clear()
            port.plugged = False
        self._heartbeat()
        for port in self.ports.values():
            self._status(port)

    # ---- things riders and the weather do -------------------------------------------------
    def port(self, number: int) -> Port:
        if number not in self.ports:
            raise ValueError(f"{self.pile_id} has no port {number}")
        return self.ports[number]

    def set_profile(self, number: int, profile: ChargerProfile) -> None:
        self.port(number).next_profile = profile

    def plug(self, number: int) -> None:
        self.tick()
        port = self.port(number)
        if port.session is None and not port.plugged:
            port.plugged = True
            self._status(port)

    def unplug(self, number: int) -> None:
        self.tick()
        port = self.port(number)
        s = port.session
        if s is None:
            if port.plugged:
                port.plugged = False
                self._status(port)
            return
        minute = s.minute(self.clock.now())
        s.unplugged_at = minute if s.unplugged_at is None else min(s.unplugged_at, minute)
        s.plan = self._plan(s.profile, s.max_minutes, s.max_energy_wh, s.unplugged_at)
        self.notify()  # the ticker must learn the new, earlier end

    def inject_fault(self, number: int | None, code: str, *, end_session: bool = True) -> None:
        if code not in FAULT_DETAILS:
            raise ValueError(f"unknown fault code {code!r}; use one of {sorted(FAULT_DETAILS)}")
        self.tick()
        ports = list(self.ports.values()) if number is None else [self.port(number)]
        self._fault(ports, number, code, end_session=end_session, at_v=self.clock.now())

    def _fault(self, ports: list[Port], number: int | None, code: str, *,
               end_session: bool, at_v: float) -> None:
        where = {} if number is None else {"port": number}
        self._emit("fault", at_v, **where, code=code, detail=FAULT_DETAILS[code])
        if number is None:
            self.pile_faults.add(code)
        else:
            ports[0].faults.add(code)
        reason = "power_loss" if code == "power_loss" else "fault"
        for port in ports:
            if port.session is not None and end_session:
                self._end(port, reason, at_v)
            elif port.session is None:
                self._status(port, at_v)
            # else: a warning-level fault; the charge goes on and the port reports `fault`
            # when it ends.

    def clear_fault(self, number: int | None, code: str) -> None:
        self.tick()
        ports = list(self.ports.values()) if number is None else [self.port(number)]
        if number is None:
            self.pile_faults.discard(code)
            self._emit("fault_cleared", code=code)
        else:
            ports[0].faults.discard(code)
            self._emit("fault_cleared", port=number, code=code)
        for port in ports:
            if port.session is None:
                self._status(port)

    def port_state(self, number: int) -> dict[str, Any]:
        port = self.port(number)
        s = port.session
        now_v = self.clock.now()
        power = 0.0
        energy = 0.0
        if s is not None:
            power = s.power_w(now_v)
            energy = s.energy_wh(min(now_v, s.end_v))
        return {
            "status": self.status_of(port),
            "session": s.id if s else None,
            "power_w": round(power, 1),
            "energy_wh": round(energy, 1),
            "faults": sorted(port.faults | self.pile_faults),
        }


def _positive(value: Any) -> float | None:
    """Command limits: absent, 0 or junk all mean "no limit" (0 = unlimited in tariffs too)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
