"""AP3000 ("DNY") boards over TCP, beside the HTTP webhook and MQTT (DESIGN §6).

`frames` is the wire (pure), `mapping` turns reports into DESIGN §3 events and our commands into
frames (pure, docs/ap3000.md), `gateway` is the TCP server. AP3000 has no authentication: see
docs/operations.md, "AP3000 boards".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bot.context import Context
from bot.piles.ap3000.gateway import Gateway
from core.config_sections import Ap3000Settings

AP3000 = web.AppKey("ap3000_gateway", Gateway)

__all__ = ["AP3000", "Gateway", "setup"]


def _hook_wake_pile(ctx: Context, callback: Callable[[str], None]) -> Callable[[], None]:
    """Be told of `ctx.wake_pile(pile_id)`; returns the undo."""
    ctx.pile_listeners.append(callback)
    return lambda: ctx.pile_listeners.remove(callback)


def setup(app: web.Application, ctx: Context, cfg: Ap3000Settings | None = None
          ) -> Gateway | None:
    """Run the gateway with the app when `[piles.ap3000]` is enabled (else nothing).

    Call after `bot.piles.http.setup`: the gateway stores events with its ingest writer.
    """
    if cfg is None:
        cfg = ctx.settings.piles.ap3000
    if not cfg.enabled:
        return None
    gateway = app[AP3000] = Gateway(app, ctx, cfg)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        unhook = _hook_wake_pile(ctx, gateway.woken)
        try:
            yield
        finally:
            unhook()
            await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    return gateway
