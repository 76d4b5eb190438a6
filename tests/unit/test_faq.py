"""The FAQ answers riders' questions, in their words, and hands the rest to a human.

HELD_OUT and UNCOVERED were written before the retrieval was tuned, apart from the entries'
phrasings (none is copied from core/faq_entries.toml): colloquial, with the typos riders make,
in both languages. MORE_QUESTIONS and NEAR_MISSES came later, to probe the tuning; they were
partly used for it, so their bars are lower and their figures honest, not flattering.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.support import faq

# (rider's question, the entry that should answer it)
HELD_OUT: list[tuple[str, str]] = [
    # zh_CN
    ("咋充电", "how_to_start"),
    ("怎么退钱", "refund"),
    ("冲电多少钱一个小时", "price"),
    ("充满了会自己断电吗", "full_stop"),
    ("车要骑走了，怎么让它停下来", "stop_early"),
    ("现在充了多少钱了在哪看", "status"),
    ("上次充电的账单在哪看", "bill"),
    ("钱包里怎么充钱", "topup"),
    ("充到一半插座坏了，钱怎么算", "refund"),
    ("感觉扣费不对，多扣了我两块钱", "dispute"),
    ("包月怎么办理", "plans"),
    ("能不能让我老婆也用我的余额充电", "family"),
    ("微信和电报的账户能合并吗", "link"),
    ("插座上显示维修中是怎么回事", "under_repair"),
    ("显示在充电但电瓶一点没充进去", "no_power"),
    ("充电桩在冒烟怎么办！！", "safety"),
    ("一次最长能充几个钟头", "max_time"),
    ("能开发票吗，公司要报销", "invoice"),
    ("充完忘了拔，会一直扣钱吗", "forgot_unplug"),
    ("头盔落在充电站了", "lost_item"),
    ("转人工", "human"),
    ("二维码花了扫不出来", "qr_fails"),
    ("余额不够还能充吗", "low_balance"),
    ("充了一个多小时自己停了，电还没满", "why_stopped"),
    # en
    ("how much per hour", "price"),
    ("charger stoped by itself", "why_stopped"),
    ("how do I charge my ebike here?", "how_to_start"),
    ("how to put money in my wallet", "topup"),
    ("do you have a monthly subscription", "plans"),
    ("where's the closest free charger", "nearest"),
    ("it says charging but the battery isnt filling up", "no_power"),
    ("the amount you took from me is wrong", "dispute"),
    ("switch to chinese please", "language"),
    ("need a receipt for my company", "invoice"),
    ("can I speak to someone from your staff", "human"),
    ("will it cut the power once the battery is full", "full_stop"),
    ("what happens if i pull the plug out", "unplug"),
    ("there's smoke coming out of the socket!!", "safety"),
    ("is my coupon used automatically", "coupons"),
    ("pressed start and nothing happens", "start_failed"),
]

# Questions the FAQ does not cover: each must be handed over (answer() is None). Some share a
# word with the FAQ on purpose (电动车, 附近, 多少钱, repair) — that is where a naive "best BM25
# hit" answers wrongly.
UNCOVERED = [
    "能帮我修电动车刹车吗",
    "what's the weather tomorrow",
    "附近有没有吃饭的地方",
    "你好",
    "hello",
    "电动车被偷了怎么办",
    "新电瓶多少钱一块",
    "can you recommend a bike repair shop",
    "明天会下雨吗",
    "tell me a joke",
    "你们公司招人吗",
    "how fast can an e-bike legally go",
]


# More riders' questions, written after the first tuning round; the last 28 ("blind") before the
# last round. Lexical retrieval misses some ("车还插着，我人在外地" shares no word with "forgot to
# unplug"); the bar guards against regressions.
MORE_QUESTIONS: list[tuple[str, str]] = [
    ("收费贵吗", "price"), ("一度电多少钱", "price"), ("怎么扫码", "how_to_start"),
    ("how do i pay", "pay"), ("没钱了还能用吗", "low_balance"), ("怎么查余额", "topup"),
    ("充电记录在哪", "bill"), ("is there a discount", "coupons"), ("能不能提前停", "stop_early"),
    ("the port is broken", "under_repair"), ("插头拔了还收钱吗", "unplug"),
    ("我的车充了一夜会不会一直扣费", "forgot_unplug"), ("充电进度怎么看", "status"),
    ("电费扣错了", "dispute"), ("how long can i charge for", "max_time"), ("有人工吗", "human"),
    ("I lost my keys at the station", "lost_item"), ("how to give a suggestion", "suggest"),
    ("钱包能给孩子用吗", "family"), ("充电桩着火了", "safety"),
    ("why did it stop charging", "why_stopped"), ("充电器插上了不充电", "no_power"),
    ("start doesnt work", "start_failed"), ("附近哪有充电的地方", "nearest"),
    ("英文怎么设置", "language"), ("how to link wechat", "link"), ("怎么买月卡", "plans"),
    ("为什么按600瓦收费", "power_band"), ("满了会停吗", "full_stop"), ("码扫不了", "qr_fails"),
    # blind
    ("第一次用，不会操作", "how_to_start"), ("一个小时几毛钱", "price"),
    ("按电量收费还是按时间", "price"),
    ("what if my wallet runs out during charging", "low_balance"),
    ("充值送钱吗", "topup"), ("账单没发给我", "bill"), ("报销要发票", "invoice"),
    ("会不会充爆电池", "full_stop"), ("为什么充了十分钟就断了", "why_stopped"),
    ("how do I cancel charging", "stop_early"), ("车还插着，我人在外地", "forgot_unplug"),
    ("how much have i spent so far", "status"), ("插座坏了，钱能退吗", "refund"),
    ("you charged me two times", "dispute"), ("券怎么领怎么用", "coupons"),
    ("外卖小哥有月卡吗", "plans"), ("怎么给我妈开通家庭钱包", "family"), ("绑定telegram", "link"),
    ("where can i find a free port near me", "nearest"), ("这个插座一直在维修", "under_repair"),
    ("插上之后充电器没亮", "no_power"), ("有股烧焦的味道", "safety"), ("英文", "language"),
    ("钥匙落在桩上了", "lost_item"), ("有个建议想反馈", "suggest"), ("客服在吗", "human"),
    ("the qr code is scratched", "qr_fails"), ("按了开始半天没反应", "start_failed"),
]

# Off-topic questions that share words with the FAQ (电瓶, 哪里, courier, station, 修): the hard
# side of the hand-over rule. "怎么注册外卖骑手" looks like the courier plan to any word-based
# retrieval; for those the safety net is the chat offering a human under every FAQ answer.
NEAR_MISSES = [
    "充电桩是哪个厂家生产的", "电瓶多久换一次", "停车费怎么收", "可以在这里洗车吗",
    "充电器坏了在哪买新的", "how much is a new battery", "where can I park my bike",
    "is the charging station open at night", "do you sell helmets", "我的手机没电了能充吗",
    "can I charge my phone here", "你是机器人吗", "几点下班", "电动车上牌在哪里办",
    "这个小区物业电话多少", "骑电动车要戴头盔吗", "can I bring my dog", "锂电池和铅酸电池哪个好",
    "电动车能骑多远", "what time is it", "我想买一辆新电动车", "充电桩可以充汽车吗",
    "can i charge a car", "怎么注册外卖骑手", "how do i become a courier",
    # blind
    "电动车电池能换锂电吗", "这里可以停车吗", "what is your company name", "充电桩晚上吵不吵",
    "哪里有修车的", "how do i fix a flat tire", "你们老板是谁", "今天几号",
    "can i charge two bikes at once", "停电了什么时候来电",
]


@pytest.fixture(scope="module")
def entries() -> list[faq.Entry]:
    return faq.load_entries()


@pytest.fixture(scope="module")
def index(entries: list[faq.Entry]) -> faq.Index:
    return faq.Index(entries)


def test_held_out_set_is_balanced_and_distinct_from_phrasings(entries: list[faq.Entry]) -> None:
    assert len(HELD_OUT) == 40
    zh = [q for q, _ in HELD_OUT if any("\u4e00" <= c <= "\u9fff" for c in q)]
    assert len(zh) >= 20 and len(HELD_OUT) - len(zh) >= 15
    keys = {e.key for e in entries}
    assert {k for _, k in HELD_OUT} <= keys
    written = {t.lower() for e in entries
               for t in (*e.phrasings, *e.question.values())}
    assert not [q for q, _ in HELD_OUT if q.lower() in written]


def test_riders_questions_get_the_right_answer_first(index: faq.Index) -> None:
    misses = []
    for question, key in HELD_OUT:
        match = index.answer(question)
        got = match.entry.key if match else None
        if got != key:
            top = [(m.entry.key, round(m.score, 2), round(m.coverage, 2))
                   for m in index.ranked(question)]
            misses.append((question, key, got, top))
    for miss in misses:
        print("miss:", *miss)
    # Counted on answer(), not ranked(): a right entry handed over for low confidence is a miss.
    ratio = 1 - len(misses) / len(HELD_OUT)
    print(f"held-out top-1 answered correctly: {ratio:.0%}")
    assert ratio >= 0.85


def test_questions_the_faq_does_not_cover_go_to_a_human(index: faq.Index) -> None:
    # All of them, not 90 %: a wrong confident answer costs a rider more than a short wait for
    # staff, and the list mixes easy and near-miss cases on purpose.
    answered = {q: m.entry.key for q in UNCOVERED if (m := index.answer(q)) is not None}
    assert answered == {}


def test_more_riders_questions_mostly_answered_right(index: faq.Index) -> None:
    right = [q for q, k in MORE_QUESTIONS if (m := index.answer(q)) and m.entry.key == k]
    print(f"more questions answered correctly: {len(right)}/{len(MORE_QUESTIONS)}")
    assert len(right) >= 0.75 * len(MORE_QUESTIONS)


def test_near_misses_mostly_go_to_a_human(index: faq.Index) -> None:
    answered = {q: m.entry.key for q in NEAR_MISSES if (m := index.answer(q)) is not None}
    print(f"near misses handed over: {len(NEAR_MISSES) - len(answered)}/{len(NEAR_MISSES)};",
          "answered:", answered)
    assert len(answered) <= 0.25 * len(NEAR_MISSES)


def test_greetings_and_empty_text_are_left_to_the_chat(index: faq.Index) -> None:
    for text in ("你好", "您好！", "hi", "thanks", "", "  ", "？？", "在吗"):
        assert index.answer(text) is None
        assert index.ranked(text) == []


def test_domain_words_stay_whole() -> None:
    toks = faq.tokens("充电桩充满自停了吗？扫码后插座没电，优惠券和包月呢，钱包余额不足，要退款")
    for word in ("充电桩", "充满自停", "扫码", "插座", "优惠券", "包月", "钱包", "余额", "退款"):
        assert word in toks
    assert {"插座", "故障", "断电"} <= set(faq.tokens("充电口故障断电了"))   # 充电口 is a 插座
    assert "漏电" in faq.tokens("好像漏电了") and "功率" in faq.tokens("功率多大")
    # Every question is about an e-bike, so naming one tells nothing: 电瓶车/电动车 are dropped.
    assert faq.tokens("我的电瓶车") == faq.tokens("电动车") == []


def test_tokens_normalise_typos_plurals_and_drop_filler() -> None:
    assert faq.tokens("冲电") == faq.tokens("充电") == ["充电"]
    assert faq.tokens("怎么充钱") == faq.tokens("充值")
    assert faq.tokens("stoped") == faq.tokens("stopped") == faq.tokens("stops") == ["stop"]
    assert faq.tokens("Refunds") == faq.tokens("refund") == ["refund"]
    assert faq.tokens("ＷＡＬＬＥＴ") == ["wallet"]   # full-width input from a Chinese keyboard
    assert faq.tokens("请问你好吗？") == []
    assert faq.tokens("what is it") == []


def test_weekly_digest_groups_paraphrases_most_frequent_first(index: faq.Index) -> None:
    week = [
        "怎么退款", "退款怎么弄", "怎么退款", "怎么退款？",
        "电动车被偷了怎么办", "电动车被偷了", "我的电动车被偷了咋办",
        "停车场几点关门", "停车场几点关门",
        "你好",
        "what's the weather tomorrow",
    ]
    topics = faq.frequent(week, top=10)
    assert [t.count for t in topics] == [4, 3, 2, 1]
    assert topics[0].question == "怎么退款" and "退款怎么弄" in topics[0].examples
    assert topics[1].question == "电动车被偷了怎么办" and topics[1].key is None
    assert faq.frequent(week, top=2) == topics[:2]

    # With the index, questions the FAQ answers group by entry whatever their wording, and the
    # ones it cannot answer show staff what is missing.
    by_entry = faq.frequent([*week, "how do I get a refund", "钱能退吗，插座坏了"], index=index)
    assert by_entry[0].key == "refund" and by_entry[0].count >= 5
    assert any(t.key is None and t.count == 3 for t in by_entry)


def test_menu_shows_most_asked_entries_then_file_order(
    entries: list[faq.Entry], index: faq.Index,
) -> None:
    topics = faq.frequent(["多少钱一小时", "收费标准是啥", "how much is it", "怎么退款"],
                          index=index)
    menu = faq.top_entries(entries, topics, n=4)
    assert [e.key for e in menu[:2]] == ["price", "refund"]
    assert [e.key for e in menu[2:]] == [e.key for e in entries if e.key not in
                                         ("price", "refund")][:2]
    assert [e.key for e in faq.top_entries(entries, [], n=3)] == [e.key for e in entries[:3]]


def test_every_entry_speaks_both_languages_with_a_unique_short_key(
    entries: list[faq.Entry],
) -> None:
    assert 25 <= len(entries) <= 35
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys))
    for e in entries:
        # The key rides in button data ("faq:<key>") under Telegram's 64-byte limit.
        assert e.key.isascii() and len(e.key) <= 24
        for lang in faq.LANGS:
            assert e.question[lang].strip() and e.answer[lang].strip()
        assert 3 <= len(e.phrasings) <= 12


def test_each_wording_leads_to_one_entry(entries: list[faq.Entry]) -> None:
    # An exact paraphrase answers directly, so two entries must not share one, and a phrasing
    # made only of filler ("怎么办") would match nothing.
    owner: dict[frozenset[str], str] = {}
    for e in entries:
        for text in (*e.question.values(), *e.phrasings):
            toks = frozenset(faq.tokens(text))
            assert toks, f"{e.key}: {text!r} has no content words"
            assert owner.setdefault(toks, e.key) == e.key, f"{e.key}: {text!r} ≙ {owner[toks]}"


def test_every_entry_answers_its_own_questions(index: faq.Index) -> None:
    for e in index.entries:
        for text in (*e.question.values(), *e.phrasings):
            match = index.answer(text)
            assert match is not None and match.entry is e, (e.key, text)


def test_an_entry_file_missing_a_language_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "faq.toml"
    bad.write_text('[[entry]]\nkey = "x"\nquestion.zh_CN = "问"\nanswer.zh_CN = "答"\n'
                   'question.en = "Q"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="en"):
        faq.load_entries(bad)


def test_duplicate_keys_are_refused(entries: list[faq.Entry]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        faq.Index([*entries, entries[0]])


def test_staff_turn_a_ticket_answer_into_an_entry(entries: list[faq.Entry]) -> None:
    added = faq.entry_from_ticket(
        "ticket-17", "电动车停车场晚上几点关门？", "停车场晚上 11 点关门，早上 6 点开门。", "zh_CN",
        phrasings=["停车场关门时间", "what time does the bike park close"])
    index = faq.Index([*entries, added])
    match = index.answer("停车场几点关门啊")
    assert match is not None and match.entry.key == "ticket-17"
    # Riders in the other language still get the only answer there is.
    assert added.answer_in("en") == "停车场晚上 11 点关门，早上 6 点开门。"
    assert index.get("ticket-17") is added


def test_index_is_deterministic(entries: list[faq.Entry]) -> None:
    a, b = faq.Index(entries), faq.Index(list(entries))
    for question, _ in HELD_OUT:
        ra, rb = a.ranked(question, k=5), b.ranked(question, k=5)
        assert [(m.entry.key, m.score, m.confident) for m in ra] == \
               [(m.entry.key, m.score, m.confident) for m in rb]
        assert ra == a.ranked(question, k=5)


def test_index_builds_and_answers_fast(entries: list[faq.Entry]) -> None:
    faq.tokens("充电")   # jieba's dictionary loads once per process (~0.6 s), not per index
    started = time.perf_counter()
    index = faq.Index(entries)
    assert time.perf_counter() - started < 0.5
    started = time.perf_counter()
    for question, _ in HELD_OUT:
        index.answer(question)
    assert (time.perf_counter() - started) / len(HELD_OUT) < 0.005
