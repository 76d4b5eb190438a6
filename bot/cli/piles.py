"""`chargebot piles add|list|qr`: registering piles and printing their ports' QR signs."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.cli.common import CliError, settings_for, with_session
from bot.cli.wechat import wechat_client
from bot.qr import telegram_link, write_sign
from core.piles import fleet as piles
from core.piles.tables import Pile, PileProtocol, Port
from notifications.wechat_client import WechatError


def cmd_piles_add(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    if not re.match(r"^P\d{4,}$", args.id):
        raise CliError("--id must look like P0001")
    protocol = PileProtocol(args.protocol)
    wire_id = {PileProtocol.ap3000: args.device_id,
               PileProtocol.ocpp16: args.charge_point_id}.get(protocol)
    if protocol == PileProtocol.ap3000 and not wire_id:
        raise CliError("an AP3000 pile needs --device-id (printed on the board)")
    if protocol == PileProtocol.ocpp16 and not wire_id:
        raise CliError("an OCPP pile needs --charge-point-id (the id it connects with)")

    async def add(session: AsyncSession) -> Pile:
        if await session.get(Pile, args.id):
            raise CliError(f"pile {args.id} exists already")
        try:
            return await piles.add_pile(session, args.site, args.id, args.ports, model=args.model,
                                        secret=args.secret, protocol=protocol, wire_id=wire_id)
        except ValueError as exc:
            raise CliError(str(exc)) from None

    pile = asyncio.run(with_session(settings, add))
    print(f"pile {pile.id} added with {pile.ports} ports at site {pile.site_id}")
    # Printed once so the installer can program the controller; never logged.
    if protocol == PileProtocol.ap3000:
        print(f"AP3000 device id {wire_id}: the board connects to port "
              f"{settings.piles.ap3000.port}; AP3000 has no password (docs/operations.md)")
    elif protocol == PileProtocol.ocpp16:
        print(f"OCPP 1.6J: {settings.server.public_url.rstrip('/').replace('http', 'ws', 1)}"
              f"/ocpp/{wire_id}, Basic auth user {wire_id}")
        print(f"password: {pile.secret}")
    else:
        print(f"secret: {pile.secret}")


def cmd_piles_list(args: argparse.Namespace) -> None:
    settings = settings_for(args)

    async def load(session: AsyncSession) -> list[Pile]:
        return list((await session.execute(select(Pile).order_by(col(Pile.id)))).scalars())

    for p in asyncio.run(with_session(settings, load)):
        state = "online" if p.online else "offline"
        print(f"{p.id}\t{p.site_id}\t{p.ports} ports\t{p.model}\t{state}")


def cmd_piles_qr(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    out = Path(args.out)

    async def make() -> list[tuple[str, Path, str | None]]:
        async def ports(session: AsyncSession) -> list[str]:
            return list((await session.execute(
                select(col(Port.code)).where(col(Port.pile_id) == args.pile)
                .order_by(col(Port.number))
            )).scalars())

        codes = await with_session(settings, ports)
        if not codes:
            raise CliError(f"unknown pile {args.pile}")
        wechat = None
        if settings.wechat.secret is not None and settings.wechat.appid:
            wechat = await wechat_client(settings)
        made: list[tuple[str, Path, str | None]] = []
        try:
            for code in codes:
                wx_url = image = None
                if wechat is not None:
                    try:
                        ticket = await wechat[0].qr_ticket(f"port_{code}")
                    except WechatError as exc:
                        raise CliError(f"WeChat QR for {code} failed: {exc}") from None
                    wx_url = ticket["url"]
                    image = ("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="
                             + ticket["ticket"])
                tg = telegram_link(settings.telegram.bot_username, code)
                made.append((code, write_sign(out, code, tg, wx_url), image))
        finally:
            if wechat is not None:
                await wechat[2].close()
                await wechat[1].dispose()
        return made

    for code, path, image in asyncio.run(make()):
        print(f"{code}\t{path}" + (f"\t{image}" if image else ""))
