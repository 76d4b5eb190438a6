"""The few WeChat server APIs we use, over aiohttp, with one shared access token.

wechatpy's own client is synchronous and hard-codes the real host for the token, so the token is
ours: cached in the database for every worker, refreshed by one worker at a time (a conditional
UPDATE takes the refresh lease), and refreshed once more when WeChat says it expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
from sqlalchemy import CursorResult, inspect, or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from core.config_sections import WechatSettings
from core.db import insert_ignore, transaction, utcnow
from notifications.wechat_store import WechatToken

log = logging.getLogger("chargebot.wechat")
TOKEN_ERRORS = {40001, 40014, 42001}  # invalid, malformed, expired access token
RATE_LIMITED = {45009, 45047, 45011}  # API quota, per-user CS limit, frequency
WINDOW_CLOSED = 45015  # the rider has not written for 48 h (or unfollowed)
RETRYABLE = {-1, *RATE_LIMITED}
REFRESH_LEASE_S = 15
EARLY_S = 300  # refresh five minutes before WeChat's expiry


class WechatError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"wechat errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class MediaTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"media over {limit} bytes")
        self.limit = limit


def _error_of(raw: bytes) -> tuple[int, str]:
    """The errcode of a JSON answer where a file was expected (a video's URL counts as -1)."""
    try:
        data = json.loads(raw)
        return int(data["errcode"]) or -1, str(data.get("errmsg", ""))
    except (ValueError, TypeError, KeyError, AttributeError):
        return -1, "not a media file"


class WechatClient:
    def __init__(self, sm: async_sessionmaker[AsyncSession], settings: WechatSettings,
                 http: aiohttp.ClientSession | None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """`http` may be None until the app's startup sets it, before the first call."""
        self.sm = sm
        self.settings = settings
        self.http = http
        self.clock = clock
        self.base = settings.api_base_url.rstrip("/")
        self.appid = settings.appid or ""

    def _http(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise RuntimeError("WechatClient used before its HTTP session was set")
        return self.http

    async def _read(self) -> WechatToken | None:
        async with self.sm() as session:
            return await session.get(WechatToken, self.appid)

    async def access_token(self, *, stale: str | None = None) -> str:
        """A valid token; `stale` is one WeChat just rejected, which forces a refresh."""
        deadline = asyncio.get_running_loop().time() + REFRESH_LEASE_S + 5
        while True:
            now = self.clock()
            row = await self._read()
            if (row is not None and row.access_token and row.expires_at is not None
                    and row.expires_at > now and row.access_token != stale):
                return row.access_token
            if await self._take_lease(now, stale):
                return await self._refresh()
            if asyncio.get_running_loop().time() > deadline:
                raise WechatError(-1, "timed out waiting for another worker's token refresh")
            await asyncio.sleep(0.05)

    async def _take_lease(self, now: datetime, stale: str | None) -> bool:
        """Only one worker at a time, and only while the stored token still needs replacing:
        a worker that read the table just before another finished refreshing must not refresh
        again."""
        async with transaction(self.sm) as session:
            dialect = session.get_bind().dialect.name
            await session.execute(insert_ignore(dialect, inspect(WechatToken).local_table).values(
                appid=self.appid))
            result = await session.execute(
                update(WechatToken)
                .where(col(WechatToken.appid) == self.appid,
                       or_(col(WechatToken.refreshing_until).is_(None),
                           col(WechatToken.refreshing_until) < now),
                       or_(col(WechatToken.access_token).is_(None),
                           col(WechatToken.expires_at).is_(None),
                           col(WechatToken.expires_at) <= now,
                           col(WechatToken.access_token) == (stale or "")))
                .values(refreshing_until=now + timedelta(seconds=REFRESH_LEASE_S))
            )
            return (cast(CursorResult[Any], result).rowcount or 0) == 1

    async def _refresh(self) -> str:
        try:
            secret = self.settings.secret.get_secret_value() if self.settings.secret else ""
            async with self._http().get(f"{self.base}/cgi-bin/token", params={
                "grant_type": "client_credential", "appid": self.appid, "secret": secret,
            }) as r:
                data = await r.json(content_type=None)
            if "access_token" not in data:
                raise WechatError(int(data.get("errcode", -1)), str(data.get("errmsg", "")))
            token = str(data["access_token"])
            expires = self.clock() + timedelta(
                seconds=max(60, int(data.get("expires_in", 7200)) - EARLY_S))
            async with transaction(self.sm) as session:
                await session.execute(update(WechatToken)
                                      .where(col(WechatToken.appid) == self.appid)
                                      .values(access_token=token, expires_at=expires,
                                              refreshing_until=None))
            log.info("wechat access token refreshed")
            return token
        except BaseException:
            async with transaction(self.sm) as session:
                await session.execute(update(WechatToken)
                                      .where(col(WechatToken.appid) == self.appid)
                                      .values(refreshing_until=None))
            raise

    async def call(self, path: str, payload: dict[str, Any] | None = None, *,
                   method: str = "POST", params: dict[str, str] | None = None) -> dict[str, Any]:
        token = await self.access_token()
        for attempt in (1, 2):
            query = {"access_token": token, **(params or {})}
            # WeChat wants UTF-8 text, not \uXXXX escapes (it may show them literally).
            body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
            async with self._http().request(method, f"{self.base}{path}", params=query,
                                            data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                data = await r.json(content_type=None)
            code = int(data.get("errcode", 0) or 0)
            if code in TOKEN_ERRORS and attempt == 1:
                token = await self.access_token(stale=token)
                continue
            if code:
                raise WechatError(code, str(data.get("errmsg", "")))
            return data
        raise AssertionError("unreachable")

    async def media(self, media_id: str, *, max_bytes: int | None = None) -> bytes:
        """A temporary media file (a photo a rider sent: kept by WeChat for 3 days).

        WeChat answers an error as JSON instead of the file, so the content type tells them
        apart. Reading stops past `max_bytes` (MediaTooLarge) rather than holding any size.
        """
        token = await self.access_token()
        for attempt in (1, 2):
            async with self._http().get(f"{self.base}/cgi-bin/media/get",
                                        params={"access_token": token, "media_id": media_id}) as r:
                kind = r.content_type
                if kind != "application/json" and not kind.startswith("text/"):
                    if max_bytes is not None and (r.content_length or 0) > max_bytes:
                        raise MediaTooLarge(max_bytes)
                    body = bytearray()
                    async for chunk in r.content.iter_chunked(64 * 1024):
                        body += chunk
                        if max_bytes is not None and len(body) > max_bytes:
                            raise MediaTooLarge(max_bytes)
                    return bytes(body)
                code, message = _error_of(await r.content.read(64 * 1024))
            if code in TOKEN_ERRORS and attempt == 1:
                token = await self.access_token(stale=token)
                continue
            raise WechatError(code, message)
        raise AssertionError("unreachable")

    async def send_custom(self, openid: str, content: str) -> None:
        await self.call("/cgi-bin/message/custom/send", {
            "touser": openid, "msgtype": "text", "text": {"content": content},
        })

    async def send_template(self, openid: str, template_id: str,
                            data: dict[str, dict[str, str]], url: str | None = None) -> int:
        body: dict[str, Any] = {"touser": openid, "template_id": template_id, "data": data}
        if url:
            body["url"] = url
        return int((await self.call("/cgi-bin/message/template/send", body)).get("msgid", 0))

    async def create_menu(self, menu: dict[str, Any]) -> None:
        await self.call("/cgi-bin/menu/create", menu)

    async def qr_ticket(self, scene: str) -> dict[str, Any]:
        """A permanent parametric QR for a scene (e.g. `port_P0001-03`): {ticket, url}."""
        return await self.call("/cgi-bin/qrcode/create", {
            "action_name": "QR_LIMIT_STR_SCENE",
            "action_info": {"scene": {"scene_str": scene}},
        })
