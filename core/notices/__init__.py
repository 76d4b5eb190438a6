"""One model per outbox kind (`Notice`): the kind is the class's, the payload its fields.
`outbox.enqueue` takes a notice; `parse(kind, payload)` gives a stored row's back. The models
are grouped by the part of the business that sends them; importing this package registers
them all in `KINDS`."""

from core.notices import billing, charging, chat, engagement, faults, riders, support
from core.notices.base import KINDS, Notice, Stamp, UnknownNotice, parse

__all__ = ["KINDS", "Notice", "Stamp", "UnknownNotice", "billing", "charging", "chat",
           "engagement", "faults", "parse", "riders", "support"]
