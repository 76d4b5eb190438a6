"""`chargebot …` (DESIGN §7): the parser and `main`; each noun's commands live in their own module
(`serve`, `sites`, `piles`, `money`, `staff`, `events`, `broadcast`, `reports`, `wechat`).

Each command prints a clear error and exits non-zero (2) on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from bot.cli.common import CliError
from bot.logs import RequestIdFilter


def _command(module: str, name: str) -> Callable[[argparse.Namespace], None]:
    """`bot.cli.<module>.<name>`, imported when it runs: start-up cost — `chargebot --help` or
    `piles list` should not load the app, matplotlib or the simulator that other nouns need."""

    def run(args: argparse.Namespace) -> None:
        getattr(importlib.import_module(f"bot.cli.{module}"), name)(args)

    return run


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chargebot", description="e-bike charging piles via chat")
    ap.add_argument("--database", help="database URL (overrides bot.toml)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port (PostgreSQL)")
    p.set_defaults(fn=_command("serve", "cmd_serve"))

    p = sub.add_parser("demo", help="SQLite + demo city + simulated fleet + web chat")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--speed", type=float, default=60.0, help="simulated time factor")
    p.add_argument("--fault-share", type=float, default=0.05,
                   help="share of charges that end in a fault (0 for none; default 1 in 20)")
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="faults per charging port-hour of virtual time, on top of the share")
    p.set_defaults(fn=_command("serve", "cmd_demo"))

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate to the latest schema").set_defaults(
        fn=_command("serve", "cmd_db"))

    sites = sub.add_parser("sites").add_subparsers(dest="sites_command", required=True)
    p = sites.add_parser("import", help="sites from CSV: id,name,address,lat,lon,kind,tariff")
    p.add_argument("file")
    p.set_defaults(fn=_command("sites", "cmd_sites_import"))

    pl = sub.add_parser("piles").add_subparsers(dest="piles_command", required=True)
    p = pl.add_parser("add", help="register a pile and print its secret")
    p.add_argument("--site", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--ports", type=int, required=True)
    p.add_argument("--model", default="generic-10")
    p.add_argument("--secret")
    p.add_argument("--protocol", choices=("json", "ap3000", "ocpp16"), default="json",
                   help="what the pile speaks: our JSON events (HTTP/MQTT), AP3000 over TCP, "
                        "OCPP 1.6J")
    p.add_argument("--device-id", help="AP3000: the device id printed on the board")
    p.add_argument("--charge-point-id", help="OCPP 1.6J: the charge point's own id")
    p.set_defaults(fn=_command("piles", "cmd_piles_add"))
    pl.add_parser("list", help="list piles").set_defaults(fn=_command("piles", "cmd_piles_list"))
    p = pl.add_parser("qr", help="printable QR signs, one PNG per port")
    p.add_argument("--pile", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=_command("piles", "cmd_piles_qr"))

    p = sub.add_parser("refund", help="staff: refund part of a bill")
    p.add_argument("--charge", type=int, required=True)
    p.add_argument("--fen", type=int, required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--key", help="idempotency key (default: from amount and reason)")
    p.set_defaults(fn=_command("money", "cmd_refund"))

    dp = sub.add_parser("disputes").add_subparsers(dest="disputes_command", required=True)
    dp.add_parser("list", help="open and escalated disputes").set_defaults(
        fn=_command("money", "cmd_disputes"))
    p = dp.add_parser("resolve", help="answer a dispute, optionally with a refund")
    p.add_argument("id", type=int)
    p.add_argument("--refund", type=int, default=0, help="fen")
    p.add_argument("--note", required=True)
    p.set_defaults(fn=_command("money", "cmd_disputes"))

    cp = sub.add_parser("coupons").add_subparsers(dest="coupons_command", required=True)
    p = cp.add_parser("issue", help="give a rider a coupon")
    p.add_argument("--rider", type=int, required=True)
    p.add_argument("--fen", type=int, default=0)
    p.add_argument("--percent", type=int, default=0)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--reason", default="")
    p.set_defaults(fn=_command("money", "cmd_coupons_issue"))

    vp = sub.add_parser("vouchers").add_subparsers(dest="vouchers_command", required=True)
    p = vp.add_parser("redeem", help="merchant side: redeem a partner voucher (once)")
    p.add_argument("code")
    p.add_argument("--merchant", default="", help="the merchant redeeming (checked if given)")
    p.set_defaults(fn=_command("money", "cmd_vouchers_redeem"))

    p = sub.add_parser("broadcast", help="a message to the riders' groups at a local time, "
                                         "or with --riders to every rider")
    p.add_argument("--at", help="local time, e.g. '2031-03-20 19:00' (--riders: default now)")
    p.add_argument("--riders", action="store_true",
                   help="every rider in their own chat and language, once each; running the "
                        "same command again resumes it and sends nothing twice")
    p.add_argument("--cause", default="",
                   help="with --riders: a name for this broadcast (default: from the texts and "
                        "time); the same cause is never queued twice for a rider")
    p.add_argument("--zh", required=True, help="the message in Chinese")
    p.add_argument("--en", default="", help="the message in English")
    p.add_argument("--kind", default="notice", choices=["notice", "safety", "maintenance"])
    p.set_defaults(fn=_command("broadcast", "cmd_broadcast"))

    rp = sub.add_parser("report").add_subparsers(dest="report_command", required=True)
    p = rp.add_parser("monthly", help="the monthly satisfaction report: CSV and PNG charts")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--out", required=True, help="directory for figures.csv and the charts")
    p.set_defaults(fn=_command("reports", "cmd_report_monthly"))

    st = sub.add_parser("staff").add_subparsers(dest="staff_command", required=True)
    p = st.add_parser("add", help="make a chat user a technician, supervisor or agent (service)")
    p.add_argument("--platform", required=True,
                   help="telegram | wechat (in the web chat, staff log in: /weblogin or "
                        "staff passwd)")
    p.add_argument("--user", required=True, help="Telegram user id or WeChat openid")
    p.add_argument("--chat", default="", help="chat id if not the user's private chat")
    p.add_argument("--role", required=True, choices=["technician", "supervisor", "agent"])
    p.add_argument("--sites", required=True, help="comma-separated site ids, or *")
    p.add_argument("--hours", default="", help="local on-duty hours, e.g. 08:00-20:00")
    p.add_argument("--name", default="", help="shown to riders, e.g. 王师傅")
    p.set_defaults(fn=_command("staff", "cmd_staff_add"))
    st.add_parser("list", help="staff and their sites").set_defaults(
        fn=_command("staff", "cmd_staff_list"))
    p = st.add_parser("passwd", help="set a staff member's web chat password (argon2); "
                                     "they log in as platform:user")
    p.add_argument("--platform", required=True, help="telegram | wechat")
    p.add_argument("--user", required=True, help="Telegram user id or WeChat openid")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p.set_defaults(fn=_command("staff", "cmd_staff_passwd"))

    ev = sub.add_parser("events").add_subparsers(dest="events_command", required=True)
    p = ev.add_parser("rejected", help="pile events that were refused, with field and reason")
    p.add_argument("--pile", help="only this pile")
    p.add_argument("--since", help="ISO date/time, or an age: 30m, 2h, 7d")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(fn=_command("events", "cmd_events_rejected"))

    wx = sub.add_parser("wechat").add_subparsers(dest="wechat_command", required=True)
    wx.add_parser("menu", help="publish the official account's menu").set_defaults(
        fn=_command("wechat", "cmd_wechat_menu"))

    p = sub.add_parser("simulate", help="run simulated pile controllers against a server")
    p.add_argument("--url", required=True)
    p.add_argument("--piles", type=int, required=True)
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-share", type=float, default=0.0,
                   help="share of charges that end in a fault")
    p.set_defaults(fn=_command("serve", "cmd_simulate"))
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CHARGEBOT_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: "
                               "%(message)s")
    for handler in logging.getLogger().handlers:  # every line has a request id ("-" outside)
        handler.addFilter(RequestIdFilter())
    # Seven INFO lines on importing alembic, in every command: noise.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except CliError as exc:
        print(f"chargebot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
