"""Settings a test server runs with: the test database, quick sweeps, play money."""

from __future__ import annotations

from typing import Any

from core.config import Settings

PILE_SECRET = "test-secret-P0001"


def make_settings(db_url: str, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        # Every web-chat rider of a test is a new identity from 127.0.0.1: no hourly limit here
        # (tests/security/test_webchat_identity.py sets one).
        "server": {"public_url": "http://127.0.0.1", "webchat": True,
                   "webchat_new_identities_per_hour": 1_000_000},
        "telegram": {"token": None},
        "scheduler": {"offline_sweep_s": 0.2, "command_sweep_s": 0.2},
        "notifications": {"poll_s": 0.1, "lease_s": 5},
        "piles": {"offline_after_s": 180},
        # Like the demo: play money to top up with (production has none, tests/security), and
        # no start floor, so a test's new rider can start; the floor's own tests set it.
        "payments": {"providers": ["sandbox"]},
        "billing": {"start_min_balance_fen": 0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Settings(**base)


def all_skins_settings(db_url: str, tg: Any, wx: Any, **extra: dict[str, Any]) -> Settings:
    """Telegram and WeChat pointed at their local fakes, web chat on."""
    from tests.support.riders import ACCOUNT, TG_SECRET

    sections: dict[str, dict[str, Any]] = {
        "telegram": {"token": tg.token, "base_url": tg.base_url,
                     "base_file_url": tg.base_file_url, "webhook_secret": TG_SECRET},
        "wechat": {"token": ACCOUNT.token, "appid": ACCOUNT.appid, "secret": ACCOUNT.secret,
                   "aes_key": ACCOUNT.aes_key, "api_base_url": wx.base_url},
    }
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value}
    return make_settings(db_url, **sections)
