"""Every rider-facing string goes through here: gettext catalogs in `locales/`, zh-CN first.

Message ids are English; `tr(lang, "…", **params)` is the one marker (`pybabel extract -k tr:2`).
Catalogs are compiled from the .po files in memory at start-up (`preload`, from bot.warmup, in
a worker thread: ~40 ms a language that the first rider's message would otherwise wait for on the
event loop), so there is no build step and no stale .mo file.
"""

from __future__ import annotations

import gettext
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from core.riders.tables import DEFAULT_LANGUAGE, LANGUAGES

LOCALES = Path(__file__).resolve().parent.parent / "locales"


@cache
def _catalog(lang: str) -> gettext.NullTranslations:
    po = LOCALES / lang / "LC_MESSAGES" / "messages.po"
    if not po.exists():
        return gettext.NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=lang)
    buf = BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def preload() -> None:
    """Compile every language's catalog now (from any thread; later calls are free)."""
    for lang in LANGUAGES:
        _catalog(lang)


def N_(msgid: str) -> str:  # noqa: N802 - gettext's own name for the marker
    """Marks a msgid for extraction where it is translated later, when shown (a /help line)."""
    return msgid


def tr(lang: str, msgid: str, **params: Any) -> str:
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    text = _catalog(lang).gettext(msgid)
    return text.format(**params) if params else text


def ntr(lang: str, singular: str, plural: str, n: int, **params: Any) -> str:
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    text = _catalog(lang).ngettext(singular, plural, n)
    return text.format(n=n, **params)
