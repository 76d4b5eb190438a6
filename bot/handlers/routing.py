"""Declared routing, in the manner of aiogram's `Router` and `CallbackData`.

A button's data is a typed payload: `class TopUp(Payload, prefix="topup"): amount: int;
nonce: str` packs to `topup:1000:ab12` and unpacks back, or to None when the data is not one
(a forged or stale button: the router then answers "I didn't get that", never an error). A
handler module declares what it answers on its own `Router`:

    router = Router(__name__)

    @router.command("wallet")
    @router.button(Wallet)
    async def show(turn: Turn) -> list[Reply]: ...

and `bot.handlers.router` includes every module's router once.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Self, dataclass_transform

from notifications.replies import MAX_CALLBACK_BYTES, Reply

SEP = ":"
INT_DIGITS = 10  # ids are INTEGER (int4) on PostgreSQL: at most 2**31 - 1
SCOPES = ("private", "staff", "riders")  # the person's own chat, the staff desk, a riders' group


def parse_int(text: str) -> int | None:
    """ASCII digits within int4, else None: '²'.isdigit() is true but int('²') fails, and a
    20-digit id overflows PostgreSQL."""
    if text.isascii() and text.isdigit() and len(text) <= INT_DIGITS and int(text) < 2**31:
        return int(text)
    return None


@dataclass_transform(frozen_default=True)
class Payload:
    """Button data with a prefix and typed fields (`int` or `str`), joined by ':'.

    The last field takes the rest of the data, colons included; `split="right"` gives the
    rest to the first field instead (a report target may contain ':'). Fields with a default
    may be left out at the end: `lang` and `lang:en` are both `Language`.
    """

    prefix: ClassVar[str]
    split: ClassVar[str]
    # Set on each subclass by dataclasses.dataclass below; declared so fields(cls) type-checks.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    _fields: ClassVar[tuple[tuple[str, type, Any], ...]]

    def __init_subclass__(cls, *, prefix: str, split: str = "left", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not prefix or not prefix.isascii() or SEP in prefix:
            raise TypeError(f"{cls.__name__}: the prefix must be ASCII without {SEP!r}")
        if split not in ("left", "right"):
            raise TypeError(f"{cls.__name__}: split is 'left' or 'right'")
        cls.prefix, cls.split = prefix, split
        dataclasses.dataclass(frozen=True)(cls)
        hints = typing.get_type_hints(cls)
        fields = []
        for f in dataclasses.fields(cls):
            if hints[f.name] not in (int, str):
                raise TypeError(f"{cls.__name__}.{f.name}: a field is int or str")
            fields.append((f.name, hints[f.name], f.default))
        cls._fields = tuple(fields)
        # Ints at their widest must fit: only str fields can still overflow, checked by pack().
        widest = len(prefix) + sum(1 + (INT_DIGITS if t is int else 0) for _, t, _ in fields)
        if widest > MAX_CALLBACK_BYTES:
            raise TypeError(f"{cls.__name__} can exceed {MAX_CALLBACK_BYTES} bytes")

    def pack(self) -> str:
        values = [getattr(self, name) for name, _, _ in self._fields]
        defaults = [default for _, _, default in self._fields]
        while values and values[-1] == defaults[len(values) - 1]:
            values.pop()  # trailing defaults are left out: "lang", not "lang:"
        parts = [self.prefix]
        for i, ((name, kind, _), value) in enumerate(zip(self._fields, values, strict=False)):
            # Any id packs (the 64-byte check still holds); one beyond int4 will not unpack.
            if kind is int and (type(value) is not int or value < 0):
                raise ValueError(f"{type(self).__name__}.{name}: {value!r} is not an id")
            free = i == (0 if self.split == "right" else len(self._fields) - 1)
            if SEP in str(value) and not free:
                raise ValueError(f"{type(self).__name__}.{name}: {value!r} contains {SEP!r}")
            parts.append(str(value))
        data = SEP.join(parts)
        if len(data.encode()) > MAX_CALLBACK_BYTES:
            raise ValueError(f"callback data over {MAX_CALLBACK_BYTES} bytes: {data!r}")
        return data

    @classmethod
    def unpack(cls, data: str) -> Self | None:
        head, sep, rest = data.partition(SEP)
        if head != cls.prefix:
            return None
        n = len(cls._fields)
        if not sep:
            parts: list[str] = []
        elif n == 0:
            return None
        elif cls.split == "right":
            parts = rest.rsplit(SEP, n - 1)
        else:
            parts = rest.split(SEP, n - 1)
        values: dict[str, Any] = {}
        for i, (name, kind, default) in enumerate(cls._fields):
            if i >= len(parts):
                if default is dataclasses.MISSING:
                    return None
                continue
            if kind is int:
                if (number := parse_int(parts[i])) is None:
                    return None
                values[name] = number
            else:
                values[name] = parts[i]
        return cls(**values)


Handler = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Route:
    handler: Handler
    wants_arg: bool  # (turn, arg-or-payload), else (turn)

    @classmethod
    def of(cls, handler: Handler) -> Route:
        params = list(inspect.signature(handler).parameters.values())
        required = [p for p in params if p.default is inspect.Parameter.empty]
        if not params or len(required) > 2:
            raise TypeError(f"{handler.__qualname__}: a handler takes (turn) or (turn, arg)")
        return cls(handler, len(params) >= 2)

    async def __call__(self, turn: Any, arg: Any) -> list[Reply]:
        result = self.handler(turn, arg) if self.wants_arg else self.handler(turn)
        if isinstance(result, Awaitable):
            result = await result
        return [result] if isinstance(result, Reply) else list(result)


@dataclasses.dataclass(frozen=True)
class HelpLine:
    """A command's line in /help: an English msgid (marked `N_`), translated when shown."""

    msgid: str
    staff: bool = False  # shown only to staff


