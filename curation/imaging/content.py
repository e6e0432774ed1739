"""Content signals of one decoded frame: what kind of picture it is, measured over its opaque pixels.

`content_signals(img, frame, flat, size)` is called once per image by
`analyse._decode_and_measure`, in the same decode as every other raw_inventory measurement: colour
and alpha statistics on the 8-bit frame (L/LA/RGB/RGBA after the integer box reduction, BEFORE
transparency is composited), edge statistics on `flat`, the same frame composited on the analysis
background (the silhouette's outline against the canvas is an edge of the picture). It returns
CONTENT_COLUMNS:

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
  edge_ratio_min    how wide the strongest edges are, per direction, scale-free: for each of the four
  edge_ratio_max    directions 0/45/90/135 degrees, the mean of the top 1% of 1-pixel steps divided by
                    the mean of the top 1% of 2-pixel steps (measured where `native_sharpness` is). An
                    edge that steps in one pixel reads ~1 (the 2-pixel step is no larger), an edge
                    spread over 2 or more pixels reads 0.5 (the 2-pixel step is twice the 1-pixel one);
                    sensor noise reads ~1. `edge_ratio_min` is the blurriest direction, `edge_ratio_max`
                    the sharpest: a Gaussian blur or an upscaled thumbnail has every direction near 0.5
                    (max < ~0.58), a motion blur smears one direction only (min ~0.5, max well above),
                    a focused photo is 0.6-0.95 in every direction. Null where `edge_sharpness` is.
  mid_ratio         mean |2-pixel step| / mean |4-pixel step| along the rows and columns (measured
                    where `native_sharpness` is; null where `edge_sharpness` is, or below 5 x 5): an
                    isolated edge, crisp or blurred, takes its full step over 2 px and over 4 px at
                    twice as many places, so flat-colour art and blurred pictures read ~0.5; texture
                    and noise finer than 2 px read toward 1 (photos median 0.72, over-exposed ones 0.70).
  clip_share        share of the pixels (where `native_sharpness` is measured, composited) at grey
                    >= CLIP_LEVEL: blown highlights, or a white page / background.
  clip_rolloff      median grey of the unclipped pixels next to a clipped one (4-neighbours; null
                    when no pixel or every pixel is clipped): an over-exposed photo rolls off softly into its blown
                    areas (~235-250), clip art meets its white page at its outlines and colours
                    (~150-225). A blurred drawing on white rolls off softly too (see
                    QualityConfig.bright_min_edge_ratio).
  clip_boundary     clipped / unclipped 4-neighbour pairs per pixel (0 when none or every pixel is
                    clipped): with clip_share, how ragged the clipped areas are (a texture blown
                    out breaks up into specks; a white page is one solid area) and how much of the
                    unclipped picture touches them (thin lines on a white page all of it).
  flat_share        share of the 4-neighbour pairs of unclipped pixels that have equal grey (null
                    when no such pair): drawn art median 0.6-0.75, photos (noise, texture) median 0.14,
                    over-exposed textures (grass, gravel) ~0.01.
  jpeg_quality      libjpeg quality (1..100) estimated from the file's luminance quantisation
                    table (header only, free); null for other formats. Quality 4-10 re-encodes
                    carry 5-10x the standard table; camera and web JPEGs are 70-98.

The colour/alpha statistics use a nearest-neighbour subsample of at most SIGNAL_SIDE pixels per
side (exact colours, no blending).

Two implementations give every value bit for bit: the numpy reference (`_colour_stats`,
`_edge_stats`) and, by default, compiled passes (`curation.imaging.kernels`, numba) that build the
same integer histograms, counts and sums in a few fused loops over the uint8 frame, the float
formulas here applied to them unchanged (`_colour_stats_compiled`, `_edge_stats_compiled`).
`backend()` picks numba unless CURATION_CONTENT_KERNELS=numpy, or numba fails to import or compile
(numpy then, logged once). Compiled, content_signals costs 0.31 CPU ms per image on the bench's
JPEG photos (numpy: 0.84) and 0.25 on its openclipart PNGs (numpy: 0.76), 600 / 450 images, both
interleaved in one process, best of 7; inside the stage (bench/inventory.py's step profile, load
average 4 on the 2 cores) 0.36-0.37 / 0.32-0.33 (numpy 0.99-1.05 / 0.96). 12,521 decode_and_measure
rows (all 8,121 openclipart PNGs, 4,400 re-encoded skimage photos of 1 to 1,500 px in L, LA, RGB,
RGBA, P and JPEG) compared between the two: 0 differences. Fixed costs of the compiled path:
importing numba and loading the cached kernels ~0.5 CPU s once per process (once per forkserver in
the inventory's pool), compiling them where numba's cache is cold ~9 CPU s once per machine
(kernels module docstring).

The numpy reference path: ~1-1.1 ms per image on a 2-core machine (no BLAS calls), of which the
edge ratios and clipping statistics ~0.4-0.6 ms (~10% of stage 1 in-process, measured on 500 images
of the bench's quality set) and mid_ratio, clip_boundary and flat_share ~0.1 ms more
(content_signals 1.21 -> 1.32 CPU ms per image, the same 500 images, old and new code interleaved
in one process). The uint8 histograms (`hist_u8`: Pillow's counter instead of np.bincount's int64
copy, from HIST_MIN values on), the steps as uint8 differences, and the grey image shared with the
analysis image (`grey_of`) took content_signals from 1.25 to 1.01 CPU ms per image on the bench's
JPEG photos and 1.13 to 1.08 on its openclipart PNGs (600 / 450 images, old and new interleaved in
one process), every output value unchanged (1,706 decode_and_measure rows compared bit for bit).
Never raises for an 8-bit frame of any size >= 1 x 1.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

CONTENT_COLUMNS = ("opaque_fraction", "opaque_brightness", "opaque_contrast", "opaque_entropy", "opaque_p05", "opaque_p95",
                   "n_colors", "top_color_share", "ink_fraction", "edge_sharpness", "native_sharpness", "edge_ratio_min",
                   "edge_ratio_max", "mid_ratio", "clip_share", "clip_rolloff", "clip_boundary", "flat_share",
                   "jpeg_quality")

SIGNAL_SIDE = 128  # colour/alpha statistics: nearest-neighbour subsample to at most this per side
INK_LEVELS = 24  # grey distance from the dominant colour that counts as drawn
LINE_STRIDE = 2  # edge ratios: diagonal and 2-pixel steps on every other line (cost; 3 is noisier)
CLIP_LEVEL = 250  # grey at or above which a pixel counts as clipped (clip_share, clip_rolloff)
HIST_MIN = 6000  # hist_u8: np.bincount below this many values, Pillow's histogram from it on
MIN_RANGE = 8.0  # p99 - p1 grey range below which an image has no edge to measure (edge_sharpness null)
_LEVELS = np.arange(256, dtype=np.float64)
_INT_LEVELS = np.arange(256, dtype=np.int64)
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


def grey_of(flat: Image.Image) -> Image.Image:
    """The L image (ITU-R 601 luma) of an L or RGB image. A per-pixel map: it commutes with `orient`,
    so the grey of the composited frame serves the content signals and the analysis image alike."""
    return flat if flat.mode == "L" else flat.convert("L")


def hist_u8(a: np.ndarray) -> np.ndarray:
    """256-bin histogram (int64) of a C-contiguous uint8 array, equal to `np.bincount(a, minlength=256)`
    at about half its cost: Pillow counts the bytes, mapped as one L row without a copy, directly
    (bincount first copies them to int64). The core image is used directly: the `Image` wrapper
    (`Image.frombuffer`) costs about as much again as the counting of a 128 x 128 array. Below
    HIST_MIN values, bincount."""
    v = a.reshape(-1)
    if v.size < HIST_MIN:  # the list's conversion costs more than bincount saves
        return np.bincount(v, minlength=256)
    return np.array(Image.core.map_buffer(v, (v.size, 1), "raw", 0, ("L", 0, 1)).histogram(), dtype=np.int64)


def _split(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(uint8 grey HxW, alpha>=128 mask or None, quantised colour key uint16 HxW) of an 8-bit image."""
    a = np.asarray(img)
    if img.mode in ("L", "LA"):
        g8 = a if img.mode == "L" else np.ascontiguousarray(a[..., 0])
        return g8, (a[..., 1] >= 128) if img.mode == "LA" else None, (g8 >> 3).astype(np.uint16) * 1057  # grey keyed like RGB
    q = (a[..., :3] >> 3).astype(np.uint16)
    keys = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    return np.asarray(img.convert("L")), (a[..., 3] >= 128) if img.mode == "RGBA" else None, keys


