"""Settings: `bot.toml`, an untracked secrets file, env `CHARGEBOT_SECTION__KEY` (DESIGN §5)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.config_sections import (
    BillingSettings,
    DatabaseSettings,
    FaultSettings,
    LimitSettings,
    MaintenanceSettings,
    MqttSettings,
    NotificationSettings,
    PaymentSettings,
    PileSettings,
    RedPacketSettings,
    SchedulerSettings,
    ServerSettings,
    ServicePromiseSettings,
    SupportSettings,
    SurveySettings,
    TelegramSettings,
    WechatSettings,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHARGEBOT_", env_nested_delimiter="__", extra="ignore"
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    wechat: WechatSettings = Field(default_factory=WechatSettings)
    piles: PileSettings = Field(default_factory=PileSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    service_promises: ServicePromiseSettings = Field(default_factory=ServicePromiseSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    support: SupportSettings = Field(default_factory=SupportSettings)
    surveys: SurveySettings = Field(default_factory=SurveySettings)
    red_packets: RedPacketSettings = Field(default_factory=RedPacketSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    payments: PaymentSettings = Field(default_factory=PaymentSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [p for p in config_files() if p.exists()]
        tomls = [TomlConfigSettingsSource(settings_cls, toml_file=p) for p in reversed(files)]
        return (init_settings, env_settings, *tomls)


def config_files() -> list[Path]:
    """The tracked config, then the untracked secrets file that may sit beside it."""
    main = Path(os.environ.get("CHARGEBOT_CONFIG", "bot.toml"))
    return [main, main.with_name("bot.secrets.toml")]


class ConfigError(ValueError):
    """A configuration a deployment must not run with; the message names the key to fix."""


def _model_of(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """How a field holds sections: ("model", M), ("dict", M) for dict[str, M], ("list", M)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and len(args) == 2:
        inner = _model_of(args[1])
        return ("dict", inner[1]) if inner and inner[0] == "model" else None
    if origin is list and args:
        inner = _model_of(args[0])
        return ("list", inner[1]) if inner and inner[0] == "model" else None
    if origin in (Union, UnionType):  # `OffPeak | None`
        for arg in args:
            if arg is not type(None) and (inner := _model_of(arg)) is not None:
                return inner
    return None


def unknown_keys(data: Any, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names in `data` that `model` has no field for (a misspelt secret, a misspelt
    section): pydantic would drop them silently and the service would run without them."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            found.append(name)
            continue
        how = _model_of(field.annotation)
        if how is None:
            continue
        kind, sub = how
        if kind == "model":
            found += unknown_keys(value, sub, f"{name}.")
        elif kind == "dict" and isinstance(value, dict):
            for k, v in value.items():
                found += unknown_keys(v, sub, f"{name}.{k}.")
        elif kind == "list" and isinstance(value, list):
            for i, v in enumerate(value):
                found += unknown_keys(v, sub, f"{name}[{i}].")
    return found


def _env_tree(var: str) -> dict[str, Any]:
    """One `CHARGEBOT_SECTION__KEY…` variable as the nested dict pydantic-settings builds."""
    parts = [p.lower() for p in var[len("CHARGEBOT_"):].split("__")]
    tree: dict[str, Any] = {parts[-1]: ""}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def check_unknown_keys(environ: dict[str, str] | None = None) -> None:
    """Raise ConfigError naming every key in the config files or the environment that no
    setting reads."""
    problems: list[str] = []
    for path in config_files():
        if not path.exists():
            continue
        with path.open("rb") as f:
            data = tomllib.load(f)
        problems += [f"{k} (in {path})" for k in unknown_keys(data, Settings)]
    env = os.environ if environ is None else environ
    # Variables without `__` (CHARGEBOT_CONFIG, CHARGEBOT_LOG, …) are not settings.
    for var in sorted(env):
        if var.upper().startswith("CHARGEBOT_") and "__" in var:
            problems += [f"{k} (env {var})" for k in unknown_keys(_env_tree(var), Settings)]
    if problems:
        raise ConfigError("unknown configuration key(s), misspelt? " + ", ".join(problems))


def blank_secrets(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of secrets that are set but empty or blank (`CHARGEBOT_…_SECRET=`): unset
    means "derive or disable", but blank is always a mistake, and some checks would let an
    empty header match an empty secret."""
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            if not value.get_secret_value().strip():
                found.append(f"{prefix}{name}")
        elif isinstance(value, BaseModel):
            found += blank_secrets(value, f"{prefix}{name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, BaseModel):
                    found += blank_secrets(v, f"{prefix}{name}.{k}.")
    return found


def load_settings(**overrides: Any) -> Settings:
    """The deployment's settings; an unknown key in bot.toml, the secrets file or a
    CHARGEBOT_SECTION__KEY variable is a ConfigError naming it."""
    check_unknown_keys()
    return Settings(**overrides)