class Router:
    """What one handler module answers, per scope: commands by name, buttons by payload."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.commands: dict[tuple[str, str], Route] = {}
        self.buttons: dict[tuple[str, str], tuple[type[Payload], Route]] = {}
        self.help: list[HelpLine] = []

    def command(self, *names: str, scopes: Iterable[str] = ("private",),
                help: str | None = None, staff: bool = False,
                ) -> Callable[[Handler], Handler]:
        """`/name arg`: the handler gets (turn) or (turn, arg), arg the stripped rest.
        `help` is the command's line in /help (`N_("/name — what it does")`), for riders or,
        with `staff`, for staff only: a new command lists itself, no other module changes."""
        def register(handler: Handler) -> Handler:
            for scope in _scopes(scopes):
                for name in names:
                    self._add(self.commands, (scope, name.lower()), Route.of(handler))
            if help is not None:
                self.help.append(HelpLine(help, staff))
            return handler
        return register

    def button(self, payload: type[Payload], *, scopes: Iterable[str] = ("private",)
               ) -> Callable[[Handler], Handler]:
        """A pressed button: the handler gets (turn) or (turn, payload)."""
        def register(handler: Handler) -> Handler:
            for scope in _scopes(scopes):
                self._add(self.buttons, (scope, payload.prefix), (payload, Route.of(handler)))
            return handler
        return register

    def include(self, *routers: Router) -> None:
        """Take in the routers' commands and buttons; /help lists them in this order."""
        for r in routers:
            self.help.extend(r.help)
            for key, route in r.commands.items():
                self._add(self.commands, key, route)
            for key, entry in r.buttons.items():
                self._add(self.buttons, key, entry)

    def _add(self, table: dict, key: tuple[str, str], value: Any) -> None:
        if key in table and table[key] != value:
            raise ValueError(f"{self.name}: {key[1]!r} is registered twice in scope {key[0]}")
        table[key] = value

    async def press(self, turn: Any, scope: str, data: str) -> list[Reply] | None:
        """The replies of the button `data` in `scope`; None when no handler takes it."""
        entry = self.buttons.get((scope, data.partition(SEP)[0]))
        if entry is None or (payload := entry[0].unpack(data)) is None:
            return None
        return await entry[1](turn, payload)

    async def run(self, turn: Any, scope: str, name: str, arg: str) -> list[Reply] | None:
        """The replies of `/name arg` in `scope`; None when no handler takes it."""
        route = self.commands.get((scope, name.lower()))
        return None if route is None else await route(turn, arg)


def _scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    scopes = tuple(scopes)
    if unknown := set(scopes) - set(SCOPES):
        raise ValueError(f"unknown scopes {sorted(unknown)}")
    return scopes
