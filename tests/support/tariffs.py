"""Tariffs in bot.toml's shape, and the sentence the port card tells each in before the start
(`WORDS`, from bot/handlers/text.py `tariff_sentence`): unit/test_tariffs.py checks the bills and
the sentences, integration/test_port_card.py the card a rider sees."""

from __future__ import annotations

TIERS = [{"up_to_w": 200, "fen_per_hour": 25}, {"up_to_w": 400, "fen_per_hour": 40},
         {"up_to_w": 1000, "fen_per_hour": 60}]
POWER = {"mode": "power_tier", "unit_minutes": 1, "free_minutes": 1, "tiers": TIERS,
         "band_by": "peak_minute", "min_fee_fen": 0, "cap_fen": 0}

# bot.toml's `by_time`: ¥0.25/h in started 30-minute blocks, 1 minute free (issue 14's site).
BY_TIME = {"mode": "time", "unit_minutes": 30, "fen_per_hour": 25, "free_minutes": 1,
           "min_fee_fen": 0, "cap_fen": 0}

SITE_TARIFF = {**BY_TIME, "min_fee_fen": 50, "cap_fen": 500,
               "off_peak": {"start": "22:00", "end": "08:00", "percent": 80}}
STANDARD = {**POWER, "band_by": "peak_minute"}
ENERGY = {"mode": "energy", "fen_per_kwh": 100, "service_fen_per_kwh": 80, "free_minutes": 1}

# (tariff, language, the port card's sentence for it)
WORDS = [
    (SITE_TARIFF, "zh_CN",
     "前1分钟免费；之后¥0.25/小时，每30分钟计费一次（不足30分钟按30分钟计）；"
     "22:00–08:00按80%计费；需付费时最低收¥0.50；单次封顶¥5.00；未用电不收费。"
     "先充电后付费，从钱包余额扣款。"),
    (SITE_TARIFF, "en",
     "First 1 min free; after that ¥0.25/h, per started 30-minute block (part of a block "
     "counts as a whole one); 22:00–08:00 at 80% of the price; at least ¥0.50 when there is "
     "something to pay; never more than ¥5.00 a charge; no power drawn, nothing to pay. "
     "You pay after charging, from your wallet."),
    (STANDARD, "zh_CN",
     "前1分钟免费；之后按功率档位计费（200W以内¥0.25/小时，400W以内¥0.40/小时，"
     "1000W以内¥0.60/小时），按本次最高的1分钟平均功率定档，按分钟计费（不足1分钟按1分钟计）；"
     "未用电不收费。先充电后付费，从钱包余额扣款。"),
    (STANDARD, "en",
     "First 1 min free; after that priced by power (up to 200 W ¥0.25/h, up to 400 W "
     "¥0.40/h, up to 1000 W ¥0.60/h), the band is your highest 1-minute average, per started "
     "minute; no power drawn, nothing to pay. You pay after charging, from your wallet."),
    (ENERGY, "zh_CN",
     "充电1分钟以内免费；电费¥1.00/度 + 服务费¥0.80/度；未用电不收费。"
     "先充电后付费，从钱包余额扣款。"),
    (ENERGY, "en",
     "Charges of 1 min or less are free; ¥1.00/kWh electricity + ¥0.80/kWh service; no power "
     "drawn, nothing to pay. You pay after charging, from your wallet."),
    ({**POWER, "free_minutes": 0, "band_by": "session_mean", "unit_minutes": 30}, "en",
     "Priced by power (up to 200 W ¥0.25/h, up to 400 W ¥0.40/h, up to 1000 W ¥0.60/h), the "
     "band is your average power, per started 30-minute block (part of a block counts as a "
     "whole one); no power drawn, nothing to pay. You pay after charging, from your wallet."),
]
