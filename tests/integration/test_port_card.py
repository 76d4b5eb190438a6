"""The port card tells the tariff's rule in the rider's language before the start
(the sentences themselves: tests/unit/test_tariffs.py)."""

from __future__ import annotations

from tests.support.journey import WebRider, english_rider
from tests.support.server import seed_city, start_server
from tests.support.settings import make_settings
from tests.support.tariffs import SITE_TARIFF, WORDS


async def test_the_port_card_states_the_rule(db_url: str) -> None:
    settings = make_settings(db_url, billing={"tariffs": {"site": SITE_TARIFF},
                                              "default_tariff": "site"})
    async with start_server(settings, notifier=False) as server:
        await seed_city(server.ctx, ports=2, tariff="site")
        zh = await WebRider(server.http, server.url).say("P0001-01")
        en = await (await english_rider(server)).say("P0001-01")
    assert "💰 " + WORDS[0][2] in zh[0]["text"]
    assert "💰 " + WORDS[1][2] in en[0]["text"]
