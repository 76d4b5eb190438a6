"""POST /payments/wechatpay/notify: WeChat Pay's signed, encrypted payment notifications.

We answer 204 when we took a notification, and 4xx/5xx with ``{"code": "FAIL", "message": …}``
when WeChat should retry (it does, for about a day). Nothing is credited unless the answer is
204; crediting itself is `orders.credit`.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from bot.context import CTX
from bot.payments.wechatpay.crypto import InvalidNotification, verify_notification
from bot.payments.wechatpay.orders import NotWechatPay, credit
from core.billing.payments import PaymentMismatch, could_be_ours
from core.config_sections import WechatPaySettings

log = logging.getLogger("chargebot.wechatpay")

NOTIFY_PATH = "/payments/wechatpay/notify"


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"code": "FAIL", "message": message}, status=status)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _transaction_fields(txn: dict[str, Any], cfg: WechatPaySettings) -> tuple[str, int]:
    if txn.get("mchid") != cfg.mchid:
        raise _Refused(400, "mchid does not match this merchant")
    if cfg.appid and txn.get("appid") != cfg.appid:
        raise _Refused(400, "appid does not match this merchant")
    out_trade_no = txn.get("out_trade_no")
    amount = txn.get("amount")
    if not isinstance(out_trade_no, str) or not out_trade_no or not isinstance(amount, dict):
        raise _Refused(400, "transaction has no out_trade_no or amount")
    if not could_be_ours(out_trade_no):
        raise KeyError(out_trade_no)  # answered as unknown, the same on every database
    total = amount.get("total")
    if not isinstance(total, int) or isinstance(total, bool):
        raise _Refused(400, "amount.total is not an integer")
    if amount.get("currency", "CNY") != "CNY":
        raise _Refused(400, f"currency {amount.get('currency')!r} is not CNY")
    if not txn.get("transaction_id"):
        raise _Refused(400, "transaction has no transaction_id")
    return out_trade_no, total


async def notify(request: web.Request) -> web.Response:
    """POST /payments/wechatpay/notify: 204 when taken (first time or replay), else FAIL.

    401 not provably from WeChat Pay; 400 not ours or the wrong amount; 404 unknown order;
    500 on our own failure. Nothing is credited unless the answer is 204.
    """
    ctx = request.app[CTX]
    body = await request.read()
    try:
        note = verify_notification(request.headers, body, ctx.settings)
    except InvalidNotification as exc:
        log.warning("wechatpay: rejected a notification: %s", exc)
        return _fail(401, str(exc))
    event = note.get("event_type")
    txn = note["resource"]
    if event != "TRANSACTION.SUCCESS" or txn.get("trade_state") != "SUCCESS":
        log.info("wechatpay: notification %s %s (%s) taken, nothing to credit",
                 note.get("id"), event, txn.get("trade_state"))
        return web.Response(status=204)
    try:
        out_trade_no, total = _transaction_fields(txn, ctx.settings.payments.wechatpay)
        for attempt in (1, 2):
            try:
                first = await credit(ctx, txn, out_trade_no, total)
                break
            except IntegrityError:
                # Only a lost race on a unique key gets here; the retry sees the winner's row.
                if attempt == 2:
                    raise
        log.info("wechatpay: order %s paid (%s, %s)", out_trade_no, txn.get("transaction_id"),
                 "credited" if first else "already credited")
        return web.Response(status=204)
    except NotWechatPay as exc:
        log.warning("wechatpay: refused notification %s: %s", note.get("id"), exc)
        return _fail(400, str(exc))
    except _Refused as exc:
        log.warning("wechatpay: refused notification %s: %s", note.get("id"), exc.message)
        return _fail(exc.status, exc.message)
    except KeyError:
        log.warning("wechatpay: notification for unknown order %s", txn.get("out_trade_no"))
        return _fail(404, "unknown out_trade_no")
    except PaymentMismatch as exc:
        log.error("wechatpay: amount mismatch: %s", exc)
        return _fail(400, "amount does not match the order")
    except Exception:
        log.exception("wechatpay: notification %s failed", note.get("id"))
        return _fail(500, "internal error")
