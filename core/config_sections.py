"""The sections of the settings (`bot.toml` `[database]`, `[billing]`, …): one model each,
with its defaults. `core.config.Settings` puts them together and loads them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class DatabaseSettings(BaseModel):
    url: str = "sqlite+aiosqlite:///var/chargebot.db"
    echo: bool = False


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    # Where riders' browsers and the platforms reach us (links, cookies' Secure flag, webhooks).
    # Empty: this server's own http://host:port, so another port needs nothing else set.
    public_url: str = ""
    timezone: str = "Asia/Shanghai"
    webchat: bool = True

    @model_validator(mode="after")
    def _own_url_unless_set(self) -> ServerSettings:
        if not self.public_url:
            self.public_url = self.own_url()
        return self

    def own_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"
    # > 0: asyncio debug mode, logging every callback that holds the event loop longer than
    # this many seconds ("Executing <…> took N seconds"). For tests and hunting stalls; 0 = off.
    slow_callback_s: float = Field(default=0.0, ge=0.0)
    # /metrics: with a token, only `Authorization: Bearer <token>` reads it; without one, only a
    # client whose own address (the socket's peer, never a forwarded header) is metrics_host.
    metrics_token: SecretStr | None = None
    metrics_host: str = "127.0.0.1"
    # Open web-chat long polls per client address: each holds a request and wakes once a
    # second, so a few hundred from one address slowed every rider's /send 15×.
    webchat_max_polls_per_address: int = Field(default=20, ge=1)
    # Web-chat identities the server issues (a signed cookie) per client address an hour: one
    # address cannot make riders without end (their photo quotas, link tries, …). A campus or
    # carrier NAT puts many riders behind one address: raise it there.
    webchat_new_identities_per_hour: int = Field(default=30, ge=1)
    # Staff act in the web chat only after logging in (a one-time link from their own chat, or
    # a password); the session ends after this many hours, or at logout.
    webchat_staff_session_hours: float = Field(default=12.0, gt=0)
    # `/?as=demo-technician` opens the web chat as the demo city's staff: for `chargebot demo`
    # only, which turns it on; `serve` refuses to start with it.
    webchat_demo_identities: bool = False


class TelegramSettings(BaseModel):
    token: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    mode: Literal["webhook", "polling"] = "webhook"
    base_url: str | None = None
    base_file_url: str | None = None
    bot_username: str = "chargebot"
    # Telegram's broadcast limit is ~30 messages/s per bot, beyond which it answers 429; a
    # little under it, since one 429 costs a whole second of sending.
    max_rate_per_s: float = 28.0


class WechatSettings(BaseModel):
    token: SecretStr | None = None
    appid: str | None = None
    secret: SecretStr | None = None
    aes_key: SecretStr | None = None
    api_base_url: str = "https://api.weixin.qq.com"
    # WeChat waits 5 s for a passive reply, then retries; answer well inside that.
    reply_timeout_s: float = 4.0
    # Customer-service messages are allowed for 48 h after the rider last wrote to us.
    window_hours: float = 48.0
    # A signed delivery older (or newer) than this is a replay, refused like a bad signature.
    replay_window_s: int = 300
    # Template ids per notice kind, for riders outside the 48 h window (bill, start_failed, …).
    templates: dict[str, str] = Field(default_factory=dict)


class Ap3000Settings(BaseModel):
    """`[piles.ap3000]`: the TCP gateway for AP3000 ("DNY") boards (bot/piles/ap3000); off by
    default. AP3000 has no authentication: docs/operations.md says what that means."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = Field(default=8900, ge=0, le=65535)  # 0: any free port (tests)
    # Commands queued by another worker reach the board's worker within this (the command
    # queue is swept for connected boards; in-process commands go at once).
    sweep_s: float = Field(default=1.0, gt=0)
    # A board that sends nothing for this long (it reports every ~60 s) is disconnected.
    idle_timeout_s: float = Field(default=300.0, gt=0)
    # Addresses (CIDR) boards may connect from; empty = any.
    allow_from: list[str] = Field(default_factory=list)


class OcppSettings(BaseModel):
    """`[piles.ocpp]`: OCPP 1.6J charge points at `GET /ocpp/{charge_point_id}`; off by default."""

    enabled: bool = False
    heartbeat_interval_s: int = Field(default=60, ge=10)


class PileSettings(BaseModel):
    offline_after_s: int = 180
    command_ttl_s: int = 60
    command_resend_s: int = 15
    start_timeout_s: int = 90
    max_long_poll_s: int = 30
    # Residential fire rules: no charge longer than 8 h, and a cap per session sent to the pile.
    max_minutes: int = 480
    max_energy_wh: int = 2000
    port_limit_w: int = 1000
    ap3000: Ap3000Settings = Field(default_factory=Ap3000Settings)
    ocpp: OcppSettings = Field(default_factory=OcppSettings)


