"""Catalog checks: every rider-facing string is translated into zh_CN, placeholders intact.

The message ids are read straight from the source with babel's extractor (the same keywords
as `pybabel extract -k tr:2 -k ntr:2,3 -k N_`), so a string added to the code without a translation
fails here with its id and where it is used. How to fix: see locales/README.md.
"""

from __future__ import annotations

import re
import string
from functools import cache
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bot.i18n import tr
from core.riders.tables import DEFAULT_LANGUAGE, LANGUAGES

ROOT = Path(__file__).resolve().parents[2]
LOCALES = ROOT / "locales"
SOURCE_DIRS = ("bot", "core", "notifications")
KEYWORDS = {"tr": (2,), "ntr": (2, 3), "N_": None}
REFRESH = (
    "run `pybabel extract -F locales/babel.cfg -k tr:2 -k ntr:2,3 -k N_ --no-wrap "
    "-o locales/messages.pot . && pybabel update -i locales/messages.pot -d locales --no-wrap`, "
    "then translate (see locales/README.md)"
)

# Ids whose Chinese text is rightly the same as the English id although it has Latin words.
SAME_IN_CHINESE = {"中文 / English"}

MsgId = str | tuple[str, str]


@cache
def source_messages() -> dict[MsgId, list[str]]:
    """Every msgid marked with tr()/ntr() in the code → where it is used ("file:line")."""
    found: dict[MsgId, list[str]] = {}
    for d in SOURCE_DIRS:
        for filename, lineno, message, _comments, _context in extract_from_dir(
            ROOT / d, method_map=[("**.py", "python")], keywords=KEYWORDS
        ):
            found.setdefault(message, []).append(f"{d}/{filename}:{lineno}")
    return found


@cache
def catalog(lang: str) -> Catalog:
    with (LOCALES / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale=lang)


def singular(msgid: MsgId) -> str:
    return msgid if isinstance(msgid, str) else msgid[0]


def placeholders(text: str) -> set[tuple[str, str | None, str | None]]:
    """{name!conv:spec} fields of a str.format template, e.g. {("m", "02d", None)}."""
    return {
        (name, spec, conv)
        for _literal, name, spec, conv in string.Formatter().parse(text)
        if name is not None
    }


def test_extraction_finds_the_handlers() -> None:
    # Guards the extraction itself: an empty result would make every check below vacuous.
    files = {w.rsplit(":", 1)[0] for where in source_messages().values() for w in where}
    assert "bot/skins/webchat.py" in files
    assert {"bot/handlers/menu.py", "bot/handlers/charging.py", "bot/handlers/wallet.py"} <= files
    assert len(source_messages()) > 50


@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalog_exists_for_every_language(lang: str) -> None:
    assert catalog(lang).locale is not None


def test_every_message_has_a_chinese_translation() -> None:
    cat = catalog("zh_CN")
    missing = []
    for msgid, where in source_messages().items():
        m = cat.get(singular(msgid))
        forms = () if m is None else (m.string,) if isinstance(m.string, str) else m.string
        if m is None or m.fuzzy or not forms or not all(forms):
            state = "missing" if m is None else "fuzzy" if m.fuzzy else "untranslated"
            missing.append(f"  [{state}] {singular(msgid)!r}  ({', '.join(where)})")
    assert not missing, (
        f"{len(missing)} message(s) lack a zh_CN translation in "
        f"locales/zh_CN/LC_MESSAGES/messages.po; {REFRESH}:\n" + "\n".join(missing)
    )


@pytest.mark.parametrize("lang", LANGUAGES)
def test_translations_keep_placeholders(lang: str) -> None:
    bad = []
    for m in catalog(lang):
        if not m.id or not m.string:
            continue
        if isinstance(m.id, str):
            pairs = [(m.id, m.string)]
        else:  # plural: every form may use what the plural id uses ({n} included)
            pairs = [(m.id[1], form) for form in m.string if form]
        for msgid, text in pairs:
            try:
                want, got = placeholders(msgid), placeholders(text)
            except ValueError as exc:
                bad.append(f"  {msgid!r} → {text!r}: {exc}")
                continue
            if want != got:
                bad.append(f"  {msgid!r} → {text!r}: expected {sorted(want)}, got {sorted(got)}")
    assert not bad, f"{lang} translations with changed {{placeholders}}:\n" + "\n".join(bad)


def test_chinese_is_not_a_copy_of_the_english() -> None:
    def latin_words(text: str) -> list[str]:
        text = re.sub(r"\{[^{}]*\}|/[a-z_]+|P\d{4}-\d{2}", "", text)
        return re.findall(r"[A-Za-z]{2,}", text)

    copied = [
        m.id for m in catalog("zh_CN")
        if isinstance(m.id, str) and m.id and m.string == m.id
        and m.id not in SAME_IN_CHINESE and latin_words(m.id)
    ]
    assert not copied, f"zh_CN msgstr is just the English id: {copied}"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_no_obsolete_entry_is_still_used(lang: str) -> None:
    used = {singular(m) for m in source_messages()}
    revived = sorted(set(catalog(lang).obsolete) & used)
    assert not revived, (
        f"{lang}: these ids are in the code but only as obsolete (#~) entries, so they are not "
        f"translated at run time; {REFRESH} and un-comment/check them: {revived}"
    )


def test_tr_chinese() -> None:
    assert tr("zh_CN", "⚡ Start charging") == "⚡ 开始充电"
    assert tr("zh_CN", "👛 Balance: {balance}", balance="¥12.30") == "👛 余额：¥12.30"
    assert tr("zh_CN", "{h} h {m:02d} min", h=1, m=5) == "1小时05分"
    assert tr("zh_CN", "{km:.1f} km", km=1.26) == "1.3公里"
    assert tr("zh_CN", "Port {n}", n=3) == "3号插座"
    assert tr("zh_CN", ", ") == "，"
    # Rendered in the language just chosen, so Chinese says it switched to Chinese.
    assert tr("zh_CN", "Language set to English.") == "已切换为中文。"


def test_tr_english_is_the_msgid() -> None:
    assert tr("en", "⚡ Start charging") == "⚡ Start charging"
    assert tr("en", "👛 Balance: {balance}", balance="¥12.30") == "👛 Balance: ¥12.30"
    assert tr("en", "{h} h {m:02d} min", h=1, m=5) == "1 h 05 min"
    assert tr("en", "Language set to English.") == "Language set to English."


@pytest.mark.parametrize("lang", ["fr", "", "zh", "EN"])
def test_unknown_language_falls_back_to_chinese(lang: str) -> None:
    assert DEFAULT_LANGUAGE == "zh_CN"
    assert tr(lang, "⚡ Start charging") == tr("zh_CN", "⚡ Start charging") == "⚡ 开始充电"
