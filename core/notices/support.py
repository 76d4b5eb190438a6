"""Notices of the help desk: tickets for staff, answers and verdicts for riders."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.notices.base import Notice


class TicketNotice(Notice):
    """A ticket as the desk sees it: who, where, what, on which platform."""

    kind = "ticket"
    ticket_id: int
    ticket_kind: str = Field(alias="kind")
    priority: str
    problem: str | None = None
    rider: str | None = ""  # display name
    rider_id: int
    platform: str
    where: str | None = None
    charge_id: int | None = None
    last_charge: str | None = None  # the port of the rider's last charge
    text: str = ""
    photo: bool = False
    photo_url: str | None = None
    update: bool = False  # a later message on the ticket, not a new ticket


class TicketAnswerNotice(Notice):
    kind = "ticket_answer"
    ticket_id: int
    text: str


class TicketClosedNotice(Notice):
    kind = "ticket_closed"
    ticket_id: int
    resolution: str


class TicketIdleClosedNotice(Notice):
    """A rider's conversation closed itself after `hours` without a message either way."""

    kind = "ticket_idle_closed"
    ticket_id: int
    hours: int


class TicketEscalatedNotice(Notice):
    kind = "ticket_escalated"
    ticket_id: int
    seconds: int


class SosReportsNotice(Notice):
    """Repeated emergency reports about one place, paged once with a running count."""

    kind = "sos_reports"
    ticket_id: int
    count: int
    where: str | None = None
    minutes: int


class ReportVerifiedNotice(Notice):
    kind = "report_verified"
    ticket_id: int
    amount_fen: int
    where: str | None = None


class SuggestionDecidedNotice(Notice):
    kind = "suggestion_decided"
    suggestion_id: int
    adopted: bool
    days: int  # free charging for an adopted idea
    text: str


class FaqTopic(BaseModel):
    model_config = ConfigDict(frozen=True)
    question: str
    count: int
    key: str | None = None  # the FAQ entry, None while the FAQ has no answer


class FaqDigestNotice(Notice):
    kind = "faq_digest"
    topics: list[FaqTopic]


class BestPileNotice(Notice):
    kind = "best_pile"
    month: str  # YYYY-MM
    site: str
    votes: int
