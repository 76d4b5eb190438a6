"""Hypothesis strategies for the pile webhook's events (core.piles.wire): valid ones of every
type, and bad ones together with the field path the server's answer must name."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from core.charging.tables import END_REASONS
from core.piles.tables import PORT_STATUSES
from core.piles.wire import EVENT_TYPES, MAX_DURATION_S, MAX_ENERGY_WH

_ids = itertools.count(1)

CLEAN = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def text(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    """Storable unicode garbage: anything but NUL and lone surrogates (those are refused)."""
    return st.text(CLEAN, min_size=min_size, max_size=max_size)


FINITE = st.floats(allow_nan=False, allow_infinity=False)
TS = st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2067, 12, 1),
                  timezones=st.just(UTC)).map(lambda d: d.isoformat())
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | FINITE | text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(text(max_size=8), inner, max_size=3), max_leaves=8)
# Valid values per field; each event type takes its required fields and maybe some optional.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "port": st.integers(1, 99), "status": st.sampled_from(PORT_STATUSES),
    "session": text(1, 40), "power_w": st.floats(0, 100_000),
    # Readings whole or decimal (DESIGN §3): boards report 0.1 Wh, 0.1 dBm, …
    "energy_wh": st.integers(0, MAX_ENERGY_WH) | st.floats(0, MAX_ENERGY_WH),
    "reason": st.sampled_from(END_REASONS),
    "duration_s": st.integers(0, MAX_DURATION_S) | st.floats(0, MAX_DURATION_S),
    "code": text(1, 40),
    "detail": text(0, 500), "command": text(1, 40) | st.sampled_from(["c1", "c2", "c99"]),
    "ok": st.booleans(), "error": text(0, 200),
    "signal_dbm": st.integers(-255, 255) | st.floats(-255, 255),
    "firmware": text(0, 64), "voltage_v": st.floats(0, 1000), "current_a": st.floats(0, 1000),
    "temperature_c": st.floats(-60, 400),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "heartbeat": (), "port_status": ("port", "status"),
    "meter": ("port", "session", "power_w", "energy_wh"), "session_started": ("port", "session"),
    "session_ended": ("port", "session", "reason", "energy_wh", "duration_s"),
    "fault": ("code",), "fault_cleared": ("code",), "command_ack": ("command", "ok"),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "heartbeat": ("signal_dbm", "temperature_c", "firmware"), "port_status": (),
    "meter": ("voltage_v", "current_a", "temperature_c"), "session_started": (),
    "session_ended": (), "fault": ("port", "detail"), "fault_cleared": ("port",),
    "command_ack": ("error",),
}
assert set(REQUIRED) == set(OPTIONAL) == set(EVENT_TYPES)
INT_FIELDS = {"port"}  # a port is a number on the pile, not a reading
FLOAT_FIELDS = {"power_w", "voltage_v", "current_a", "temperature_c", "energy_wh", "duration_s",
                "signal_dbm"}
STR_FIELDS = {"session", "code", "detail", "command", "error", "firmware"}
# Out of range for every event type that has the field (meter's temperature is the narrow one).
OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    "port": st.integers(max_value=0) | st.integers(min_value=100),
    "energy_wh": st.integers(max_value=-1) | st.integers(min_value=MAX_ENERGY_WH + 1)
    | st.floats(min_value=MAX_ENERGY_WH + 0.01, allow_infinity=False),
    "duration_s": st.integers(max_value=-1) | st.integers(min_value=MAX_DURATION_S + 1),
    "signal_dbm": st.integers(max_value=-256) | st.integers(min_value=256)
    | st.floats(max_value=-255.01, allow_infinity=False),
    "voltage_v": st.floats(max_value=-1e-9, allow_infinity=False)
    | st.just(1e308),
    "temperature_c": st.just(1e308) | st.floats(max_value=-60.01, allow_infinity=False),
    "power_w": st.floats(max_value=-1e-9, allow_infinity=False)
    | st.floats(min_value=100_001, allow_infinity=False),
    "current_a": st.floats(max_value=-1e-9, allow_infinity=False)
    | st.floats(min_value=1001, allow_infinity=False),
    "session": st.just("") | st.text(CLEAN, min_size=41, max_size=60),
    "code": st.just("") | st.text(CLEAN, min_size=41, max_size=60),
    "command": st.just("") | st.text(CLEAN, min_size=41, max_size=60),
    "detail": st.text(CLEAN, min_size=501, max_size=520),
    "error": st.text(CLEAN, min_size=201, max_size=210),
    "firmware": st.text(CLEAN, min_size=65, max_size=80),
}
NOT_A_NUMBER = st.sampled_from(["lots", "", "one", "1,5", "五", "0x1g"]) | st.lists(
    st.integers(), max_size=2) | st.dictionaries(text(max_size=4), st.integers(), max_size=2)
NOT_A_STRING = st.integers() | FINITE | st.booleans() | st.lists(text(), max_size=2) \
    | st.dictionaries(text(max_size=4), text(), max_size=2)
WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    **{f: NOT_A_NUMBER | FINITE.filter(lambda x: x != int(x)) for f in INT_FIELDS},
    **{f: NOT_A_NUMBER for f in FLOAT_FIELDS},
    **{f: NOT_A_STRING for f in STR_FIELDS},
    "status": NOT_A_STRING | text().filter(lambda s: s not in PORT_STATUSES),
    "reason": NOT_A_STRING | text().filter(lambda s: s not in END_REASONS),
    "ok": st.sampled_from(["maybe", "", "2", "ja"]) | st.integers(2, 10**6)
    | st.lists(st.booleans(), min_size=1, max_size=2) | st.just({}),
}
# Times the wire format refuses: not a time, or outside 2000 … 2068.
BAD_TS = st.sampled_from(["soon", "", "2025-13-45T00:00:00Z", "yesterday", "1999-12-31T23:59:59Z",
                          "2069-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"]) \
    | st.lists(st.integers(), max_size=2) | st.just({})


def valid_event(type_: str) -> st.SearchStrategy[dict[str, Any]]:
    junk_keys = text(1, 10).filter(lambda k: k not in VALID and k not in ("id", "type", "ts"))
    return st.fixed_dictionaries(
        {"id": text(1, 60).map(lambda t: f"{t}#{next(_ids)}"), "type": st.just(type_), "ts": TS,
         **{f: VALID[f] for f in REQUIRED[type_]}},
        optional={**{f: VALID[f] for f in OPTIONAL[type_]},
                  "note": JUNK}).flatmap(
        # Unknown extra fields are allowed (and stored): nested junk rides along.
        lambda ev: st.dictionaries(junk_keys, JUNK, max_size=2).map(lambda x: {**x, **ev}))


VALID_EVENT = st.sampled_from(EVENT_TYPES).flatmap(valid_event)


@st.composite
def bad_event(draw: st.DrawFn) -> tuple[Any, str]:
    """(an event, the field path inside it the server must name); "" means the event itself."""
    type_ = draw(st.sampled_from(EVENT_TYPES))
    ev = draw(valid_event(type_))
    fields = [f for f in (*REQUIRED[type_], *OPTIONAL[type_])]
    kind = draw(st.sampled_from(["missing", "wrong_type", "range", "type", "ts", "nul",
                                 "not_object", "id"]))
    if kind == "missing":
        field = draw(st.sampled_from(["id", "ts", "type", *REQUIRED[type_]]))
        del ev[field]
        return ev, field
    if kind == "wrong_type" and fields:
        field = draw(st.sampled_from(fields))
        ev[field] = draw(WRONG_TYPE[field])
        return ev, field
    ranged = [f for f in fields if f in OUT_OF_RANGE]
    if kind == "range" and ranged:
        field = draw(st.sampled_from(ranged))
        ev[field] = draw(OUT_OF_RANGE[field])
        return ev, field
    if kind == "ts":
        ev["ts"] = draw(BAD_TS)
        return ev, "ts"
    if kind == "id":
        ev["id"] = draw(st.just("") | st.text(CLEAN, min_size=81, max_size=90) | NOT_A_STRING)
        return ev, "id"
    if kind == "nul":
        # NUL or a lone surrogate: valid JSON, but no database text column can hold it.
        poison = draw(st.sampled_from(["\x00", "\ud800", "\udfff"]))
        where = draw(st.sampled_from([f for f in ("id", "session", "code", "command", "detail")
                                      if f in ev] + ["note"]))
        ev[where] = f"x{poison}y"
        return ev, where
    if kind == "not_object":
        return draw(st.integers() | text() | st.none() | st.lists(st.integers(), max_size=2)), ""
    ev["type"] = draw(NOT_A_STRING | text().filter(lambda s: s not in EVENT_TYPES))
    return ev, "type"

