"""GET /metrics (ISSUE 8, part): Prometheus text an operator can alert on."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from bot.loop_lag import LoopLag
from bot.scheduler import _Running
from tests.support.journey import PileClient, wait_until
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


async def test_metrics_report_events_charges_outbox_and_leadership(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"leader_retry_s": 0.1})
    async with start_server(settings, notifier=False) as server:
        await seed_city(server.ctx, ports=2)
        pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
        now = datetime.now(UTC)
        await pile.post([pile.event("heartbeat", now),
                         pile.event("fault", now, port=1, code="overload")])
        async with server.http.get(f"{server.url}/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line and not line.startswith("#")}
        assert values["chargebot_pile_events_total"] >= 2
        assert values["chargebot_work_orders_open"] == 1
        assert values["chargebot_tickets_open"] == 0
        assert values["chargebot_outbox_lag_seconds"] >= 0
        assert values["chargebot_delivery_errors_total"] == 0
        assert values["chargebot_scheduler_leader"] in (0, 1)
        assert "chargebot_delivered_total" in values


async def test_request_ids_are_kept_or_made_and_reach_log_records(db_url: str) -> None:
    import logging

    from bot.logs import REQUEST_ID, RequestIdFilter

    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, notifier=False) as server:
        async with server.http.get(f"{server.url}/healthz",
                                   headers={"X-Request-Id": "lb-42.a"}) as r:
            assert r.headers["X-Request-Id"] == "lb-42.a"
        async with server.http.get(f"{server.url}/healthz",
                                   headers={"X-Request-Id": "bad id; forged=1"}) as r:
            made = r.headers["X-Request-Id"]
        assert made != "bad id; forged=1" and len(made) == 16
        async with server.http.get(f"{server.url}/no-such-route") as r:
            assert r.status == 404 and "X-Request-Id" in r.headers
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    token = REQUEST_ID.set("req-7")
    try:
        assert RequestIdFilter().filter(record) and record.request_id == "req-7"  # type: ignore[attr-defined]
    finally:
        REQUEST_ID.reset(token)


async def test_scheduler_jobs_are_counted_with_their_failures(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"leader_retry_s": 0.1, "command_sweep_s": 0.1})
    async with start_server(settings, notifier=False) as server:
        async def swept() -> bool:
            async with server.http.get(f"{server.url}/metrics") as r:
                text = await r.text()
            return ('chargebot_scheduler_job_runs_total{job="sweep_requests"}' in text
                    and 'last_success_timestamp_seconds{job="sweep_requests"}' in text)

        await wait_until(swept)

    # A job that raises is counted as a failure and has no new success time.
    running = _Running()

    async def broken(_ctx: object) -> None:
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError):
        await running.wrap(broken)(None)  # type: ignore[arg-type]
    assert running.stats.runs == {"broken": 1} and running.stats.failures == {"broken": 1}
    assert "broken" not in running.stats.last_ok
    assert 'chargebot_scheduler_job_failures_total{job="broken"} 1' in running.stats.lines()


async def test_event_loop_lag_shows_a_callback_that_held_the_loop(db_url: str) -> None:
    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, notifier=False) as server:
        async def worst_lag() -> float:
            async with server.http.get(f"{server.url}/metrics") as r:
                text = await r.text()
            line = next(x for x in text.splitlines()
                        if x.startswith("chargebot_event_loop_lag_max_seconds "))
            return float(line.split()[1])

        before = await worst_lag()  # whatever the start-up cost, on a busy machine
        # What a heavy import or a chart drawn in a handler does: the whole loop stops. The
        # test blocks it on purpose, since that is what the gauge measures.
        held = before + 0.5
        time.sleep(held)

        async def seen() -> bool:
            return await worst_lag() >= held - 0.1

        await wait_until(seen, timeout=5)


def test_loop_lag_keeps_the_worst_of_the_last_minute_only() -> None:
    lag = LoopLag(interval_s=0.1, window_s=60)
    lag.record(10.2, 0.002)
    lag.record(10.5, 1.5)
    lag.record(10.9, 0.003)
    lag.record(40.0, 0.2)
    assert lag.worst(40.0) == 1.5
    assert lag.worst(70.5) == 1.5  # the 10th second is still inside the minute
    lag.record(71.2, 0.001)
    assert lag.worst(71.2) == 0.2
    lag.record(101.0, 0.0)
    assert lag.worst(101.0) == 0.001
    assert lag.worst(200.0) == 0.0  # a quiet minute
