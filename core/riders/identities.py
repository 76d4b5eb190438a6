"""Riders and their chat identities: one rider, one identity per platform."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from core.db import saved_id
from core.riders.tables import DEFAULT_LANGUAGE, LANGUAGES, Identity, Rider


def language_from_hint(hint: str | None) -> str:
    """Telegram's language_code (e.g. 'en-US', 'zh-hans') → our catalog; Chinese by default."""
    if hint and hint.lower().startswith("en"):
        return "en"
    return DEFAULT_LANGUAGE


async def rider_for(
    session: AsyncSession, platform: str, external_id: str, *,
    chat_id: str | None = None, display_name: str = "", language_hint: str | None = None,
    seen_at: datetime | None = None,
) -> Rider:
    """The rider behind a chat identity, created on first contact; `seen_at` marks inbound."""
    row = (
        await session.execute(
            select(Rider, Identity)
            .join(Identity, col(Identity.rider_id) == col(Rider.id))
            .where(col(Identity.platform) == platform, col(Identity.external_id) == external_id)
        )
    ).first()
    if row is not None:
        rider, identity = row
        if chat_id and identity.chat_id != chat_id:
            identity.chat_id = chat_id
        if rider.last_platform != platform:
            rider.last_platform = platform
        if seen_at is not None:
            identity.last_inbound_at = seen_at
        return rider
    rider = Rider(
        display_name=display_name[:64], language=language_from_hint(language_hint),
        last_platform=platform,
    )
    session.add(rider)
    await session.flush()
    try:
        async with session.begin_nested():
            session.add(
                Identity(
                    rider_id=saved_id(rider), platform=platform, external_id=external_id,
                    chat_id=chat_id or external_id, last_inbound_at=seen_at,
                )
            )
    except IntegrityError:
        # The same person's second message raced the first: use the identity that won.
        await session.delete(rider)
        return await rider_for(session, platform, external_id, chat_id=chat_id, seen_at=seen_at)
    return rider


async def chat_rider(session: AsyncSession, platform: str, chat_id: str | int, name: str,
                     language: str) -> int:
    """A group chat (the staff desk, a riders' group) as an outbox recipient: a rider row whose
    only identity is that chat. Created on first use."""
    external = f"chat:{chat_id}"
    found = (await session.execute(select(col(Identity.rider_id)).where(
        col(Identity.platform) == platform, col(Identity.external_id) == external))).scalar()
    if found is not None:
        return found
    rider = await rider_for(session, platform, external, chat_id=str(chat_id), display_name=name)
    rider.language = language
    return saved_id(rider)


async def identity_for(session: AsyncSession, rider_id: int, platform: str) -> Identity | None:
    return (
        await session.execute(
            select(Identity).where(col(Identity.rider_id) == rider_id,
                                   col(Identity.platform) == platform)
        )
    ).scalars().first()


async def set_language(session: AsyncSession, rider: Rider, language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(language)
    rider.language = language
