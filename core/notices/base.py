"""What every outbox notice is: a frozen model whose class names its kind, stored as the JSON
payload the notifier renders later."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, PlainSerializer

# Times travel as ISO text with their offset, as the payloads always did (`isoformat()`).
Stamp = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]

KINDS: dict[str, type[Notice]] = {}


class UnknownNotice(ValueError):
    """A kind no model claims (a row written by a newer or older release)."""


class Notice(BaseModel):
    """One outbox kind. A misspelt field or a missing one fails when the notice is made, in
    the transaction of its cause, instead of when the notifier renders it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    kind: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            raise TypeError(f"{cls.__name__} names no outbox kind")
        if kind in KINDS:
            raise TypeError(f"outbox kind {kind!r} claimed by {KINDS[kind].__name__} and "
                            f"{cls.__name__}")
        if len(kind) > 32:  # outbox.kind is VARCHAR(32)
            raise TypeError(f"outbox kind {kind!r} is longer than 32 characters")
        KINDS[kind] = cls

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        """Rows already stored carry keys later releases dropped: those are ignored here (and
        only here), so an old row still renders."""
        names = {f.alias or name for name, f in cls.model_fields.items()}
        return cls.model_validate({k: v for k, v in payload.items() if k in names})


def parse(kind: str, payload: dict[str, Any]) -> Notice:
    """The notice of a stored row: `UnknownNotice` for a kind nobody claims, pydantic's
    `ValidationError` (a ValueError) for a payload that does not fit its kind."""
    cls = KINDS.get(kind)
    if cls is None:
        raise UnknownNotice(f"unknown outbox kind {kind!r}")
    return cls.from_payload(payload)
