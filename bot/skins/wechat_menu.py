"""The official account's custom menu: the main actions one tap away (`chargebot wechat menu`)."""

from __future__ import annotations

from typing import Any

from bot.i18n import tr


def menu(lang: str = "zh_CN") -> dict[str, Any]:
    return {"button": [
        # location_select opens WeChat's location picker; the location message follows.
        {"type": "location_select", "name": tr(lang, "Find a port"), "key": "near"},
        {"type": "click", "name": tr(lang, "My charge"), "key": "status"},
        {"name": tr(lang, "Me"), "sub_button": [
            {"type": "click", "name": tr(lang, "Wallet"), "key": "wallet"},
            {"type": "click", "name": tr(lang, "History"), "key": "history"},
            {"type": "click", "name": "中文 / English", "key": "lang"},
            {"type": "click", "name": tr(lang, "Help"), "key": "help"},
        ]},
    ]}
