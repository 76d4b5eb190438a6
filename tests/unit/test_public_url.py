"""`make run PORT=8191` works (issue 18 finding 8): public_url follows the server's own port
unless it was set, so links and images are not left pointing at 8080."""

from __future__ import annotations

import argparse

import pytest

from bot.cli.common import settings_for
from core.config_sections import ServerSettings


def test_an_unset_public_url_is_the_servers_own_address() -> None:
    assert ServerSettings().public_url == "http://127.0.0.1:8080"
    assert ServerSettings(port=8191).public_url == "http://127.0.0.1:8191"
    assert ServerSettings(host="0.0.0.0", port=9000).public_url == "http://127.0.0.1:9000"
    assert ServerSettings(public_url="https://charge.example.com", port=9000).public_url == (
        "https://charge.example.com")


def test_the_port_from_the_environment_carries_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGEBOT_SERVER__PORT", "8191")
    assert settings_for(argparse.Namespace()).server.public_url == "http://127.0.0.1:8191"


def test_a_port_flag_carries_the_url_unless_it_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    followed = settings_for(argparse.Namespace(port=8191)).server
    assert (followed.port, followed.public_url) == (8191, "http://127.0.0.1:8191")
    monkeypatch.setenv("CHARGEBOT_SERVER__PUBLIC_URL", "https://charge.example.com")
    kept = settings_for(argparse.Namespace(port=8191)).server
    assert (kept.port, kept.public_url) == (8191, "https://charge.example.com")
