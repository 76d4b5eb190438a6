"""A rider's own port and a pile's free ports, as the web chat shows them (issue 18 findings 2
and 5): a rider charging on a port who scans it again, or taps Start twice, is offered Status
and Stop, never "taken by another rider"; a pile card offers every free port."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.journey import (
    PileClient,
    button,
    english_rider,
    pile_online,
    wait_until,
)
from tests.support.server import Running, seed_city


async def _online_pile(server: Running, ports: int) -> PileClient:
    (pid, secret, _), = await seed_city(server.ctx, ports=ports)
    pile = PileClient(server.http, server.url, pid, secret)
    await pile.post([pile.event("heartbeat", datetime.now(UTC))])
    await wait_until(lambda: pile_online(server.ctx, pid))
    return pile


def _datas(replies: list[dict]) -> list[str]:
    return [b.get("data", "") for r in replies for row in r.get("buttons") or [] for b in row]


async def test_a_pile_card_offers_every_free_port(server: Running) -> None:
    await _online_pile(server, ports=10)
    rider = await english_rider(server)
    card = await rider.press("pile:P0001")
    assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10" in card[0]["text"]
    datas = [b["data"] for row in card[0]["buttons"] for b in row]
    assert datas == [f"port:P0001-{n:02d}" for n in range(1, 11)]


async def test_my_own_port_offers_status_and_stop_and_a_second_start_is_not_someone_else(
        server: Running) -> None:
    await _online_pile(server, ports=4)
    me = await english_rider(server)
    started = await me.press(button(await me.say("P0001-03"), "start:P0001-03"))
    stop = button(started, "stop:")

    for again in (await me.say("P0001-03"), await me.press("start:P0001-03"),
                  await me.say("/start port_P0001-03")):
        text = " ".join(r["text"] for r in again)
        assert "charging for you" in text and "another rider" not in text, again
        assert button(again, "stop:") == stop and button(again, "status")
        assert not [d for d in _datas(again) if d.startswith("alt:")]  # no "other ports"

    other = await english_rider(server)
    card = await other.say("P0001-03")
    assert "in use" in card[0]["text"] and "charging for you" not in card[0]["text"]
    taken = await other.press("start:P0001-03")
    assert "another rider" in taken[0]["text"]
