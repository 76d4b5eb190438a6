"""Builders for the Update JSON Telegram would POST to our webhook (or return from getUpdates).

Every dict is accepted by ``telegram.Update.de_json(d, bot)``::

    rider = TelegramUser(10001)
    await app.process_update(Update.de_json(rider.text("/start port_P0001-03"), app.bot))
    reply = fake.messages_to(rider.user_id)[-1]
    await app.process_update(Update.de_json(rider.press(reply, "confirm"), app.bot))
"""

from __future__ import annotations

import copy
import itertools
import re
import time
from typing import Any

__all__ = ["TelegramUser", "inline_buttons", "next_update_id"]

JSON = dict[str, Any]

# Module-level so that updates from different simulated users interleave with unique,
# increasing ids, as they would from one bot's update stream.
_update_ids = itertools.count(100_000)
_message_ids = itertools.count(1)
_callback_ids = itertools.count(1)

# "/cmd" or "/cmd@botname" at the start of a message; Telegram marks exactly this span.
_COMMAND = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")


def next_update_id() -> int:
    return next(_update_ids)


def _utf16_len(text: str) -> int:
    # Entity offsets/lengths are measured in UTF-16 code units, not code points.
    return len(text.encode("utf-16-le")) // 2


def inline_buttons(message: JSON) -> list[JSON]:
    """All inline keyboard buttons of a message dict, row by row."""
    markup = message.get("reply_markup") or {}
    return [button for row in markup.get("inline_keyboard", []) for button in row]


class TelegramUser:
    """A simulated human talking to the bot."""

    def __init__(
        self,
        user_id: int,
        first_name: str = "骑手",
        language_code: str = "zh-hans",
        username: str | None = None,
    ) -> None:
        self.user_id = user_id
        self.first_name = first_name
        self.language_code = language_code
        self.username = username

    @property
    def user(self) -> JSON:
        user: JSON = {
            "id": self.user_id,
            "is_bot": False,
            "first_name": self.first_name,
            "language_code": self.language_code,
        }
        if self.username:
            user["username"] = self.username
        return user

    @property
    def private_chat(self) -> JSON:
        chat: JSON = {"id": self.user_id, "type": "private", "first_name": self.first_name}
        if self.username:
            chat["username"] = self.username
        return chat

    def _message(self, chat: JSON, content: JSON) -> JSON:
        return {
            "update_id": next_update_id(),
            "message": {
                "message_id": next(_message_ids),
                "from": self.user,
                "chat": chat,
                "date": int(time.time()),
                **content,
            },
        }

    @staticmethod
    def _text_content(text: str) -> JSON:
        content: JSON = {"text": text}
        command = _COMMAND.match(text)
        # Telegram only treats it as a command if the token ends at a word boundary.
        if command and (command.end() == len(text) or text[command.end()].isspace()):
            content["entities"] = [
                {"type": "bot_command", "offset": 0, "length": _utf16_len(command.group(0))}
            ]
        return content

    def text(self, text: str) -> JSON:
        return self._message(self.private_chat, self._text_content(text))

    def location(self, lat: float, lon: float) -> JSON:
        return self._message(self.private_chat, {"location": {"latitude": lat, "longitude": lon}})

    def photo(self, file_id: str = "AgAC-test", caption: str | None = None) -> JSON:
        # Telegram sends several sizes, smallest first; handlers normally take photo[-1].
        content: JSON = {
            "photo": [
                {
                    "file_id": f"{file_id}-thumb",
                    "file_unique_id": f"{file_id}-thumb-u",
                    "width": 90,
                    "height": 67,
                    "file_size": 1_200,
                },
                {
                    "file_id": file_id,
                    "file_unique_id": f"{file_id}-u",
                    "width": 1280,
                    "height": 960,
                    "file_size": 98_000,
                },
            ]
        }
        if caption is not None:
            content["caption"] = caption
        return self._message(self.private_chat, content)

    def press(self, message: JSON, data: str, *, check_button: bool = True) -> JSON:
        """A tap on an inline button of ``message`` (a dict the fake returned).

        By default the button must exist on that message: a real user can't send callback
        data the keyboard doesn't offer, and a typo here would otherwise pass silently.
        """
        if not {"message_id", "chat", "date"} <= message.keys():
            raise ValueError("press() needs a message dict as returned by FakeTelegram")
        if check_button and data not in {b.get("callback_data") for b in inline_buttons(message)}:
            offered = [(b.get("text"), b.get("callback_data")) for b in inline_buttons(message)]
            raise AssertionError(f"message has no button with callback_data={data!r}: {offered}")
        shown = copy.deepcopy(message)
        # Only inline keyboards can appear on a Message; the fake's records keep reply
        # keyboards as the bot passed them, which Message.de_json would reject.
        if "inline_keyboard" not in (shown.get("reply_markup") or {}):
            shown.pop("reply_markup", None)
        return {
            "update_id": next_update_id(),
            "callback_query": {
                "id": str(4_000_000_000_000_000 + next(_callback_ids)),
                "from": self.user,
                "message": shown,
                "chat_instance": f"-{abs(shown['chat']['id']) * 7919}",
                "data": data,
            },
        }

    def group_text(self, chat_id: int, text: str, title: str = "骑手群") -> JSON:
        if chat_id >= 0:
            raise ValueError("group chat ids are negative on Telegram")
        kind = "supergroup" if chat_id <= -1_000_000_000_000 else "group"
        chat = {"id": chat_id, "type": kind, "title": title}
        return self._message(chat, self._text_content(text))
