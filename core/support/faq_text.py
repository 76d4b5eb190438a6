"""FAQ text: tokens for zh/en questions (jieba + stemming, typos, synonyms, stop words).

A private jieba dictionary, loaded on first use: importing this module stays cheap."""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Iterable

import jieba

_jieba_lock = threading.Lock()
_jieba: jieba.Tokenizer | None = None


# Words jieba's general dictionary would split (充满自停 → 充满/自停) or miss. Kept whole they
# carry the meaning; search mode still adds their known parts (充电桩 → 充电, 充电桩).
DOMAIN_WORDS = (
    "充电桩", "充电口", "充电站", "充电器", "插座", "插头", "扫码", "二维码", "充满自停", "浮充",
    "退款", "退钱", "优惠券", "代金券", "包月", "月卡", "钱包", "余额", "充值", "账单", "发票",
    "电瓶车", "电动车", "电瓶", "故障", "断电", "漏电", "功率", "维修中", "人工客服", "家庭钱包",
    "没钱", "欠费",
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Riders type by pinyin, so homophone slips are the usual typo (冲电 for 充电); 充钱 is how they
# say 充值 (top up). Fixed in the text, before jieba, so the dictionary sees the intended word.
TYPOS = {"冲电": "充电", "冲满": "充满", "冲值": "充值", "插坐": "插座", "帐单": "账单",
         "二维吗": "二维码", "电平车": "电瓶车", "充钱": "充值", "冲钱": "充值"}


# Different words for one thing, mapped to one token so an entry needs to say it only once.
SYNONYMS = {
    "充电口": "插座", "插口": "插座", "端口": "插座", "退钱": "退款", "电池": "电瓶",
    "钟头": "小时", "个钟": "小时", "最长": "最多", "最久": "最多",
    "停下": "停止", "停下来": "停止", "停掉": "停止", "关掉": "停止",
    "socket": "port", "outlet": "port",
    # Riders name the member ("my wife"), the FAQ says "family".
    **dict.fromkeys(_words("家人 家里人 老婆 老公 媳妇 孩子 儿子 女儿 爸妈 父母"), "家人"),
    **dict.fromkeys(_words("wife husband kid kids child children son daughter parent parents"),
                    "family"),
}


# Words that say nothing about *which* question is asked: particles, pronouns, question words,
# greetings, negations. Dropping them leaves greetings with no tokens (→ no answer, the chat
# handles those) and keeps coverage about content words. Negations go too: "not charging" is the
# same topic as "charging". Kept on purpose: 哪里/where, 多少/much, 为什么/why — they tell
# "where is a free port" from "how do I charge".
ZH_STOP = _words(
    "的 了 吗 呢 吧 啊 呀 哦 哈 嘛 么 啦 哇 喔 嗯 呗 哎 唉 我 我们 你 你们 您 他 她 它 它们 "
    "这 那 这个 那个 这里 那里 这样 那样 是 在 有 和 与 跟 就 都 也 还 又 再 要 想 会 能 可 "
    "可以 请 请问 麻烦 一下 怎么 怎样 怎么样 如何 咋 咋办 啥 什么 干嘛 哪 哪个 个 些 到 给 把 "
    "被 让 对 从 得 地 着 过 你好 您好 谢谢 多谢 哈喽 嗨 在吗 不 没 没有 有没有 能不能 "
    "可不可以 是不是 会不会 不能 不会 能否 可否 怎么办 办 弄 搞 下 上 里 中 一 一个 几 几个 "
    "知道 告诉 帮 帮忙 问 问下 问问 请教 好 好的 "
    # Every question here is about an e-bike: naming it says nothing about which one, and an
    # entry that happens to say 电动车 must not attract "电动车被偷了怎么办".
    "电动车 电瓶车 电动 动车 电车 电驴 小电驴 车 车子"
)


EN_STOP = _words(
    "a an the i me my mine myself we us our you your yours it its is are was were be been "
    "being am do does did doing done have has had having can could will would should shall may "
    "might must to of in on at for from by with about as into onto this that these those there "
    "here what which who whom how when if or and but so then than too very just "
    # contractions, apostrophe dropped (see tokens)
    "s t d ll m re ve im ive id youre theres thats heres whats lets "
    "don dont doesnt didnt isnt arent wasnt cant cannot won wont not no please "
    "hi hello hey thanks thank thx ok okay yes get got want need know tell let anyone someone "
    "any some also again still now one "
    "bike bikes ebike ebikes e scooter"   # see the e-bike words above
)


_CJK = r"\u3400-\u4dbf\u4e00-\u9fff"


_RUNS = re.compile(rf"[{_CJK}]+|[a-z0-9]+")


_CJK_RUN = re.compile(rf"[{_CJK}]")


def _tokenizer() -> jieba.Tokenizer:
    """A private jieba dictionary, loaded on first use (~0.6 s): importing core.faq stays cheap,
    and our domain words do not change how the rest of the process segments text."""
    global _jieba
    with _jieba_lock:
        if _jieba is None:
            jieba.setLogLevel(logging.WARNING)   # it logs "Building prefix dict…" to stderr
            tk = jieba.Tokenizer()
            tk.initialize()
            for word in DOMAIN_WORDS:
                tk.add_word(word)
            _jieba = tk
        return _jieba


def _stem(word: str) -> str:
    """Plurals and -ed/-ing, enough that "stopped", "stoped" and "stops" meet "stop"."""
    if word.isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ing") and len(word) > 5:
        word = word[:-3]
    elif (word.endswith("ed") and len(word) > 4) or word.endswith(("xes", "sses", "shes", "ches")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    # So that charge, charged and charging meet (charg), and stopped meets stop.
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Content tokens of a rider's message, in order, duplicates kept (BM25 counts them)."""
    text = unicodedata.normalize("NFKC", text).lower()   # full-width letters from zh keyboards
    for wrong, right in TYPOS.items():
        text = text.replace(wrong, right)
    text = re.sub(r"(\w)['’](\w)", r"\1\2", text)   # what's → whats, a single stop word
    out: list[str] = []
    for run in _RUNS.findall(text):
        if _CJK_RUN.match(run):
            out.extend(_chinese(run))
        elif run not in EN_STOP:
            out.append(_stem(SYNONYMS.get(run, run)))
    return out


def _chinese(run: str) -> Iterable[str]:
    tk = _tokenizer()
    # HMM off: the words it guesses (能充, 没满) never match the FAQ; dictionary words and single
    # characters (充, 满) do.
    for word in tk.lcut(run, HMM=False):
        if word in ZH_STOP:
            continue   # with its parts: 电瓶车 is no question about 电瓶 (the battery)
        # Search mode adds a long word's known parts (充电桩 → 充电, 充电桩), so a rider's
        # 充电 meets the FAQ's 充电桩.
        parts = tk.lcut_for_search(word, HMM=False) if len(word) > 2 else [word]
        yield from (SYNONYMS.get(p, p) for p in parts if p not in ZH_STOP)
