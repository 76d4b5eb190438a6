"""Domain errors: each carries a message key the handlers turn into friendly text."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    key = "error.generic"

    def __init__(self, **params: Any) -> None:
        super().__init__(self.key, params)
        self.params = params


class UnknownPort(DomainError):
    key = "error.unknown_port"


class PortBusy(DomainError):
    key = "error.port_busy"


class PortUnavailable(DomainError):
    """Fault, offline pile or maintenance: not a rider's doing, so worded differently."""

    key = "error.port_unavailable"


class BillDue(DomainError):
    key = "error.bill_due"


class BalanceTooLow(DomainError):
    """Post-pay with a floor: the wallet holds less than billing.start_min_balance_fen."""

    key = "error.balance_too_low"


class TooManyOpenCharges(DomainError):
    key = "error.too_many_open_charges"


class InsufficientBalance(DomainError):
    key = "error.insufficient_balance"


class NoOpenCharge(DomainError):
    key = "error.no_open_charge"


class UnknownPile(DomainError):
    key = "error.unknown_pile"


class InvalidEvent(DomainError):
    """A pile event that does not follow DESIGN §3; `field` names what is wrong."""

    key = "error.invalid_event"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field=field, problem=problem)
        self.field = field
        self.problem = problem


class LinkCodeInvalid(DomainError):
    key = "error.link_code_invalid"


class LinkRefused(DomainError):
    """Linking would lose something (an open charge, a due bill) or join two same-app accounts."""

    key = "error.link_refused"
