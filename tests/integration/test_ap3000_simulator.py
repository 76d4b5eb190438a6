"""The simulator's AP3000 board (simulator/ap3000.py, issue 17): a PileController on TCP that the
gateway takes for a real board — online, started from the web chat, ended by the rider
unplugging, billed once."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import col

from bot.piles.ap3000 import AP3000
from core.charging.tables import Charge
from core.db import transaction
from core.outbox import OutboxMessage
from core.piles import fleet
from core.piles.tables import PileEvent, PileProtocol, Port
from simulator.ap3000 import Ap3000Fleet, BoardSpec
from simulator.charger import ChargerProfile
from tests.support.journey import button, english_rider_and_id, pile_online, wait_until
from tests.support.server import seed_city, start_server
from tests.support.settings import make_settings

PILE, DEVICE = "P0101", 305419896


async def test_a_simulated_ap3000_board_goes_online_charges_and_bills_once(db_url: str) -> None:
    settings = make_settings(
        db_url, scheduler={"enabled": False},
        piles={"ap3000": {"enabled": True, "port": 0, "host": "127.0.0.1", "sweep_s": 0.2}})
    async with start_server(settings) as server:
        await seed_city(server.ctx, ports=2)
        async with transaction(server.ctx.sm) as s:
            await fleet.add_pile(s, "T01", PILE, 4, protocol=PileProtocol.ap3000,
                                 wire_id=str(DEVICE))
        # ×60: the few virtual minutes an unplug takes to be noticed pass in seconds.
        boards = Ap3000Fleet("127.0.0.1", server.app[AP3000].port,
                             [BoardSpec(PILE, DEVICE, 4)], speed=60, heartbeat_s=5,
                             meter_every_s=1, seed=1,
                             default_profile=ChargerProfile())
        await boards.start()
        try:
            await wait_until(lambda: pile_online(server.ctx, PILE))
            await wait_until(lambda: server.app[AP3000].live >= 1)

            async def port_status(number: int) -> str:
                async with server.ctx.sm() as s:
                    return (await s.execute(select(Port.status).where(
                        Port.pile_id == PILE, Port.number == number))).scalar_one()

            await wait_until(lambda: _is(port_status(2), "idle"))

            rider, rider_id = await english_rider_and_id(server)
            await rider.press(button(await rider.say("/wallet"), "topup:2000"))
            code = f"{PILE}-02"
            await rider.press(button(await rider.say(code), f"start:{code}"))
            await rider.wait_message("Charging started at port P0101-02")
            await wait_until(lambda: _is(port_status(2), "charging"))
            assert boards.controller(PILE).port_state(2)["status"] == "charging"

            boards.controller(PILE).unplug(2)  # the rider takes the bike away
            await rider.wait_message("🧾", timeout=30)
            async with server.ctx.sm() as s:
                charges = list((await s.execute(select(Charge).where(
                    Charge.rider_id == rider_id))).scalars())
                bills = (await s.execute(select(func.count()).select_from(OutboxMessage).where(
                    OutboxMessage.rider_id == rider_id, OutboxMessage.kind == "bill"))).scalar()
                ended = (await s.execute(select(func.count()).select_from(PileEvent).where(
                    col(PileEvent.pile_id) == PILE,
                    col(PileEvent.type) == "session_ended"))).scalar()
            assert len(charges) == 1 and bills == 1 and ended == 1, (charges, bills, ended)
            assert charges[0].end_reason == "unplugged"
            assert charges[0].state in ("ended", "settled")
            await wait_until(lambda: _is(port_status(2), "idle"))
        finally:
            await boards.stop()


async def _is(value: object, expected: str) -> bool:
    return await value == expected  # type: ignore[misc]
