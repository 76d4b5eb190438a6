"""One bad event never costs the others (DESIGN §3), as a property over random batches.

Real charges run on the pile while its batches carry random bad events between the good ones
(NaN, ±Infinity, 1e308, negatives, strings, nested objects, 10k-character ids, unknown types),
cut at random places and partly resent. Whatever the mix: every request is answered 200, every
good event is applied exactly once, every bad one is listed (index, id, field) and kept, and
every charge gets exactly one bill.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import func, select

from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.outbox import OutboxMessage
from core.piles.tables import PileEvent, RejectedEvent
from tests.support.fuzzing import examples
from tests.support.pile_events import VALID_EVENT, bad_event
from tests.support.piles import PILE, PileLink, ev, now_ts, rider_starts, take_start_command
from tests.support.server import Running, seed_city

NAN = float("nan")
# (a bad event, the field the answer must name) — the field data real boards get wrong.
SPECIAL: list[tuple[dict[str, Any], str]] = [
    ({"type": "meter", "port": 1, "session": "S", "power_w": NAN, "energy_wh": 1}, "power_w"),
    ({"type": "meter", "port": 1, "session": "S", "power_w": 1, "energy_wh": math.inf},
     "energy_wh"),
    ({"type": "heartbeat", "temperature_c": -math.inf}, "temperature_c"),
    ({"type": "heartbeat", "temperature_c": 1e308}, "temperature_c"),
    ({"type": "meter", "port": 1, "session": "S", "power_w": -5.5, "energy_wh": 1}, "power_w"),
    ({"type": "session_ended", "port": 1, "session": "S", "reason": "full", "energy_wh": -0.1,
      "duration_s": 60}, "energy_wh"),
    ({"type": "meter", "port": 1, "session": "S", "power_w": "183.4", "energy_wh": "x"},
     "energy_wh"),
    ({"type": "port_status", "port": {"n": 1}, "status": "idle"}, "port"),
    ({"type": "heartbeat", "id": "i" * 10_000}, "id"),
    ({"type": "teleport"}, "type"),
    ({"type": "heartbeat", "extra": {"deep": [1, NAN]}}, "extra.deep[1]"),
]


@st.composite
def a_bad_event(draw: st.DrawFn) -> tuple[Any, str]:
    if draw(st.booleans()):
        event, field = draw(st.sampled_from(SPECIAL))
        event = {"id": f"bad{draw(st.integers(0, 10**9))}", "ts": now_ts().isoformat(), **event}
        return event, field
    return draw(bad_event())


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "ports": draw(st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True)),
        "minutes": draw(st.integers(2, 90)),
        "power_w": draw(st.floats(120, 350).map(lambda p: round(p, 1))),
        "bad": draw(st.lists(a_bad_event(), min_size=1, max_size=8)),
        "noise": draw(st.lists(VALID_EVENT.filter(lambda e: e["type"] in (
            "heartbeat", "fault_cleared")), max_size=3)),
        "slots": draw(st.lists(st.integers(0, 10**6), min_size=12, max_size=12)),
        "cuts": draw(st.lists(st.integers(1, 10**6), max_size=5)),
        "resend": draw(st.lists(st.integers(0, 10**6), max_size=3)),
    }


def charge_events(port: int, session: str, command: str, minutes: int, power_w: float
                  ) -> list[dict[str, Any]]:
    """A whole charge as a board reports it: decimals at its own resolution."""
    start = now_ts() - timedelta(minutes=minutes)
    wh_per_30s = power_w / 120
    out = [ev("command_ack", start, command=command, ok=True),
           ev("session_started", start, port=port, session=session)]
    for k in range(1, minutes * 2):
        out.append(ev("meter", start + timedelta(seconds=30 * k), port=port, session=session,
                      power_w=power_w, energy_wh=round(wh_per_30s * k, 1), voltage_v=219.7,
                      current_a=round(power_w / 219.7, 2), temperature_c=31.5))
    out.append(ev("session_ended", start + timedelta(minutes=minutes), port=port,
                  session=session, reason="full", energy_wh=round(power_w * minutes / 60, 1),
                  duration_s=minutes * 60.0))
    out.append(ev("port_status", start + timedelta(minutes=minutes), port=port, status="idle"))
    return out


async def test_bad_events_never_cost_good_ones_a_bill(server: Running) -> None:
    await seed_city(server.ctx)
    link = PileLink(server)
    await link.come_online()
    for n, case in enumerate(examples(scenario(), 6)):
        good: list[dict[str, Any]] = []
        charges = []
        for port in case["ports"]:
            await rider_starts(server, port=port)
            cmd = await take_start_command(link)
            charges.append(cmd["session"])
            good += charge_events(port, cmd["session"], cmd["id"], case["minutes"],
                                  case["power_w"])
        good += [{**e, "id": f"{e['id']}-{n}"} for e in case["noise"]]

        # Bad events between the good ones (the good ones stay in the pile's own order).
        mixed: list[tuple[Any, str | None]] = [(e, None) for e in good]
        for (event, field), slot in zip(case["bad"], case["slots"], strict=False):
            mixed.insert(slot % (len(mixed) + 1), (event, field))
        cuts = sorted({c % len(mixed) for c in case["cuts"]} | {0, len(mixed)})
        batches = [mixed[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        batches += [batches[r % len(batches)] for r in case["resend"]]  # resent, as boards do

        for batch in batches:
            body = json.dumps({"events": [e for e, _ in batch]}).encode()  # NaN as boards send it
            status, data = await link.send_body(body)
            assert status == 200, (status, data)
            want = {i: f"events[{i}]" + (f".{f}" if f else "")
                    for i, (_, f) in enumerate(batch) if f is not None}
            assert {r["index"]: r["field"] for r in data["rejected"]} == want, (batch, data)
            for r in data["rejected"]:
                sent = batch[r["index"]][0]
                given = sent.get("id") if isinstance(sent, dict) else None
                if isinstance(given, str) and len(given) <= 80 and _storable(given):
                    assert r["id"] == given

        async with server.ctx.sm() as s:
            ids = set((await s.execute(select(PileEvent.event_id).where(
                PileEvent.pile_id == PILE))).scalars())
            stored = (await s.execute(select(func.count()).select_from(PileEvent).where(
                PileEvent.event_id.in_([e["id"] for e in good])))).scalar_one()
            kept = (await s.execute(select(RejectedEvent.raw))).scalars().all()
            for ref in charges:
                charge = (await s.execute(select(Charge).where(
                    Charge.pile_id == PILE, Charge.session_ref == ref))).scalar_one()
                assert charge.state == "settled", (ref, charge.state)
                assert charge.energy_wh == round(case["power_w"] * case["minutes"] / 60, 1)
                bills = await s.scalar(select(func.count()).select_from(OutboxMessage).where(
                    OutboxMessage.kind == "bill", OutboxMessage.dedupe_key == f"bill:{charge.id}"))
                debits = await s.scalar(select(func.count()).select_from(LedgerEntry).where(
                    LedgerEntry.kind == "charge", LedgerEntry.charge_id == charge.id))
                # Billed once: one bill message, one debit when it cost anything.
                assert (bills, debits) == (1, int(charge.amount_fen > 0)), (ref, charge.bill)
                assert charge.paid_fen == charge.amount_fen
        # Every good event applied once (ids are unique per pile: one row each).
        assert {e["id"] for e in good} <= ids and stored == len({e["id"] for e in good})
        # Every bad one kept as received (NaN compares unequal, so compare the text).
        kept_text = {json.dumps(json.loads(r), sort_keys=True) for r in kept}
        for event, field in case["bad"]:
            assert json.dumps(event, sort_keys=True) in kept_text, (event, field)


def _storable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text
