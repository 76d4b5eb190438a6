"""Issue 15, items 7 and 9: secrets that cannot be empty, misspelt or derived; /metrics not
open to anyone; a pile signature that drains commands once; caches and long polls that an
outsider cannot churn or hog. Each test attacks the real app over HTTP where it can."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from core.config import Settings
from core.db import transaction
from core.piles.auth import sign, signed_headers
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.telegram_updates import TelegramUser
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings

# --- item 7: an empty secret never disables a check -------------------------------------------


async def test_empty_webhook_secret_does_not_let_unsigned_telegram_updates_in(
    db_url: str, fake_tg: FakeTelegram,
) -> None:
    from bot.skins.telegram import webhook_secret

    settings = make_settings(db_url, telegram={
        "token": fake_tg.token, "base_url": fake_tg.base_url,
        "base_file_url": fake_tg.base_file_url, "webhook_secret": "",  # CHARGEBOT_…_SECRET=
    })
    update = TelegramUser(4242).text("/start")
    async with start_server(settings) as server:
        url = f"{server.url}/telegram/webhook"
        async with server.http.post(url, json=update) as r:  # no header at all
            assert r.status == 401
        for blank in ("", " "):
            async with server.http.post(
                    url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": blank}) as r:
                assert r.status == 401, repr(blank)
        # Blank counts as unset: the secret derived from the token is the one that works.
        derived = webhook_secret(settings)
        assert derived.strip()
        async with server.http.post(
                url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": derived}) as r:
            assert r.status == 200


@pytest.mark.parametrize("var, key", [
    ("CHARGEBOT_TELEGRAM__WEBHOOK_SECRET", "telegram.webhook_secret"),
    ("CHARGEBOT_SUPPORT__LINK_SECRET", "support.link_secret"),
    ("CHARGEBOT_WECHAT__AES_KEY", "wechat.aes_key"),
])
def test_serve_refuses_an_empty_secret_and_names_the_key(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    var: str, key: str,
) -> None:
    from bot.cli import main

    monkeypatch.setenv("CHARGEBOT_TELEGRAM__TOKEN", "123:abc")
    monkeypatch.setenv("CHARGEBOT_WECHAT__TOKEN", "wx-token")
    monkeypatch.setenv("CHARGEBOT_WECHAT__APPID", "wx123")
    monkeypatch.setenv(var, "  ")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert key in err and "empty" in err
    assert "123:abc" not in err and "wx-token" not in err  # secrets never in the output


# --- item 9: unknown keys are an error naming them --------------------------------------------


def test_misspelt_key_or_section_in_bot_toml_is_an_error_naming_it(
    config_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from bot.cli import main
    from core.config import load_settings

    config_dir.write_text(config_dir.read_text()
                          + '[telegram]\nwebhook_secert = "x"\n\n[telegrma]\ntoken = "y"\n')
    with pytest.raises(ValueError) as caught:
        load_settings()
    assert "telegram.webhook_secert" in str(caught.value) and "telegrma" in str(caught.value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "telegram.webhook_secert" in err and "telegrma" in err
    assert "Traceback" not in err


def test_misspelt_env_key_of_a_known_section_is_an_error_naming_it(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from bot.cli import main

    monkeypatch.setenv("CHARGEBOT_SUPPORT__LINK_SECERT", "z" * 40)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "CHARGEBOT_SUPPORT__LINK_SECERT" in err and "z" * 40 not in err


def test_the_repository_bot_toml_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from core.config import load_settings

    for var in list(os.environ):
        if var.upper().startswith("CHARGEBOT_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CHARGEBOT_CONFIG", str(Path(__file__).parents[2] / "bot.toml"))
    settings = load_settings()
    assert settings.server.metrics_host == "127.0.0.1"
    assert "by_energy" in settings.billing.tariffs


# --- item 9: /metrics is not for anyone -------------------------------------------------------


async def test_metrics_need_the_bearer_token_when_one_is_set(db_url: str) -> None:
    token = "metrics-" + "t" * 32
    settings = make_settings(db_url, server={"metrics_token": token})
    async with start_server(settings, notifier=False) as server:
        url = f"{server.url}/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                        {"Authorization": f"Basic {token}"}):
            async with server.http.get(url, headers=headers) as r:
                assert r.status == 401, headers
                assert "chargebot_" not in await r.text()
        async with server.http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
            assert "chargebot_pile_events_total" in await r.text()


async def test_metrics_without_a_token_answer_only_the_metrics_host_whatever_headers_say(
    db_url: str,
) -> None:
    settings = make_settings(db_url, server={"metrics_host": "10.255.255.1"})
    async with start_server(settings, notifier=False) as server:
        for forged in ({}, {"X-Forwarded-For": "10.255.255.1"}, {"X-Real-IP": "10.255.255.1"},
                       {"Forwarded": "for=10.255.255.1"}):
            async with server.http.get(f"{server.url}/metrics", headers=forged) as r:
                assert r.status == 403, forged
                assert "chargebot_" not in await r.text()


# --- item 9: the photo-link key is made once, stored, and not derivable -----------------------

PHOTO = "ab/" + "ab" * 32 + ".jpg"


def _old_derived_key(settings: Settings) -> bytes:
    """How the key used to be derived from the configuration (database URL included)."""
    seed = "|".join(x.get_secret_value() if x is not None else "" for x in (
        settings.telegram.token, settings.wechat.token, settings.wechat.secret))
    return hashlib.sha256(f"chargebot photo links|{seed}|{settings.database.url}".encode()
                          ).digest()


async def test_photo_link_key_is_stored_once_shared_by_workers_and_not_derivable(
    db_url: str, tmp_path: Path,
) -> None:
    from core.support import photos

    def fresh() -> Settings:  # each worker has its own settings object, no link_secret
        return make_settings(db_url, support={"photo_dir": str(tmp_path)})

    async def status(server: Any, path: str, exp: int, sig: str) -> int:
        async with server.http.get(f"{server.url}/photos/{path}",
                                   params={"exp": str(exp), "sig": sig}) as r:
            return r.status

    exp = int(time.time()) + 3600
    first = fresh()
    async with start_server(first, notifier=False) as a:
        url = photos.signed_url(first, PHOTO)
        sig = url.rsplit("sig=", 1)[1]
        link_exp = int(url.split("exp=", 1)[1].split("&", 1)[0])
        assert await status(a, PHOTO, link_exp, sig) == 404  # signature good, no such file
    # Another worker, starting in a process that never saw the first one's key.
    getattr(photos, "_STORED_KEYS", {}).clear()
    second = fresh()
    async with start_server(second, notifier=False) as b:
        assert await status(b, PHOTO, link_exp, sig) == 404
        assert photos.link_signature(second, PHOTO, link_exp) == sig
        # Whoever knows the database URL (and the tokens) cannot sign a link any more.
        forged = hmac.new(_old_derived_key(second), f"{PHOTO}|{exp}".encode(),
                          hashlib.sha256).hexdigest()[:32]
        assert await status(b, PHOTO, exp, forged) == 401


async def test_a_configured_link_secret_still_signs_links(db_url: str, tmp_path: Path) -> None:
    from core.support import photos

    settings = make_settings(db_url, support={"photo_dir": str(tmp_path)})
    settings.support.link_secret = SecretStr("configured-link-secret-" + "x" * 20)
    async with start_server(settings, notifier=False) as server:
        exp = int(time.time()) + 60
        sig = hmac.new(b"configured-link-secret-" + b"x" * 20, f"{PHOTO}|{exp}".encode(),
                       hashlib.sha256).hexdigest()[:32]
        assert photos.link_signature(settings, PHOTO, exp) == sig
        async with server.http.get(f"{server.url}/photos/{PHOTO}",
                                   params={"exp": str(exp), "sig": sig}) as r:
            assert r.status == 404


# --- item 9: a captured command-poll signature drains nothing ---------------------------------


async def test_replayed_command_poll_signature_is_refused_and_the_command_waits(
    db_url: str,
) -> None:
    from core.piles import commands

    async with start_server(make_settings(db_url), notifier=False) as server:
        await seed_city(server.ctx, ports=2)
        url = f"{server.url}/api/piles/P0001/commands"
        captured = signed_headers("P0001", PILE_SECRET, b"", time.time())
        captured.pop("Content-Type")
        async with server.http.get(url, params={"wait": "0"}, headers=captured) as r:
            assert r.status == 200 and (await r.json())["commands"] == []
        async with transaction(server.ctx.sm) as session:
            await commands.queue(session, "P0001", "unlock", 1, now=server.ctx.clock())
        # The eavesdropper sends the pile's poll again, within the 300 s window.
        for wait in ("0", "1"):
            async with server.http.get(url, params={"wait": wait}, headers=captured) as r:
                assert r.status == 401
                assert r.headers.get("Retry-After") == "1"
        # The pile's own next poll (a new timestamp) still gets the command.
        fresh = signed_headers("P0001", PILE_SECRET, b"", int(captured["X-Timestamp"]) + 1)
        async with server.http.get(url, params={"wait": "0"}, headers=fresh) as r:
            assert r.status == 200
            assert [c["type"] for c in (await r.json())["commands"]] == ["unlock"]


async def test_a_pile_may_poll_twice_a_second_by_signing_a_nonce(db_url: str) -> None:
    async with start_server(make_settings(db_url), notifier=False) as server:
        await seed_city(server.ctx, ports=2)
        url = f"{server.url}/api/piles/P0001/commands"
        ts = int(time.time())
        for nonce in ("n1", "n2"):
            query = f"wait=0&nonce={nonce}"
            headers = {"X-Pile-Id": "P0001", "X-Timestamp": str(ts),
                       "X-Signature": sign(PILE_SECRET, ts, query.encode())}
            async with server.http.get(f"{url}?{query}", headers=headers) as r:
                assert r.status == 200, await r.text()
            async with server.http.get(f"{url}?{query}", headers=headers) as r:
                assert r.status == 401  # the same nonce'd signature once only
        # Event batches stay replayable: they are idempotent and a pile resends after a loss.
        at = datetime.now(UTC).isoformat()
        body = json.dumps({"events": [{"id": "hb-1", "type": "heartbeat", "ts": at}]}).encode()
        same = signed_headers("P0001", PILE_SECRET, body, ts)
        answers = []
        for _ in range(2):
            async with server.http.post(f"{server.url}/api/piles/events", data=body,
                                        headers=same) as r:
                assert r.status == 200, await r.text()
                answers.append(await r.json())
        assert [(a["accepted"], a["duplicates"]) for a in answers] == [(1, 0), (0, 1)]


# --- item 9: unknown pile ids do not churn the secret cache -----------------------------------


class _Lookups:
    """A stand-in for the app's Context: counts secret lookups, knows one pile."""

    def __init__(self) -> None:
        self.count = 0

    def reader(self) -> Any:
        return lambda: self

    async def __aenter__(self) -> _Lookups:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def scalar(self, statement: Any) -> str | None:
        self.count += 1
        pile_id = statement.whereclause.right.value  # select(secret).where(id == pile_id)
        return PILE_SECRET if pile_id == "P0001" else None


