"""Every HTTP route under generated input, the rest of ISSUE 8's fuzzing line: the pile webhook,
the command poll, the WeChat Pay notification, Telegram and sandbox payments and the plain GET
routes. tests/properties/test_fuzz_routes.py covers the chat routes; ROUTES below names, for
every route `create_app` registers, the test that fuzzes it, and a new route fails the inventory
test.

What is asserted: never a 500; a refused pile request is 401 (auth) or 400 naming the exact field
(schema), with nothing changed in any table; a valid batch is a 200 that stores its events;
a forged payment notification credits nothing.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import notifications.schema  # noqa: F401  (registers the notifications tables)
from bot.app import create_app
from bot.context import CTX
from bot.i18n import tr
from bot.payments.wechatpay.notify import NOTIFY_PATH
from core.billing import wallet
from core.billing.payments import Payment, create_payment
from core.db import transaction
from core.piles.auth import sign, signed_headers
from core.piles.events import MAX_BATCH
from core.piles.tables import PileEvent, RejectedEvent
from core.riders.identities import rider_for
from core.riders.tables import LANGUAGES
from core.schema import metadata
from tests.fakes.wechat_user import sign as wx_sign
from tests.fakes.wechatpay_api import _sign
from tests.support.fuzzing import examples
from tests.support.journey import WebRider
from tests.support.pile_events import JUNK, VALID_EVENT, bad_event, text
from tests.support.piles import EVENTS_URL, PILE, PileLink, rider_starts
from tests.support.riders import ACCOUNT, TG_SECRET
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import PILE_SECRET, all_skins_settings
from tests.support.wechatpay import (
    APIV3_KEY,
    PLATFORM_SERIAL,
    fake_wechatpay,
    keys,
    wechatpay_config,
)

OTHER_PILE, OTHER_SECRET = "P0002", "test-secret-P0002"
# The reply a handler's unexpected exception turns into, in each language.
SORRY = {tr(lang, "Sorry, something went wrong on our side. Please try again.")
         for lang in LANGUAGES}

# (method, canonical path) → the test that fuzzes it. "test_fuzz_routes.py" means that file;
# every other value names a test function in this module.
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/piles/events"): "test_pile_events_refuse_bad_input_and_change_nothing",
    ("GET", "/api/piles/{pile_id}/commands"): "test_command_poll_refuses_without_taking_commands",
    ("HEAD", "/api/piles/{pile_id}/commands"): "test_command_poll_refuses_without_taking_commands",
    ("POST", NOTIFY_PATH): "test_wechatpay_notify_credits_only_a_genuine_notification",
    ("GET", "/pay/wechat"): "test_pay_links_refuse_what_the_server_did_not_sign",
    ("GET", "/pay/wechat/qr"): "test_pay_links_refuse_what_the_server_did_not_sign",
    ("GET", "/pay/wechat.js"): "test_pay_links_refuse_what_the_server_did_not_sign",
    ("HEAD", "/pay/wechat.js"): "test_pay_links_refuse_what_the_server_did_not_sign",
    ("POST", "/telegram/webhook"): "test_fuzz_routes.py",  # + payments, in this module
    ("POST", "/wechat"): "test_fuzz_routes.py",
    ("GET", "/wechat"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/wechat"): "test_read_only_routes_under_random_queries",
    ("POST", "/webchat/api/send"): "test_fuzz_routes.py",  # + sandbox top-ups, in this module
    ("POST", "/webchat/api/photo"): "test_fuzz_routes.py",
    ("GET", "/photos/{prefix}/{name}"): "test_fuzz_routes.py",
    ("HEAD", "/photos/{prefix}/{name}"): "test_read_only_routes_under_random_queries",
    ("GET", "/healthz"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/healthz"): "test_read_only_routes_under_random_queries",
    ("GET", "/metrics"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/metrics"): "test_read_only_routes_under_random_queries",
    ("GET", "/"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/"): "test_read_only_routes_under_random_queries",
    ("GET", "/static"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/static"): "test_read_only_routes_under_random_queries",
    ("GET", "/webchat/api/ui"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/webchat/api/ui"): "test_read_only_routes_under_random_queries",
    ("GET", "/webchat/api/messages"): "test_read_only_routes_under_random_queries",
    ("HEAD", "/webchat/api/messages"): "test_read_only_routes_under_random_queries",
    ("POST", "/webchat/api/login"): "test_fuzz_routes.py",
    ("POST", "/webchat/api/logout"): "test_fuzz_routes.py",
    ("GET", "/webchat/login"): "test_fuzz_routes.py",
    ("HEAD", "/webchat/login"): "test_fuzz_routes.py",
    ("POST", "/webchat/login"): "test_fuzz_routes.py",
}

_ids = itertools.count(1)


# --- database state ------------------------------------------------------------------------------


async def row_counts(session: AsyncSession) -> dict[str, int]:
    """Rows per table in one round trip: cheap enough to take around every single request."""
    tables = metadata.sorted_tables
    row = (await session.execute(select(*[
        select(func.count()).select_from(t).scalar_subquery().label(t.name) for t in tables
    ]))).one()
    return dict(zip([t.name for t in tables], row, strict=True))


async def full_state(session: AsyncSession) -> dict[str, list[str]]:
    """Every row of every table: also catches an update (a port's status, a command taken, a
    payment marked paid) that leaves the counts alone."""
    out: dict[str, list[str]] = {}
    for t in metadata.sorted_tables:
        out[t.name] = sorted(repr(tuple(r)) for r in (await session.execute(select(t))).all())
    return out


class Unchanged:
    """`async with Unchanged(server): …` fails when anything in the database changed; counts
    are compared per request (`check`), every row once at the end."""

    def __init__(self, server: Running) -> None:
        self.server = server

    async def _read(self, fn: Callable[[AsyncSession], Any]) -> Any:
        async with self.server.ctx.sm() as s:
            return await fn(s)

    async def __aenter__(self) -> Unchanged:
        self.counts = await self._read(row_counts)
        self.rows = await self._read(full_state)
        return self

    async def check(self, what: Any) -> None:
        counts = await self._read(row_counts)
        changed = {k: (self.counts[k], v) for k, v in counts.items() if self.counts[k] != v}
        assert not changed, (what, changed)

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            rows = await self._read(full_state)
            assert rows == self.rows, [k for k in rows if rows[k] != self.rows[k]]


# --- the app under test --------------------------------------------------------------------------

PAYMENTS = {"providers": ["sandbox", "telegram", "wechatpay"],
            "telegram_provider_token": "TEST:PROVIDER", "wechatpay": wechatpay_config()}


def full_settings(db_url: str, tg: Any, wx: Any) -> Any:
    # No scheduler and no notifier: their own writes would look like a rejected request's.
    return all_skins_settings(db_url, tg, wx, payments=PAYMENTS, scheduler={"enabled": False})


@pytest.fixture
async def app(db_url: str, fakes: tuple[Any, Any]) -> AsyncIterator[Running]:
    async with start_server(full_settings(db_url, *fakes), notifier=False) as running:
        await seed_city(running.ctx, piles_n=2)
        yield running


def signed_notification(txn: dict[str, Any], event_type: str = "TRANSACTION.SUCCESS"
                        ) -> tuple[dict[str, str], bytes]:
    """A notification WeChat Pay could have sent, around any transaction JSON at all (the fake's
    builder only varies the fields it knows)."""
    _, platform = keys()
    plain = json.dumps(txn).encode()  # escaped, so lone surrogates get through too
    nonce = uuid.uuid4().hex[:12]
    ct = AESGCM(APIV3_KEY.encode()).encrypt(nonce.encode(), plain, b"transaction")
    body = json.dumps({"id": uuid.uuid4().hex, "event_type": event_type,
                       "resource_type": "encrypt-resource",
                       "resource": {"algorithm": "AEAD_AES_256_GCM", "associated_data":
                                    "transaction", "nonce": nonce,
                                    "ciphertext": base64.b64encode(ct).decode()}}).encode()
    ts, sig_nonce = str(int(time.time())), uuid.uuid4().hex
    return {"Content-Type": "application/json", "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": sig_nonce, "Wechatpay-Serial": PLATFORM_SERIAL,
            "Wechatpay-Signature": _sign(platform, f"{ts}\n{sig_nonce}\n".encode() + body
                                         + b"\n")}, body


# --- route inventory -----------------------------------------------------------------------------


async def test_every_route_is_fuzzed_by_one_of_the_two_files(tmp_path: Path) -> None:
    class Api:  # the chat skins only need to be configured, not reachable, to add their routes
        token, base_url, base_file_url = "1:x", "http://127.0.0.1:9", "http://127.0.0.1:9"

    app = create_app(full_settings(f"sqlite+aiosqlite:///{tmp_path}/r.db", Api(), Api()),
                     notifier=False)
    registered = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.resource is not None}
    await app[CTX].engine.dispose()
    assert registered == set(ROUTES), (
        f"not covered by any fuzz test: {sorted(registered - set(ROUTES))}; "
        f"gone: {sorted(set(ROUTES) - registered)}")
    there = (Path(__file__).parent / "test_fuzz_routes.py").read_text()
    for (method, path), where in ROUTES.items():
        if where == "test_fuzz_routes.py":
            # Claimed by the other file: it must still send requests to that path.
            assert path.split("{")[0] in there, (method, path)
        else:
            assert where.startswith("test_") and callable(globals().get(where)), where


# --- pile events: strategies (single events: tests/support/pile_events.py) -----------------------

VALID_BATCH = st.lists(VALID_EVENT, min_size=1, max_size=6)


@st.composite
def mixed_batch(draw: st.DrawFn) -> tuple[list[Any], dict[int, str]]:
    """(events, {index: the field the answer must name}): bad events among valid ones."""
    good = draw(st.lists(VALID_EVENT, max_size=5))
    bad = draw(st.lists(bad_event(), min_size=1, max_size=3))
    mixed: list[tuple[Any, str | None]] = [(ev, None) for ev in good]
    for ev, field in bad:
        mixed.insert(draw(st.integers(0, len(mixed))), (ev, field))
    where = {i: f"events[{i}]" + (f".{field}" if field else "")
             for i, (_, field) in enumerate(mixed) if field is not None}
    return [ev for ev, _ in mixed], where


@st.composite
def bad_body(draw: st.DrawFn) -> tuple[bytes, str]:
    """(a body, the part the 400 must name): the body itself is unusable."""
    shape = draw(st.sampled_from(["events", "body", "bytes", "huge"]))
    if shape == "events":
        value = draw(st.none() | st.integers() | text() | st.just([])
                     | st.dictionaries(text(max_size=4), JUNK, max_size=2))
        body = draw(st.sampled_from(["events", "evts"]))
        return json.dumps({body: value} if body == "events" else {"evts": [value]}).encode(), \
            "events"
    if shape == "body":
        return json.dumps(draw(st.lists(JUNK, max_size=3) | text() | st.integers())).encode(), \
            "body"
    if shape == "huge":
        n = draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 300))
        return json.dumps({"events": [{"id": f"h{k}", "type": "heartbeat",
                                       "ts": "2025-03-03T10:00:00Z"} for k in range(n)]}
                          ).encode(), "events"
    raw = draw(st.binary(max_size=200).filter(lambda b: expected_for_bytes(b) != "")
               | st.sampled_from([b"[" * 50_000 + b"]" * 50_000, b"\xff\xfe{}"]))
    return raw, expected_for_bytes(raw)


def expected_for_bytes(raw: bytes) -> str:
    """The part an arbitrary body must be refused for, "" if it is a usable batch (computed
    here, independently of the app). NaN and 1e999 are a bad event's problem, not the body's."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return "body"
    if not isinstance(value, dict):
        return "body"
    events = value.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        return "events"
    return ""


