"""`chargebot sites import FILE.csv`."""

from __future__ import annotations

import argparse
import asyncio
import csv
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from bot.cli.common import CliError, settings_for, with_session
from core.piles import fleet as piles


def cmd_sites_import(args: argparse.Namespace) -> None:
    settings = settings_for(args)
    path = Path(args.file)
    if not path.exists():
        raise CliError(f"no such file: {path}")
    rows: list[tuple[dict[str, str], float, float]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"id", "name", "address", "lat", "lon", "kind", "tariff"}
        if not need <= set(reader.fieldnames or []):
            raise CliError(f"{path}: columns must be {','.join(sorted(need))}")
        for i, row in enumerate(reader, start=2):
            try:
                lat, lon = float(row["lat"]), float(row["lon"])
            except ValueError:
                raise CliError(f"{path}:{i}: lat/lon must be numbers") from None
            if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not row["id"]:
                raise CliError(f"{path}:{i}: bad id or coordinates")
            if row["tariff"] and row["tariff"] not in settings.billing.tariffs:
                raise CliError(f"{path}:{i}: unknown tariff {row['tariff']!r}")
            rows.append((row, lat, lon))

    async def save(session: AsyncSession) -> None:
        for r, lat, lon in rows:
            await piles.add_site(session, r["id"], r["name"], lat, lon,
                                 address=r["address"], kind=r["kind"] or "community",
                                 tariff=r["tariff"] or settings.billing.default_tariff)

    asyncio.run(with_session(settings, save))
    print(f"imported {len(rows)} sites")