async def test_a_flood_of_unknown_pile_ids_does_not_evict_a_known_piles_secret() -> None:
    from bot.piles.trust import SecretCache

    cache, ctx = SecretCache(), _Lookups()
    assert await cache.get(ctx, "P0001") == PILE_SECRET  # type: ignore[arg-type]
    # More unknown ids than the whole cache once held before it threw everything away.
    for i in range(200_100):
        assert await cache.get(ctx, f"X{i:07d}") is None  # type: ignore[arg-type]
    before = ctx.count
    assert await cache.get(ctx, "P0001") == PILE_SECRET  # type: ignore[arg-type]
    assert ctx.count == before, "the known pile's secret was looked up again"
    assert cache._entries["P0001"][1] == PILE_SECRET
    assert len(cache._entries) == 1
    assert len(getattr(cache, "_misses", {})) <= 10_000


# --- item 9: web-chat long polls are capped per client address --------------------------------


async def test_long_polls_beyond_the_per_address_cap_answer_at_once_and_send_stays_prompt(
    db_url: str,
) -> None:
    cap = 6
    settings = make_settings(db_url, server={"webchat_max_polls_per_address": cap})
    async with start_server(settings, notifier=False) as server:
        url = f"{server.url}/webchat/api/messages"

        async def poll(i: int, wait: float) -> tuple[float, int, dict[str, Any]]:
            started = time.monotonic()
            # Each poll is its own browser (no cookie): a new web chat identity each.
            async with server.http.get(url, params={"after": "0",
                                                    "wait": str(wait)}) as r:
                return time.monotonic() - started, r.status, await r.json()

        held = [asyncio.create_task(poll(i, 4.0)) for i in range(cap)]
        await asyncio.sleep(0.7)  # all of them are waiting now
        extra = await asyncio.wait_for(
            asyncio.gather(*(poll(100 + i, 4.0) for i in range(5))), timeout=2.5)
        for took, status, data in extra:
            assert took < 2.0
            assert status in (200, 429)
            if status == 200:
                assert data["messages"] == [] and data.get("retry_after", 0) > 0
        started = time.monotonic()
        async with server.http.post(f"{server.url}/webchat/api/send",
                                    json={"text": "/start"}) as r:
            assert r.status == 200
        assert time.monotonic() - started < 2.0
        for took, status, _data in await asyncio.gather(*held):
            assert status == 200 and took >= 3.0  # under the cap: a real long poll
        # Once they are done, the address may long-poll again.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(poll(999, 1.0), timeout=0.5)
            pytest.fail("a poll under the cap answered before its wait")
