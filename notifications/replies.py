"""What handlers receive and return: platform-neutral, rendered natively by each skin.

Plain chat data, below everything that uses it: the handlers build it, the skins render it, the
notifier (this package) renders outbox rows into it and hands it to the skins' senders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_CALLBACK_BYTES = 64  # Telegram's limit on callback_data; WeChat links carry the same text


@dataclass(frozen=True)
class Incoming:
    platform: str  # telegram | wechat | webchat
    user_id: str
    chat_id: str
    text: str | None = None
    data: str | None = None  # a pressed button's callback data
    location: tuple[float, float] | None = None
    photo: str | None = None
    display_name: str = ""
    language_hint: str | None = None
    nonce: str = ""  # unique per press/message: makes repeated taps idempotent
    group: str = ""  # said in a group, not the person's own chat: "staff" (the desk) | "riders"
    reply_to: str | None = None  # the text of the message this one replies to


@dataclass(frozen=True)
class Button:
    label: str
    data: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.url is None):
            raise ValueError("a button has either data or a url")
        if self.data is not None and len(self.data.encode()) > MAX_CALLBACK_BYTES:
            raise ValueError(f"callback data over {MAX_CALLBACK_BYTES} bytes: {self.data!r}")


@dataclass(frozen=True)
class Venue:
    lat: float
    lon: float
    title: str
    address: str


@dataclass(frozen=True)
class Reply:
    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    venue: Venue | None = None
    photo_url: str | None = None
    # Ask the platform for the rider's location (Telegram: a request_location keyboard).
    request_location: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["buttons"] = [
            [{k: v for k, v in b.items() if v is not None} for b in row] for row in d["buttons"]
        ]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reply:
        return cls(
            text=d["text"],
            buttons=[[Button(**b) for b in row] for row in d.get("buttons") or []],
            venue=Venue(**d["venue"]) if d.get("venue") else None,
            photo_url=d.get("photo_url"),
            request_location=d.get("request_location"),
        )