def _signal_frame(frame: Image.Image) -> Image.Image:
    """The frame the colour/alpha statistics are taken on: a nearest-neighbour subsample to at
    most SIGNAL_SIDE pixels per side (exact colours)."""
    w, h = frame.size
    sub = (min(w, SIGNAL_SIDE), min(h, SIGNAL_SIDE))
    return frame if sub == (w, h) else frame.resize(sub, Image.Resampling.NEAREST)


_NO_OPAQUE = {"opaque_brightness": None, "opaque_contrast": None, "opaque_entropy": None, "opaque_p05": None,
              "opaque_p95": None, "n_colors": 0, "top_color_share": None, "ink_fraction": 0.0}


def _entropy(hist: np.ndarray, n: int) -> float:
    """256-bin entropy in bits of the grey histogram (float64) of n pixels."""
    p = hist[hist > 0] / n
    return abs(float(-(p * np.log2(p)).sum()))


def _colour_stats(frame: Image.Image) -> dict[str, Any]:
    g, m, keys = _split(_signal_frame(frame))
    total = g.size
    n = total if m is None else int(np.count_nonzero(m))
    out: dict[str, Any] = {"opaque_fraction": n / total}
    if n == 0:
        return {**out, **_NO_OPAQUE}
    if m is not None:
        keys, g = keys[m], g[m]
    g, keys = g.reshape(-1), keys.reshape(-1)
    counts = np.bincount(keys, minlength=32768)
    ihist = hist_u8(g)
    top = int(np.argmax(counts))
    hist = ihist.astype(np.float64)
    mean = float(np.einsum("i,i->", hist, _LEVELS)) / n
    var = max(0.0, float(np.einsum("i,i->", hist, _LEVELS * _LEVELS)) / n - mean * mean)
    cdf = np.cumsum(hist)
    p05, p95 = (float(np.searchsorted(cdf, q * n)) for q in (0.05, 0.95))
    top_grey = int(g[int(np.argmax(keys == top))])
    ink = n - int(ihist[max(0, top_grey - INK_LEVELS): top_grey + INK_LEVELS + 1].sum())  # |grey - top_grey| > INK_LEVELS
    return {**out, "opaque_brightness": mean, "opaque_contrast": var ** 0.5,
            "opaque_entropy": _entropy(hist, n), "opaque_p05": p05, "opaque_p95": p95,
            "n_colors": int((counts > 0).sum()),
            "top_color_share": float(counts[top]) / n, "ink_fraction": ink / total}


