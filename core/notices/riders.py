"""Notices about linking a rider's accounts across platforms."""

from __future__ import annotations

from core.notices.base import Notice


class LinkRequestNotice(Notice):
    """Someone typed this rider's /link code: only they decide."""

    kind = "link_request"
    attempt_id: int
    platform: str
    name: str = ""


class LinkDoneNotice(Notice):
    kind = "link_done"
    balance_fen: int


class LinkRefusedNotice(Notice):
    kind = "link_refused"
