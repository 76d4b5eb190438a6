"""Declared routing (issue 16): typed button payloads, one registry of commands and buttons, and
domain errors a handler did not catch answered in the rider's language."""

from __future__ import annotations

import pytest

from bot.handlers import payloads, routing
from bot.handlers.errors import TEXTS, error_text
from bot.handlers.routing import Payload, Router
from core import errors
from core.errors import DomainError
from notifications.replies import MAX_CALLBACK_BYTES

# --- Payload: pack and unpack ----------------------------------------------------------------


def test_a_payload_packs_to_todays_data_and_back() -> None:
    cases = [
        (payloads.TopUp(1000, "ab12"), "topup:1000:ab12"),
        (payloads.TopUpVia("telegram", 2000), "topupvia:telegram:2000"),
        (payloads.ReportProblem("c12", "dirty"), "rp:c12:dirty"),
        (payloads.ReportProblem("P0001-02", "no_power"), "rp:P0001-02:no_power"),
        (payloads.StopCharge(7), "stop:7"),
        (payloads.Wallet(), "wallet"),
        (payloads.Language(), "lang"),
        (payloads.Language("en"), "lang:en"),
        (payloads.FamilyAction(), "family"),
        (payloads.FamilyAction("leave"), "family:leave"),
        (payloads.FamilyAction("rm", "12"), "family:rm:12"),
        (payloads.Nps(3, "r:price"), "nps:3:r:price"),
        (payloads.WorkOrderAction("list"), "wo:list"),
        (payloads.GroupBuyAction("join", 5), "gb:join:5"),
    ]
    for payload, data in cases:
        assert payload.pack() == data
        assert type(payload).unpack(data) == payload


def test_the_free_field_keeps_its_colons() -> None:
    """A report target may contain ':' (rpartition, as the buttons already sent assume)."""
    p = payloads.ReportProblem.unpack("rp:odd:target:dirty")
    assert p == payloads.ReportProblem("odd:target", "dirty")
    assert p.pack() == "rp:odd:target:dirty"
    with pytest.raises(ValueError):
        payloads.ReportProblem("c1", "a:b").pack()  # only the target may hold ':'


def test_malformed_data_is_refused_by_its_own_class() -> None:
    assert payloads.TopUp.unpack("topup:²:ab12") is None
    assert payloads.TopUp.unpack("topup:99999999999999999999:x") is None
    assert payloads.TopUp.unpack("topup:1000") is None
    assert payloads.TopUp.unpack("topupvia:telegram:1000") is None
    assert payloads.StopCharge.unpack("stop:") is None
    assert payloads.StopCharge.unpack("stop:2147483648") is None
    assert payloads.StopCharge.unpack("stop:2147483647") == payloads.StopCharge(2**31 - 1)
    assert payloads.Wallet.unpack("wallet:extra") is None
    assert payloads.ReportProblem.unpack("rp:dirty") is None


def test_data_over_64_bytes_is_refused_when_packed() -> None:
    long = "x" * MAX_CALLBACK_BYTES
    with pytest.raises(ValueError, match="64 bytes"):
        payloads.FaqEntry(long).pack()
    with pytest.raises(ValueError, match="64 bytes"):
        payloads.FaqEntry("问" * 21).pack()  # 25 characters, but 67 bytes
    with pytest.raises(ValueError):
        payloads.StopCharge(-1).pack()  # not an id
    with pytest.raises(ValueError):
        payloads.StopCharge("7").pack()  # type: ignore[arg-type]


def test_a_payload_that_cannot_fit_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="64 bytes"):
        class TooWide(Payload, prefix="wide"):  # noqa: F841 - the definition is the test
            a: int
            b: int
            c: int
            d: int
            e: int
            f: int
    with pytest.raises(TypeError):
        class Floaty(Payload, prefix="fl"):  # noqa: F841
            x: float
    with pytest.raises(TypeError):
        class Colon(Payload, prefix="a:b"):  # noqa: F841
            pass


# --- the registry ----------------------------------------------------------------------------


def test_every_prefix_has_one_class_and_one_handler_per_scope() -> None:
    from bot.handlers.router import ROOT

    classes = [c for c in vars(payloads).values()
               if isinstance(c, type) and issubclass(c, Payload) and c is not Payload]
    prefixes = [c.prefix for c in classes]
    assert len(prefixes) == len(set(prefixes)), sorted(prefixes)
    registered = {prefix for _scope, prefix in ROOT.buttons}
    assert registered == set(prefixes), set(prefixes) ^ registered
    # A second handler for a taken prefix is refused when the routers are put together.
    other = Router("other")

    @other.button(payloads.Wallet)
    async def wallet_again(turn: object) -> list:
        return []

    with pytest.raises(ValueError, match="registered twice"):
        ROOT.include(other)


def test_help_lists_the_commands_that_declare_a_line_and_each_is_registered() -> None:
    from bot.handlers.router import ROOT

    rider = [h.msgid.split()[0] for h in ROOT.help if not h.staff]
    staff = [h.msgid.split()[0] for h in ROOT.help if h.staff]
    assert rider[:3] == ["/status", "/history", "/spent"]  # the everyday ones first
    assert {"/wallet", "/link", "/faq"} <= set(rider) and "/orders" not in rider
    assert {"/orders", "/promises", "/tickets", "/weblogin", "/logout"} == set(staff)
    registered = {f"/{name}" for _scope, name in ROOT.commands}
    assert set(rider + staff) <= registered, set(rider + staff) - registered
    assert len(rider + staff) == len(set(rider + staff))


def test_a_command_with_a_help_line_lists_itself() -> None:
    router, root = Router("a"), Router("root")

    @router.command("spent", help="/spent — this month")
    def spent(turn: object) -> list[object]:
        return []

    @router.command("orders", help="/orders — work orders", staff=True)
    def orders(turn: object) -> list[object]:
        return []

    root.include(router)
    assert [(h.msgid, h.staff) for h in root.help] == [("/spent — this month", False),
                                                      ("/orders — work orders", True)]


def test_every_domain_error_has_its_own_words_in_both_languages() -> None:
    keys = {c.key for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, DomainError)}
    assert keys == set(TEXTS), keys ^ set(TEXTS)
    for key in keys - {"error.generic"}:
        exc = DomainError(code="P0001-01", pile="P0001", amount=1230, floor=100, balance=50,
                          limit=2, reason="busy")
        exc.key = key
        en, zh = error_text("en", exc), error_text("zh_CN", exc)
        assert en and zh and en != zh, key
        assert en != error_text("en", DomainError()), key


def test_the_router_module_is_only_the_chain_and_dispatch() -> None:
    """Handlers declare what they answer; the router does not name verbs."""
    import inspect

    from bot.handlers import router

    source = inspect.getsource(router)
    assert 'verb == "' not in source and 'command == "' not in source
    assert routing.SCOPES == ("private", "staff", "riders")
