"""Many simulated piles sharing one HTTP session and one virtual clock: the demo's fleet."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import aiohttp

from simulator.charger import ChargerProfile
from simulator.clock import VirtualClock
from simulator.controller import PileController, SimSettings
from simulator.pile import SimulatedPile

log = logging.getLogger("chargebot.simulator")


@dataclass(frozen=True)
class PileSpec:
    pile_id: str
    secret: str = field(repr=False)  # keeps the secret out of logs and tracebacks
    ports: int  # 2..20 on real boards


class Fleet:
    def __init__(
        self,
        url: str,
        piles: list[PileSpec],
        *,
        speed: float = 1.0,
        heartbeat_s: float = 30.0,
        meter_every_s: float = 5.0,
        full_threshold_w: float = 30.0,
        float_window_min: float = 120.0,
        fault_rate_per_hour: float = 0.0,
        fault_share: float = 0.0,
        seed: int | None = None,
        long_poll_s: float = 20.0,
        default_profile: ChargerProfile | None = None,
    ) -> None:
        if meter_every_s <= 0 or heartbeat_s <= 0:
            raise ValueError("meter_every_s and heartbeat_s must be positive")
        self.url = url
        self.clock = VirtualClock(speed)
        settings = SimSettings(
            heartbeat_s=heartbeat_s,
            meter_every_s=meter_every_s,
            full_threshold_w=full_threshold_w,
            float_window_min=float_window_min,
            fault_rate_per_hour=fault_rate_per_hour,
            fault_share=fault_share,
            default_profile=default_profile,
        )
        self._piles: dict[str, SimulatedPile] = {}
        for spec in piles:
            if spec.pile_id in self._piles:
                raise ValueError(f"pile {spec.pile_id} listed twice")
            # One stream per pile, keyed by its id: adding a pile does not reshuffle the others.
            rng = random.Random(f"{seed}:{spec.pile_id}") if seed is not None else random.Random()
            controller = PileController(spec.pile_id, spec.ports, self.clock, settings, rng)
            self._piles[spec.pile_id] = SimulatedPile(controller, spec.secret, url, long_poll_s)
        self._http: aiohttp.ClientSession | None = None

    @property
    def events_sent(self) -> int:
        return sum(p.events_sent for p in self._piles.values())

    def _pile(self, pile_id: str) -> SimulatedPile:
        try:
            return self._piles[pile_id]
        except KeyError:
            raise KeyError(f"no simulated pile {pile_id!r}") from None

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._http is not None:
            return
        # Every pile holds a long poll open; the default 100-connection cap would make
        # event POSTs queue behind them on a fleet of 100+ piles.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.clock.restart()
        for pile in self._piles.values():
            pile.start(self._http)
        log.info("simulated fleet: %d piles, %d ports, speed %gx → %s", len(self._piles),
                 sum(len(p.controller.ports) for p in self._piles.values()),
                 self.clock.speed, self.url)

    async def stop(self) -> None:
        if self._http is None:
            return
        http, self._http = self._http, None
        await asyncio.gather(*(p.stop() for p in self._piles.values()))
        await http.close()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event has been delivered (or dropped); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(p.idle for p in self._piles.values()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # ---- the world acting on piles --------------------------------------------------------
    def set_profile(self, pile_id: str, port: int, profile: ChargerProfile) -> None:
        """Charger the next rider on this port brings (one start only)."""
        self._pile(pile_id).controller.set_profile(port, profile)

    async def inject_fault(self, pile_id: str, port: int | None, code: str, *,
                           end_session: bool = True) -> None:
        self._pile(pile_id).controller.inject_fault(port, code, end_session=end_session)

    async def clear_fault(self, pile_id: str, port: int | None, code: str) -> None:
        self._pile(pile_id).controller.clear_fault(port, code)

    async def unplug(self, pile_id: str, port: int) -> None:
        self._pile(pile_id).controller.unplug(port)

    async def plug(self, pile_id: str, port: int) -> None:
        self._pile(pile_id).controller.plug(port)

    def pause_heartbeats(self, pile_id: str) -> None:
        self._pile(pile_id).pause()

    def resume_heartbeats(self, pile_id: str) -> None:
        self._pile(pile_id).resume()

    def port_state(self, pile_id: str, port: int) -> dict[str, object]:
        return self._pile(pile_id).controller.port_state(port)
