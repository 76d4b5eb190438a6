"""Fixtures the attack tests share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A bot.toml of our own and no CHARGEBOT_ variables from the runner's environment;
    `serve` stopped short of migrating or listening."""
    import bot.cli.serve

    for var in list(os.environ):
        if var.upper().startswith("CHARGEBOT_"):
            monkeypatch.delenv(var)
    toml = tmp_path / "bot.toml"
    toml.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/cb.db"\n')
    monkeypatch.setenv("CHARGEBOT_CONFIG", str(toml))
    served: list[Settings] = []
    monkeypatch.setattr(bot.cli.serve, "upgrade", lambda _url: None)
    monkeypatch.setattr(bot.cli.serve, "_serve_one",
                        lambda settings, *_a: served.append(settings))
    yield toml