class TariffTier(BaseModel):
    up_to_w: int
    fen_per_hour: int


class OffPeak(BaseModel):
    start: str = "22:00"
    end: str = "08:00"
    percent: int = 80


class TariffSettings(BaseModel):
    mode: Literal["time", "power_tier", "energy"] = "power_tier"
    unit_minutes: int = 1
    free_minutes: int = 0
    min_fee_fen: int = 0
    cap_fen: int = 0
    fen_per_hour: int = 0
    tiers: list[TariffTier] = Field(default_factory=list)
    band_by: Literal["peak_minute", "session_mean"] = "peak_minute"
    fen_per_kwh: int = 0
    service_fen_per_kwh: int = 0
    off_peak: OffPeak | None = None


def _default_tariffs() -> dict[str, TariffSettings]:
    return {
        "standard": TariffSettings(
            mode="power_tier",
            tiers=[
                TariffTier(up_to_w=200, fen_per_hour=25),
                TariffTier(up_to_w=400, fen_per_hour=40),
                TariffTier(up_to_w=1000, fen_per_hour=60),
            ],
        )
    }


class TopupBonus(BaseModel):
    min_fen: int
    bonus_fen: int


class PlanSettings(BaseModel):
    """A prepaid monthly plan: `minutes` of charging a month for `price_fen`."""

    price_fen: int
    minutes: int
    days: int = 30
    dedicated_port: bool = False  # courier plan: a port held for the rider


def _default_plans() -> dict[str, PlanSettings]:
    return {
        # Two 4-hour charges a day at ~15 % under the standard ¥0.40/h tier.
        "family_pack": PlanSettings(price_fen=8200, minutes=240 * 60),
        "courier_fast": PlanSettings(price_fen=12000, minutes=300 * 60, dedicated_port=True),
    }


class BillingSettings(BaseModel):
    default_tariff: str = "standard"
    tariffs: dict[str, TariffSettings] = Field(default_factory=_default_tariffs)
    sandbox_topups_fen: list[int] = Field(default_factory=lambda: [500, 1000, 2000, 5000, 10000])
    welcome_credit_fen: int = 0
    topup_bonuses: list[TopupBonus] = Field(default_factory=lambda: [
        TopupBonus(min_fen=10000, bonus_fen=2000), TopupBonus(min_fen=5000, bonus_fen=800)])
    plans: dict[str, PlanSettings] = Field(default_factory=_default_plans)
    # The metering promise: more than 1 % over what the meter samples show pays back 10×.
    metering_tolerance_percent: float = 1.0
    metering_compensation_factor: int = 10
    dispute_hours: int = 24
    auto_topup_choices_fen: list[int] = Field(default_factory=lambda: [2000, 5000])
    # Post-pay with a floor: a start needs this much in the wallet (or an active plan, or an
    # auto top-up a provider can charge), so a throwaway identity cannot charge for free.
    start_min_balance_fen: int = Field(default=100, ge=0)
    # Charges one rider may have open at once (a courier with two batteries: 2).
    max_open_charges: int = Field(default=2, ge=1)


class WechatPaySettings(BaseModel):
    mchid: str | None = None
    appid: str | None = None
    serial_no: str | None = None  # the merchant certificate's serial number
    private_key: SecretStr | None = None  # PEM, merchant API private key
    apiv3_key: SecretStr | None = None  # 32 bytes, decrypts notifications
    platform_public_key: str | None = None  # PEM, verifies WeChat Pay's signatures
    platform_serial: str | None = None
    api_base_url: str = "https://api.mch.weixin.qq.com"
    notify_url: str | None = None


class PaymentSettings(BaseModel):
    # None by default: a provider moves real money only once it is configured. "sandbox"
    # (paid at once, no money) exists for `chargebot demo` alone; `serve` refuses it.
    providers: list[str] = Field(default_factory=list)
    wechatpay: WechatPaySettings = Field(default_factory=WechatPaySettings)
    telegram_provider_token: SecretStr | None = None
    currency: str = "CNY"


class ServicePromiseSettings(BaseModel):
    # A work order not acknowledged within `ack_minutes` escalates to the site's supervisor and
    # every rider the fault hit (or who reported it) gets a coupon, once.
    ack_minutes: int = 30
    breach_coupon_fen: int = 500
    coupon_days: int = 30


