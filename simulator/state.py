"""What a pile controller keeps in RAM: settings, ports, open sessions, fault vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator import charger
from simulator.charger import ChargePlan, ChargerProfile

# DOMAIN.md vocabulary, with what a real board's screen/log would say.
FAULT_DETAILS: dict[str, str] = {
    "overload": "过载",
    "over_temperature": "端口过温",
    "over_voltage": "过压",
    "under_voltage": "欠压",
    "leakage": "漏电",
    "short_circuit": "短路",
    "relay_stuck": "继电器粘连",
    "relay_open": "继电器不闭合",
    "meter_fault": "计量芯片故障",
    "comm_loss": "通信中断",
    "power_loss": "掉电",
    "smoke": "烟感报警",
    "flooding": "水浸断电",
    "door_open": "门未关好",
}
# Random faults strike a charging port; pile-wide ones (power_loss, smoke…) are left to tests.
RANDOM_PORT_FAULTS = ("overload", "over_temperature", "leakage", "short_circuit",
                      "relay_stuck", "meter_fault")


@dataclass(frozen=True)
class SimSettings:
    heartbeat_s: float = 30.0
    meter_every_s: float = 5.0
    full_threshold_w: float = 30.0
    float_window_min: float = 120.0
    fault_rate_per_hour: float = 0.0
    # The share of charges that end in a fault, at a random point of the charge (the demo's
    # "about 1 in 20"); independent of how long charges run, unlike the hourly rate.
    fault_share: float = 0.0
    default_profile: ChargerProfile | None = None


@dataclass
class Session:
    id: str
    profile: ChargerProfile
    start_v: float
    max_minutes: float | None
    max_energy_wh: float | None
    plan: ChargePlan
    next_meter_mono: float
    unplugged_at: float | None = None  # virtual minutes since start, by hand (Fleet.unplug)
    fault_at_v: float | None = None

    @property
    def end_v(self) -> float:
        return self.start_v + self.plan.end_minute * 60.0

    def minute(self, virtual: float) -> float:
        return (virtual - self.start_v) / 60.0

    def power_w(self, virtual: float) -> float:
        return charger.power_w(self.profile, self.minute(virtual), unplugged_at=self.unplugged_at)

    def energy_wh(self, virtual: float) -> float:
        return charger.energy_wh(self.profile, self.minute(virtual), unplugged_at=self.unplugged_at)


@dataclass
class Port:
    number: int
    session: Session | None = None
    plugged: bool = False
    locked: bool = False
    faults: set[str] = field(default_factory=set)
    next_profile: ChargerProfile | None = None
