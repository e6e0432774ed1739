"""Pixel conversions shared by every stage: EXIF orientation, any Pillow mode to 8 bits,
transparency composited on a background, integer box reduction.

  * `exif_orientation(img)`: tag 0x0112 as 1..8; 1 when absent, invalid or the EXIF block is
    corrupt. `orient(img, o)` applies it with the same transposes as `ImageOps.exif_transpose`.
  * `to_8bit`: `1` -> L; 16-bit (`I;16*`) keeps the high byte (v >> 8); `I` (32-bit int) and `F`
    (float) are mapped to 0..255: values already in 0..255 are kept, 0..65535 are shifted by 8
    bits, floats in 0..1 are scaled by 255, anything else is min-max stretched (NaN/inf -> 0).
    `P`, `CMYK` (also YCCK JPEGs), `YCbCr`, `LAB`, `HSV`, `RGBX` -> RGB; anything with alpha or a
    `transparency` key -> RGBA (or LA).
  * `composite` / `flatten`: L/LA/RGB/RGBA (any mode for `flatten`) -> L or RGB, alpha composited
    on `background` (default `limits.BACKGROUND`, white), plus whether alpha was present.
  * `composite_visible`: the same, except for a cut-out that the background swallows (a white icon
    on transparency composited on white is one flat colour): transparency covers more than 2% of
    the canvas (opaque share < CUTOUT_MAX_OPAQUE), at least EMPTY_OPAQUE of it is opaque, and the
    composite is flat — then it is composited on the `contrasting` background (black for a light
    one) instead, so that what is embedded shows the shape. Flat here: every channel spans fewer
    than 2 x FLAT_CONTRAST levels (so its standard deviation is under FLAT_CONTRAST), one cheap pass
    (`getextrema`) over the composite. Stage 1 applies the same rule with the inputs it computes
    anyway (`swallowed`: its content signals' opaque_fraction and its analysis image's standard
    deviation, `curation.imaging.analyse`). CUTOUT_MAX_OPAQUE and EMPTY_OPAQUE are defined here once;
    `curation.quality.checks` imports them (its cutout kind and empty canvas); the flat level is
    `DedupConfig.min_contrast` (5).
  * `box_reduce`: `Image.reduce` by integer factors (alpha-aware) to >= 2 x size per side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from curation.imaging.limits import BACKGROUND

CUTOUT_MAX_OPAQUE = 0.98  # opaque share below which an image with alpha is a cut-out (quality's cutout kind)
EMPTY_OPAQUE = 0.001  # opaque share below which a cut-out shows nothing on any background
FLAT_CONTRAST = 5.0  # grey standard deviation below which a composite is one flat colour

_ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 of `img` (1 when absent, invalid or the EXIF block is corrupt)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block only loses the orientation
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def orient(img: Image.Image, orientation: int) -> Image.Image:
    """Apply EXIF orientation 1..8 (same transposes as `ImageOps.exif_transpose`)."""
    method = _ORIENT_TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(out)
    a = arr.astype(np.float64)
    a[~np.isfinite(a)] = 0.0
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        a = np.floor(a / 256.0)
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_8bit(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to L, LA, RGB or RGBA (alpha / transparency kept as RGBA or LA)."""
    mode = img.mode
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(img)
    if mode == "1":
        return img.convert("L")
    transparent = "transparency" in img.info
    if mode in ("L", "RGB", "P") and transparent or mode in ("PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "La":
        return img.convert("LA")
    if mode in ("L", "RGB", "LA", "RGBA"):
        return img
    return img.convert("RGB")  # P, CMYK (and YCCK JPEGs), YCbCr, LAB, HSV, RGBX


def composite(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, bool]:
    """(L/RGB image, had_alpha) from an L/LA/RGB/RGBA image: alpha composited on `background`."""
    if img.mode in ("LA", "RGBA"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # no copy of an RGBA image
        out = Image.new("RGB", rgba.size, tuple(background))
        out.paste(rgba, (0, 0), rgba)  # an RGBA mask is its alpha band (no band copy)
        return out, True
    return img, False


def contrasting(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black for a light background (ITU-R 601 luma >= 128), white for a dark one."""
    r, g, b = background
    return (0, 0, 0) if 299 * r + 587 * g + 114 * b >= 128_000 else (255, 255, 255)


def opaque_share(img: Image.Image) -> float:
    """Share of the pixels of an LA/RGBA image with alpha >= 128 (1.0 without alpha)."""
    if img.mode not in ("LA", "RGBA"):
        return 1.0
    hist = img.getchannel("A").histogram()
    return sum(hist[128:]) / max(1, img.width * img.height)


def swallowed(opaque: float | None, flat_std: float) -> bool:
    """A cut-out (EMPTY_OPAQUE <= `opaque` < CUTOUT_MAX_OPAQUE) whose composite has a grey standard
    deviation `flat_std` under FLAT_CONTRAST: the background swallowed it."""
    return opaque is not None and EMPTY_OPAQUE <= opaque < CUTOUT_MAX_OPAQUE and flat_std < FLAT_CONTRAST


def _flat(img: Image.Image) -> bool:
    """Every channel of an L/RGB image spans fewer than 2 x FLAT_CONTRAST levels."""
    ext = img.getextrema()
    bands = [ext] if img.mode == "L" else ext
    return all(hi - lo < 2 * FLAT_CONTRAST for lo, hi in bands)  # type: ignore[operator, misc]


def composite_visible(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, bool]:
    """`composite`, on the `contrasting` background when the image is a cut-out that `background`
    swallows (module docstring). Costs one `getextrema` pass per image with alpha."""
    flat, had_alpha = composite(img, background)
    if had_alpha and _flat(flat) and swallowed(opaque_share(img), 0.0):
        flat, _ = composite(img, contrasting(background))
    return flat, had_alpha


def flatten(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, bool]:
    """Return `(image in mode L or RGB, had_alpha)`; transparency is composited on `background`."""
    return composite(to_8bit(img), background)


def box_reduce(img: Image.Image, analysis_size: int) -> Image.Image:
    """Integer box reduction (`Image.reduce`) of a large L/LA/RGB/RGBA image to >= 2 x
    analysis_size per side (identity for images smaller than 4 x analysis_size)."""
    kx, ky = max(1, img.width // (2 * analysis_size)), max(1, img.height // (2 * analysis_size))
    return img.reduce((kx, ky)) if kx > 1 or ky > 1 else img
