"""Printable port signs (the Telegram QR, the WeChat scene QR, the code in large text), and the
QR codes of WeChat Pay's Native orders."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import qrcode
from PIL import Image, ImageDraw, ImageFont

# A CJK font if the machine has one (Debian's fonts-noto-cjk); otherwise the sign is in English.
CJK_FONTS = [
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
]
QR_PX = 420
MARGIN = 40


def telegram_link(bot_username: str, code: str) -> str:
    return f"https://t.me/{bot_username}?start=port_{code}"


def font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    for path in CJK_FONTS:
        if Path(path).exists():
            return ImageFont.truetype(path, size), True
    return ImageFont.load_default(size=size), False


def _qr(data: str) -> Image.Image:
    q = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2)
    q.add_data(data)
    q.make(fit=True)
    return q.make_image(fill_color="black", back_color="white").get_image().convert("RGB").resize(
        (QR_PX, QR_PX), Image.Resampling.NEAREST)


def port_sign(code: str, telegram_url: str, wechat_url: str | None) -> Image.Image:
    qrs = [("Telegram", _qr(telegram_url))]
    if wechat_url:
        qrs.append(("微信 WeChat", _qr(wechat_url)))
    width = max(760, MARGIN + len(qrs) * (QR_PX + MARGIN))
    height = 760
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    big, cjk = font(120)
    small, _ = font(34)
    title = "扫码充电 · Scan to charge" if cjk else "Scan to charge"
    draw.text((width / 2, 40), title, font=small, fill="black", anchor="mt")
    left = (width - len(qrs) * (QR_PX + MARGIN) + MARGIN) // 2
    for i, (label, qr) in enumerate(qrs):
        x = left + i * (QR_PX + MARGIN)
        img.paste(qr, (x, 100))
        shown = label if cjk else label.replace("微信 ", "")
        draw.text((x + QR_PX / 2, 100 + QR_PX + 16), shown, font=small, fill="black", anchor="mt")
    # Riders without a scanner type the code in the chat.
    size = 120
    while draw.textlength(code, font=big) > width - 2 * MARGIN and size > 40:
        size -= 10
        big, _ = font(size)
    draw.text((width / 2, height - 40), code, font=big, fill="black", anchor="mb")
    return img


def write_sign(out_dir: Path, code: str, telegram_url: str, wechat_url: str | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{code}.png"
    port_sign(code, telegram_url, wechat_url).save(path)
    return path


def qr_png(data: str, *, box_px: int = 8) -> bytes:
    """`data` as a QR code PNG: whole pixels per module and the standard 4-module quiet zone,
    so a phone's camera reads it off a screen."""
    q = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=box_px,
                      border=4)
    q.add_data(data)
    q.make(fit=True)
    buf = BytesIO()
    q.make_image(fill_color="black", back_color="white").get_image().convert("1").save(
        buf, format="PNG", optimize=True)
    return buf.getvalue()
