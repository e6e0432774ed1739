"""Content signals of one decoded frame: what kind of picture it is, measured over its opaque pixels.

`content_signals(img, frame, size)` is called once per image by `analyse._decode_and_measure`, in
the same decode as every other raw_inventory measurement, on the 8-bit frame (L/LA/RGB/RGBA, after
the integer box reduction, BEFORE transparency is composited). It returns CONTENT_COLUMNS:

  opaque_fraction   share of pixels with alpha >= 128 (1.0 without alpha): a cut-out sprite on a
                    transparent canvas is ~0.2-0.7, an empty transparent canvas ~0.
  opaque_brightness mean grey (ITU-R 601 luma, 0..255) of the OPAQUE pixels only: a white icon on
                    transparency is bright here, but it is the icon, not a blown-out page.
  opaque_contrast   standard deviation of that grey; opaque_entropy its 256-bin entropy in bits;
  opaque_p05/p95    its 5th / 95th percentiles: an over-exposed photo has no dark tones left
                    (p05 high), an under-exposed one no light tones (p95 low), while drawn art on
                    white keeps dark outlines and a night photo keeps its highlights.
  n_colors          distinct colours among the opaque pixels, quantised to 5 bits per channel
                    (32,768 bins): flat-colour art has tens to a few hundred, photos thousands.
  top_color_share   share of the opaque pixels in the most common (quantised) colour: the canvas
                    of a near-empty page is > 0.98, a poster-like graphic 0.2-0.6.
  ink_fraction      share of ALL pixels that are opaque and differ from the dominant colour by more
                    than 24 grey levels or are transparent-vs-opaque edges: how much is drawn.
  edge_sharpness    crispness of the strongest edges, scale-free: mean of the top 1% of
                    |horizontal/vertical step| between neighbours divided by the p99-p1 grey range
                    of the picture (0..1). A hard edge steps its full height in one pixel (~1 for
                    drawn art, 0.3-0.7 for focused photos); a blur of sigma s pixels spreads it over
                    ~2.5 s pixels (a tenth or less). Measured where `native_sharpness` is; null
                    when the grey range is under MIN_RANGE (a blank or clipped frame has no edge).
  native_sharpness  variance of the 4-neighbour Laplacian of the composited grey at NATIVE scale
                    or, for frames larger than `size` on the short side, after an integer box
                    reduction to a short side in [size, 2 size): never after upscaling (a 32 px
                    icon is measured at 32 px, not blown up to the analysis size).
  jpeg_quality      libjpeg quality (1..100) estimated from the file's luminance quantisation
                    table (header only, free); null for other formats. Quality 4-10 re-encodes
                    carry 5-10x the standard table; camera and web JPEGs are 70-98.

Signals are computed on a nearest-neighbour subsample of at most SIGNAL_SIDE pixels per side for
the colour/alpha statistics (exact colours, no blending) and cost about 0.3 ms per image.
Never raises for an 8-bit frame of any size >= 1 x 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

CONTENT_COLUMNS = ("opaque_fraction", "opaque_brightness", "opaque_contrast", "opaque_entropy", "opaque_p05", "opaque_p95", "n_colors",
                   "top_color_share", "ink_fraction", "edge_sharpness", "native_sharpness", "jpeg_quality")

SIGNAL_SIDE = 128  # colour/alpha statistics: nearest-neighbour subsample to at most this per side
INK_LEVELS = 24  # grey distance from the dominant colour that counts as drawn
MIN_RANGE = 8.0  # p99 - p1 grey range below which an image has no edge to measure (edge_sharpness null)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_LEVELS = np.arange(256, dtype=np.float64)
# libjpeg's standard luminance quantisation table (quality 50), any order: only its sum is used.
_STD_LUMA_SUM = float(sum((
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)))


def jpeg_quality(img: Image.Image) -> int | None:
    """libjpeg quality whose scaled standard table has the same sum as the file's luminance table
    (inverse of libjpeg's `jpeg_quality_scaling`); None when the image carries no tables."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables:
        return None
    scale = 100.0 * float(sum(tables[0])) / _STD_LUMA_SUM  # percent of the quality-50 table
    quality = 5000.0 / scale if scale > 100.0 else (200.0 - scale) / 2.0
    return int(min(100, max(1, round(quality))))


def _split(a: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(grey float32 HxW, alpha>=128 mask or None, quantised colour key int32 HxW) of an 8-bit array."""
    if mode in ("L", "LA"):
        g8 = a if mode == "L" else a[..., 0]
        q = g8.astype(np.int32) >> 3
        return g8.astype(np.float32), (a[..., 1] >= 128) if mode == "LA" else None, q * 1057  # grey keyed like RGB
    c = a[..., :3]
    q = c.astype(np.int32) >> 3
    keys = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    return c.astype(np.float32) @ _LUMA, (a[..., 3] >= 128) if mode == "RGBA" else None, keys


def _colour_stats(frame: Image.Image) -> dict[str, Any]:
    w, h = frame.size
    a = np.asarray(frame)[:: max(1, -(-h // SIGNAL_SIDE)), :: max(1, -(-w // SIGNAL_SIDE))]
    g, m, keys = _split(a, frame.mode)
    total = g.size
    if m is not None:
        keys, g = keys[m], g[m]
    g, keys = g.reshape(-1), keys.reshape(-1)
    n = g.size
    out: dict[str, Any] = {"opaque_fraction": n / total}
    if n == 0:
        return {**out, "opaque_brightness": None, "opaque_contrast": None, "opaque_entropy": None,
                "opaque_p05": None, "opaque_p95": None, "n_colors": 0,
                "top_color_share": None, "ink_fraction": 0.0}
    counts = np.bincount(keys, minlength=32768)
    top = int(np.argmax(counts))
    hist = np.bincount(np.clip(g, 0, 255).astype(np.uint8), minlength=256).astype(np.float64)
    mean = float(hist @ _LEVELS) / n
    var = max(0.0, float(hist @ (_LEVELS * _LEVELS)) / n - mean * mean)
    p = hist[hist > 0] / n
    cdf = np.cumsum(hist)
    p05, p95 = (float(np.searchsorted(cdf, q * n)) for q in (0.05, 0.95))
    top_grey = float(g[int(np.argmax(keys == top))])
    ink = int((np.abs(g - top_grey) > INK_LEVELS).sum())
    return {**out, "opaque_brightness": mean, "opaque_contrast": var ** 0.5,
            "opaque_entropy": abs(float(-(p * np.log2(p)).sum())), "opaque_p05": p05, "opaque_p95": p95,
"n_colors": int((counts > 0).sum()),
            "top_color_share": float(counts[top]) / n, "ink_fraction": ink / total}


def _edge_stats(frame: Image.Image, size: int) -> dict[str, float]:
    """edge_sharpness and native_sharpness on the white-composited grey, never upscaled."""
    k = max(1, min(frame.size) // size)
    small = frame.reduce(k) if k > 1 else frame
    a = np.asarray(small)
    grey = _split(a, small.mode)[0]
    if small.mode in ("LA", "RGBA"):  # composite on white: the silhouette's outline is an edge of the picture
        alpha = a[..., -1].astype(np.float32) / 255.0
        grey = grey * alpha + 255.0 * (1.0 - alpha)
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return {"edge_sharpness": None, "native_sharpness": 0.0}
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    steps = np.concatenate((np.abs(np.diff(grey, axis=0)).reshape(-1), np.abs(np.diff(grey, axis=1)).reshape(-1)))
    n_top = max(1, steps.size // 100)
    top = np.partition(steps, steps.size - n_top)[-n_top:]
    lo, hi = np.percentile(grey, (1, 99))
    crisp = min(1.0, float(top.mean()) / float(hi - lo)) if hi - lo >= MIN_RANGE else None
    return {"edge_sharpness": crisp, "native_sharpness": float(lap.var())}


def content_signals(img: Image.Image, frame: Image.Image, size: int) -> dict[str, Any]:
    """CONTENT_COLUMNS of one image: `img` the opened file (for its JPEG tables), `frame` its 8-bit
    first frame (L, LA, RGB or RGBA, not composited), `size` the analysis size."""
    if frame.mode not in ("L", "LA", "RGB", "RGBA"):
        frame = frame.convert("RGBA" if "A" in frame.mode else "RGB")
    return {**_colour_stats(frame), **_edge_stats(frame, size), "jpeg_quality": jpeg_quality(img)}
