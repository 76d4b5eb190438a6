"""A local fake of the Telegram Bot API, good enough to run the real bot against.

Point python-telegram-bot at it with::

    fake = FakeTelegram()
    await fake.start()
    app = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )

Wire format, as PTB 22 sends it (``telegram/request/_requestdata.py`` and ``_httpxrequest.py``):
every request is a POST to ``{base_url}{token}/{method}``.  Without files the body is
``application/x-www-form-urlencoded``; with files it is ``multipart/form-data`` where the
non-file fields are plain text parts and each file is a part with a filename.  In both cases
*every* value is a string: ``str`` values go out verbatim, everything else is ``json.dumps``-ed
(ints -> ``"42"``, bools -> ``"true"``, ``reply_markup`` -> ``'{"inline_keyboard": ...}'``).
So a value's type can't be recovered from the body alone; we decode by parameter name (see
``_STRING_PARAMS``).  JSON bodies and query strings are also accepted, as the real API does.

Errors are answered with an HTTP status equal to ``error_code``, because PTB picks the exception
class from the HTTP status (``telegram/request/_baserequest.py``), not from the JSON body.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import html
import itertools
import json
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

__all__ = ["Call", "FakeTelegram", "UploadedFile"]

JSON = dict[str, Any]

# Parameters whose values are free text or identifiers.  They must never be JSON-decoded:
# a caption of "123" or a file_id of "true" has to stay a string.
_STRING_PARAMS = frozenset(
    {
        "action",
        "address",
        "animation",
        "audio",
        "business_connection_id",
        "callback_query_id",
        "caption",
        "currency",
        "custom_emoji_id",
        "description",
        "document",
        "emoji",
        "error_message",
        "explanation",
        "explanation_parse_mode",
        "file_id",
        "first_name",
        "foursquare_id",
        "foursquare_type",
        "google_place_id",
        "google_place_type",
        "inline_message_id",
        "inline_query_id",
        "ip_address",
        "language_code",
        "last_name",
        "message_effect_id",
        "name",
        "parse_mode",
        "payload",
        "phone_number",
        "photo",
        "photo_url",
        "pre_checkout_query_id",
        "provider_data",
        "provider_token",
        "question",
        "question_parse_mode",
        "secret_token",
        "shipping_query_id",
        "short_description",
        "start_parameter",
        "sticker",
        "text",
        "thumbnail",
        "title",
        "type",
        "url",
        "vcard",
        "video",
        "voice",
    }
)

# Methods whose results are messages that end up in a chat; ``messages_to`` lists these.
_MESSAGE_METHODS = frozenset(
    {
        "sendMessage",
        "sendVenue",
        "sendLocation",
        "sendPhoto",
        "sendDocument",
        "sendInvoice",
        "sendPoll",
    }
)

_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

# Harmless configuration calls an app may make at startup.  Answering them with 404 would make
# PTB raise InvalidToken ("token was rejected"), which sends people down the wrong path.
_ACCEPTED_NOOPS = frozenset(
    {
        "close",
        "deleteMessages",
        "logOut",
        "pinChatMessage",
        "setMyDefaultAdministratorRights",
        "setMyDescription",
        "setMyName",
        "setMyShortDescription",
        "unpinAllChatMessages",
        "unpinChatMessage",
    }
)

_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)

# Only these tags are valid in Telegram's HTML parse mode; anything else (<br>, <p>, <div>, an
# unescaped "<station>") makes Telegram reject the whole message.
_HTML_TAGS = frozenset(
    {
        "a",
        "b",
        "blockquote",
        "code",
        "del",
        "em",
        "i",
        "ins",
        "pre",
        "s",
        "span",
        "strike",
        "strong",
        "tg-emoji",
        "tg-spoiler",
        "tg-time",
        "u",
    }
)
_TAG_NAME = re.compile(r"[A-Za-z0-9-]*")

_MDV2_NEVER_MARKUP = frozenset("#+-={}.()")
_MDV2_TOGGLES = {
    "*": "Bold",
    "_": "Italic",
    "__": "Underline",
    "~": "Strikethrough",
    "||": "Spoiler",
}


@dataclass
class UploadedFile:
    """A file part of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class Call:
    """One request the fake received.

    ``params`` holds decoded values: JSON fields (reply_markup, entities, prices, ...) as Python
    objects, numbers and booleans as such, uploaded files as ``UploadedFile``.  ``status`` and
    ``response`` are filled once the fake has answered (long-polling getUpdates stays ``None``
    until it returns).
    """

    method: str
    params: JSON
    files: dict[str, UploadedFile] = field(default_factory=dict)
    http_method: str = "POST"
    status: int | None = None
    response: JSON | None = None

    def summary(self) -> str:
        shown = ", ".join(f"{k}={_shorten(v)}" for k, v in self.params.items())
        outcome = "pending" if self.status is None else str(self.status)
        if self.response and not self.response.get("ok"):
            outcome += f" {self.response.get('description')!r}"
        return f"{self.method}({shown}) -> {outcome}"


