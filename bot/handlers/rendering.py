"""Outbox notices rendered for the rider: one renderer per notice model, declared with
`@renders(Model)` next to the words it writes (in the manner of `routing.Router`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from core.notices import KINDS, Notice, UnknownNotice, parse
from notifications.replies import Reply

log = logging.getLogger(__name__)

N = TypeVar("N", bound=Notice)
Renderer = Callable[[Any, str], list[Reply]]
RENDERERS: dict[type[Notice], Renderer] = {}


class Unrenderable(ValueError):
    """A stored row no renderer can show: a kind nobody claims or a payload that does not fit
    its kind. The notifier treats it as any failed send (logged, retried with backoff, dead
    after its attempts), as it treated the old chain's `ValueError`: a release that knows the
    kind may still deliver it."""


def renders(cls: type[N]) -> Callable[[Callable[[N, str], list[Reply]]],
                                      Callable[[N, str], list[Reply]]]:
    """`@renders(BillNotice)` on `def bill(n: BillNotice, lang: str) -> list[Reply]`."""
    if KINDS.get(cls.kind) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered notice")

    def register(fn: Callable[[N, str], list[Reply]]) -> Callable[[N, str], list[Reply]]:
        if cls in RENDERERS:
            raise TypeError(f"outbox kind {cls.kind!r} has two renderers")
        RENDERERS[cls] = fn
        return fn
    return register


def render_notice(notice: Notice, lang: str) -> list[Reply]:
    return RENDERERS[type(notice)](notice, lang)


def render(kind: str, payload: dict[str, Any], lang: str) -> list[Reply]:
    """A stored row in the rider's language (the notifier's `Render`)."""
    try:
        notice = parse(kind, payload)
    except UnknownNotice as exc:
        log.warning("outbox kind %r has no model: not rendered", kind)
        raise Unrenderable(str(exc)) from exc
    except ValidationError as exc:
        # The fields that failed, not the payload: it may hold a rider's words.
        log.warning("outbox %r payload does not fit its model (%s): not rendered", kind,
                    "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}"
                              for e in exc.errors()))
        raise Unrenderable(f"outbox {kind!r} payload does not fit its model") from exc
    if type(notice) not in RENDERERS:
        log.warning("outbox kind %r has no renderer: not rendered", kind)
        raise Unrenderable(f"outbox kind {kind!r} has no renderer")
    return render_notice(notice, lang)
