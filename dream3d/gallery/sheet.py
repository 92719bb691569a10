"""The contact sheet: every run's latest preview grid tiled into one PNG with its prompt,
for CI logs and quick looks where no browser is at hand."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from dream3d.atomic import atomic_paths
from dream3d.gallery.collect import RunCard

TILE_W, IMAGE_H, CAPTION_H, COLUMNS = 384, 192, 40, 3
BACKGROUND, EMPTY = (250, 250, 248), (200, 200, 200)
STATE_COLOURS = {"done": (46, 125, 50), "failed": (198, 40, 40)}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    # One line of printable characters, cut first to what could fit (a 1 MB prompt is cut once, not
    # one character at a time).
    text = "".join(ch if ch.isprintable() else " " for ch in text[:4 * width])
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _preview(path: Path, warn: Callable[[str], None] | None) -> Image.Image | None:
    """The preview scaled into a tile, or None (with a warning) when it is not a readable image."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = min(TILE_W / im.width, IMAGE_H / im.height)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            # Nearest keeps small previews' pixels crisp instead of blurring them.
            return im.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what Pillow raises on bad files
        if warn is not None:
            warn(f"left the preview {path} out of the contact sheet: {type(e).__name__}: {str(e)[:120]}")
        return None


def _tile(card: RunCard, font, small, warn: Callable[[str], None] | None = None) -> Image.Image:
    tile = Image.new("RGB", (TILE_W, IMAGE_H + CAPTION_H), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    im = _preview(card.preview, warn) if card.preview is not None else None
    if im is not None:
        tile.paste(im, ((TILE_W - im.width) // 2, (IMAGE_H - im.height) // 2))
    else:
        draw.rectangle([0, 0, TILE_W - 1, IMAGE_H - 1], fill=EMPTY)
        draw.text((TILE_W // 2, IMAGE_H // 2), "no preview", fill=(90, 90, 90), font=small, anchor="mm")
    draw.text((6, IMAGE_H + 3), _fit(card.prompt or card.name, draw, font, TILE_W - 12), fill=(20, 20, 20), font=font)
    detail = card.state
    if "object_accuracy" in card.eval and "colour_accuracy" in card.eval:
        scores = card.eval
        detail += f"  object {100 * scores['object_accuracy']:.0f}%  colour {100 * scores['colour_accuracy']:.0f}%"
    if card.error:
        detail += f"  {card.error}"
    colour = STATE_COLOURS.get(card.state, (90, 90, 90))
    draw.text((6, IMAGE_H + 22), _fit(detail, draw, small, TILE_W - 12), fill=colour, font=small)
    return tile


def write_contact_sheet(cards: list[RunCard], path: Path, warn: Callable[[str], None] | None = None) -> Path:
    font, small = _font(15), _font(12)
    cols = max(1, min(COLUMNS, len(cards)))
    rows = max(1, -(-len(cards) // cols))
    th = IMAGE_H + CAPTION_H
    sheet = Image.new("RGB", (cols * TILE_W + (cols + 1) * 8, rows * th + (rows + 1) * 8), (225, 225, 222))
    for i, card in enumerate(cards):
        r, c = divmod(i, cols)
        sheet.paste(_tile(card, font, small, warn), (8 + c * (TILE_W + 8), 8 + r * (th + 8)))
    path = Path(path)
    with atomic_paths([path]) as (tmp,):
        sheet.save(tmp, format="PNG")
    return path