class _ApiError(Exception):
    def __init__(self, error_code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad_request(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


@dataclass
class _Failure:
    error_code: int
    description: str
    retry_after: int | None


@dataclass
class _StoredMessage:
    method: str
    # What the fake answered (and what Telegram would show now): only inline keyboards survive
    # in a Message, because that is all Message.reply_markup can hold.
    wire: JSON
    # The same message with reply_markup exactly as the bot passed it (reply keyboards too).
    record: JSON
    deleted: bool = False


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes


def _shorten(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decode_value(name: str, value: str) -> Any:
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        # chat_id="@channel" and any other string the name table doesn't know.
        return value


def _utf8_offset(text: str, index: int) -> int:
    return len(text[:index].encode())


def _check_html(text: str) -> str:
    """Validates Telegram HTML the way Telegram does and returns the visible text."""
    stack: list[tuple[str, int]] = []
    plain: list[str] = []
    i = 0
    while i < len(text):
        lt = text.find("<", i)
        if lt < 0:
            plain.append(text[i:])
            break
        plain.append(text[i:lt])
        closing = text.startswith("</", lt)
        name_start = lt + (2 if closing else 1)
        raw_name = _TAG_NAME.match(text, name_start).group(0)  # type: ignore[union-attr]
        name = raw_name.lower()
        gt = text.find(">", name_start)
        offset = _utf8_offset(text, lt)
        if closing:
            if gt < 0:
                raise _bad_request(
                    f"can't parse entities: Unclosed end tag at byte offset {offset}"
                )
            if not stack:
                raise _bad_request(
                    f"can't parse entities: Unexpected end tag at byte offset {offset}"
                )
            if stack[-1][0] != name:
                raise _bad_request(
                    f"can't parse entities: Unmatched end tag at byte offset {offset}, "
                    f'expected "</{stack[-1][0]}>", found "</{name}>"'
                )
            stack.pop()
        else:
            if name not in _HTML_TAGS:
                raise _bad_request(
                    f'can\'t parse entities: Unsupported start tag "{raw_name}" at byte '
                    f"offset {offset}"
                )
            if gt < 0:
                raise _bad_request(
                    f"can't parse entities: Unclosed start tag at byte offset {offset}"
                )
            attrs = text[name_start + len(raw_name) : gt]
            if name == "span" and "tg-spoiler" not in attrs:
                raise _bad_request(
                    'can\'t parse entities: Tag "span" must have class "tg-spoiler" at byte '
                    f"offset {offset}"
                )
            stack.append((name, offset))
        i = gt + 1
    if stack:
        raise _bad_request(
            "can't parse entities: Can't find end tag corresponding to start tag "
            f'"{stack[-1][0]}"'
        )
    return html.unescape("".join(plain))


def _check_markdown_v2(text: str) -> str:
    """Catches the usual MarkdownV2 mistakes (unescaped reserved characters, unclosed
    entities).  Deliberately lenient where Telegram's grammar is subtle."""
    plain: list[str] = []
    open_at: dict[str, int] = {}
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            plain.append(text[i + 1])
            i += 2
            continue
        if text.startswith("```", i):
            end = text.find("```", i + 3)
            if end < 0:
                raise _bad_request(
                    "can't parse entities: Can't find end of Pre entity at byte offset "
                    f"{_utf8_offset(text, i)}"
                )
            plain.append(text[i + 3 : end])
            i = end + 3
            continue
        if c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise _bad_request(
                    "can't parse entities: Can't find end of Code entity at byte offset "
                    f"{_utf8_offset(text, i)}"
                )
            plain.append(text[i + 1 : end])
            i = end + 1
            continue
        if c == "]" and text.startswith("(", i + 1):
            # The URL part of [label](url): only ")" and "\" need escaping inside it.
            j = i + 2
            while j < n and text[j] != ")":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c in "[]":
            i += 1
            continue
        token = text[i : i + 2] if text[i : i + 2] in ("__", "||") else c
        if token in _MDV2_TOGGLES:
            if token in open_at:
                del open_at[token]
            else:
                open_at[token] = i
            i += len(token)
            continue
        line_start = i == 0 or text[i - 1] == "\n"
        reserved = (
            c in _MDV2_NEVER_MARKUP
            or c == "|"
            or (c == "!" and not text.startswith("[", i + 1))
            or (c == ">" and not line_start)
        )
        if reserved:
            raise _bad_request(
                f"can't parse entities: Character '{c}' is reserved and must be escaped with "
                "the preceding '\\'"
            )
        plain.append(c)
        i += 1
    if open_at:
        token, index = min(open_at.items(), key=lambda item: item[1])
        raise _bad_request(
            f"can't parse entities: Can't find end of {_MDV2_TOGGLES[token]} entity at byte "
            f"offset {_utf8_offset(text, index)}"
        )
    return "".join(plain)


def _check_markdown(text: str) -> str:
    """Legacy Markdown: entities don't nest, so one open marker at a time."""
    plain: list[str] = []
    open_marker: str | None = None
    start = 0
    i = 0
    while i < len(text):
        marker = "```" if text.startswith("```", i) else text[i]
        if marker == "\\" and open_marker is None and i + 1 < len(text):
            plain.append(text[i + 1])
            i += 2
            continue
        if marker in ("*", "_", "`", "```") and (open_marker in (None, marker)):
            if open_marker is None:
                open_marker, start = marker, i
            else:
                open_marker = None
            i += len(marker)
            continue
        plain.append(text[i])
        i += 1
    if open_marker is not None:
        raise _bad_request(
            "can't parse entities: Can't find end of the entity starting at byte offset "
            f"{_utf8_offset(text, start)}"
        )
    return "".join(plain)


def _visible_text(text: str, parse_mode: str | None) -> str:
    mode = (parse_mode or "").lower()
    if mode == "html":
        return _check_html(text)
    if mode == "markdownv2":
        return _check_markdown_v2(text)
    if mode == "markdown":
        return _check_markdown(text)
    if mode:
        raise _bad_request(f"unsupported parse_mode {parse_mode}")
    return text


def _check_reply_markup(markup: Any) -> None:
    if not isinstance(markup, dict):
        if markup is not None:
            raise _bad_request("can't parse reply keyboard markup JSON object")
        return
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if not isinstance(button, dict) or "text" not in button:
                raise _bad_request("can't parse inline keyboard button: Text must be specified")
            if len(button) == 1:
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the "
                    "inline keyboard"
                )
            data = button.get("callback_data")
            # Telegram counts bytes, so 22 Chinese characters already exceed the limit.
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise _bad_request("BUTTON_DATA_INVALID")


class FakeTelegram:
    """In-process Telegram Bot API server on 127.0.0.1 (see module docstring)."""

    def __init__(
        self, token: str = "123456:TEST-TOKEN", bot_username: str = "chargebot_test_bot"
    ) -> None:
        self.token = token
        self.bot_username = bot_username
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user: JSON = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "ChargeBot",
            "username": bot_username,
        }
        self.base_url = ""
        self.base_file_url = ""
        self.port = 0

        self.calls: list[Call] = []
        self.sent: list[JSON] = []
        self.throttled = 0
        self.rate_limited_methods: set[str] = {"sendMessage"}
        # Telegram's flood control as bots meet it: more than this many sendMessage calls in any
        # rolling second are refused with 429 and a whole-second retry_after. Off by default.
        self.flood_limit_per_s: int | None = None
        # Messages the fake accepted, per chat: a chat above 1 after a broadcast is a duplicate.
        self.accepted_per_chat: collections.Counter[int] = collections.Counter()
        # Off for long benches: no call log, no stored messages (wait_for/messages_to/message
        # then see nothing); the counters above still work.
        self.keep_history = True
        # Sends to these chats fail like a user who blocked the bot.
        self.blocked_chats: set[int] = set()
        # Turn off to let malformed HTML/Markdown through (Telegram would answer 400).
        self.validate_formatting = True

        self.webhook: JSON | None = None
        self.commands: dict[tuple[str, str], list[JSON]] = {}
        self.menu_buttons: dict[int | None, JSON] = {}

        self._messages: dict[tuple[int, int], _StoredMessage] = {}
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._channel_ids: dict[str, int] = {}
        self._files: dict[str, _StoredFile] = {}
        self._files_by_path: dict[str, _StoredFile] = {}
        self._file_seq = itertools.count(1)
        self._poll_seq = itertools.count(1)
        self._failures: dict[str, collections.deque[_Failure]] = collections.defaultdict(
            collections.deque
        )
        self._flood_window: collections.deque[float] = collections.deque()

        self._updates: list[JSON] = []
        self._max_update_id = 0
        self._poller = 0
        self._closing = False
        # Replaced on every signal so each waiter sees exactly the changes after it started.
        self._calls_changed = asyncio.Event()
        self._updates_changed = asyncio.Event()

        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, Callable[[JSON, dict[str, UploadedFile]], Any]] = {
            "getMe": self._get_me,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_callback_query,
            "sendVenue": self._send_venue,
            "sendLocation": self._send_location,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendChatAction": self._send_chat_action,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "setChatMenuButton": self._set_chat_menu_button,
            "getChatMenuButton": self._get_chat_menu_button,
            "sendInvoice": self._send_invoice,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "sendPoll": self._send_poll,
            "getFile": self._get_file,
            "getChat": self._get_chat,
        }
        for name in _ACCEPTED_NOOPS:
            self._handlers[name] = self._noop
        # The real API matches method names case-insensitively.
        self._canonical = {name.lower(): name for name in [*self._handlers, "getUpdates"]}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{self.port}/bot"
        self.base_file_url = f"http://127.0.0.1:{self.port}/file/bot"
        self._closing = False

    async def stop(self) -> None:
        # Release long-polling getUpdates first, or cleanup waits for their timeouts.
        self._closing = True
        self._signal_updates()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test helpers

    def messages_to(self, chat_id: int) -> list[JSON]:
        """Messages currently in a chat, oldest first, with edits applied and deleted ones
        left out; ``reply_markup`` is exactly what the bot passed."""
        return [
            copy.deepcopy(stored.record)
            for stored in self._messages.values()
            if stored.record["chat"]["id"] == chat_id
            and stored.method in _MESSAGE_METHODS
            and not stored.deleted
        ]

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        """Latest state of one message as Telegram would return it (None if unknown)."""
        stored = self._messages.get((chat_id, message_id))
        return copy.deepcopy(stored.wire) if stored else None

    async def wait_for(
        self, predicate: Callable[[Call], bool], timeout: float = 10.0, *, start: int = 0
    ) -> Call:
        """First call from ``calls[start:]`` matching ``predicate``, waiting for new ones.

        Pass ``start=len(fake.calls)`` to ignore what happened before.  A predicate that
        raises KeyError/TypeError/... for a call is treated as not matching it, so
        ``lambda c: c.params["chat_id"] == 5`` is fine.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._calls_changed
            for call in self.calls[start:]:
                try:
                    if predicate(call):
                        return call
                except (KeyError, IndexError, TypeError, AttributeError):
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = self.calls[-20:]
                first = len(self.calls) - len(recent)
                lines = [f"  #{first + i} {c.summary()}" for i, c in enumerate(recent)]
                raise AssertionError(
                    f"no matching Telegram call within {timeout}s "
                    f"({len(self.calls)} calls, searched from #{start}); recent calls:\n"
                    + ("\n".join(lines) or "  (none)")
                )
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    def fail_next(
        self,
        method: str,
        *,
        error_code: int = 429,
        retry_after: int | None = 1,
        description: str = "Too Many Requests: retry after 1",
    ) -> None:
        """Make the next call of ``method`` fail; calling it twice fails the next two calls."""
        name = self._canonical.get(method.lower(), method)
        self._failures[name].append(_Failure(error_code, description, retry_after))

    def queue_update(self, update: JSON) -> None:
        """Offer an update to getUpdates (polling mode); wakes a waiting long poll."""
        update = copy.deepcopy(update)
        if "update_id" not in update:
            # Above everything ever queued, so an offset that confirmed older updates
            # can't swallow it.
            update["update_id"] = self._max_update_id + 1
        self._max_update_id = max(self._max_update_id, update["update_id"])
        self._updates.append(update)
        self._signal_updates()

    def add_file(self, file_id: str, data: bytes, file_path: str | None = None) -> None:
        """Register the bytes getFile/download should return for ``file_id`` (e.g. a photo a
        simulated user sent).  Unknown file_ids get placeholder bytes."""
        self._register_file(file_id, data, file_path or f"files/{file_id}.bin")

    # ------------------------------------------------------------------ HTTP plumbing

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/file/bot"):
            return self._serve_file(path[len("/file/bot") :])
        if not path.startswith("/bot"):
            return _json_response({"ok": False, "error_code": 404, "description": "Not Found"}, 404)
        token, _, raw_method = path[len("/bot") :].partition("/")
        params, files = await self._read_params(request)
        method = self._canonical.get(raw_method.lower(), raw_method)
        call = Call(method=method, params=params, files=files, http_method=request.method)
        if self.keep_history:
            self.calls.append(call)
            self._signal_calls()

        try:
            if token != self.token:
                raise _ApiError(401, "Unauthorized")
            if method not in self._handlers and method != "getUpdates":
                raise _ApiError(404, "Not Found: method not found")
            self._maybe_fail(method)
            if method == "getUpdates":
                result = await self._get_updates(params)
            else:
                # No awaits from here to the answer: once wait_for() sees the call, the
                # stored messages already reflect it.
                result = self._handlers[method](params, files)
            body: JSON = {"ok": True, "result": result}
            status = 200
        except _ApiError as exc:
            body, status = exc.body(), exc.error_code
        call.status, call.response = status, body
        if self.keep_history:
            self._signal_calls()
        return _json_response(body, status)

    async def _read_params(self, request: web.Request) -> tuple[JSON, dict[str, UploadedFile]]:
        params: JSON = {k: _decode_value(k, v) for k, v in request.query.items()}
        files: dict[str, UploadedFile] = {}
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                body = {}
            for key, value in body.items():
                params[key] = _decode_value(key, value) if isinstance(value, str) else value
            return params, files
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                upload = UploadedFile(
                    field=key,
                    filename=value.filename,
                    content_type=value.content_type,
                    data=value.file.read(),
                )
                files[key] = upload
                params[key] = upload
            else:
                params[key] = _decode_value(key, str(value))
        return params, files

    def _serve_file(self, rest: str) -> web.Response:
        token, _, file_path = rest.partition("/")
        if token != self.token:
            return _json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, 401
            )
        stored = self._files_by_path.get(file_path)
        if stored is None:
            return _json_response({"ok": False, "error_code": 404, "description": "Not Found"}, 404)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    def _signal_calls(self) -> None:
        self._calls_changed.set()
        self._calls_changed = asyncio.Event()

    def _signal_updates(self) -> None:
        self._updates_changed.set()
        self._updates_changed = asyncio.Event()

    def _maybe_fail(self, method: str) -> None:
        queue = self._failures.get(method)
        if queue:
            failure = queue.popleft()
            parameters = (
                {"retry_after": failure.retry_after} if failure.retry_after is not None else None
            )
            raise _ApiError(failure.error_code, failure.description, parameters)
        if self.flood_limit_per_s is not None and method in self.rate_limited_methods:
            retry_after = self._flood_check(self.flood_limit_per_s)
            if retry_after is not None:
                self.throttled += 1
                raise _ApiError(
                    429,
                    f"Too Many Requests: retry after {retry_after}",
                    {"retry_after": retry_after},
                )

    def _flood_check(self, limit: int) -> int | None:
        """Sliding one-second log of admitted calls; returns retry_after (whole seconds, at
        least 1, as Telegram sends it) when `limit` of them already fall in the last second.
        A refused call does not enter the log, so a client that honours retry_after gets in."""
        now = time.monotonic()
        window = self._flood_window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) < limit:
            window.append(now)
            return None
        return max(1, math.ceil(window[0] + 1.0 - now))

    # ------------------------------------------------------------------ shared pieces

    def _chat_id(self, params: JSON) -> int:
        if "chat_id" not in params or params["chat_id"] in ("", None):
            raise _bad_request("chat_id is empty")
        chat_id = params["chat_id"]
        if isinstance(chat_id, bool) or not isinstance(chat_id, int | str):
            raise _bad_request("chat not found")
        if isinstance(chat_id, int):
            return chat_id
        if chat_id.startswith("@"):
            # Channel usernames get a stable made-up id, as Telegram resolves them to one.
            return self._channel_ids.setdefault(
                chat_id.lower(), -1_001_000_000_000 - len(self._channel_ids)
            )
        raise _bad_request("chat not found")

    def _chat(self, chat_id: int) -> JSON:
        if chat_id > 0:
            return {"id": chat_id, "type": "private"}
        for name, known in self._channel_ids.items():
            if known == chat_id:
                return {"id": chat_id, "type": "channel", "title": name[1:], "username": name[1:]}
        kind = "supergroup" if chat_id <= -1_000_000_000_000 else "group"
        return {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}

    def _require(self, params: JSON, *names: str) -> None:
        for name in names:
            if params.get(name) in (None, "", []):
                raise _bad_request(f"{name} is empty")

    def _check_text(self, text: Any, parse_mode: Any, *, caption: bool = False) -> None:
        if not isinstance(text, str):
            raise _bad_request("message text is empty")
        visible = _visible_text(text, parse_mode) if self.validate_formatting else text
        if caption:
            if len(visible) > 1024:
                raise _bad_request("message caption is too long")
            return
        if not visible.strip():
            raise _bad_request("message text is empty")
        if len(visible) > 4096:
            raise _bad_request("message is too long")

    def _new_message(self, method: str, params: JSON, content: JSON) -> JSON:
        chat_id = self._chat_id(params)
        if chat_id in self.blocked_chats:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        markup = params.get("reply_markup")
        _check_reply_markup(markup)
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        wire: JSON = {
            "message_id": next(counter),
            "from": dict(self.bot_user),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            **content,
        }
        self.accepted_per_chat[chat_id] += 1
        if not self.keep_history:
            if markup is not None and "inline_keyboard" in markup:
                wire["reply_markup"] = markup
            return wire
        reply_to = (params.get("reply_parameters") or {}).get("message_id")
        replied = self._messages.get((chat_id, reply_to)) if reply_to else None
        if replied is not None:
            original = copy.deepcopy(replied.wire)
            original.pop("reply_to_message", None)
            wire["reply_to_message"] = original
        record = copy.deepcopy(wire)
        if markup is not None:
            record["reply_markup"] = markup
            if "inline_keyboard" in markup:
                wire["reply_markup"] = markup
        self._messages[(chat_id, wire["message_id"])] = _StoredMessage(method, wire, record)
        answer = copy.deepcopy(wire)
        self.sent.append(answer)
        return copy.deepcopy(answer)

    def _stored_for_edit(self, params: JSON) -> _StoredMessage | None:
        """None means an inline message (we keep no state for those)."""
        if params.get("inline_message_id"):
            return None
        chat_id = self._chat_id(params)
        self._require(params, "message_id")
        stored = self._messages.get((chat_id, params["message_id"]))
        if stored is None or stored.deleted:
            raise _bad_request("message to edit not found")
        return stored

    def _apply_edit(self, stored: _StoredMessage, changes: JSON, markup: Any) -> JSON:
        _check_reply_markup(markup)
        inline = markup if isinstance(markup, dict) and "inline_keyboard" in markup else None
        current = {k: stored.wire.get(k) for k in changes}
        if current == changes and stored.wire.get("reply_markup") == inline:
            raise _bad_request(_NOT_MODIFIED.removeprefix("Bad Request: "))
        for target in (stored.wire, stored.record):
            for key, value in changes.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = copy.deepcopy(value)
            target["edit_date"] = int(time.time())
            # Editing without reply_markup removes the inline keyboard, as on Telegram.
            target.pop("reply_markup", None)
        if inline is not None:
            stored.wire["reply_markup"] = copy.deepcopy(inline)
        if markup is not None:
            stored.record["reply_markup"] = copy.deepcopy(markup)
        answer = copy.deepcopy(stored.wire)
        self.sent.append(answer)
        return copy.deepcopy(answer)

    def _register_file(self, file_id: str, data: bytes, file_path: str) -> _StoredFile:
        stored = _StoredFile(
            file_id=file_id,
            file_unique_id=f"U{zlib.crc32(file_id.encode()):010d}",
            file_path=file_path,
            data=data,
        )
        self._files[file_id] = stored
        self._files_by_path[file_path] = stored
        return stored

    def _file_from_param(self, value: Any, kind: str, extension: str) -> _StoredFile:
        if isinstance(value, UploadedFile):
            n = next(self._file_seq)
            return self._register_file(
                f"{kind}-fake-{n}", value.data, f"{kind}s/file_{n}.{extension}"
            )
        if not isinstance(value, str) or not value:
            raise _bad_request(f"there is no {kind} in the request")
        if value.startswith(("http://", "https://")):
            n = next(self._file_seq)
            return self._register_file(
                f"{kind}-fake-{n}", f"downloaded {value}".encode(), f"{kind}s/file_{n}.{extension}"
            )
        if value.startswith("attach://"):
            raise _bad_request(f"file {value} not found in the request")
        return self._files.get(value) or self._placeholder_file(value)

    def _placeholder_file(self, file_id: str) -> _StoredFile:
        return self._register_file(file_id, f"fake file {file_id}".encode(), f"files/{file_id}.bin")

    # ------------------------------------------------------------------ method handlers

    def _noop(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        return True

    def _get_me(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _send_message(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        self._check_text(params.get("text"), params.get("parse_mode"))
        content: JSON = {"text": params["text"]}
        if params.get("entities"):
            content["entities"] = params["entities"]
        return self._new_message("sendMessage", params, content)

    def _edit_message_text(self, params: JSON, files: dict[str, UploadedFile]) -> JSON | bool:
        self._check_text(params.get("text"), params.get("parse_mode"))
        stored = self._stored_for_edit(params)
        if stored is None:
            return True
        if "text" not in stored.wire:
            raise _bad_request("there is no text in the message to edit")
        changes = {"text": params["text"], "entities": params.get("entities") or None}
        return self._apply_edit(stored, changes, params.get("reply_markup"))

    def _edit_message_caption(self, params: JSON, files: dict[str, UploadedFile]) -> JSON | bool:
        caption = params.get("caption")
        if caption is not None:
            self._check_text(caption, params.get("parse_mode"), caption=True)
        stored = self._stored_for_edit(params)
        if stored is None:
            return True
        if "text" in stored.wire:
            raise _bad_request("there is no caption in the message to edit")
        changes = {"caption": caption, "caption_entities": params.get("caption_entities") or None}
        return self._apply_edit(stored, changes, params.get("reply_markup"))

    def _edit_message_reply_markup(
        self, params: JSON, files: dict[str, UploadedFile]
    ) -> JSON | bool:
        stored = self._stored_for_edit(params)
        if stored is None:
            return True
        return self._apply_edit(stored, {}, params.get("reply_markup"))

    def _delete_message(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        chat_id = self._chat_id(params)
        self._require(params, "message_id")
        stored = self._messages.get((chat_id, params["message_id"]))
        if stored is not None:
            if stored.deleted:
                raise _bad_request("message to delete not found")
            stored.deleted = True
        # Messages we never saw (the user's own) are deletable too, so unknown ids succeed.
        return True

    def _answer_callback_query(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        self._require(params, "callback_query_id")
        if len(str(params.get("text") or "")) > 200:
            raise _bad_request("MESSAGE_TOO_LONG")
        return True

    def _send_venue(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        self._require(params, "latitude", "longitude", "title", "address")
        location = {"latitude": params["latitude"], "longitude": params["longitude"]}
        venue: JSON = {
            "location": location,
            "title": params["title"],
            "address": params["address"],
        }
        for key in ("foursquare_id", "foursquare_type", "google_place_id", "google_place_type"):
            if params.get(key):
                venue[key] = params[key]
        return self._new_message("sendVenue", params, {"location": location, "venue": venue})

    def _send_location(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        self._require(params, "latitude", "longitude")
        location: JSON = {"latitude": params["latitude"], "longitude": params["longitude"]}
        for key in ("horizontal_accuracy", "live_period", "heading", "proximity_alert_radius"):
            if params.get(key) is not None:
                location[key] = params[key]
        return self._new_message("sendLocation", params, {"location": location})

    def _send_photo(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        stored = self._file_from_param(params.get("photo"), "photo", "jpg")
        content: JSON = {
            "photo": [
                {
                    "file_id": f"{stored.file_id}-thumb",
                    "file_unique_id": f"{stored.file_unique_id}t",
                    "width": 90,
                    "height": 90,
                    "file_size": min(len(stored.data), 1024),
                },
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": 1280,
                    "height": 960,
                    "file_size": len(stored.data),
                },
            ]
        }
        self._add_caption(params, content)
        return self._new_message("sendPhoto", params, content)

    def _send_document(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        value = params.get("document")
        stored = self._file_from_param(value, "document", "bin")
        if isinstance(value, UploadedFile):
            file_name, mime_type = value.filename, value.content_type
        else:
            file_name, mime_type = stored.file_path.rsplit("/", 1)[-1], "application/octet-stream"
        content: JSON = {
            "document": {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_name": file_name,
                "mime_type": mime_type,
                "file_size": len(stored.data),
            }
        }
        self._add_caption(params, content)
        return self._new_message("sendDocument", params, content)

    def _add_caption(self, params: JSON, content: JSON) -> None:
        caption = params.get("caption")
        if caption:
            self._check_text(caption, params.get("parse_mode"), caption=True)
            content["caption"] = caption
            if params.get("caption_entities"):
                content["caption_entities"] = params["caption_entities"]

    def _send_chat_action(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        chat_id = self._chat_id(params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        if chat_id in self.blocked_chats:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        return True

    def _send_invoice(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        self._require(params, "title", "description", "payload", "currency", "prices")
        prices = params["prices"]
        if not isinstance(prices, list) or not all(
            isinstance(p, dict) and isinstance(p.get("amount"), int) for p in prices
        ):
            raise _bad_request("can't parse prices JSON object")
        if params["currency"] != "XTR" and not params.get("provider_token"):
            raise _bad_request("PAYMENT_PROVIDER_INVALID")
        invoice = {
            "title": params["title"],
            "description": params["description"],
            "start_parameter": params.get("start_parameter") or "",
            "currency": params["currency"],
            "total_amount": sum(p["amount"] for p in prices),
        }
        return self._new_message("sendInvoice", params, {"invoice": invoice})

    def _answer_pre_checkout_query(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        self._require(params, "pre_checkout_query_id")
        if params.get("ok") is not True and not params.get("error_message"):
            raise _bad_request("ERROR_MESSAGE_EMPTY")
        return True

    def _send_poll(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._chat_id(params)
        self._require(params, "question", "options")
        options = [
            {
                "text": option["text"] if isinstance(option, dict) else str(option),
                "voter_count": 0,
                "persistent_id": str(index),
            }
            for index, option in enumerate(params["options"])
        ]
        if not 2 <= len(options) <= 12:
            raise _bad_request("poll must have at least 2 option")
        # allows_revoting/members_only/persistent_id are required by PTB 22.8's de_json.
        poll = {
            "id": str(5_000_000_000 + next(self._poll_seq)),
            "question": params["question"],
            "options": options,
            "total_voter_count": 0,
            "is_closed": bool(params.get("is_closed", False)),
            "is_anonymous": bool(params.get("is_anonymous", True)),
            "type": params.get("type") or "regular",
            "allows_multiple_answers": bool(params.get("allows_multiple_answers", False)),
            "allows_revoting": bool(params.get("allows_revoting", True)),
            "members_only": bool(params.get("members_only", False)),
        }
        return self._new_message("sendPoll", params, {"poll": poll})

    def _get_file(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        self._require(params, "file_id")
        file_id = str(params["file_id"])
        stored = self._files.get(file_id) or self._placeholder_file(file_id)
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    def _get_chat(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        chat = self._chat(self._chat_id(params))
        # accent_color_id, max_reaction_count and accepted_gift_types are required by
        # ChatFullInfo.de_json in PTB 22.
        return {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    def _set_webhook(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        url = params.get("url") or ""
        if not url:
            self.webhook = None
            return True
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        self.webhook = {
            "url": url,
            "has_custom_certificate": "certificate" in files,
            "max_connections": params.get("max_connections", 40),
            "allowed_updates": params.get("allowed_updates"),
            "secret_token": params.get("secret_token"),
        }
        # A running long poll is cut off, like Telegram does when a webhook is set.
        self._signal_updates()
        return True

    def _delete_webhook(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates") is True:
            self._updates.clear()
        return True

    def _get_webhook_info(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        info: JSON = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": bool(self.webhook and self.webhook["has_custom_certificate"]),
            "pending_update_count": len(self._updates),
        }
        if self.webhook:
            info["max_connections"] = self.webhook["max_connections"]
            if self.webhook["allowed_updates"]:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    async def _get_updates(self, params: JSON) -> list[JSON]:
        if self.webhook:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use "
                "deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        if isinstance(offset, int):
            # Telegram forgets every update below the offset; a negative offset keeps the tail.
            if offset < 0:
                del self._updates[: max(0, len(self._updates) + offset)]
            else:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
        limit = params.get("limit") or 100
        timeout = params.get("timeout") or 0
        self._poller += 1
        me = self._poller
        # Wake an older long poll so it can fail with 409, as Telegram does.
        self._signal_updates()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout)
        while not self._updates and not self._closing and not self.webhook:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            changed = self._updates_changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                break
            if self._poller != me:
                raise _ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only "
                    "one bot instance is running",
                )
        return copy.deepcopy(self._updates[:limit])

    def _commands_key(self, params: JSON) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), params.get("language_code") or ""

    def _set_my_commands(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad_request("can't parse commands JSON object")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise _bad_request("BOT_COMMAND_INVALID")
        self.commands[self._commands_key(params)] = commands
        return True

    def _get_my_commands(self, params: JSON, files: dict[str, UploadedFile]) -> list[JSON]:
        return copy.deepcopy(self.commands.get(self._commands_key(params), []))

    def _delete_my_commands(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    def _set_chat_menu_button(self, params: JSON, files: dict[str, UploadedFile]) -> bool:
        chat_id = self._chat_id(params) if "chat_id" in params else None
        self.menu_buttons[chat_id] = params.get("menu_button") or {"type": "default"}
        return True

    def _get_chat_menu_button(self, params: JSON, files: dict[str, UploadedFile]) -> JSON:
        chat_id = self._chat_id(params) if "chat_id" in params else None
        return copy.deepcopy(self.menu_buttons.get(chat_id, {"type": "default"}))


def _json_response(body: JSON, status: int) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False), status=status, content_type="application/json"
    )
