"""Merchant and community offers: a charge or top-up at a kind of site earns a partner voucher.

Offers are data (`OFFERS`, or a list the caller passes). A voucher is issued at most once per
(offer, cause) — the cause is a unique column — and redeemed at most once: the redemption is a
conditional UPDATE (`WHERE redeemed_at IS NULL`), so of any number of concurrent redeems of one
code exactly one succeeds on either database.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import JSON, Column, CursorResult, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from core import outbox
from core.charging.lifecycle import ChargeBilled, after_billed
from core.charging.tables import Charge
from core.db import utcnow
from core.errors import DomainError
from core.notices.engagement import VoucherIssuedNotice, VoucherRedeemedNotice
from core.piles.tables import Site

TRIGGERS = ("charge_minutes", "topup_fen")
# 31 symbols without 0/O/1/I/L, 10 long: ~49 bits, typed by a shop assistant from a phone screen.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10
ISSUED_NOTICE, REDEEMED_NOTICE = VoucherIssuedNotice.kind, VoucherRedeemedNotice.kind


@dataclass(frozen=True)
class Offer:
    """A partner's rule: `trigger` ≥ `threshold` at a site of `site_kind` earns one voucher."""

    id: str
    merchant: str
    site_kind: str  # mall | community | …, as in sites.kind
    trigger: str  # charge_minutes | topup_fen
    threshold: int
    value_fen: int
    title: dict[str, str] = field(default_factory=dict)  # per language, shown to the rider
    days: int = 30

    def title_in(self, lang: str) -> str:
        return self.title.get(lang) or next(iter(self.title.values()), self.id)


OFFERS: tuple[Offer, ...] = (
    Offer("mall-cafe-5", merchant="mall-cafe", site_kind="mall", trigger="charge_minutes",
          threshold=60, value_fen=500,
          title={"zh_CN": "商场咖啡店 ¥5 代金券", "en": "¥5 voucher at the mall café"}),
    Offer("property-10", merchant="property", site_kind="community", trigger="topup_fen",
          threshold=5000, value_fen=1000,
          title={"zh_CN": "物业服务费 ¥10 抵扣券", "en": "¥10 off your property-service fee"}),
)


class Voucher(SQLModel, table=True):
    __tablename__ = "vouchers"

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(sa_column=Column(String(16), unique=True, nullable=False))
    rider_id: int = Field(foreign_key="riders.id", index=True)
    offer_id: str = Field(max_length=32)
    merchant: str = Field(max_length=32, index=True)
    value_fen: int
    # The offer's wording when issued: an offer edited or withdrawn later does not change it.
    title: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # One voucher per offer and cause (`charge:{id}:{offer}`, `topup:{ref}:{offer}`).
    cause: str = Field(sa_column=Column(String(160), unique=True, nullable=False))
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    redeemed_at: datetime | None = None
    redeemed_by: str | None = Field(default=None, max_length=64)


class VoucherError(DomainError):
    key = "error.voucher"

    def explain(self) -> str:
        """For the merchant's side (the CLI): plain English, no rider catalog."""
        return str(self.params)


class UnknownVoucher(VoucherError):
    key = "error.voucher_unknown"

    def explain(self) -> str:
        return f"unknown voucher code {self.params['code']}"


class VoucherAlreadyRedeemed(VoucherError):
    key = "error.voucher_redeemed"

    def explain(self) -> str:
        at: datetime = self.params["at"]
        return (f"voucher {self.params['code']} was already redeemed "
                f"at {at:%Y-%m-%d %H:%M} UTC by {self.params['by']}")


class VoucherExpired(VoucherError):
    key = "error.voucher_expired"

    def explain(self) -> str:
        return f"voucher {self.params['code']} expired at {self.params['at']:%Y-%m-%d %H:%M} UTC"


class WrongMerchant(VoucherError):
    key = "error.voucher_wrong_merchant"

    def explain(self) -> str:
        p = self.params
        return f"voucher {p['code']} is for {p['merchant']}, not {p['asked']}"


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(text: str) -> str:
    """Riders and shops write codes grouped (`ABCD-EFGH-JK`) and in any case."""
    return "".join(ch for ch in text.upper() if ch.isalnum())


def display_code(code: str) -> str:
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


async def issue(session: AsyncSession, rider_id: int, offer: Offer, cause: str,
                now: datetime) -> Voucher:
    """One voucher per cause: a replay (or a racing twin) returns the voucher already issued."""
    if (found := await by_cause(session, cause)) is not None:
        return found
    for _ in range(5):
        voucher = Voucher(
            code=new_code(), rider_id=rider_id, offer_id=offer.id, merchant=offer.merchant,
            value_fen=offer.value_fen, title=dict(offer.title), cause=cause, issued_at=now,
            expires_at=now + timedelta(days=offer.days),
        )
        try:
            async with session.begin_nested():
                session.add(voucher)
        except IntegrityError:
            if (found := await by_cause(session, cause)) is not None:
                return found
            continue  # a code clash: draw again
        await outbox.enqueue(session, rider_id, notice(voucher),
                             f"voucher:{cause}", now=now)
        return voucher
    raise RuntimeError("could not draw a free voucher code")


