"""A rider can never act on another rider's charges, tickets or wallet, and expensive actions
are rate-limited per rider (ISSUE 8, part). Every attempt here is what a curious or malicious
rider could send: buttons carry ids, and ids can be guessed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.i18n import tr
from core.charging.tables import Charge
from core.piles.tables import PileCommand
from core.support.tables import Ticket, TicketMessage
from tests.support.journey import PileClient, WebRider, button, english_rider
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


async def _rider(server, name: str) -> WebRider:  # type: ignore[no-untyped-def]
    return await english_rider(server)


async def test_another_riders_charge_ticket_and_wallet_are_out_of_reach(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=4)
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        now = datetime.now(UTC)
        await pile.post([pile.event("heartbeat", now)])
        alice, mallory = await _rider(server, "alice"), await _rider(server, "mallory")
        await alice.press(button(await alice.say("P0001-01"), "start:"))
        ref = next(c["session"] for c in await pile.commands() if c["type"] == "start")
        await pile.post([pile.event("session_started", now, port=1, session=ref)])
        async with server.ctx.sm() as s:
            charge = (await s.execute(select(Charge))).scalars().one()
        cid = charge.id
        await alice.press("rep:P0001-02")
        await alice.press("rp:P0001-02:dirty")
        async with server.ctx.sm() as s:
            ticket = (await s.execute(select(Ticket))).scalars().one()

        attempts = {
            f"stop:{cid}": "no charge running",
            f"locker:{cid}": "Only your own",
            f"rv:{cid}": "Only your own",
            f"rvs:{cid}:1": "Only your own",
            f"rep:c{cid}": "can't find",
            f"rskip:{ticket.id}": "didn't work",
            f"trate:{ticket.id}:1": "didn't work",
            f"tk:reply:{ticket.id}": "staff only",
            f"tk:close:{ticket.id}": "staff only",
            f"nps:{cid}:0": "",
        }
        for data, expected in attempts.items():
            replies = await mallory.press(data)
            assert expected in replies[0]["text"], (data, replies[0]["text"])
        # Alice's charge runs on, her ticket is untouched, no stop command was queued.
        async with server.ctx.sm() as s:
            charge = await s.get(Charge, cid)
            stops = await s.scalar(select(func.count()).select_from(PileCommand).where(
                PileCommand.type == "stop"))
            msgs = await s.scalar(select(func.count()).select_from(TicketMessage))
            ticket = await s.get(Ticket, ticket.id)
        assert charge is not None and charge.state == "started" and stops == 0
        assert ticket is not None and ticket.state == "open" and ticket.rating is None
        assert msgs == 0
        # Mallory's wallet and history are her own.
        wallet = (await mallory.say("/wallet"))[0]["text"]
        assert "¥0.00" in wallet
        history = (await mallory.say("/history"))[0]["text"]
        assert "P0001-01" not in history


async def test_starts_and_ticket_messages_are_rate_limited_per_rider(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False},
                             limits={"starts_per_10_min": 3, "ticket_messages_per_10_min": 2},
                             billing={"max_open_charges": 5})  # the start limit, not this one
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=6)
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        await pile.post([pile.event("heartbeat", datetime.now(UTC))])
        rider = await _rider(server, "eager")
        for port in (1, 2, 3):
            replies = await rider.press(f"start:P0001-0{port}")
            assert "a lot of starts" not in replies[0]["text"]
        refused = await rider.press("start:P0001-04")
        assert "a lot of starts" in refused[0]["text"]
        other = await _rider(server, "calm")  # the limit is per rider
        assert "a lot of starts" not in (await other.press("start:P0001-05"))[0]["text"]
        async with server.ctx.sm() as s:
            n = await s.scalar(select(func.count()).select_from(Charge).where(
                Charge.port_number == 4))
        assert n == 0

        await rider.press("rep:P0001-06")
        await rider.press("rp:P0001-06:other")
        await rider.say("the socket is loose")
        await rider.say("and it sparks sometimes?")  # an emergency word: never limited
        limited = await rider.say("one more thing")
        assert "give our team a few minutes" in limited[0]["text"]
        # Ten minutes later the rider may write again.
        server.ctx.clock = lambda: datetime.now(UTC) + timedelta(minutes=11)
        assert "Added to your ticket" in (await rider.say("still loose"))[0]["text"]


async def test_odd_button_data_gets_an_answer_not_an_error(db_url: str) -> None:
    """Forged or stale buttons and commands with odd numbers: each gets its own answer, none
    falls into the 'something went wrong' path (int('²') raised; a 20-digit id overflowed
    PostgreSQL)."""
    from bot.handlers.router import ROOT

    oops = "Sorry, something went wrong on our side. Please try again."
    failed = {tr("zh_CN", oops), tr("en", oops)}  # the failure path answers in Chinese
    verbs = sorted({prefix for scope, prefix in ROOT.buttons if scope == "private"})
    assert len(verbs) > 30
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, notifier=False) as server:
        await seed_city(server.ctx)
        rider = await english_rider(server)
        for verb in verbs:
            for ref in ("²", "99999999999999999999", "-1", "1:²", "²:²:²"):
                replies = await rider.press(f"{verb}:{ref}")
                assert replies and not any(r["text"] in failed for r in replies), (verb, ref)
        for command in sorted({name for scope, name in ROOT.commands if scope == "private"}):
            for ref in ("²", "99999999999999999999"):
                replies = await rider.say(f"/{command} {ref}")
                assert replies and not any(r["text"] in failed for r in replies), (command, ref)
