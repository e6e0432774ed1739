"""Compiled (numba) passes of `content.content_signals`: the integer intermediates only.

Each kernel walks a uint8 array in a few fused row loops and returns the SAME integer histograms,
counts and sums that the numpy reference path of `curation.imaging.content` builds from its many
array passes (steps, masks, bincounts), so that the float formulas applied to them afterwards in
`content` give bit-identical results. The kernels compute no float value: where the numpy path sums
integers in float64 (einsum of a histogram and its levels, the Laplacian and its square), every
product and partial sum is an integer below 2**53 (at most 1020**2 per pixel x MAX_PIXELS =
2.8e14), exact in any summation order, so the exact int64 sum converted to float is the same
number; the quantile searches compare the integer cdf with the float q * n as searchsorted does.

Imported lazily by `content.backend()` (on the first image), never by the Dagster definitions;
the inventory's workers import it before they take work (`curation.imaging.warm`, preloaded by
the forkserver). Compiled with `cache=True`: the machine code is written beside this file
(`__pycache__`) or, where that is read-only, under NUMBA_CACHE_DIR or the user's cache directory
($XDG_CACHE_HOME/numba, /tmp/cache/numba in the images); where no cache location is writable the
kernels are compiled in each process instead (`CACHED` False, a warning logged). Importing this
module runs `warm()`: numba's import plus loading the cached kernels ~0.5 CPU s; compiling them
where the cache is cold ~9 CPU s (2-core machine), once per machine and source version (numba keys
the cache on this file's modification time and size).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

CACHED = True
_log = logging.getLogger(__name__)


def _jit(fn: Callable[..., Any]) -> Any:
    """`numba.njit(cache=True, nogil=True)`, or without the on-disk cache where numba finds no
    writable cache directory (it raises at decoration then)."""
    global CACHED
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        if CACHED:
            _log.warning("numba cache unavailable (%s); content kernels are compiled per process", exc)
        CACHED = False
        return numba.njit(cache=False, nogil=True)(fn)


@_jit
def _top_sum(hist: np.ndarray, k: int) -> int:
    """Sum of the k largest values of the integer sample whose 256-bin histogram is `hist`
    (content._top_mean is this / k); k <= hist.sum()."""
    acc = 0
    s = 0
    for b in range(hist.shape[0] - 1, -1, -1):
        h = hist[b]
        if acc + h >= k:
            return s + (k - acc) * b
        acc += h
        s += h * b
    return s


@_jit
def _first_at_least(cdf: np.ndarray, v: float) -> int:
    """np.searchsorted(cdf, v) (side left) of a non-decreasing int64 array and a float."""
    for i in range(cdf.shape[0]):
        if cdf[i] >= v:
            return i
    return cdf.shape[0]


@_jit
def _count(buf: np.ndarray, n: int, step: int, t: np.ndarray) -> None:
    """Add buf[0:n:step] (uint8) to the 4 x 256 histogram tables `t` (int32), round robin: consecutive
    values land in different tables, so equal neighbours do not wait on each other's store."""
    i = 0
    while i + 3 * step < n:
        t[0, buf[i]] += 1
        t[1, buf[i + step]] += 1
        t[2, buf[i + 2 * step]] += 1
        t[3, buf[i + 3 * step]] += 1
        i += 4 * step
    while i < n:
        t[0, buf[i]] += 1
        i += step


