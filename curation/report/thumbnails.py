"""Thumbnail tiles of a report: open an image, fit it in a square tile, encode it as a data URI.

`open_image` is the default image loader (reads through `curation.storage`, refuses decompression
bombs, asks JPEG for a reduced draft, applies EXIF orientation). `render_tile` fits any PIL image
in a `THUMB_PX` square as RGB (transparency composited on a checkerboard, 16-bit and float images
stretched to 8 bits); `placeholder_tile` draws the tile of an image that cannot be shown;
`encode_image` returns the smaller of its JPEG and PNG data URIs.

`Thumbnailer` renders the tiles of one report: it caches by image id (a tile shown in two
sections is loaded once), counts tiles against a budget (`tile` returns None once it is spent) and
turns every loading failure into a placeholder tile, so a report never fails on an image.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from curation import storage
from curation.imaging.limits import MAX_PIXELS
from curation.imaging.policy import decode_oriented
from curation.report.spec import THUMB_PX, ImageLoader


@dataclass(frozen=True)
class Thumb:
    """One rendered thumbnail tile.

    `image` is the RGB tile as rendered (transparency already composited), `data_uri` its encoded
    form; `ok` is False for a placeholder (the image could not be loaded or never decoded), in which
    case `note` says why.
    """

    image_id: str
    caption: str
    image: Image.Image
    data_uri: str
    ok: bool
    note: str = ""
    title: str = ""


def open_image(uri: str, *, max_pixels: int = MAX_PIXELS, draft_px: int = 2 * THUMB_PX) -> Image.Image:
    """Default `load_image`: read `uri` through `curation.storage` and decode it for a thumbnail,
    through the one image-open policy of every stage (`curation.imaging.policy`): images above
    `max_pixels` are refused before decoding (DecodeError, decompression_bomb), JPEGs decode as a
    reduced-size draft (a 40-megapixel photo costs a fraction of a full decode), EXIF orientation is
    applied as the inventory measured it."""
    return decode_oriented(storage.read_bytes(uri), max_pixels=max_pixels, draft_size=draft_px)


def _checkerboard(size: tuple[int, int], cell: int = 8) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 255, 214).astype(np.uint8)
    return Image.fromarray(board, "L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparency is composited on a checkerboard, high bit depths
    are stretched to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) * (255.0 / max(hi - lo, 1e-9))
        img = Image.fromarray(np.nan_to_num(arr).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = _checkerboard(rgba.size)
        bg.paste(rgba, (0, 0), rgba)
        return bg
    return img.convert("RGB")


def render_tile(img: Image.Image, size: int = THUMB_PX) -> Image.Image:
    """Fit `img` inside `size` x `size` (aspect ratio kept, never upscaled above 4x) as RGB."""
    if img.mode == "P":  # palette images resize only with NEAREST; RGBA keeps their transparency
        img = img.convert("RGBA")
    w, h = img.size
    scale = min(size / max(w, 1), size / max(h, 1), 4.0)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = to_rgb(img)
    img = img.resize(new, resample, reducing_gap=3.0 if scale < 0.5 else None)
    return to_rgb(img)


def placeholder_tile(text: str, size: int = THUMB_PX) -> Image.Image:
    """A grey tile with a cross and a short text (the error code): stands in for an unloadable image."""
    tile = Image.new("RGB", (size, size), (236, 236, 236))
    draw = ImageDraw.Draw(tile)
    m = max(2, size // 8)
    draw.line((m, m, size - m, size - m), fill=(200, 90, 90), width=max(1, size // 40))
    draw.line((m, size - m, size - m, m), fill=(200, 90, 90), width=max(1, size // 40))
    draw.rectangle((0, 0, size - 1, size - 1), outline=(190, 190, 190))
    try:
        font = ImageFont.load_default(size=max(8, size // 9))
    except Exception:  # noqa: BLE001 - old Pillow without FreeType: bitmap font
        font = ImageFont.load_default()
    words, lines, cur = text.replace("_", " ").split(), [], ""
    for word in words:
        trial = f"{cur} {word}".strip()
        if draw.textlength(trial, font=font) <= size - 6 or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    lines = lines[:3]
    line_h = max(9, size // 8)
    y = size // 2 - line_h * len(lines) // 2
    for line in lines:
        tw = draw.textlength(line, font=font)
        draw.rectangle(((size - tw) / 2 - 2, y - 1, (size + tw) / 2 + 2, y + line_h), fill=(236, 236, 236))
        draw.text(((size - tw) / 2, y), line, fill=(90, 90, 90), font=font)
        y += line_h
    return tile


def encode_image(img: Image.Image, *, quality: int = 82) -> str:
    """A data URI of `img`: JPEG or PNG, whichever is smaller (flat sprites are smaller as PNG)."""
    jbuf, pbuf = io.BytesIO(), io.BytesIO()
    img.save(jbuf, "JPEG", quality=quality, optimize=True)
    img.save(pbuf, "PNG", optimize=True)
    if pbuf.tell() <= jbuf.tell():
        return "data:image/png;base64," + base64.b64encode(pbuf.getvalue()).decode("ascii")
    return "data:image/jpeg;base64," + base64.b64encode(jbuf.getvalue()).decode("ascii")


class Thumbnailer:
    """Renders thumbnails for one report: caches by image id, counts tiles against a budget, and
    turns every loading failure into a placeholder tile (so a report never fails on an image)."""

    def __init__(self, load_image: ImageLoader, max_thumbs: int, size: int = THUMB_PX):
        self.load_image, self.max_thumbs, self.size = load_image, max(0, int(max_thumbs)), size
        self._cache: dict[str, tuple[Image.Image, bool, str, str]] = {}  # id -> tile, ok, note, data URI
        self.rendered = 0
        self.placeholders = 0
        self.failures: dict[str, str] = {}  # image_id -> why its thumbnail is a placeholder

    @property
    def remaining(self) -> int:
        return self.max_thumbs - self.rendered - self.placeholders

    def tile(self, image_id: str, uri: str | None, *, caption: str, title: str = "",
             error_code: str | None = None, missing_note: str | None = None) -> Thumb | None:
        """The tile of one image, or None when the budget is spent. `error_code` (a file that never
        decoded) or `missing_note` (no file to load) give a placeholder without opening anything."""
        cached = self._cache.get(image_id)
        if cached is None:
            if self.remaining <= 0:
                return None
            if error_code is not None or missing_note is not None or not uri:
                note = error_code or missing_note or "no uri"
                tile = placeholder_tile(note, self.size)
                cached = (tile, False, note, encode_image(tile))
            else:
                try:
                    src = self.load_image(uri)
                    tile = render_tile(src, self.size)
                    cached = (tile, True, "", encode_image(tile))
                except Exception as exc:  # noqa: BLE001 - any failure becomes a placeholder
                    note = f"{type(exc).__name__}: {exc}"[:200]
                    self.failures[image_id] = note
                    tile = placeholder_tile("unavailable", self.size)
                    cached = (tile, False, note, encode_image(tile))
            self._cache[image_id] = cached
            if cached[1]:
                self.rendered += 1
            else:
                self.placeholders += 1
        img, ok, note, uri_ = cached
        return Thumb(image_id=image_id, caption=caption, image=img, data_uri=uri_, ok=ok,
                     note=note, title=title)
