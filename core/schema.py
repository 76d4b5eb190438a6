"""Every table, for migrations and tests: importing the modules registers them."""

from sqlmodel import SQLModel

from core import (  # noqa: F401
    accounts,
    app_secrets,
    broadcasts,
    charging,
    commands,
    events,
    faults,
    groupbuy,
    outbox,
    photos,
    piles,
    prompts,
    questions,
    redpackets,
    reviews,
    riders,
    services,
    staff,
    staff_passwords,
    suggestions,
    support,
    surveys,
    votes,
    vouchers,
    wallet,
    web_sessions,
    workorders,
)
from core.billing import coupons, disputes, family, payments, plans  # noqa: F401
from notifications import webchat_inbox, wechat_store  # noqa: F401

metadata = SQLModel.metadata