ASCII = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=40)


@st.composite
def bad_auth(draw: st.DrawFn) -> tuple[str, Callable[[bytes], dict[str, str]], int]:
    """(what is wrong, the headers for a body, the status it must get)."""
    kind = draw(st.sampled_from(["missing", "secret", "skew", "timestamp", "signature",
                                 "other_pile", "tampered", "unknown_pile"]))
    now = time.time()
    if kind == "missing":
        drop = draw(st.sets(st.sampled_from(["X-Pile-Id", "X-Timestamp", "X-Signature"]),
                            min_size=1))
        return kind, lambda b: {k: v for k, v in signed_headers(PILE, PILE_SECRET, b, now).items()
                                if k not in drop}, 401
    if kind == "secret":
        secret = draw(text(0, 30).filter(lambda s: s != PILE_SECRET))
        return kind, lambda b: signed_headers(PILE, secret, b, now), 401
    if kind == "skew":
        # Outside the 300 s window either way, with a margin for the time the test takes.
        skew = draw(st.integers(310, 10**10) | st.integers(-(10**10), -310))
        return kind, lambda b: signed_headers(PILE, PILE_SECRET, b, now + skew), 401
    if kind == "timestamp":
        ts = draw(ASCII.filter(lambda s: not s.strip().lstrip("+-").isdigit()))
        return kind, lambda b: {**signed_headers(PILE, PILE_SECRET, b, now), "X-Timestamp": ts,
                                "X-Signature": sign(PILE_SECRET, ts, b)}, 401
    if kind == "signature":
        sig = draw(ASCII)
        return kind, lambda b: {**signed_headers(PILE, PILE_SECRET, b, now),
                                "X-Signature": sig}, 401
    if kind == "other_pile":  # P0002 named, P0001's signature
        return kind, lambda b: {**signed_headers(PILE, PILE_SECRET, b, now),
                                "X-Pile-Id": OTHER_PILE}, 401
    if kind == "tampered":  # a genuine signature over a different body
        extra = draw(st.binary(min_size=1, max_size=8))
        return kind, lambda b: signed_headers(PILE, PILE_SECRET, b + extra, now), 401
    pile = draw(ASCII.filter(lambda s: s not in (PILE, OTHER_PILE)))
    # An unknown pile gets what a bad signature gets: no probing for pile ids.
    return kind, lambda b: signed_headers(pile, "whatever", b, now), 401


