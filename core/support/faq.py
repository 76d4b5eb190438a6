"""The rider FAQ: answers from a small bilingual FAQ, or a hand-over to a human.

Retrieval is BM25 (rank-bm25) over jieba tokens for Chinese and lightly stemmed words for
English. BM25 always ranks *something* first, so `Index.answer` answers only when the best entry
is a confident match (`_confident`); anything else goes to a human. `frequent` is the weekly
digest: a week's questions and tickets grouped, most asked first, which also orders the menu's
FAQ (`top_entries`). Pure domain code: no chat, no database.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rank_bm25 import BM25Okapi

from core.support.faq_text import tokens

LANGS = ("zh_CN", "en")
DEFAULT_PATH = Path(__file__).with_name("faq_entries.toml")


@dataclass(frozen=True)
class Entry:
    key: str                   # stable id, also in button data (Telegram allows 64 bytes)
    question: dict[str, str]   # {"zh_CN": …, "en": …}: the canonical question, shown in menus
    answer: dict[str, str]
    phrasings: tuple[str, ...] = ()   # other wordings riders use (either language), never shown

    def question_in(self, lang: str) -> str:
        return _in(self.question, lang)

    def answer_in(self, lang: str) -> str:
        return _in(self.answer, lang)


def _in(texts: dict[str, str], lang: str) -> str:
    # Staff-added entries may exist in one language only: better the other language than nothing.
    return texts.get(lang) or next((texts[k] for k in LANGS if texts.get(k)), "")


def load_entries(path: Path | None = None) -> list[Entry]:
    """The FAQ file (core/faq_entries.toml by default), in file order (the menu's default)."""
    with (path or DEFAULT_PATH).open("rb") as f:
        data = tomllib.load(f)
    entries = [
        Entry(key=e["key"], question=dict(e["question"]), answer=dict(e["answer"]),
              phrasings=tuple(e.get("phrasings", ())))
        for e in data.get("entry", [])
    ]
    for e in entries:
        missing = [lang for lang in LANGS if not e.question.get(lang) or not e.answer.get(lang)]
        if missing:
            raise ValueError(f"FAQ entry {e.key!r} lacks {', '.join(missing)}")
    return entries


def entry_from_ticket(
    key: str, question: str, answer: str, lang: str, *, phrasings: Sequence[str] = (),
) -> Entry:
    """Staff turn a ticket's answer into an entry: the rider's words become the question."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}")
    if not question.strip() or not answer.strip():
        raise ValueError("an FAQ entry needs a question and an answer")
    return Entry(key=key, question={lang: question.strip()}, answer={lang: answer.strip()},
                 phrasings=tuple(p.strip() for p in phrasings if p.strip()))


# --- retrieval -------------------------------------------------------------------------------

# The canonical questions and phrasings say what an entry is *about*; the answer adds useful
# words (/wallet, 30W) but also incidental ones ("location" in the repair answer). Counting the
# questions twice keeps the answer from outvoting them. (rank-bm25's default k1=1.5, b=0.75:
# top-1 on the tests' questions did not move for k1 0.9–2 and b 0.3–1.)
QUESTION_WEIGHT = 2

# Confidence. BM25 scores grow with the query's length and the corpus, so the rule rests on
# scale-free tests, with a small absolute floor:
#
# * Coverage: the share of the query's information found in the entry's questions. Tokens are
#   weighted by IDF; a word the FAQ never uses weighs as much as the rarest FAQ word (it may be
#   the whole point: 刹车, weather). Words only in the entry's answer count half, and only once
#   a question word matched (锂电池 sits in the 8-hour answer; a battery comparison is not that
#   entry's topic). Off-topic questions in the tests reach about 0.3 at most (新电瓶多少钱一块:
#   only 多少 and 钱 are the price entry's); riders' real questions add filler no list foresees
#   (感觉, 两块钱, company), so 0.4 of the information is enough...
MIN_COVERAGE = 0.4
ANSWER_CREDIT = 0.5
# ...and 0.3 is, when no other entry comes close (runner-up ≥ 30 % lower): "转人工" shares only
# 人工 with the FAQ, but nothing else competes.
LOW_COVERAGE = 0.3
CLEAR_MARGIN = 0.3
# * Margin: two entries within 10 % of each other is a coin toss (the rider asked something
#   between them); a human asking back is better.
MIN_MARGIN = 0.10
# * Floor: a lone common token (充电, time) scores 1.4–2.5, one rare shared word about 4.
MIN_SCORE = 3.0
# An exact paraphrase (the same tokens as one of the entry's questions or phrasings: 咋充电 and
# 怎么充电 are both {充电}) is that entry and confident, however generic its words are.


@dataclass(frozen=True)
class Match:
    entry: Entry
    score: float      # BM25, comparable only within one query
    coverage: float   # 0..1, see MIN_COVERAGE
    confident: bool   # answer with it (only ever true for the first of `ranked`)


class Index:
    """Built once per entry set (a few ms); `answer` and `ranked` only read, safe to share."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries: tuple[Entry, ...] = tuple(entries)
        if not self.entries:
            raise ValueError("an FAQ index needs at least one entry")
        dupes = sorted(k for k, n in Counter(e.key for e in self.entries).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate FAQ keys: {', '.join(dupes)}")
        self._by_key = {e.key: e for e in self.entries}
        asked = [_asked(e) for e in self.entries]
        said = [_said(e) for e in self.entries]
        docs = [a * QUESTION_WEIGHT + s for a, s in zip(asked, said, strict=True)]
        self._bm25 = BM25Okapi(docs)
        self._asked = [frozenset(a) for a in asked]
        self._said = [frozenset(s) - a for s, a in zip(said, self._asked, strict=True)]
        # A smoothed IDF that stays positive (BM25Okapi's goes negative for common words and is
        # floored): coverage needs every token to count for something.
        n = len(docs)
        df = Counter(t for d in docs for t in set(d))
        self._weight = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        self._unknown_weight = max(self._weight.values())
        self._exact: dict[frozenset[str], int] = {}
        for i, e in enumerate(self.entries):
            for text in (*e.question.values(), *e.phrasings):
                if toks := frozenset(tokens(text)):
                    self._exact.setdefault(toks, i)   # a clash goes to the earlier entry

    def get(self, key: str) -> Entry | None:
        return self._by_key.get(key)

    def ranked(self, text: str, k: int = 3) -> list[Match]:
        """The k best entries, best first; only the first may be confident (staff tools)."""
        query = list(dict.fromkeys(tokens(text)))   # "退款退款!!" is emphasis, not evidence
        if not query:
            return []
        scores = [float(s) for s in self._bm25.get_scores(query)]
        exact = self._exact.get(frozenset(query))
        # Ties go to the earlier entry (file order), so the order never depends on sort luck.
        order = sorted(range(len(scores)), key=lambda i: (i != exact, -scores[i], i))
        out = []
        for rank, i in enumerate(order[:k]):
            coverage = self._coverage(query, i)
            runner_up = scores[order[rank + 1]] if rank + 1 < len(order) else 0.0
            sure = i == exact or _confident(scores[i], runner_up, coverage)
            out.append(Match(self.entries[i], scores[i], coverage, rank == 0 and sure))
        return out

    def answer(self, text: str) -> Match | None:
        """The entry to answer with, or None: the chat hands the question to a human."""
        best = self.ranked(text, k=1)
        return best[0] if best and best[0].confident else None

    def _coverage(self, query: list[str], i: int) -> float:
        known = [t for t in query if t in self._weight]
        unknown = [t for t in query if t not in self._weight]
        # jieba's search mode adds the parts of a long word (两块钱 → 两块, 块钱, 两块钱): an
        # unknown word counts once, not once per part.
        unknown = [t for t in unknown if not any(t != u and t in u for u in unknown)]
        total = sum(self._weight[t] for t in known) + self._unknown_weight * len(unknown)
        found = sum(self._weight[t] for t in known if t in self._asked[i])
        if found:
            found += ANSWER_CREDIT * sum(self._weight[t] for t in known if t in self._said[i])
        return found / total if total else 0.0


def _asked(e: Entry) -> list[str]:
    return [t for text in (*e.question.values(), *e.phrasings) for t in tokens(text)]


def _said(e: Entry) -> list[str]:
    return [t for text in e.answer.values() for t in tokens(text)]


def _confident(best: float, runner_up: float, coverage: float) -> bool:
    margin = (best - runner_up) / best if best > 0 else 0.0
    return best >= MIN_SCORE and margin >= MIN_MARGIN and (
        coverage >= MIN_COVERAGE or (coverage >= LOW_COVERAGE and margin >= CLEAR_MARGIN))


# --- the weekly digest -----------------------------------------------------------------------

# Two questions the FAQ cannot answer are one topic when they share half their tokens (Jaccard):
# riders' questions are short, so "电动车被偷了怎么办" / "我的电动车被偷了咋办" → {偷} = {偷}.
SAME_TOPIC = 0.5


@dataclass(frozen=True)
class Topic:
    question: str               # the most common wording in the group
    count: int
    examples: tuple[str, ...]   # up to 3 distinct wordings, most common first
    key: str | None = None      # the FAQ entry that answers them; None: a gap in the FAQ


def frequent(
    questions: Iterable[str], top: int = 10, *, index: Index | None = None,
) -> list[Topic]:
    """The most asked topics in a batch of questions (a week's messages and tickets).

    With an index, questions the FAQ answers group by entry whatever their wording, so staff see
    both what is asked most and what the FAQ misses (key None). Greetings are skipped.
    """
    groups: list[_Group] = []
    by_key: dict[str, _Group] = {}
    for raw in questions:
        text = " ".join(raw.split())
        toks = frozenset(tokens(text))
        if not toks:
            continue
        match = index.answer(text) if index is not None else None
        if match is not None:
            group = by_key.get(match.entry.key)
            if group is None:
                group = by_key[match.entry.key] = _Group(key=match.entry.key)
                groups.append(group)
        elif (group := _nearest(groups, toks)) is None:
            group = _Group()
            groups.append(group)
        group.add(text, toks)
    groups.sort(key=lambda g: -g.count)   # stable: equal counts keep first-seen order
    return [g.topic() for g in groups[:top]]


@dataclass
class _Group:
    key: str | None = None
    texts: Counter[str] = field(default_factory=Counter)
    token_sets: set[frozenset[str]] = field(default_factory=set)

    @property
    def count(self) -> int:
        return sum(self.texts.values())

    def add(self, text: str, toks: frozenset[str]) -> None:
        self.texts[text] += 1
        self.token_sets.add(toks)

    def topic(self) -> Topic:
        wordings = [t for t, _ in self.texts.most_common()]   # equal counts: first seen first
        return Topic(wordings[0], self.count, tuple(wordings[:3]), self.key)


def _nearest(groups: list[_Group], toks: frozenset[str]) -> _Group | None:
    best, best_sim = None, 0.0
    for g in groups:
        if g.key is not None:
            continue
        # Single link: close to any member is enough, so a topic's wordings may drift a little.
        sim = max(len(toks & s) / len(toks | s) for s in g.token_sets)
        if sim >= SAME_TOPIC and sim > best_sim:
            best, best_sim = g, sim
    return best


def top_entries(entries: Sequence[Entry], topics: Sequence[Topic], n: int = 5) -> list[Entry]:
    """The menu's FAQ: the entries riders asked about most, then the rest in file order."""
    by_key = {e.key: e for e in entries}
    asked = [t.key for t in sorted(topics, key=lambda t: -t.count) if t.key in by_key]
    keys = list(dict.fromkeys([*asked, *by_key]))   # unique, in order
    return [by_key[k] for k in keys[:n]]
