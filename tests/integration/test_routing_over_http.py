"""Declared routing over HTTP (issue 16): a domain error a handler did not catch reaches the
rider in their language; tests/unit/test_routing.py checks the declarations themselves."""

from __future__ import annotations

from bot.handlers.routing import Router
from bot.i18n import tr
from core.errors import PortBusy
from tests.support.journey import WebRider, english_rider
from tests.support.server import start_server
from tests.support.settings import make_settings


async def test_an_uncaught_domain_error_reaches_the_rider_in_their_language(db_url: str) -> None:
    from bot.handlers.router import ROOT

    boom = Router("boom")

    @boom.command("boom")
    async def raise_port_busy(turn: object, arg: str) -> list:
        raise PortBusy(code=arg)

    settings = make_settings(db_url, scheduler={"enabled": False})
    ROOT.include(boom)
    try:
        async with start_server(settings, notifier=False) as server:
            zh = WebRider(server.http, server.url)
            en = await english_rider(server)
            busy = "Sorry, port {code} was just taken by another rider."
            assert (await zh.say("/boom P0001-02"))[0]["text"] == tr(
                "zh_CN", busy, code="P0001-02")
            assert (await en.say("/boom P0001-02"))[0]["text"] == busy.format(code="P0001-02")
            assert tr("zh_CN", busy, code="P0001-02") != busy.format(code="P0001-02")
            # Forged data: the friendly "didn't get that", never an error.
            unknown = (await en.press("topup:²:x"))[0]["text"]
            assert unknown.startswith("Sorry, I didn't get that.")
    finally:
        del ROOT.commands[("private", "boom")]
