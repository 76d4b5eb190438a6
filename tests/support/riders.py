"""One rider interface over the three skins, so a journey is written once and run on each."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.telegram_updates import TelegramUser
from tests.fakes.wechat_api import FakeWechat
from tests.fakes.wechat_user import OfficialAccount, WechatUser
from tests.support.journey import WebRider
from tests.support.server import Running

TG_SECRET = "webhook-secret-for-tests"
ACCOUNT = OfficialAccount()
OPTION = re.compile(r'msgmenucontent=(\d+)&msgmenuid=\d+">\d+\. ([^<]*)</a>')


async def _until(find: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class WebChatRider:
    platform = "webchat"

    def __init__(self, server: Running) -> None:
        self.web = WebRider(server.http, server.url)
        self.log: list[dict] = []

    async def scan(self, code: str) -> None:
        self.log += await self.web.say(f"/start port_{code}")

    async def say(self, text: str) -> None:
        self.log += await self.web.say(text)

    def _button(self, label: str) -> str | None:
        for reply in reversed(self.log):
            for row in reply["buttons"]:
                for b in row:
                    if label in b["label"] and "data" in b:
                        return b["data"]
        return None

    async def _pull(self) -> None:
        try:
            await self.web.wait_message("\x00", timeout=0.5)  # no text holds NUL: just collect
        except AssertionError:
            pass
        self.log += [m for m in self.web.inbox if m not in self.log]

    async def tap(self, label: str) -> None:
        # The button may come in a pushed message (a notice) that has not been collected yet.
        async def find() -> str | None:
            if (data := self._button(label)) is None:
                await self._pull()
            return data

        self.log += await self.web.press(await _until(find, f"button {label!r}", 10))

    async def wait_text(self, contains: str, timeout: float = 30) -> str:
        async def find() -> str | None:
            for reply in self.log:
                if contains in reply["text"]:
                    return reply["text"]
            try:
                await self.web.wait_message(contains, timeout=0.5)
            except AssertionError:
                pass
            self.log += [m for m in self.web.inbox if m not in self.log]
            return None

        return await _until(find, contains, timeout)


class TelegramRider:
    platform = "telegram"
    _ids = iter(range(700_000, 800_000))

    def __init__(self, server: Running, fake: FakeTelegram) -> None:
        self.server, self.fake = server, fake
        self.user = TelegramUser(next(self._ids))

    async def _post(self, update: dict) -> None:
        async with self.server.http.post(
            f"{self.server.url}/telegram/webhook", json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
        ) as r:
            assert r.status == 200

    def _messages(self) -> list[dict]:
        return self.fake.messages_to(self.user.user_id)

    async def scan(self, code: str) -> None:
        n = len(self._messages())
        await self._post(self.user.text(f"/start port_{code}"))
        await _until(lambda: len(self._messages()) > n, "port card", 10)

    async def say(self, text: str) -> None:
        n = len(self._messages())
        await self._post(self.user.text(text))
        await _until(lambda: len(self._messages()) > n, "reply", 10)

    def _button(self, label: str) -> tuple[dict, str] | None:
        for msg in reversed(self._messages()):
            for row in (msg.get("reply_markup") or {}).get("inline_keyboard", []):
                for b in row:
                    if label in b["text"] and "callback_data" in b:
                        return msg, b["callback_data"]
        return None

    async def tap(self, label: str) -> None:
        # A reply may be several Bot API messages still on their way: wait for the button
        # itself, not for the first message after the last action.
        msg, data = await _until(lambda: self._button(label), f"button {label!r}", 10)
        n = len(self._messages())
        await self._post(self.user.press(msg, data))
        await _until(lambda: len(self._messages()) > n, "reply", 10)

    async def wait_text(self, contains: str, timeout: float = 30) -> str:
        def find() -> str | None:
            for m in self._messages():
                if contains in (m.get("text") or ""):
                    return m["text"]
            return None

        return await _until(find, contains, timeout)


class WechatRider:
    platform = "wechat"
    _ids = iter(range(1, 100_000))

    def __init__(self, server: Running, fake: FakeWechat, account: OfficialAccount) -> None:
        self.server, self.fake = server, fake
        self.user = WechatUser(f"oWx-test-{next(self._ids):05d}", account, encrypted=True)
        self.passive: list[str] = []

    async def post(self, delivery: Any) -> tuple[int, dict | None]:
        async with self.server.http.post(**delivery.post_args(self.server.url)) as r:
            body = await r.read()
            status = r.status
        reply = self.user.read_reply(body) if status == 200 else None
        if reply and reply.get("Content"):
            self.passive.append(reply["Content"])
        return status, reply

    def texts(self) -> list[str]:
        return self.passive + self.fake.texts_to(self.user.openid)

    async def scan(self, code: str) -> None:
        status, _ = await self.post(self.user.scan(f"port_{code}"))
        assert status == 200

    async def say(self, text: str) -> None:
        status, _ = await self.post(self.user.text(text))
        assert status == 200

    def _option(self, label: str) -> str | None:
        for text in reversed(self.texts()):
            for number, shown in OPTION.findall(text):
                if label in shown:
                    return number
        return None

    async def tap(self, label: str) -> None:
        # WeChat has no inline buttons: the rider taps the numbered link, which sends the number.
        # Options may come in a customer-service message after the passive reply: wait for them.
        number = await _until(lambda: self._option(label), f"option {label!r}", 10)
        await self.say(number)

    async def wait_text(self, contains: str, timeout: float = 30) -> str:
        def find() -> str | None:
            for t in self.texts():
                if contains in t:
                    return t
            return None

        return await _until(find, contains, timeout)