class FaultModelSettings(BaseModel):
    """Alarm thresholds of one pile model (DOMAIN.md: boards alarm at 50–100 °C, settable)."""

    max_temperature_c: float = 70.0
    max_current_a: float = 5.5  # a 1000 W port draws ~4.5 A at 220 V
    max_power_w: float = 1500.0  # above this a reading is impossible for the port, not a load


class FaultSettings(BaseModel):
    models: dict[str, FaultModelSettings] = Field(
        default_factory=lambda: {"generic-10": FaultModelSettings()})
    # Samples in a row over a threshold before it is a fault: one hot reading is noise.
    debounce_samples: int = 3
    # A charge whose power fell from `drop_from_w` to under `zero_w` and stayed there this long
    # without session_ended was interrupted. Longer than the ~60 s a pile needs to call
    # "unplugged"; a full charge tapers and floats at 5–30 W instead (DOMAIN.md).
    interrupt_grace_s: int = 180
    drop_from_w: float = 60.0
    zero_w: float = 3.0
    sweep_s: float = 10.0

    def model(self, name: str) -> FaultModelSettings:
        return self.models.get(name) or self.models.get("generic-10") or FaultModelSettings()


class MaintenanceSettings(BaseModel):
    interval_days: int = 90  # routine service when no prediction says sooner
    lead_hours: int = 24  # preventive visits at least this long before a predicted failure
    plan_every_h: float = 24.0
    default_hours: str = "08:00-20:00"  # a technician's on-duty hours unless given


class SupportSettings(BaseModel):
    """Customer service: where photos go, the staff desk, report rewards, the emergency lane."""

    photo_dir: str = "var/photos"
    max_photo_bytes: int = 5 * 1024 * 1024
    # Photos one identity may upload in 24 hours (counted from the database, across workers):
    # a report needs one or two; more than this is someone filling the disk.
    photos_per_day: int = 30
    # A Telegram group where every ticket is posted; staff answer by replying to the post.
    telegram_staff_chat: int | None = None
    desk_language: str = "zh_CN"
    # A verified report earns ¥1, +¥2 with a photo, +¥2 when it found a new problem (¥1–5).
    report_reward_fen: int = 100
    photo_bonus_fen: int = 200
    new_problem_bonus_fen: int = 200
    emergency_take_s: int = 60  # an emergency nobody took by then pages the supervisors
    # A conversation with no message either way for this long closes itself, with a note to
    # the rider (emergencies never do: staff close those). 0: never.
    idle_close_h: int = Field(default=24, ge=0)
    rider_groups: list[int] = Field(default_factory=list)  # Telegram groups for the monthly vote
    # Signs staff photo links. Unset: a random key made once and kept in the database
    # (core.app_secrets), so every worker agrees and nobody can derive it from the config.
    link_secret: SecretStr | None = None


class SurveySettings(BaseModel):
    """NPS after a charge: at most one prompt per rider per `min_days_between`, never in quiet
    hours (a prompt that falls there waits for `quiet_end`)."""

    min_days_between: int = 7
    quiet_start: str = "22:00"
    quiet_end: str = "08:00"


class RedPacketSettings(BaseModel):
    """Festival greetings with ¥1–2 for riders active in the last `active_days`
    (core.redpackets)."""

    enabled: bool = True
    amounts_fen: list[int] = Field(default_factory=lambda: [100, 128, 166, 168, 188, 200])
    greet_at_local: str = "10:00"
    quiet_after_local: str = "21:00"
    active_days: int = 90
    batch: int = 500


class MqttSettings(BaseModel):
    """`[mqtt]`: the device transport for large fleets (bot/piles/mqtt.py); off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None  # default: chargebot-{host name}-{pid}-{random}
    topic_prefix: str = "piles"
    shared_group: str | None = None  # several workers: each message goes to one of them
    keepalive_s: int = 30
    sweep_s: float = 1.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_inflight: int = 256  # messages handled at once (they share the ingest's group commit)
    # TLS to the broker (EMQX on 8883 in production): on with `tls = true`; ca_file pins a
    # private CA, cert_file/key_file present a client certificate when the broker asks for one.
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class LimitSettings(BaseModel):
    """Per rider, per 10 minutes: a script or a stuck button must not flood piles or staff.
    Emergencies are never limited."""

    starts_per_10_min: int = 6
    ticket_messages_per_10_min: int = 20


class SchedulerSettings(BaseModel):
    enabled: bool = True
    offline_sweep_s: float = 15.0
    command_sweep_s: float = 5.0
    # Workers on PostgreSQL try for the scheduler's advisory lock this often; a dead leader's
    # jobs resume within about this long.
    leader_retry_s: float = 5.0


class NotificationSettings(BaseModel):
    poll_s: float = 0.5
    max_attempts: int = 8
    lease_s: float = 30.0
    batch: int = 50