def _colour_stats_compiled(frame: Image.Image, k: ModuleType) -> dict[str, Any]:
    """`_colour_stats` from the integers of one compiled pass (`kernels.colour_pass`), the float
    formulas unchanged: every value bit-identical (see the kernels module)."""
    img = _signal_frame(frame)
    mode = img.mode
    if mode == "RGB":  # Pillow's own 4-byte pixels, unpacked: half the cost of np.asarray's 3-byte copy
        a = np.frombuffer(img.tobytes("raw", "RGBX"), np.uint8).reshape(img.height, img.width, 4)
    else:
        a = np.asarray(img)
    ghist, ints = k.colour_pass(a[:, :, None] if mode == "L" else a, {"LA": 1, "RGBA": 3}.get(mode, -1),
                                mode in ("RGB", "RGBA"), INK_LEVELS)
    n, n_keys, top_count, _top_grey, s1, s2, p05, p95, near = ints.tolist()
    total = a.shape[0] * a.shape[1]
    out: dict[str, Any] = {"opaque_fraction": n / total}
    if n == 0:
        return {**out, **_NO_OPAQUE}
    mean = float(s1) / n  # the exact integer sum that einsum of the histogram and its levels gives
    var = max(0.0, float(s2) / n - mean * mean)
    return {**out, "opaque_brightness": mean, "opaque_contrast": var ** 0.5,
            "opaque_entropy": _entropy(ghist.astype(np.float64), n), "opaque_p05": float(p05), "opaque_p95": float(p95),
            "n_colors": n_keys, "top_color_share": float(top_count) / n, "ink_fraction": (n - near) / total}


