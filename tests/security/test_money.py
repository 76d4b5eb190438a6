"""Issue 15, items 1 and 4: nobody mints money, and a throwaway identity cannot charge for free.

Production has no sandbox: a top-up button forged by a client credits nothing, `serve` refuses
to run with the sandbox, and auto top-up does not pretend to pay. Where the sandbox exists (the
demo) its nonces are the server's and pay once. A start needs the floor in the wallet (or a plan,
or an auto top-up that can pay) and a rider has at most `billing.max_open_charges` open."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.billing import plans, wallet
from core.billing.payments import Payment
from core.charging import paying as charging
from core.charging.tables import Charge
from core.config_sections import BillingSettings, PaymentSettings
from core.db import transaction
from core.piles.tables import Pile, PileCommand
from core.riders.tables import Rider
from tests.support.journey import button, english_rider_and_id
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {"payments": {"providers": []}, "billing": {"start_min_balance_fen": 100}}


async def _online(server: Running) -> None:
    await seed_city(server.ctx, piles_n=1, ports=4)
    async with transaction(server.ctx.sm) as s:
        for pile in (await s.execute(select(Pile))).scalars():
            pile.online = True
            pile.last_seen_at = server.ctx.clock()


async def _money(server: Running, rid: int) -> tuple[int, int]:
    """(balance, payments made) — the balance checked against the ledger."""
    async with server.ctx.sm() as s:
        bal = await wallet.balance(s, rid)
        assert bal == await wallet.ledger_sum(s, rid)
        made = await s.scalar(select(func.count()).select_from(Payment)
                              .where(Payment.rider_id == rid))
    return bal, int(made or 0)


async def _charges(server: Running) -> tuple[int, int]:
    async with server.ctx.sm() as s:
        charges = await s.scalar(select(func.count()).select_from(Charge))
        starts = await s.scalar(select(func.count()).select_from(PileCommand)
                                .where(PileCommand.type == "start"))
    return int(charges or 0), int(starts or 0)


# --- item 1: free money -----------------------------------------------------------------------


def test_no_payment_provider_and_a_floor_unless_configured() -> None:
    assert PaymentSettings().providers == []
    assert BillingSettings().start_min_balance_fen == 100
    assert BillingSettings().max_open_charges == 2


def test_the_shipped_bot_toml_has_no_sandbox(config_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import load_settings

    monkeypatch.setenv("CHARGEBOT_CONFIG", str(ROOT / "bot.toml"))
    assert "sandbox" not in load_settings().payments.providers


def test_serve_refuses_the_sandbox_and_names_the_key(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from bot.cli import main

    monkeypatch.setenv("CHARGEBOT_PAYMENTS__PROVIDERS", '["telegram", "sandbox"]')
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "payments.providers" in err and "sandbox" in err and "demo" in err


async def test_a_forged_topup_button_credits_nothing_in_production(db_url: str) -> None:
    """The attack: `{"data": "topup:10000:aaaa0001"}` with a new nonce each time."""
    async with start_server(make_settings(db_url, **PRODUCTION)) as server:
        rider, rid = await english_rider_and_id(server)
        card = await rider.press("wallet")
        data = [b.get("data", "") for r in card for row in r["buttons"] for b in row]
        assert not [d for d in data if d.startswith(("topup:", "autotopup:"))], data
        for nonce in ("aaaa0001", "aaaa0002", "aaaa0003"):
            await rider.press(f"topup:10000:{nonce}")
        await rider.press("autotopup:2000")  # an auto top-up nothing can pay is not offered
        assert await _money(server, rid) == (0, 0)
        async with server.ctx.sm() as s:
            assert (await s.get(Rider, rid)).auto_topup_fen == 0  # type: ignore[union-attr]


async def test_sandbox_nonces_are_the_servers_and_pay_once(server: Running) -> None:
    attacker, aid = await english_rider_and_id(server)
    victim, vid = await english_rider_and_id(server)
    # Made up by the client: nothing, and a fresh card in its place.
    replies = await attacker.press("topup:10000:aaaa0001")
    assert "expired" in replies[0]["text"]
    assert await _money(server, aid) == (0, 0)
    # Another rider's card: its nonce is not the attacker's.
    stolen = button(await victim.press("wallet"), "topup:10000:")
    await attacker.press(stolen)
    assert await _money(server, aid) == (0, 0)
    # The owner's own card pays once, whichever of its buttons and however often.
    card = await victim.press("wallet")
    ten, fifty = button(card, "topup:1000:"), button(card, "topup:5000:")
    await asyncio.gather(*(victim.press(ten) for _ in range(3)))
    again = await victim.press(fifty)
    assert "already done" in again[0]["text"]
    assert await _money(server, vid) == (1000, 1)
    assert await _money(server, aid) == (0, 0)


async def test_auto_topup_takes_no_money_without_a_provider_that_can(db_url: str) -> None:
    async with start_server(make_settings(db_url, **PRODUCTION)) as server:
        _, rid = await english_rider_and_id(server)
        async with transaction(server.ctx.sm) as s:
            r = await s.get(Rider, rid)
            r.auto_topup_fen, r.auto_topup_below_fen = 2000, 500  # type: ignore[union-attr]
        async with transaction(server.ctx.sm) as s:
            assert not await charging.auto_topup(s, rid, 500, server.ctx.settings,
                                                 datetime.now(UTC), "k1")
        assert await _money(server, rid) == (0, 0)


# --- item 4: post-pay with a floor --------------------------------------------------------------


async def test_a_new_identity_with_nothing_cannot_start(db_url: str) -> None:
    async with start_server(make_settings(db_url, **PRODUCTION)) as server:
        await _online(server)
        rider, rid = await english_rider_and_id(server)
        card = await rider.say("/start port_P0001-01")
        assert "at least ¥1.00" in card[0]["text"]  # the port card says so before the tap
        refused = await rider.press("start:P0001-01")
        assert "at least ¥1.00" in refused[0]["text"] and "¥0.00" in refused[0]["text"]
        assert await _charges(server) == (0, 0)
        # Money that arrived (here straight into the ledger, as a provider's notify would).
        async with transaction(server.ctx.sm) as s:
            await wallet.post(s, rid, "topup", 100, "test:floor")
        started = await rider.press(button(refused, "start:P0001-01"))
        assert "⏳" in started[0]["text"]
        assert await _charges(server) == (1, 1)


async def test_the_demo_offers_a_top_up_right_where_the_start_was_refused(db_url: str) -> None:
    settings = make_settings(db_url, billing={"start_min_balance_fen": 100})
    async with start_server(settings) as server:
        await _online(server)
        rider, rid = await english_rider_and_id(server)
        refused = await rider.press("start:P0001-02")
        await rider.press(button(refused, "topup:500:"))
        started = await rider.press(button(refused, "start:P0001-02"))
        assert "⏳" in started[0]["text"]
        assert await _money(server, rid) == (500, 1)


async def test_an_active_plan_starts_without_the_floor(db_url: str) -> None:
    async with start_server(make_settings(db_url, **PRODUCTION)) as server:
        await _online(server)
        rider, rid = await english_rider_and_id(server)
        async with transaction(server.ctx.sm) as s:
            await wallet.post(s, rid, "topup", 8200, "test:plan")
            await plans.buy(s, rid, "family_pack", server.ctx.settings, server.ctx.clock(), "p1")
        assert (await _money(server, rid))[0] == 0
        started = await rider.press("start:P0001-03")
        assert "⏳" in started[0]["text"]


async def test_at_most_two_open_charges_per_rider(db_url: str) -> None:
    async with start_server(make_settings(db_url, **PRODUCTION)) as server:
        await _online(server)
        rider, rid = await english_rider_and_id(server)
        async with transaction(server.ctx.sm) as s:
            await wallet.post(s, rid, "topup", 5000, "test:open")
        answers = await asyncio.gather(*(rider.press(f"start:P0001-0{n}") for n in (1, 2, 3, 4)))
        assert sum("⏳" in a[0]["text"] for a in answers) == 2
        refused = [a for a in answers if "⏳" not in a[0]["text"]]
        assert all("2 charges running" in a[0]["text"] for a in refused), refused
        assert await _charges(server) == (2, 2)
