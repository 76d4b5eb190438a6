"""Secrets the service makes for itself, once, and keeps in its database so every worker
agrees on them (the photo-link key when `support.link_secret` is unset)."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel, col

from core.db import transaction

PHOTO_LINKS = "photo_links"


class AppSecret(SQLModel, table=True):
    __tablename__ = "app_secrets"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=128)


async def get_or_create(sm: async_sessionmaker[AsyncSession], name: str) -> str:
    """The stored secret `name`; the first caller makes it (32 random bytes). Two workers
    starting at once both try to insert; the loser reads the winner's."""
    for _ in range(2):
        async with transaction(sm) as session:
            value = await session.scalar(
                select(col(AppSecret.value)).where(col(AppSecret.name) == name))
            if value is not None:
                return value
        try:
            async with transaction(sm) as session:
                made = secrets.token_hex(32)
                session.add(AppSecret(name=name, value=made))
            return made
        except IntegrityError:
            continue
    raise RuntimeError(f"could not store or read the {name} secret")
