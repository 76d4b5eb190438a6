"""Telegram Payments end to end: wallet card → invoice → pre-checkout → successful payment.

Everything goes through the real webhook, python-telegram-bot and the fake Bot API; the
payment updates Telegram would send (pre_checkout_query, successful_payment) are built here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from telegram import Message

from bot.i18n import tr
from bot.payments import telegram_pay
from core.billing import wallet
from core.billing.payments import Payment
from core.billing.wallet import LedgerEntry
from core.charging.tables import Charge
from core.db import transaction
from core.piles.tables import Port
from core.riders.tables import Identity
from tests.fakes.telegram_api import Call, FakeTelegram
from tests.fakes.telegram_updates import TelegramUser, next_update_id
from tests.support.riders import TG_SECRET
from tests.support.server import Running, seed_city, start_server
from tests.support.settings import all_skins_settings

PAYMENTS = {"providers": ["sandbox", "telegram"], "telegram_provider_token": "TEST:PROVIDER"}
_message_ids = itertools.count(900_000)
_pcq_ids = itertools.count(1)
_users = itertools.count(810_000)


@pytest.fixture
async def tg_pay(db_url: str, fakes: tuple[Any, Any]) -> AsyncIterator[Running]:
    async with start_server(all_skins_settings(db_url, *fakes, payments=PAYMENTS)) as running:
        yield running


class Payer:
    """A Telegram rider who pays invoices: sends what Telegram would send for them."""

    def __init__(self, server: Running, fake: FakeTelegram, language_code: str = "en") -> None:
        self.server, self.fake = server, fake
        self.user = TelegramUser(next(_users), first_name="Rider", language_code=language_code)

    @property
    def uid(self) -> int:
        return self.user.user_id

    async def post(self, update: dict) -> None:
        async with self.server.http.post(
            f"{self.server.url}/telegram/webhook", json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
        ) as r:
            assert r.status == 200

    async def ask(self, update: dict, method: str = "sendMessage", contains: str = "") -> Call:
        """Post an update and wait for the bot's next `method` call to this chat (with
        `contains` in its text: notices from the outbox may arrive in between)."""
        start = len(self.fake.calls)
        await self.post(update)
        return await self.fake.wait_for(
            lambda c: c.method == method and c.params["chat_id"] == self.uid
            and contains in str(c.params.get("text", "")), start=start)

    def shown(self, call: Call) -> dict:
        """The message a call produced, as the rider's client has it (to press its buttons)."""
        msg = self.fake.message(self.uid, int(call.response["result"]["message_id"]))  # type: ignore[index]
        assert msg is not None
        return msg

    async def wallet(self) -> dict:
        # The wallet card starts with the purse, in either language.
        return self.shown(await self.ask(self.user.text("/wallet"), contains="👛"))

    def pre_checkout(self, payload: str, amount: int, currency: str = "CNY",
                     user: TelegramUser | None = None) -> dict:
        return {"update_id": next_update_id(), "pre_checkout_query": {
            "id": f"pcq-{next(_pcq_ids)}", "from": (user or self.user).user,
            "currency": currency, "total_amount": amount, "invoice_payload": payload}}

    def paid(self, payload: str, amount: int, charge_id: str, currency: str = "CNY") -> dict:
        return {"update_id": next_update_id(), "message": {
            "message_id": next(_message_ids), "from": self.user.user,
            "chat": self.user.private_chat, "date": int(time.time()),
            "successful_payment": {
                "currency": currency, "total_amount": amount, "invoice_payload": payload,
                "telegram_payment_charge_id": charge_id,
                "provider_payment_charge_id": f"provider-{charge_id}"}}}

    async def answer(self, update: dict) -> Call:
        start = len(self.fake.calls)
        await self.post(update)
        qid = update["pre_checkout_query"]["id"]
        return await self.fake.wait_for(
            lambda c: c.method == "answerPreCheckoutQuery"
            and c.params["pre_checkout_query_id"] == qid, start=start)


def buttons(message: dict) -> list[str]:
    return [b["callback_data"] for row in message["reply_markup"]["inline_keyboard"]
            for b in row if "callback_data" in b]


