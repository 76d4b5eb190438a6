"""The yearly charging report as an image card (Pillow), for sharing."""

from __future__ import annotations

from io import BytesIO

from PIL import Image, ImageDraw

from bot.i18n import tr
from bot.qr import font
from core.engagement.annual import Year

WIDTH, HEIGHT = 720, 960
GREEN, INK, PALE = (22, 128, 84), (30, 30, 30), (236, 246, 240)


def card(year: Year, lang: str, name: str = "") -> bytes:
    """A PNG. Without a CJK font on the machine the card is drawn in English."""
    big, cjk = font(72)
    mid, _ = font(34)
    small, _ = font(26)
    lang = lang if cjk else "en"
    img = Image.new("RGB", (WIDTH, HEIGHT), PALE)
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, WIDTH, 170), fill=GREEN)
    d.text((40, 40), tr(lang, "My {year} of charging", year=year.year), font=mid, fill="white")
    if name:
        d.text((40, 100), name[:24], font=small, fill="white")
    rows = [
        (str(year.charges), tr(lang, "charges")),
        (f"{year.hours:.0f}", tr(lang, "hours on the plug")),
        (f"{year.energy_kwh:.1f}", tr(lang, "kWh of energy")),
        (f"{year.km:,.0f}", tr(lang, "km ridden (estimate)")),
        (f"{year.co2_kg:,.0f}", tr(lang, "kg CO₂ avoided vs a petrol scooter")),
    ]
    y = 210
    for value, label in rows:
        d.text((40, y), value, font=big, fill=GREEN)
        d.text((40, y + 84), label, font=small, fill=INK)
        y += 140
    out = BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