async def by_cause(session: AsyncSession, cause: str) -> Voucher | None:
    return (await session.execute(
        select(Voucher).where(col(Voucher.cause) == cause))).scalars().first()


def earned(offers: Sequence[Offer], site_kind: str | None, trigger: str,
           amount: int) -> list[Offer]:
    return [o for o in offers
            if o.site_kind == site_kind and o.trigger == trigger and amount >= o.threshold]


async def on_charge_settled(session: AsyncSession, charge: Charge, site: Site | None,
                            now: datetime, offers: Sequence[Offer] = OFFERS) -> list[Voucher]:
    """After a charge is paid: vouchers for the offers its length reaches at this kind of site."""
    if site is None or charge.id is None:
        return []
    minutes = (charge.duration_s or 0) // 60
    return [await issue(session, charge.rider_id, o, f"charge:{charge.id}:{o.id}", now)
            for o in earned(offers, site.kind, "charge_minutes", minutes)]


@after_billed
async def vouchers_after_paid(session: AsyncSession, event: ChargeBilled) -> None:
    if event.paid:
        site = await session.get(Site, event.charge.site_id)
        await on_charge_settled(session, event.charge, site, event.now)


async def on_topup(session: AsyncSession, rider_id: int, amount_fen: int, site_kind: str | None,
                   now: datetime, *, topup_ref: str,
                   offers: Sequence[Offer] = OFFERS) -> list[Voucher]:
    """After a top-up is credited; `topup_ref` is its idempotency key (the order number)."""
    return [await issue(session, rider_id, o, f"topup:{topup_ref}:{o.id}", now)
            for o in earned(offers, site_kind, "topup_fen", amount_fen)]


async def home_site_kind(session: AsyncSession, rider_id: int) -> str | None:
    """The kind of site the rider last charged at: where a top-up 'happens' for offers."""
    return (await session.execute(
        select(col(Site.kind)).join(Charge, col(Charge.site_id) == col(Site.id))
        .where(col(Charge.rider_id) == rider_id).order_by(col(Charge.id).desc()).limit(1)
    )).scalar()


async def redeem(session: AsyncSession, code: str, merchant: str | None,
                 now: datetime) -> Voucher:
    """Mark a voucher used, once. `merchant` None skips the merchant check (staff override)."""
    code = normalise_code(code)
    voucher = (await session.execute(
        select(Voucher).where(col(Voucher.code) == code))).scalars().first()
    if voucher is None:
        raise UnknownVoucher(code=code)
    if merchant is not None and merchant != voucher.merchant:
        raise WrongMerchant(code=code, merchant=voucher.merchant, asked=merchant)
    if voucher.redeemed_at is None and voucher.expires_at <= now:
        raise VoucherExpired(code=code, at=voucher.expires_at)
    by = (merchant or "staff")[:64]
    # An UPDATE's result is a CursorResult (SQLAlchemy's stubs say only Result): it has rowcount.
    won = cast(CursorResult[Any], await session.execute(
        update(Voucher).where(col(Voucher.id) == voucher.id, col(Voucher.redeemed_at).is_(None),
                              col(Voucher.expires_at) > now)
        .values(redeemed_at=now, redeemed_by=by).execution_options(synchronize_session=False)))
    await session.refresh(voucher)
    if won.rowcount != 1:
        if voucher.redeemed_at is None:
            raise VoucherExpired(code=code, at=voucher.expires_at)
        raise VoucherAlreadyRedeemed(code=code, at=voucher.redeemed_at, by=voucher.redeemed_by)
    await outbox.enqueue(session, voucher.rider_id, notice(voucher, VoucherRedeemedNotice),
                         f"voucher:{voucher.id}:redeemed", now=now)
    return voucher


def redeemed_line(voucher: Voucher) -> str:
    """What `chargebot vouchers redeem CODE` prints on success."""
    assert voucher.redeemed_at is not None
    return (f"voucher {display_code(voucher.code)} redeemed: {voucher.value_fen} fen at "
            f"{voucher.merchant} ({voucher.offer_id}, rider {voucher.rider_id}, "
            f"{voucher.redeemed_at:%Y-%m-%d %H:%M} UTC)")


async def of_rider(session: AsyncSession, rider_id: int, now: datetime) -> list[Voucher]:
    """The rider's usable vouchers, soonest to expire first."""
    return list((await session.execute(
        select(Voucher).where(col(Voucher.rider_id) == rider_id,
                              col(Voucher.redeemed_at).is_(None), col(Voucher.expires_at) > now)
        .order_by(col(Voucher.expires_at), col(Voucher.id)))).scalars())


def notice(voucher: Voucher, cls: type[VoucherIssuedNotice] = VoucherIssuedNotice
           ) -> VoucherIssuedNotice:
    """The voucher as the rider is told of it (issued, or `VoucherRedeemedNotice`)."""
    return cls(voucher_id=voucher.id, code=voucher.code, merchant=voucher.merchant,
               value_fen=voucher.value_fen, title=voucher.title, expires_at=voucher.expires_at,
               redeemed_at=voucher.redeemed_at)


def notice_payload(voucher: Voucher) -> dict[str, Any]:
    return notice(voucher).to_payload()
