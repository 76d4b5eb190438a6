"""Notices that carry chat text as it is."""

from __future__ import annotations

from typing import Any

from core.notices.base import Notice


class RepliesNotice(Notice):
    """A skin's replies that missed its synchronous answer window (`Reply.as_dict()` each)."""

    kind = "replies"
    replies: list[dict[str, Any]]


class TextNotice(Notice):
    kind = "text"
    text: str