def _top_mean(hist: np.ndarray, k: int) -> float:
    """Mean of the k largest values of the integer sample whose histogram is `hist`."""
    from_top = np.cumsum(hist[::-1])
    i = int(np.searchsorted(from_top, k))  # the k-th largest value lies in bin 255 - i
    levels = np.arange(len(hist) - 1, len(hist) - 2 - i, -1, dtype=np.float64)
    counts = hist[::-1][: i + 1].astype(np.float64)
    counts[-1] -= from_top[i] - k  # only part of the last bin
    return float(np.einsum("i,i->", counts, levels)) / k


def _steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two uint8 arrays of one shape (a new C-contiguous uint8 array)."""
    return np.maximum(a, b) - np.minimum(a, b)


def _level_sum(hist: np.ndarray) -> int:
    """Sum of the integer sample whose 256-bin histogram is `hist`."""
    return int(np.dot(hist, _INT_LEVELS))


def _step_top(steps: np.ndarray, hist: np.ndarray | None = None) -> float:
    """Mean of the top 1% of a uint8 step array (`hist` its histogram, when already taken)."""
    return _top_mean(hist_u8(steps) if hist is None else hist, max(1, steps.size // 100))


def _edge_ratios(g: np.ndarray, hv: tuple[np.ndarray, np.ndarray]) -> tuple[float, float, float | None]:
    """(min, max) over the directions 0/45/90/135 degrees of top-1% 1-pixel step / top-1% 2-pixel
    step of the uint8 grey image `g` (at least 3 x 3), and `mid_ratio` (mean 2-pixel step / mean
    4-pixel step along the rows and columns; None below 5 x 5); `hv` the histograms of its vertical
    and horizontal 1-pixel steps (taken for edge_sharpness). The diagonal, 2-pixel and 4-pixel steps
    are taken on every LINE_STRIDE-th line across the step's direction (half the cost at 2; the top
    1% of half the steps estimates the top 1% of all of them, a stride of 3 reads noticeably noisier)."""
    s = LINE_STRIDE
    v2, h2 = _steps(g[2:, ::s], g[:-2, ::s]), _steps(g[::s, 2:], g[::s, :-2])
    hv2, hh2 = hist_u8(v2), hist_u8(h2)
    one = {90: _top_mean(hv[0], max(1, int(hv[0].sum()) // 100)), 0: _top_mean(hv[1], max(1, int(hv[1].sum()) // 100)),
           45: _step_top(_steps(g[1::s, 1:], g[:-1:s, :-1])), 135: _step_top(_steps(g[1::s, :-1], g[:-1:s, 1:]))}
    two = {90: _step_top(v2, hv2), 0: _step_top(h2, hh2),
           45: _step_top(_steps(g[2::s, 2:], g[:-2:s, :-2])), 135: _step_top(_steps(g[2::s, :-2], g[:-2:s, 2:]))}
    ratios = [one[d] / two[d] if two[d] > 0 else 1.0 for d in (0, 45, 90, 135)]
    mid = None
    if min(g.shape) >= 5:
        v4, h4 = _steps(g[4:, ::s], g[:-4, ::s]), _steps(g[::s, 4:], g[::s, :-4])
        four = (int(v4.sum(dtype=np.int64)) + int(h4.sum(dtype=np.int64))) / (v4.size + h4.size)
        mean2 = (_level_sum(hv2) + _level_sum(hh2)) / (v2.size + h2.size)
        mid = mean2 / four if four > 0 else None
    return min(ratios), max(ratios), mid


def _clip_stats(grey: np.ndarray, dv: np.ndarray, dh: np.ndarray, hv: tuple[np.ndarray, np.ndarray],
                ghist: np.ndarray) -> dict[str, float | None]:
    """clip_share, clip_rolloff (the lower median, an integer grey), clip_boundary and flat_share of
    a uint8 grey image; `dv` / `dh` its absolute vertical / horizontal 1-pixel steps, `hv` their
    histograms, `ghist` the grey histogram."""
    n = int(ghist[CLIP_LEVEL:].sum())
    pairs = dv.size + dh.size
    if n == 0:  # every pair is unclipped
        return {"clip_share": 0.0, "clip_rolloff": None, "clip_boundary": 0.0, "flat_share": int(hv[0][0] + hv[1][0]) / pairs}
    if n == grey.size:
        return {"clip_share": 1.0, "clip_rolloff": None, "clip_boundary": 0.0, "flat_share": None}
    clipped = grey >= CLIP_LEVEL
    hist = np.zeros(256, dtype=np.int64)
    for near, far, c_near, c_far in ((grey[:, 1:], grey[:, :-1], clipped[:, 1:], clipped[:, :-1]),
                                     (grey[1:, :], grey[:-1, :], clipped[1:, :], clipped[:-1, :])):
        hist += np.bincount(near[c_far & ~c_near], minlength=256)  # unclipped pixel right of / below a clipped one
        hist += np.bincount(far[c_near & ~c_far], minlength=256)  # ... left of / above one
    cdf = np.cumsum(hist)
    lit = ~clipped
    # pairs of unclipped pixels, and those of equal grey (an equal pair with one unclipped pixel is unclipped)
    unclipped = int(np.count_nonzero(lit[1:] & lit[:-1])) + int(np.count_nonzero(lit[:, 1:] & lit[:, :-1]))
    flat = int(np.count_nonzero((dv == 0) & lit[1:])) + int(np.count_nonzero((dh == 0) & lit[:, 1:]))
    return {"clip_share": n / grey.size, "clip_rolloff": float(np.searchsorted(cdf, cdf[-1] / 2)),
            "clip_boundary": int(cdf[-1]) / grey.size, "flat_share": flat / unclipped if unclipped else None}


def _edge_grey(flat: Image.Image, size: int) -> np.ndarray:
    """The grey (uint8) the edge statistics are measured on: the composited frame's grey at native
    scale, or box-reduced by an integer factor to a short side in [size, 2 size)."""
    k = max(1, min(flat.size) // size)
    grey_img = grey_of(flat)
    if k > 1:
        grey_img = grey_img.reduce(k)
    return np.asarray(grey_img)


_NO_EDGES = {"edge_sharpness": None, "native_sharpness": 0.0, "edge_ratio_min": None, "edge_ratio_max": None,
             "mid_ratio": None, "clip_share": None, "clip_rolloff": None, "clip_boundary": None, "flat_share": None}


def _edge_stats(flat: Image.Image, size: int) -> dict[str, float | None]:
    """edge_sharpness, native_sharpness, the directional edge ratios, mid_ratio and the clipping
    statistics of the composited frame's grey (`flat` L or RGB), never upscaled."""
    grey = _edge_grey(flat, size)
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return dict(_NO_EDGES)
    g = grey.astype(np.int16)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    dv, dh = _steps(grey[1:], grey[:-1]), _steps(grey[:, 1:], grey[:, :-1])
    hv = (hist_u8(dv), hist_u8(dh))
    steps = hv[0] + hv[1]
    ghist = hist_u8(grey)
    cdf = np.cumsum(ghist)
    lo, hi = (int(np.searchsorted(cdf, q * grey.size)) for q in (0.01, 0.99))
    top = _top_mean(steps, max(1, int(steps.sum()) // 100))
    ranged = hi - lo >= MIN_RANGE
    crisp = min(1.0, top / (hi - lo)) if ranged else None
    rmin, rmax, mid = _edge_ratios(grey, hv) if ranged else (None, None, None)
    lv = lap.astype(np.float64).reshape(-1)
    var = float(np.einsum("i,i->", lv, lv)) / lv.size - (float(lv.sum()) / lv.size) ** 2  # einsum: no BLAS threads
    return {"edge_sharpness": crisp, "native_sharpness": max(0.0, var), "edge_ratio_min": rmin, "edge_ratio_max": rmax,
            "mid_ratio": mid, **_clip_stats(grey, dv, dh, hv, ghist)}


def _edge_stats_compiled(flat: Image.Image, size: int, k: ModuleType) -> dict[str, float | None]:
    """`_edge_stats` from the integers of one compiled call (`kernels.edge_pass`), the float
    formulas unchanged: every value bit-identical."""
    grey = _edge_grey(flat, size)
    h, w = grey.shape
    if h < 3 or w < 3:
        return dict(_NO_EDGES)
    hists, ints = k.edge_pass(grey, CLIP_LEVEL, MIN_RANGE, LINE_STRIDE)
    lap_sum, lap_sq, unclipped, flat_pairs, lo, hi, top_sum, top_k, *r = ints.tolist()
    top = float(top_sum) / top_k  # _top_mean: einsum of the top counts and their levels is this exact sum
    ranged = hi - lo >= MIN_RANGE
    crisp = min(1.0, top / (hi - lo)) if ranged else None
    rmin = rmax = mid = None
    if ranged:  # r: kernels.ratio_pass
        one = [float(r[j]) / r[4 + j] for j in range(4)]  # directions 0, 45, 90, 135 degrees
        two = [float(r[8 + j]) / r[12 + j] for j in range(4)]
        ratios = [one[j] / two[j] if two[j] > 0 else 1.0 for j in range(4)]
        rmin, rmax = min(ratios), max(ratios)
        if min(h, w) >= 5:
            four = r[18] / r[19]
            mean2 = r[16] / r[17]
            mid = mean2 / four if four > 0 else None
    npx = (h - 2) * (w - 2)
    var = float(lap_sq) / npx - (float(lap_sum) / npx) ** 2  # the exact sums einsum / sum give in float64
    total = h * w
    pairs = h * (w - 1) + (h - 1) * w
    ghist, hv, hh, near = hists
    n = int(ghist[CLIP_LEVEL:].sum())
    if n == 0:
        clip: dict[str, float | None] = {"clip_share": 0.0, "clip_rolloff": None, "clip_boundary": 0.0,
                                         "flat_share": int(hv[0] + hh[0]) / pairs}
    elif n == total:
        clip = {"clip_share": 1.0, "clip_rolloff": None, "clip_boundary": 0.0, "flat_share": None}
    else:
        cdf = np.cumsum(near)
        clip = {"clip_share": n / total, "clip_rolloff": float(np.searchsorted(cdf, cdf[-1] / 2)),
                "clip_boundary": int(cdf[-1]) / total, "flat_share": flat_pairs / unclipped if unclipped else None}
    return {"edge_sharpness": crisp, "native_sharpness": max(0.0, var), "edge_ratio_min": rmin, "edge_ratio_max": rmax,
            "mid_ratio": mid, **clip}


# ------------------------------------------------------------------------------ backend

BACKENDS = ("numba", "numpy")
BACKEND_ENV = "CURATION_CONTENT_KERNELS"
_backend: str | None = None  # resolved on the first image: "numba" (kernels imported) or "numpy"
_kernels: ModuleType | None = None
_log = logging.getLogger(__name__)


def backend() -> str:
    """The implementation `content_signals` uses by default: "numba" (the compiled kernels of
    `curation.imaging.kernels`, imported on the first call) unless CURATION_CONTENT_KERNELS=numpy
    selects the numpy reference, or numba fails to import or compile (logged once, then numpy).
    Both give bit-identical values (tests/unit/test_content_kernels.py)."""
    global _backend, _kernels
    if _backend is None:
        want = os.environ.get(BACKEND_ENV, "numba").strip().lower() or "numba"
        if want not in BACKENDS:
            _log.warning("%s=%r is not one of %s; using numba", BACKEND_ENV, want, BACKENDS)
            want = "numba"
        if want == "numba":
            try:
                _kernels = importlib.import_module("curation.imaging.kernels")
            except Exception as exc:  # noqa: BLE001 - numba missing or unusable here: the reference path
                _log.warning("content kernels unavailable (%s: %s); content signals use numpy", type(exc).__name__, exc)
                want = "numpy"
        _backend = want
    return _backend


def content_signals(img: Image.Image, frame: Image.Image, flat: Image.Image, size: int, *,
                    impl: str | None = None) -> dict[str, Any]:
    """CONTENT_COLUMNS of one image: `img` the opened file (for its JPEG tables), `frame` its 8-bit
    first frame (L, LA, RGB or RGBA, not composited), `flat` that frame composited on the analysis
    background (L or RGB, `convert.composite`; only its grey is used, so its L image, `grey_of`,
    serves as well), `size` the analysis size. `impl` "numba" / "numpy" overrides `backend()`."""
    if frame.mode not in ("L", "LA", "RGB", "RGBA"):
        frame = frame.convert("RGBA" if "A" in frame.mode else "RGB")
    use = backend() if impl is None else impl
    if use == "numba":
        k = _kernels or _require_kernels()
        return {**_colour_stats_compiled(frame, k), **_edge_stats_compiled(flat, size, k), "jpeg_quality": jpeg_quality(img)}
    return {**_colour_stats(frame), **_edge_stats(flat, size), "jpeg_quality": jpeg_quality(img)}


def _require_kernels() -> ModuleType:
    return importlib.import_module("curation.imaging.kernels")