@_jit
def _absdiff(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> int:
    """out[:n] = |x - y| of two uint8 vectors of one length n (vectorised); returns n."""
    n = x.shape[0]
    for i in range(n):
        a = x[i]
        b = y[i]
        out[i] = max(a, b) - min(a, b)
    return n


@_jit
def _strided_sum(buf: np.ndarray, n: int, step: int) -> int:
    """Sum of buf[0:n:step] (uint8)."""
    s = 0
    for i in range(0, n, step):
        s += buf[i]
    return s


@_jit
def _clipped_pairs(x: np.ndarray, y: np.ndarray, level: int) -> tuple[int, int]:
    """Over the pairs (x[i], y[i]) of two uint8 vectors: (pairs with both >= level, those of
    equal grey) (vectorised)."""
    both = 0
    equal = 0
    for i in range(x.shape[0]):
        a = x[i]
        b = y[i]
        c = np.uint8(a >= level) & np.uint8(b >= level)
        both += int(c)
        equal += int(c & np.uint8(a == b))
    return both, equal


@_jit
def _clip_counts(g: np.ndarray, level: int, rowmax: np.ndarray, near: np.ndarray) -> tuple[int, int, int]:
    """content._clip_stats' pair counts of a grey image `g` (uint8, H x W, `rowmax` its row
    maxima): near[v] += the clipped 4-neighbours of each unclipped pixel of grey v (= its clipped /
    unclipped pairs); -> (clipped / unclipped pairs, clipped pairs, clipped pairs of equal grey).
    Rows with no clipped pixel in or next to them are skipped."""
    h, w = g.shape
    clipped = np.empty((h, w), np.uint8)
    for r in range(h):
        row = g[r]
        cr = clipped[r]
        for c in range(w):
            cr[c] = row[c] >= level
    nc = np.empty(w, np.uint8)
    mixed = 0
    both = 0
    both_equal = 0
    for r in range(h):
        if rowmax[r] < level and (r == 0 or rowmax[r - 1] < level) and (r + 1 == h or rowmax[r + 1] < level):
            continue
        row = g[r]
        cr = clipped[r]
        up = clipped[r - 1] if r > 0 else cr  # (weighted 0 at the border)
        down = clipped[r + 1] if r + 1 < h else cr
        fu = np.uint8(r > 0)
        fd = np.uint8(r + 1 < h)
        nc[0] = (1 - cr[0]) * (fu * up[0] + fd * down[0] + cr[1])
        for c in range(1, w - 1):
            nc[c] = (np.uint8(1) - cr[c]) * (fu * up[c] + fd * down[c] + cr[c - 1] + cr[c + 1])
        nc[w - 1] = (1 - cr[w - 1]) * (fu * up[w - 1] + fd * down[w - 1] + cr[w - 2])
        total = 0
        for c in range(w):
            total += nc[c]
        if total:
            for c in range(w):
                if nc[c]:
                    near[row[c]] += nc[c]
        mixed += total
        b, e = _clipped_pairs(row[1:], row[:-1], level)
        both, both_equal = both + b, both_equal + e
        if r + 1 < h:
            b, e = _clipped_pairs(g[r + 1], row, level)
            both, both_equal = both + b, both_equal + e
    return mixed, both, both_equal


@_jit
def ratio_pass(g: np.ndarray, hv: np.ndarray, hh: np.ndarray, stride: int) -> np.ndarray:
    """The integers of content._edge_ratios for grey `g` (uint8, H x W, both >= 3, C-contiguous)
    and its 1-pixel step histograms `hv` / `hh`, the diagonal, 2- and 4-pixel steps taken on every
    `stride`-th line exactly as its slices take them. Returns int64 [20]: for the directions 0,
    45, 90, 135 degrees the top-1% sums of the 1-pixel steps [0:4] and their k [4:8], of the
    2-pixel steps [8:12] and their k [12:16]; then [16] the sum of the vertical + horizontal
    2-pixel steps, [17] their number, [18] the sum of the 4-pixel steps (0 below 5 px a side),
    [19] their number."""
    h, w = g.shape
    t = np.zeros((6, 4, 256), np.int32)  # v2, h2, d45, d135 (1 px), e45, e135 (2 px)
    buf = np.empty(w, np.uint8)
    for r in range(h - 2):  # g[2:, ::s] vs g[:-2, ::s]
        _count(buf, _absdiff(g[r + 2], g[r], buf), stride, t[0])
    for r in range(0, h, stride):  # g[::s, 2:] vs g[::s, :-2]
        _count(buf, _absdiff(g[r, 2:], g[r, :-2], buf), 1, t[1])
    for r in range(0, h - 1, stride):  # g[1::s, 1:] vs g[:-1:s, :-1]; g[1::s, :-1] vs g[:-1:s, 1:]
        _count(buf, _absdiff(g[r + 1, 1:], g[r, :-1], buf), 1, t[2])
        _count(buf, _absdiff(g[r + 1, :-1], g[r, 1:], buf), 1, t[3])
    for r in range(0, h - 2, stride):  # g[2::s, 2:] vs g[:-2:s, :-2]; g[2::s, :-2] vs g[:-2:s, 2:]
        _count(buf, _absdiff(g[r + 2, 2:], g[r, :-2], buf), 1, t[4])
        _count(buf, _absdiff(g[r + 2, :-2], g[r, 2:], buf), 1, t[5])
    four = 0
    n4 = 0
    if min(h, w) >= 5:
        for r in range(h - 4):  # g[4:, ::s] vs g[:-4, ::s]
            four += _strided_sum(buf, _absdiff(g[r + 4], g[r], buf), stride)
        for r in range(0, h, stride):  # g[::s, 4:] vs g[::s, :-4]
            four += _strided_sum(buf, _absdiff(g[r, 4:], g[r, :-4], buf), 1)
        n4 = (h - 4) * ((w + stride - 1) // stride) + ((h + stride - 1) // stride) * (w - 4)
    hists = t.sum(axis=1).astype(np.int64)
    v2, h2 = hists[0], hists[1]
    out = np.empty(20, np.int64)
    for j in range(4):  # 0, 45, 90, 135 degrees
        one = (hh, hists[2], hv, hists[3])[j]
        two = (h2, hists[4], v2, hists[5])[j]
        k1 = max(1, one.sum() // 100)
        k2 = max(1, two.sum() // 100)
        out[j], out[4 + j] = _top_sum(one, k1), k1
        out[8 + j], out[12 + j] = _top_sum(two, k2), k2
    lsum = 0
    for b in range(256):
        lsum += b * (v2[b] + h2[b])
    out[16], out[17] = lsum, v2.sum() + h2.sum()
    out[18], out[19] = four, n4
    return out


@_jit
def edge_pass(g: np.ndarray, clip_level: int, min_range: float, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """One grey image `g` (uint8, H x W, both >= 3, C-contiguous), content.CLIP_LEVEL,
    content.MIN_RANGE and content.LINE_STRIDE -> (hists, ints).

    hists (int64, 4 x 256): [0] the grey histogram; [1] / [2] the histograms of the |vertical| /
    |horizontal| 1-pixel steps (content's dv, dh); [3] the greys of the unclipped pixels of the
    clipped / unclipped 4-neighbour pairs (content._clip_stats; zeros unless some but not all
    pixels are clipped).
    ints (int64): [0] sum and [1] sum of squares of the 4-neighbour Laplacian over the interior;
    [2] 4-neighbour pairs of unclipped pixels and [3] those of equal grey (both only when some
    but not all pixels are clipped); [4] / [5] the 1% / 99% grey quantiles (searchsorted of the
    grey cdf at q * H * W); [6] the sum of the top k of the 1-pixel steps of both directions,
    [7] that k (max(1, pairs // 100)); [8:28] `ratio_pass` where [5] - [4] >= min_range (zeros
    elsewhere)."""
    h, w = g.shape
    tables = np.zeros((3, 4, 256), np.int32)
    buf = np.empty(w, np.uint8)
    rowmax = np.empty(h, np.uint8)
    for r in range(h):
        row = g[r]
        _count(row, w, 1, tables[0])
        rowmax[r] = row.max()
        _count(buf, _absdiff(row[1:], row[:-1], buf), 1, tables[2])
        if r + 1 < h:
            _count(buf, _absdiff(g[r + 1], row, buf), 1, tables[1])
    hists = np.zeros((4, 256), np.int64)
    hists[:3] = tables.sum(axis=1)
    s1 = 0
    s2 = 0
    for r in range(1, h - 1):
        up = g[r - 1]
        mid = g[r]
        down = g[r + 1]
        a1 = 0
        a2 = 0
        for c in range(1, w - 1):
            lap = np.int32(up[c]) + np.int32(down[c]) + np.int32(mid[c - 1]) + np.int32(mid[c + 1]) - 4 * np.int32(mid[c])
            a1 += int(lap)
            a2 += int(lap * lap)  # |lap| <= 1020: the square fits int32
        s1 += a1
        s2 += a2
    pairs = h * (w - 1) + (h - 1) * w
    clipped = hists[0, clip_level:].sum()
    unclipped = 0
    flat = 0
    if 0 < clipped < h * w:
        mixed, both, both_equal = _clip_counts(g, clip_level, rowmax, hists[3])
        unclipped = pairs - mixed - both
        flat = hists[1, 0] + hists[2, 0] - both_equal  # equal pairs are both clipped or both not
    cdf = np.cumsum(hists[0])
    k = max(1, pairs // 100)
    ints = np.zeros(28, np.int64)
    ints[0], ints[1], ints[2], ints[3] = s1, s2, unclipped, flat
    ints[4] = _first_at_least(cdf, 0.01 * (h * w))
    ints[5] = _first_at_least(cdf, 0.99 * (h * w))
    ints[6], ints[7] = _top_sum(hists[1] + hists[2], k), k
    if ints[5] - ints[4] >= min_range:
        ints[8:] = ratio_pass(g, hists[1], hists[2], stride)
    return hists, ints


@_jit
def _luma(r: int, g: int, b: int) -> int:
    """Pillow's RGB -> L conversion of one pixel (ITU-R 601 luma in 16-bit fixed point, rounded;
    equal to `Image.convert("L")` for all 2**24 colours, tests/unit/test_content_kernels.py)."""
    return int((np.uint32(r) * np.uint32(19595) + np.uint32(g) * np.uint32(38470) + np.uint32(b) * np.uint32(7471)
                + np.uint32(0x8000)) >> np.uint32(16))


@_jit
def _pixel(row: np.ndarray, c: int, rgb: bool) -> tuple[np.uint32, np.uint32]:
    """(5-bit colour key, grey) of pixel c of a row of L/LA (grey keyed as R = G = B) or RGB(A)."""
    if rgb:
        r, g, b = row[c, 0], row[c, 1], row[c, 2]
        return ((np.uint32(r >> 3) << np.uint32(10)) | (np.uint32(g >> 3) << np.uint32(5)) | np.uint32(b >> 3),
                np.uint32(_luma(r, g, b)))
    v = row[c, 0]
    return np.uint32(v >> 3) * np.uint32(1057), np.uint32(v)


@_jit
def _opaque_pass(a: np.ndarray, alpha: int, rgb: bool, top: int, counts: np.ndarray, tg: np.ndarray) -> int:
    """Over the opaque pixels of `a` in raster order (colour_pass's arguments): with top < 0, add
    each one's key to `counts` and its grey to the 4 x 256 tables `tg`, and return their number;
    else return the grey of the first one whose key is `top` (-1 if none)."""
    n = 0
    for r in range(a.shape[0]):
        row = a[r]
        for c in range(a.shape[1]):
            if alpha >= 0 and row[c, alpha] < 128:
                continue
            key, grey = _pixel(row, c, rgb)
            if top >= 0:
                if key == top:
                    return int(grey)
                continue
            counts[key] += 1
            tg[n & 3, grey] += 1
            n += 1
    return n if top < 0 else -1


@_jit
def colour_pass(a: np.ndarray, alpha: int, rgb: bool, ink_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour statistics' integers of an 8-bit image: `a` its pixels (uint8, H x W x C: L, LA,
    RGB or RGBA), `alpha` the alpha channel's index or -1, `rgb` whether channels 0-2 are R, G, B
    (grey: Pillow's L conversion) or channel 0 is the grey (keyed like R = G = B). Over the pixels
    with alpha >= 128 (all without alpha): -> (grey histogram int64[256], ints int64[9]):
    [0] opaque pixels n, [1] distinct 5-bit colour keys, [2] the count of the most common key
    (the lowest such key, as np.argmax), [3] the grey of that key's first pixel in raster order,
    [4] sum and [5] sum of squares of the grey, [6] / [7] the 5% / 95% quantiles (searchsorted of
    the grey cdf at q * n), [8] the opaque pixels within `ink_levels` greys of [3]
    (content.INK_LEVELS)."""
    counts = np.zeros(32768, np.int32)
    tg = np.zeros((4, 256), np.int32)
    n = _opaque_pass(a, alpha, rgb, -1, counts, tg)
    ghist = tg.sum(axis=0).astype(np.int64)
    ints = np.zeros(9, np.int64)
    if n == 0:
        return ghist, ints
    best = 0
    n_keys = 0
    for i in range(32768):
        v = counts[i]
        n_keys += v > 0
        best = max(best, v)
    top = 0  # the lowest key of the highest count, as np.argmax of the counts
    while counts[top] != best:
        top += 1
    top_grey = _opaque_pass(a, alpha, rgb, top, counts, tg)
    s1 = 0
    s2 = 0
    for b in range(256):
        s1 += ghist[b] * b
        s2 += ghist[b] * b * b
    near = 0
    for b in range(max(0, top_grey - ink_levels), min(256, top_grey + ink_levels + 1)):
        near += ghist[b]
    cdf = np.cumsum(ghist)
    ints[0], ints[1], ints[2], ints[3], ints[4], ints[5] = n, n_keys, best, top_grey, s1, s2
    ints[6] = _first_at_least(cdf, 0.05 * n)
    ints[7] = _first_at_least(cdf, 0.95 * n)
    ints[8] = near
    return ghist, ints


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def warm() -> None:
    """Compile (or load from the cache) every kernel for the argument types content passes: the
    read-only C-contiguous uint8 arrays np.asarray makes of Pillow images (a writable array is
    another type, compiled once more on first use)."""
    edge_pass(_frozen(np.zeros((5, 6), np.uint8)), 250, 8.0, 2)
    for c in (1, 2, 3, 4):
        colour_pass(_frozen(np.zeros((3, 4, c), np.uint8)), c - 1 if c in (2, 4) else -1, c >= 3, 24)


warm()
