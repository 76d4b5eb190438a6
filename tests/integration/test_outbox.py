"""The bill survives a notifier that dies between commit and send, and arrives exactly once."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.app import NOTIFIER
from core.outbox import OutboxMessage
from notifications.webchat_inbox import WebchatMessage
from tests.support.journey import PileClient, WebRider, button
from tests.support.server import seed_city, start_server
from tests.support.settings import PILE_SECRET, make_settings


async def _charge_to_bill(server) -> WebRider:  # type: ignore[no-untyped-def]
    await seed_city(server.ctx, ports=2)
    pile = PileClient(server.http, server.url, "P0001", PILE_SECRET)
    now = datetime.now(UTC)
    await pile.post([pile.event("heartbeat", now), pile.event("port_status", now, port=1,
                                                                status="idle")])
    rider = WebRider(server.http, server.url)
    card = await rider.say("/start port_P0001-01")
    await rider.press(button(card, "start:"))
    cmd = (await pile.commands())[0]
    await pile.run_charge(1, cmd["session"], now, minutes=30)
    return rider


async def _bills(server) -> list[WebchatMessage]:  # type: ignore[no-untyped-def]
    async with server.ctx.sm() as s:
        rows = (await s.execute(select(WebchatMessage))).scalars().all()
    return [r for r in rows if "🧾" in r.reply["text"]]


async def test_bill_is_delivered_once_after_the_notifier_dies_between_commit_and_send(
    db_url: str,
) -> None:
    settings = make_settings(db_url, notifications={"lease_s": 30, "poll_s": 0.05})
    async with start_server(settings, notifier=False) as server:
        rider = await _charge_to_bill(server)
        notifier = server.app[NOTIFIER]
        # The state change and its message were committed together; nothing was sent.
        async with server.ctx.sm() as s:
            bill = (await s.execute(
                select(OutboxMessage).where(OutboxMessage.kind == "bill"))).scalars().one()
        assert bill.state == "pending"
        assert await _bills(server) == []

        # A notifier claims the row and is killed before sending: the lease holds it briefly.
        claimed = await notifier.claim()
        assert bill.id in [m.id for m in claimed]
        assert all(m.id != bill.id for m in await notifier.claim())

        # After the lease runs out (the notifier's clock moved past it, however slow this
        # machine is), the restarted notifier delivers it, once.
        later = datetime.now(UTC) + timedelta(seconds=31)
        notifier.clock = lambda: later
        while await notifier.run_once():
            pass
        for _ in range(3):
            await notifier.run_once()
        bills = await _bills(server)
        assert len(bills) == 1
        async with server.ctx.sm() as s:
            sent = await s.get(OutboxMessage, bill.id)
        assert sent is not None and sent.state == "sent" and sent.attempts == 2
        msg = await rider.wait_message("🧾", timeout=5)
        assert "¥" in msg["text"]


async def test_a_failing_send_is_retried_and_still_delivered_once(db_url: str) -> None:
    settings = make_settings(db_url, notifications={"poll_s": 0.05})
    async with start_server(settings, notifier=False) as server:
        await _charge_to_bill(server)
        notifier = server.app[NOTIFIER]
        real = notifier.senders["webchat"]
        failures = []

        class Flaky:
            async def send(self, identity, replies, **kw):  # type: ignore[no-untyped-def]
                if not failures:
                    failures.append(1)
                    from notifications.worker import DeliveryError

                    raise DeliveryError("network down", retry_after=0.01)
                return await real.send(identity, replies, **kw)

        notifier.senders["webchat"] = Flaky()
        import asyncio

        for _ in range(20):
            await notifier.run_once()
            await asyncio.sleep(0.02)
        assert failures == [1]
        assert len(await _bills(server)) == 1


async def test_several_notifiers_on_one_queue_deliver_each_message_once(db_url: str) -> None:
    """N workers mean N notifiers claiming from one outbox (SKIP LOCKED on PostgreSQL, the
    write lock on SQLite): every row goes out once, and the work is shared."""
    import asyncio
    import collections

    from bot.handlers import notices
    from core import outbox
    from core.db import transaction
    from core.notices.engagement import BroadcastNotice
    from core.riders.identities import rider_for
    from notifications.worker import Notifier

    settings = make_settings(db_url, scheduler={"enabled": False})
    async with start_server(settings, notifier=False) as server:
        ctx = server.ctx
        async with transaction(ctx.sm) as s:
            for i in range(40):
                rider = await rider_for(s, "webchat", f"many-{i}")
                for k in range(3):
                    text = BroadcastNotice(zh_CN=f"通知{k}", en=f"notice {k}")
                    await outbox.enqueue(s, rider.id, text, f"many:{i}:{k}",  # type: ignore[arg-type]
                                         now=ctx.clock())
        seen: collections.Counter[int] = collections.Counter()
        by_notifier: collections.Counter[int] = collections.Counter()

        class Counting:
            def __init__(self, n: int) -> None:
                self.n = n

            async def send(self, identity, replies, *, outbox_id=None, **_):  # type: ignore[no-untyped-def]
                seen[outbox_id] += 1
                by_notifier[self.n] += 1
                await asyncio.sleep(0.005)  # a platform round trip, so the claims interleave
                return "webchat"

        notifiers = [Notifier(ctx.sm, {"webchat": Counting(n)}, notices.render, batch=10,
                              lease_s=30) for n in range(3)]

        async def drain(n: Notifier) -> None:
            while await n.run_once():
                pass

        await asyncio.gather(*(drain(n) for n in notifiers))
        async with ctx.sm() as s:
            states = (await s.execute(select(OutboxMessage.state))).scalars().all()
        assert len(seen) == 120 and set(seen.values()) == {1}
        assert states.count("sent") == 120
        assert len(by_notifier) >= 2  # more than one consumer took part


async def test_a_message_arriving_during_a_slow_pass_goes_out_beside_it(db_url: str) -> None:
    """The notifier claims again while a pass is still sending: a second rider's message is
    not held behind the first rider's slow send, and the first rider's next message still
    waits for the first (each rider's order)."""
    import asyncio

    from core.db import transaction
    from core.notices.chat import TextNotice
    from core.outbox import enqueue
    from tests.support.journey import english_rider_and_id, wait_until

    settings = make_settings(db_url, notifications={"poll_s": 0.05})
    async with start_server(settings, notifier=False) as server:
        (slow_rider, slow_id), (quick_rider, quick_id) = (
            await english_rider_and_id(server), await english_rider_and_id(server))
        notifier = server.app[NOTIFIER]
        real = notifier.senders["webchat"]
        release = asyncio.Event()
        sent: list[str] = []

        class Gated:
            async def send(self, identity, replies, **kw):  # type: ignore[no-untyped-def]
                text = kw["payload"]["text"]
                if text == "slow-1":
                    await release.wait()  # a platform that takes its time
                channel = await real.send(identity, replies, **kw)
                sent.append(text)
                return channel

        notifier.senders["webchat"] = Gated()

        async def say(rider_id: int, text: str) -> None:
            async with transaction(server.ctx.sm) as s:
                await enqueue(s, rider_id, TextNotice(text=text), f"t:{text}",
                              now=datetime.now(UTC))
            server.ctx.wake_outbox()

        run = asyncio.create_task(notifier.run())
        try:
            await say(slow_id, "slow-1")
            await wait_until(lambda: not release.is_set() and _claimed(server, "slow-1"))
            await say(slow_id, "slow-2")
            await say(quick_id, "quick-1")
            await quick_rider.wait_message("quick-1", timeout=10)
            assert sent == ["quick-1"]  # slow-1 is still on its way; slow-2 waits behind it
            release.set()
            await slow_rider.wait_message("slow-2", timeout=10)
            assert sent == ["quick-1", "slow-1", "slow-2"]
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run


async def _claimed(server, text: str) -> bool:  # type: ignore[no-untyped-def]
    async with server.ctx.sm() as s:
        rows = (await s.execute(select(OutboxMessage))).scalars().all()
    return any(r.payload.get("text") == text and r.lease_until is not None for r in rows)
