"""What follows a billed charge, announced to whoever listens (ocpp's `@after`, for charges).

Billing a charge emits one `ChargeBilled`; the battery locker, the satisfaction survey and the
vouchers subscribe with `@after_billed`, so the charge code does not know them and a new
consequence of a charge is one decorated function in its own module. A subscriber registers
when its module is imported: `core.subscribers` imports them all, and the app imports that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from core.charging.tables import Charge
from core.config import Settings


@dataclass(frozen=True)
class ChargeBilled:
    """A charge just closed and billed; `paid` when the wallet settled it, else the bill is due."""

    charge: Charge
    paid: bool
    settings: Settings
    now: datetime


Subscriber = Callable[[AsyncSession, ChargeBilled], Awaitable[None]]
S = TypeVar("S", bound=Subscriber)

_after_billed: list[Subscriber] = []


def after_billed(fn: S) -> S:
    """Register `fn` to run after every billed charge, in the billing transaction."""
    if fn not in _after_billed:
        _after_billed.append(fn)
    return fn


def subscribers() -> tuple[Subscriber, ...]:
    return tuple(_after_billed)


async def billed(session: AsyncSession, event: ChargeBilled) -> None:
    """Run the subscribers in registration order, inside the caller's transaction: what a
    charge earns is written with its bill or not at all, and a replayed settlement finds the
    subscribers' own idempotency keys (survey per charge, voucher per charge and offer)."""
    for fn in _after_billed:
        await fn(session, event)
