"""Start-up warm-up: the first-use costs that would otherwise land on the event loop.

One event loop per worker serves every rider, pile and notification, so a first use that
takes seconds stalls all of them (issue 14: a fault notice 4.4 s late behind scipy's import
inside the first settlement). Before the server accepts traffic, and before the notifier and
the scheduler start, one worker thread pays for:

- matplotlib (~1.2 s to import): its font list and the Agg canvas, by drawing a tiny chart
  (the monthly report's charts);
- Pillow's format plugins and fonts, by drawing a tiny annual card (/myyear) and checking it
  the way a rider's photo is checked;
- the gettext catalogs, compiled from the .po files (`bot.i18n.preload`);
- jieba's dictionary (~0.6–1.4 s) and an FAQ index (rank-bm25), for the first question;
- the `holidays` tables behind the festival red packets;
- a full garbage collection, then `gc.freeze()`: the start-up's ~300,000 long-lived objects
  (modules, fonts, dictionaries) leave the collector's view. Unfrozen, each full collection
  walked them all, 0.2–0.3 s here on whichever thread triggered it, often the event loop in a
  rider's request; frozen, ~0.03 s.

numpy and scipy come with `core.maintenance`, which `bot.scheduler` imports at the top, so
they load with the server's modules, before the event loop runs.

matplotlib is imported inside `_charts` on purpose: this worker thread is where it loads, while
the event loop stays free for the rest of the start-up. What uses these later (charts, the card,
photo checks, FAQ index builds, fits) runs in worker threads too; the warm-up makes the first
time as quick as the others.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from io import BytesIO

from aiohttp import web

from bot import i18n
from bot.annual_card import card
from core.engagement import redpackets, reports
from core.engagement.annual import Year
from core.support import faq, photos

log = logging.getLogger("chargebot.warmup")

_lock = threading.Lock()
_done = False


def _charts() -> None:
    # Here, in the warm-up's thread, not at the top: see the module's docstring.
    import matplotlib
    from matplotlib.figure import Figure

    font = reports.cjk_font()  # builds or reads matplotlib's font list
    with matplotlib.rc_context({"font.family": [font, "DejaVu Sans"] if font else
                                ["DejaVu Sans"]}):
        fig = Figure(figsize=(2, 1))
        fig.add_subplot().set_title("warm-up")
        fig.savefig(BytesIO(), format="png", dpi=40)


def _images() -> None:
    png = card(Year(2000, 1, 1.0, 0.2, 50, None, 8.0, 0.5), "zh_CN", "warm-up")
    photos.check(png, max_bytes=len(png))


def _faq() -> None:
    faq.Index(faq.load_entries()).answer("扫码充电 how to pay")


def _holidays() -> None:
    redpackets.festivals(datetime.now(UTC).year)


def warm() -> bool:
    """Pay every first-use cost once per process; False when an earlier call already did."""
    global _done
    with _lock:
        if _done:
            return False
        i18n.preload()
        _faq()
        _holidays()
        _images()
        _charts()
        gc.collect()
        gc.freeze()
        _done = True
        return True


async def ready(_app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the start-up goes on (and traffic comes in) once the warm-up is done."""
    started = time.perf_counter()
    if await asyncio.to_thread(warm):
        log.info("warmed up in %.2f s", time.perf_counter() - started)
    yield
