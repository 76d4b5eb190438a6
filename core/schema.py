"""Every table, for migrations and tests: importing the modules registers them."""

from sqlmodel import SQLModel

from core import charging, commands, events, outbox, piles, riders, wallet  # noqa: F401
from core.billing import coupons, disputes, family, payments, plans  # noqa: F401
from notifications import webchat_inbox, wechat_store  # noqa: F401

metadata = SQLModel.metadata