# --- pile events: the test -----------------------------------------------------------------------


async def post(server: Running, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with server.http.post(server.url + EVENTS_URL, data=body, headers=headers) as r:
        raw = await r.text()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw


async def test_pile_events_refuse_bad_input_and_change_nothing(app: Running) -> None:
    link = PileLink(app)
    await link.come_online()
    # A rider waiting on port 1: a charge, a ledger top-up and a queued start command exist, so
    # a request that wrongly applied anything would have rows to touch.
    await rider_starts(app, port=1)

    # (a) Not provably from the pile (or a pile we don't know) → 401; nothing stored.
    async with Unchanged(app) as db:
        for events, (kind, headers, status) in examples(st.tuples(VALID_BATCH, bad_auth()), 60):
            body = json.dumps({"events": events}).encode()
            got, data = await post(app, body, headers(body))
            assert got == status, (kind, headers(body), got, data)
            await db.check(kind)

    # (b) Signed, but the body is unusable → 400 naming the part; nothing stored.
    async with Unchanged(app) as db:
        for body, field in examples(bad_body(), 60):
            status, data = await link.send_body(body)
            assert status == 400, (body[:300], field, status, data)
            assert data.get("field") == field, (body[:300], field, data)
            await db.check((body[:200], field))
        # Over the app's 2 MB request limit: refused before anything is read.
        huge = json.dumps({"events": [{"id": "x", "type": "heartbeat", "ts": "2025-03-03T10:00:00Z",
                                       "note": "n" * (2 * 1024 * 1024)}]}).encode()
        status, _ = await link.send_body(huge)
        assert status == 413

    # (c) Bad events among good ones → 200: each bad one listed with its field and kept, the
    #     good ones stored once (one bad event never costs the others, DESIGN §3).
    for events, where in examples(mixed_batch(), 80):
        async with app.ctx.sm() as s:
            before = await s.scalar(select(func.count()).select_from(PileEvent))
        status, data = await link.send({"events": events})
        assert status == 200, (events, data)
        assert {r["index"]: r["field"] for r in data["rejected"]} == where, (events, data)
        good_ids = {e["id"] for i, e in enumerate(events) if i not in where}
        assert data["accepted"] + data["duplicates"] == len(good_ids), data
        async with app.ctx.sm() as s:
            after = await s.scalar(select(func.count()).select_from(PileEvent))
            kept = [json.loads(raw) for raw in (await s.execute(
                select(RejectedEvent.raw).where(RejectedEvent.pile_id == PILE))).scalars()]
        assert after - before == data["accepted"], (events, data)
        # Kept as received (a bad event resent is kept once, at its first position).
        assert all(events[i] in kept for i in where), (where, kept[-5:])

    # (d) Valid → 200, and every new event is stored once.
    for events in examples(VALID_BATCH, 60):
        async with app.ctx.sm() as s:
            before = await s.scalar(select(func.count()).select_from(PileEvent))
        status, data = await link.send({"events": events})
        assert status == 200, (events, data)
        assert data["accepted"] + data["duplicates"] == len({e["id"] for e in events}), data
        async with app.ctx.sm() as s:
            after = await s.scalar(select(func.count()).select_from(PileEvent))
        assert after - before == data["accepted"], (events, data)


async def test_command_poll_refuses_without_taking_commands(app: Running) -> None:
    link = PileLink(app)
    await link.come_online()
    await rider_starts(app, port=1)  # queues a start command for P0001
    url = f"{app.url}/api/piles/{PILE}/commands"

    async with Unchanged(app) as db:
        for (kind, headers, status), method in examples(
                st.tuples(bad_auth(), st.sampled_from(["GET", "HEAD"])), 40):
            async with app.http.request(method, url, params={"wait": "0"},
                                        headers=headers(b"")) as r:
                assert r.status == status, (kind, method, r.status)
            await db.check(kind)
        # Signed by P0002 for P0002, but asking for P0001's queue through the path: refused.
        for path_id in examples(ASCII.filter(lambda s: s not in ("", OTHER_PILE, ".", "..")), 20):
            hdrs = signed_headers(OTHER_PILE, OTHER_SECRET, b"", time.time())
            async with app.http.get(f"{app.url}/api/piles/{path_id}/commands",
                                    params={"wait": "0"}, headers=hdrs) as r:
                assert r.status in (401, 404, 405), (path_id, r.status)
            await db.check(path_id)
        # Correctly signed, but `wait` is no number → 400 naming it, before the pile is touched.
        for wait in examples(text(0, 12).filter(lambda w: not _is_float(w)), 30):
            hdrs = signed_headers(PILE, PILE_SECRET, b"", time.time())
            async with app.http.get(url, params={"wait": wait}, headers=hdrs) as r:
                assert r.status == 400, (wait, r.status)
                assert (await r.json())["field"] == "wait"
            await db.check(wait)

    # Valid polls (any finite short wait, NaN included) → 200; the start command comes once.
    taken = []
    for wait in examples(st.floats(max_value=0.02, allow_infinity=False) | st.just(math.nan), 20):
        status, data = await link.poll(wait)
        assert status == 200, (wait, data)
        taken += [c for c in data["commands"] if c["type"] == "start"]
    assert len(taken) == 1, taken


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# --- payments ------------------------------------------------------------------------------------


async def new_rider(server: Running, platform: str = "webchat", external: str | None = None
                    ) -> int:
    async with transaction(server.ctx.sm) as s:
        rider = await rider_for(s, platform, external or uuid.uuid4().hex, chat_id=external)
        assert rider.id is not None
        return rider.id


async def new_order(server: Running, rider_id: int, provider: str, amount: int) -> str:
    async with transaction(server.ctx.sm) as s:
        return (await create_payment(s, rider_id, provider, amount,
                                     now=server.ctx.clock())).out_trade_no


async def money_of(server: Running, rider_id: int) -> int:
    async with server.ctx.sm() as s:
        return await wallet.balance(s, rider_id)


async def money(server: Running, rider_id: int) -> tuple[int, int]:
    async with server.ctx.sm() as s:
        return (await wallet.balance(s, rider_id),
                await s.scalar(select(func.count()).select_from(Payment)
                               .where(Payment.state == "paid")))


TXN_JUNK: dict[str, st.SearchStrategy[Any]] = {
    "mchid": JUNK, "appid": JUNK,
    "out_trade_no": JUNK | text(0, 80) | st.sampled_from(["CB\x00", "CB\ud800", "C" * 65]),
    "amount": JUNK | st.fixed_dictionaries({"total": JUNK | st.integers()},
                                           optional={"currency": JUNK}),
    "transaction_id": JUNK | text(0, 300), "payer": JUNK, "trade_state": JUNK,
}


async def test_wechatpay_notify_credits_only_a_genuine_notification(app: Running) -> None:
    wxpay = fake_wechatpay()
    rid = await new_rider(app)
    order = await new_order(app, rid, "wechatpay", 5000)
    url = app.url + NOTIFY_PATH

    async def notify(headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        async with app.http.post(url, data=body, headers=headers) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async with Unchanged(app) as db:
        # Not provably from WeChat Pay → 401 {"code": "FAIL"}.
        for forge in ("signature", "ciphertext", "serial", "stale"):
            status, data = await notify(*wxpay.build_notification(order, 5000, forge=forge))
            assert (status, data["code"]) == (401, "FAIL"), (forge, data)
        headers, body = wxpay.build_notification(order, 5000)
        signing = ["Wechatpay-Nonce", "Wechatpay-Serial", "Wechatpay-Signature",
                   "Wechatpay-Timestamp"]
        for drop in examples(st.sets(st.sampled_from(signing), min_size=1), 10):
            status, data = await notify({k: v for k, v in headers.items() if k not in drop},
                                        body)
            assert (status, data["code"]) == (401, "FAIL"), (drop, status, data)
            await db.check(drop)
        for raw, sig in examples(st.tuples(st.binary(max_size=200), ASCII), 20):
            status, data = await notify({**headers, "Wechatpay-Signature": sig}, raw)
            assert status == 401, (raw, sig, status)
            await db.check(raw)
        probe = {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + "A" * 40}
        assert (await notify(probe, body))[0] == 401
        # Genuinely signed, but the body is no notification: 401 too (it cannot be decrypted).
        _, platform = keys()
        for raw in examples(st.binary(max_size=120) | JUNK.map(lambda j: json.dumps(j).encode()),
                            15):
            ts, nonce = str(int(time.time())), "N" * 16
            hdrs = {**headers, "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
                    "Wechatpay-Signature": _sign(platform, f"{ts}\n{nonce}\n".encode() + raw
                                                 + b"\n")}
            status, data = await notify(hdrs, raw)
            assert status == 401, (raw, status, data)
            await db.check(raw)
        # Signed and decryptable, but not a payment of ours → a 4xx (or 204 "nothing to
        # credit" for other events), never a 500, and nothing credited.
        # Each carries one fault that makes it not a payment of ours (mchid, appid, order,
        # amount, state), maybe with junk elsewhere too.
        breaking = st.sampled_from(["mchid", "appid", "out_trade_no", "amount", "trade_state"])
        overrides = st.tuples(breaking, st.sets(st.sampled_from(sorted(TXN_JUNK)), max_size=2)
                              ).flatmap(lambda kd: st.fixed_dictionaries(
                                  {k: TXN_JUNK[k] for k in {kd[0], *kd[1]}}))
        events = st.sampled_from(["TRANSACTION.SUCCESS"] * 3 + ["REFUND.SUCCESS"])
        for override, event in examples(st.tuples(overrides, events), 50):
            amount = override.get("amount")
            if isinstance(amount, dict) and amount.get("total") == 5000:
                override["amount"] = {**amount, "total": 4999}  # keep the amount wrong
            if override.get("trade_state") == "SUCCESS" or override.get("out_trade_no") == order:
                continue
            status, data = await notify(*signed_notification(
                {**wxpay.transaction(order, 5000), **override}, event))
            assert status in (204, 400, 404), (override, event, status, data)
            await db.check((override, event))

    # Genuine orders whose notification has junk in the fields we only record (payer, ids,
    # times): credited once (204) or refused (4xx, nothing credited), never a 500.
    extras = st.fixed_dictionaries({}, optional={
        # Unique: WeChat Pay never reuses a transaction id across orders (and the database
        # holds it unique, so a reuse would be a 500 by design, "our own failure").
        "payer": JUNK, "transaction_id": st.builds(lambda j: [j, next(_ids)], JUNK)
        | text(1, 280).map(lambda t: f"{t}#{next(_ids)}"), "success_time": JUNK,
        "bank_type": JUNK, "trade_type": JUNK, "attach": JUNK})
    for override in examples(extras, 25):
        rider = await new_rider(app)
        extra_order = await new_order(app, rider, "wechatpay", 500)
        status, data = await notify(*signed_notification(
            {**wxpay.transaction(extra_order, 500), **override}))
        assert status in (204, 400), (override, status, data)
        assert await money_of(app, rider) == (500 if status == 204 else 0), (override, status)

    # A genuine notification credits once; its replay changes nothing.
    assert await notify(*wxpay.build_notification(order, 5000)) == (204, None)
    assert await money_of(app, rid) == 5800
    async with Unchanged(app):
        assert (await notify(*wxpay.build_notification(order, 5000)))[0] == 204


async def test_telegram_and_sandbox_payments_cannot_be_forged(app: Running) -> None:
    user_id = 777_001
    rid = await new_rider(app, "telegram", str(user_id))
    order = await new_order(app, rid, "telegram", 5000)
    user = {"id": user_id, "is_bot": False, "first_name": "Fuzz", "language_code": "en"}

    def paid(payload: Any, amount: Any, currency: Any = "CNY") -> dict[str, Any]:
        return {"update_id": next(_ids), "message": {
            "message_id": next(_ids), "from": user, "date": int(time.time()),
            "chat": {"id": user_id, "type": "private", "first_name": "Fuzz"},
            "successful_payment": {"currency": currency, "total_amount": amount,
                                   "invoice_payload": payload,
                                   "telegram_payment_charge_id": f"tg-{next(_ids)}",
                                   "provider_payment_charge_id": "p"}}}

    async def webhook(update: Any, secret: str | None = TG_SECRET) -> int:
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        async with app.http.post(f"{app.url}/telegram/webhook", json=update,
                                 headers=headers) as r:
            return r.status

    # Without the webhook secret: 401, and the genuine-looking payment credits nothing.
    async with Unchanged(app) as db:
        for secret in examples(st.none() | ASCII.filter(lambda s: s != TG_SECRET), 30):
            assert await webhook(paid(order, 5000), secret) == 401, secret
            await db.check(secret)
    # With the secret but not matching the order (payload, amount or currency): no credit.
    # (It is a 200: Telegram has taken the money, so the mismatch is kept for support.)
    mismatches = st.tuples(st.just(order) | text(0, 64) | st.sampled_from(["\x00", "CB\ud800"]),
                           st.integers(-10, 10**7) | JUNK,
                           st.just("CNY") | text(0, 5)).filter(
        lambda t: t[0] != order or t[1] != 5000 or t[2] != "CNY")
    for payload, amount, currency in examples(mismatches, 40):
        status = await webhook(paid(payload, amount, currency))
        assert status in (200, 400), (payload, amount, currency, status)
        assert await money(app, rid) == (0, 0), (payload, amount, currency)
    assert await webhook(paid(order, 5000)) == 200
    assert await money(app, rid) == (5800, 1)

    # Sandbox top-ups are buttons in the chat: a forged one credits nothing.
    rider = await WebRider(app.http, app.url).connect()
    for data in examples(st.builds(lambda a, n: f"topup:{a}:{n}",
                                   st.integers(-5, 10**6).map(str) | text(0, 8)
                                   | st.sampled_from(["\u00b2", "\u0663", "1\u00b2"]),
                                   text(0, 12)), 40) + ["topup:\u00b2:abc", "topup:1\u00b2:x"]:
        async with app.ctx.sm() as s:
            before = await s.scalar(select(func.count()).select_from(Payment))
        async with app.http.post(f"{app.url}/webchat/api/send", json={"data": data},
                                 headers=rider.headers) as r:
            assert r.status in (200, 400), (data, r.status)
            replies = (await r.json()).get("replies", []) if r.status == 200 else []
        assert not any(m["text"] in SORRY for m in replies), (data, replies)
        amount, _, nonce = data[len("topup:"):].partition(":")
        async with app.ctx.sm() as s:
            made = await s.scalar(select(func.count()).select_from(Payment)) - before
        assert made == 0, (data, made)  # a nonce the server never issued pays nothing


# --- the read-only routes ------------------------------------------------------------------------


async def test_read_only_routes_under_random_queries(app: Running) -> None:
    http, url = app.http, app.url
    quick = aiohttp.ClientTimeout(total=10)  # a long poll that never ends fails here
    queries = examples(st.dictionaries(ASCII | text(0, 8), text(0, 20), max_size=3), 20)
    # A browser the server already gave its identity (a new one is a row: not read-only).
    browser = (await WebRider(http, url).connect()).headers
    async with Unchanged(app) as db:
        for q in queries:
            for method in ("GET", "HEAD"):
                for path, ok in (("/healthz", {200}), ("/metrics", {200}), ("/", {200}),
                                 ("/webchat/api/ui", {200})):
                    async with http.request(method, url + path, params=q, timeout=quick,
                                            headers=browser) as r:
                        assert r.status in ok, (method, path, q, r.status)
                        if method == "GET" and path == "/metrics":
                            assert "chargebot_charges" in await r.text()
            await db.check(q)
        for p in examples(text(0, 30) | st.sampled_from(["../bot.toml", "..%2f..%2fbot.toml",
                                                          "%00", "webchat.html"]), 25):
            for method in ("GET", "HEAD"):
                async with http.request(method, f"{url}/static/{p}", timeout=quick) as r:
                    assert r.status in (200, 403, 404), (method, p, r.status)
                async with http.head(f"{url}/photos/ab/{p or 'x'}", params={"exp": p, "sig": p},
                                     timeout=quick) as r:
                    assert r.status in (400, 401, 404, 405), (p, r.status)
        await db.check("static")

        # The web chat inbox: 200 or 400 naming a field, never a poll that hangs; a client_id
        # is noise like any other parameter.
        waits = text(0, 8).filter(lambda w: not _is_float(w) or float(w) <= 0.05) \
            | st.sampled_from(["nan", "NaN", "-inf", "0", "-1e308"])
        for cid, after, wait in examples(st.tuples(
                st.just("fuzz-client-00000001") | ASCII, text(0, 8) | st.integers().map(str),
                waits), 40):
            for method in ("GET", "HEAD"):
                async with http.request(method, f"{url}/webchat/api/messages", timeout=quick,
                                        params={"client_id": cid, "after": after,
                                                "wait": wait}, headers=browser) as r:
                    assert r.status in (200, 400), (cid, after, wait, r.status)
                    if method == "GET" and r.status == 400:
                        assert (await r.json())["field"] in ("after", "wait")
            await db.check((cid, after, wait))

        # The WeChat server-address check: only a fresh, correct signature echoes.
        for echo, ts_off, good in examples(st.tuples(ASCII, st.integers(-10**6, 10**6),
                                                     st.booleans()), 30):
            ts, nonce = str(int(time.time()) + ts_off), "n0nce"
            sig = wx_sign(ACCOUNT.token, ts, nonce) if good else echo
            for method in ("GET", "HEAD"):
                async with http.request(method, f"{url}/wechat", timeout=quick, params={
                        "timestamp": ts, "nonce": nonce, "signature": sig, "echostr": echo}) as r:
                    fresh = abs(ts_off) <= app.ctx.settings.wechat.replay_window_s - 5
                    stale = abs(ts_off) > app.ctx.settings.wechat.replay_window_s + 5
                    if good and fresh:
                        assert r.status == 200, (ts_off, r.status)
                        if method == "GET":
                            assert await r.text() == echo
                    elif not good or stale:
                        assert r.status == 401, (echo, ts_off, good, r.status)
        await db.check("wechat verify")


# --- the WeChat Pay links ------------------------------------------------------------------------


async def test_pay_links_refuse_what_the_server_did_not_sign(app: Running) -> None:
    """The pay page and the QR code (bot/payments/pay_page.py) under random, forged and altered
    tokens: a 4xx page, never a 500, no order placed and nothing written. Its script is static."""
    from bot.payments import pay_page

    http, url = app.http, app.url
    rid = await new_rider(app, "wechat", "o-fuzz-pay-links")
    real = (pay_page.link(app.ctx, rid, 1000, "topup", "jsapi") or "").split("?t=", 1)[1]
    assert real
    b64 = st.binary(min_size=30, max_size=30).map(
        lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())
    # Each character of a genuine token changed (the body or the MAC), and random ones.
    altered = [real[:i] + ("A" if real[i] != "A" else "B") + real[i + 1:]
               for i in range(len(real))]
    tokens = examples(text(0, 60) | ASCII | b64, 40) + altered + [real + "=", real[:-1], " " + real]
    async with Unchanged(app) as db:
        for token in tokens:
            for path in ("/pay/wechat", "/pay/wechat/qr"):
                async with http.get(url + path, params={"t": token}) as r:
                    assert r.status in (400, 403), (path, token, r.status)
                    assert r.headers["Cache-Control"] == "no-store"
                    assert "pay-data" not in await r.text()
            await db.check(token)
        for method, path in (("HEAD", "/pay/wechat"), ("POST", "/pay/wechat"),
                             ("POST", "/pay/wechat/qr")):
            async with http.request(method, url + path, params={"t": real}) as r:
                assert r.status == 405, (method, path, r.status)
        for q in examples(st.dictionaries(ASCII, text(0, 20), max_size=3), 10):
            for method in ("GET", "HEAD"):
                async with http.request(method, url + "/pay/wechat.js", params=q) as r:
                    assert r.status == 200, (q, r.status)
        await db.check("pay links")