async def rider_id(server: Running, payer: Payer) -> int:
    async with server.ctx.sm() as s:
        return (await s.execute(select(Identity.rider_id).where(
            Identity.platform == "telegram", Identity.external_id == str(payer.uid)))).scalar_one()


async def add_due_bill(server: Running, rid: int, amount_fen: int) -> int:
    """An ended charge the empty wallet could not pay (post-pay), as the pile flow leaves it."""
    async with transaction(server.ctx.sm) as s:
        port = (await s.execute(select(Port).where(Port.code == "P0001-01"))).scalar_one()
        charge = Charge(rider_id=rid, port_id=port.id, pile_id="P0001", port_number=1,
                        port_code="P0001-01", site_id="T01", state="ended",
                        amount_fen=amount_fen)
        s.add(charge)
        await s.flush()
        assert charge.id is not None
        return charge.id


async def ledger(server: Running, rid: int) -> list[tuple[str, int]]:
    async with server.ctx.sm() as s:
        rows = await s.execute(select(LedgerEntry).where(LedgerEntry.rider_id == rid)
                               .order_by(LedgerEntry.id))
        return [(e.kind, e.amount_fen) for e in rows.scalars()]


async def test_telegram_top_up_end_to_end(tg_pay: Running, fakes: tuple[Any, Any]) -> None:
    fake: FakeTelegram = fakes[0]
    await seed_city(tg_pay.ctx)
    payer = Payer(tg_pay, fake)
    await payer.wallet()
    rid = await rider_id(tg_pay, payer)
    charge_id = await add_due_bill(tg_pay, rid, 350)

    # The card: Telegram invoices instead of the sandbox, the bonus rules, the due bill.
    card = await payer.wallet()
    data = buttons(card)
    assert "topupvia:telegram:5000" in data and "pay" in data
    assert not [d for d in data if d.startswith("topup:")]
    assert "Top up ¥50.00, get ¥8.00 extra" in card["text"]
    assert "Top up ¥100.00, get ¥20.00 extra" in card["text"]
    assert "Unpaid bills: ¥3.50" in card["text"]
    assert tr("en", "Top up with Telegram Payments:") in card["text"]

    # Pressing ¥50 sends an invoice whose payload is our order number; amounts are in fen.
    invoice = await payer.ask(payer.user.press(card, "topupvia:telegram:5000"), "sendInvoice")
    payload = invoice.params["payload"]
    assert invoice.params["currency"] == "CNY"
    assert invoice.params["provider_token"] == "TEST:PROVIDER"
    assert invoice.params["prices"] == [{"label": "Wallet top-up", "amount": 5000}]
    assert "¥8.00" in invoice.params["description"]  # the bonus is announced
    assert invoice.response["result"]["invoice"]["total_amount"] == 5000  # type: ignore[index]
    async with tg_pay.ctx.sm() as s:
        payment = (await s.execute(select(Payment))).scalars().one()
    assert (payment.out_trade_no, payment.provider, payment.amount_fen, payment.state,
            payment.rider_id) == (payload, "telegram", 5000, "created", rid)

    # Pre-checkout: yes for the right order; no for a wrong amount, currency or order.
    ok = await payer.answer(payer.pre_checkout(payload, 5000))
    assert ok.params["ok"] is True and "error_message" not in ok.params
    for bad in (payer.pre_checkout(payload, 4000), payer.pre_checkout(payload, 5000, "USD"),
                payer.pre_checkout("CB20990101DEADBEEF", 5000),
                payer.pre_checkout(payload, 5000, user=TelegramUser(next(_users)))):
        no = await payer.answer(bad)
        assert no.params["ok"] is False and no.params["error_message"], bad
    assert "amount doesn't match" in (await payer.answer(
        payer.pre_checkout(payload, 4000))).params["error_message"]

    # The payment: ¥50 + ¥8 bonus, then the ¥3.50 bill is paid from it.
    done = await payer.ask(payer.paid(payload, 5000, "tg-charge-1"))
    text = done.params["text"]
    assert "Topped up ¥50.00 via Telegram Payments" in text
    assert "+¥8.00" in text
    assert "Balance: ¥54.50" in text
    assert tr("en", "Your unpaid bill is paid. You can charge again.") in text
    async with tg_pay.ctx.sm() as s:
        assert await wallet.balance(s, rid) == 5450 == await wallet.ledger_sum(s, rid)
        charge = await s.get(Charge, charge_id)
        paid = (await s.execute(select(Payment))).scalars().one()
    assert charge is not None and charge.state == "settled" and charge.paid_fen == 350
    assert (paid.state, paid.bonus_fen, paid.provider_txn_id) == ("paid", 800, "tg-charge-1")
    assert paid.details["provider_payment_charge_id"] == "provider-tg-charge-1"
    assert await ledger(tg_pay, rid) == [("topup", 5000), ("bonus", 800), ("charge", -350)]

    # Telegram delivers the same payment again: nothing more is credited, nothing is said.
    # (A ¥50 top-up also earns a partner voucher, issued once; its notice may come any time.)
    def said_count() -> int:
        return len([m for m in fake.messages_to(payer.uid)
                    if "partner voucher" not in (m.get("text") or "")])

    said = said_count()
    await payer.post(payer.paid(payload, 5000, "tg-charge-1"))
    await payer.post(payer.paid(payload, 5000, "tg-charge-1"))
    after = await payer.wallet()  # a later update has gone through the same queue
    await asyncio.sleep(0.3)
    assert "Balance: ¥54.50" in after["text"]
    assert said_count() == said + 1
    assert await ledger(tg_pay, rid) == [("topup", 5000), ("bonus", 800), ("charge", -350)]

    # A paid order can't be paid twice.
    again = await payer.answer(payer.pre_checkout(payload, 5000))
    assert again.params["ok"] is False and "already paid" in again.params["error_message"]


