"""Every table of core, for migrations and tests: importing the modules registers them.

Only core modules: the notifications' own tables register in `notifications.schema`, which
migrations/env.py and the test helpers import beside this one.
"""

from sqlmodel import SQLModel

from core import app_secrets, outbox  # noqa: F401
from core.billing import coupons, disputes, family, payments, plans, wallet  # noqa: F401
from core.charging import tables as charging_tables  # noqa: F401
from core.engagement import (  # noqa: F401
    broadcasts,
    groupbuy,
    prompts,
    questions,
    redpackets,
    services,
    surveys,
    vouchers,
)
from core.faults import tables as faults_tables  # noqa: F401
from core.piles import tables as piles_tables  # noqa: F401
from core.riders import accounts, staff, staff_passwords, web_sessions  # noqa: F401
from core.riders import tables as riders_tables  # noqa: F401
from core.support import photos, reviews, suggestions, votes  # noqa: F401
from core.support import tables as support_tables  # noqa: F401

metadata = SQLModel.metadata