async def test_small_top_up_has_no_bonus_and_chinese_texts(
    tg_pay: Running, fakes: tuple[Any, Any],
) -> None:
    fake: FakeTelegram = fakes[0]
    payer = Payer(tg_pay, fake, language_code="zh-hans")
    card = await payer.wallet()
    assert tr("zh_CN", "🔁 Auto top-up: off") in card["text"]
    invoice = await payer.ask(payer.user.press(card, "topupvia:telegram:1000"), "sendInvoice")
    assert invoice.params["title"] == tr("zh_CN", "Wallet top-up {amount}", amount="¥10.00")
    assert len(invoice.params["title"]) <= 32
    payload = invoice.params["payload"]
    assert (await payer.answer(payer.pre_checkout(payload, 1000))).params["ok"] is True
    done = await payer.ask(payer.paid(payload, 1000, "tg-charge-small"))
    assert tr("zh_CN", "👛 Balance: {balance}", balance="¥10.00") in done.params["text"]
    rid = await rider_id(tg_pay, payer)
    assert await ledger(tg_pay, rid) == [("topup", 1000)]


async def test_racing_duplicate_payments_credit_once(
    tg_pay: Running, fakes: tuple[Any, Any],
) -> None:
    fake: FakeTelegram = fakes[0]
    payer = Payer(tg_pay, fake)
    card = await payer.wallet()
    invoice = await payer.ask(payer.user.press(card, "topupvia:telegram:10000"), "sendInvoice")
    payload = invoice.params["payload"]
    update = payer.paid(payload, 10000, "tg-charge-race")
    message = Message.de_json(update["message"], None)
    assert message is not None
    results = await asyncio.gather(
        *(telegram_pay.on_successful_payment(tg_pay.ctx, message) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    rid = await rider_id(tg_pay, payer)
    assert await ledger(tg_pay, rid) == [("topup", 10000), ("bonus", 2000)]


async def test_a_failed_invoice_is_closed_and_a_mismatched_payment_is_kept(
    tg_pay: Running, fakes: tuple[Any, Any],
) -> None:
    fake: FakeTelegram = fakes[0]
    payer = Payer(tg_pay, fake)
    card = await payer.wallet()
    # Telegram refuses the invoice (e.g. under its minimum for CNY): the rider is told.
    fake.fail_next("sendInvoice", error_code=400, retry_after=None,
                   description="Bad Request: CURRENCY_TOTAL_AMOUNT_INVALID")
    sorry = await payer.ask(payer.user.press(card, "topupvia:telegram:500"))
    assert "could not create the invoice" in sorry.params["text"]
    async with tg_pay.ctx.sm() as s:
        failed = (await s.execute(select(Payment))).scalars().one()
    assert failed.state == "failed"
    no = await payer.answer(payer.pre_checkout(failed.out_trade_no, 500))
    assert no.params["ok"] is False

    # An amount Telegram says was paid but we never asked for: nothing credited, ids kept.
    invoice = await payer.ask(payer.user.press(card, "topupvia:telegram:2000"), "sendInvoice")
    payload = invoice.params["payload"]
    odd = await payer.ask(payer.paid(payload, 2500, "tg-charge-odd"))
    assert "tg-charge-odd" in odd.params["text"]
    rid = await rider_id(tg_pay, payer)
    assert await ledger(tg_pay, rid) == []
    async with tg_pay.ctx.sm() as s:
        kept = (await s.execute(select(Payment).where(Payment.out_trade_no == payload))
                ).scalars().one()
    assert kept.state == "created"
    assert kept.details["mismatch"]["telegram_payment_charge_id"] == "tg-charge-odd"

    # A button for an amount the card never offered sends no invoice.
    start = len(fake.calls)
    nope = await payer.ask(payer.user.press(card, "topupvia:telegram:123", check_button=False))
    assert "not available" in nope.params["text"]
    assert not [c for c in fake.calls[start:] if c.method == "sendInvoice"]


async def test_without_telegram_payments_the_card_keeps_the_sandbox(
    all_skins: Running, fakes: tuple[Any, Any],
) -> None:
    payer = Payer(all_skins, fakes[0])
    card = await payer.wallet()
    data = buttons(card)
    assert any(d.startswith("topup:500:") for d in data)
    assert not [d for d in data if d.startswith("topupvia:")]
    # A stale invoice button from when Telegram Payments were on: explained, no invoice.
    start = len(fakes[0].calls)
    reply = await payer.ask(payer.user.press(card, "topupvia:telegram:1000", check_button=False))
    assert "only in the Telegram chat" in reply.params["text"]
    assert not [c for c in fakes[0].calls[start:] if c.method == "sendInvoice"]


async def test_a_forged_successful_payment_is_refused_and_credits_nothing(
    tg_pay: Running, fakes: tuple[Any, Any],
) -> None:
    from core.billing.payments import Payment, create_payment

    payer = Payer(tg_pay, fakes[0])
    await payer.wallet()  # the rider exists
    rid = await rider_id(tg_pay, payer)
    async with transaction(tg_pay.ctx.sm) as s:
        order = (await create_payment(s, rid, "telegram", 5000,
                                       now=tg_pay.ctx.clock())).out_trade_no
    forged = payer.paid(order, 5000, "forged-charge")
    async with tg_pay.http.post(f"{tg_pay.url}/telegram/webhook", json=forged,
                                headers={"X-Telegram-Bot-Api-Secret-Token": "guess"}) as r:
        assert r.status == 401
    async with tg_pay.ctx.sm() as s:
        pay = (await s.execute(select(Payment).where(Payment.out_trade_no == order))).scalar_one()
    assert pay.state == "created" and await ledger(tg_pay, rid) == []
    await payer.ask(payer.paid(order, 5000, "real-charge"))
    assert await ledger(tg_pay, rid) == [("topup", 5000), ("bonus", 800)]


async def test_a_payment_we_fail_to_credit_is_redelivered_and_credited_once(
    tg_pay: Running, fakes: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.billing import payments
    from core.billing.payments import create_payment

    payer = Payer(tg_pay, fakes[0])
    await payer.wallet()
    rid = await rider_id(tg_pay, payer)
    async with transaction(tg_pay.ctx.sm) as s:
        order = (await create_payment(s, rid, "telegram", 2000,
                                       now=tg_pay.ctx.clock())).out_trade_no
    real = payments.confirm
    calls = []

    async def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(payments, "confirm", flaky)
    update = payer.paid(order, 2000, "charge-retry")
    async with tg_pay.http.post(f"{tg_pay.url}/telegram/webhook", json=update,
                                headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}) as r:
        assert r.status == 503  # Telegram will deliver it again
    assert await ledger(tg_pay, rid) == []
    await payer.ask(update)  # the redelivery
    await payer.post(update)  # and a duplicate after that
    assert await ledger(tg_pay, rid) == [("topup", 2000)]
