"""Crop-aware verification of semantic candidate pairs on stage 1's 8x8 colour thumbnails.

The semantic pass finds candidates by embedding cosine. A cosine high enough to catch crops,
re-framings and re-renders (0.90-0.97 for EfficientNet-Lite0) also links look-alikes: another
animation frame of a sprite, a recoloured sprite, a hue-shifted clip art, a card of the same layout.
The embedding cannot tell them apart, but the picture's layout and colours can: a crop or a
re-framing of A is A's picture seen through a window, so one image's thumbnail, resampled from a
window of the other's, must match it.

`align_diff(ta, tb)` scores a pair: for every window of one image (side s in `SCALES` of the full
side, offsets on a grid of `OFFSETS` steps per axis, both directions: B inside A for crops, A inside
B for re-framings) the window is resampled from the stored 8x8 thumbnail by exact area resampling
(each stored cell is the mean of its pixels, so a window cell is the overlap-weighted mean of the
stored cells) onto a `GRID` x `GRID` comparison grid, the other image is resampled onto the same grid,
and the score is the smallest, over windows, mean absolute difference (levels, 0..255) over the
interior cells (the outer `RING` left out: those cells straddle the window's edge, where a
re-framing's margin bleeds in) and the three channels.

Measured on bench/semantic_set.py's labelled pairs at cosine >= 0.85 (EfficientNet-Lite0; median,
levels): re-encodes / resizes 0.8, SVG re-renders 2.1, 5-12% crops 5.9, re-framings 7.6; look-alikes
(labelled not duplicates): wesnoth animation frames 8.7, cards 11.2, hue shifts and recoloured
sprites 28.2. The grid is coarse, so frames and cards overlap the crops: the cosine has to do part
of the work (`calibrate_two_stage` picks both limits). Cost: 0.2-0.5 ms per pair on 2 shared cores
(126 windows x 2 directions; `align_diff` in semantic_calibration.json), only for pairs in
[wide_threshold, threshold).

`verified(cos, diff, ...)` is the pass's decision: a pair links when its cosine is >= the strict
threshold (the embedding alone), or when it is >= the wide threshold *and* its alignment difference
is <= max_align_diff (`SemanticDedupConfig`: threshold, wide_threshold, max_align_diff);
`verify_links` applies it to candidate pairs with their thumbnails. Everything is a pure function
of the two thumbnails (deterministic; both directions are tried, so the pair's order does not
matter).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from curation.imaging.features import THUMB_SIDE

__all__ = ["GRID", "OFFSETS", "RING", "SCALES", "align_diff", "verified", "verify_links", "window_matrices"]

# window sides (share of the full side) and offsets per axis tried by `align_diff`: crops of 0-12%
# per side (s 0.76-1) and re-framings on up to a 33% larger canvas (s >= 0.75)
SCALES: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
OFFSETS = 5
GRID = 6  # comparison grid: both sides resampled to GRID x GRID cells (coarser than the stored 8x8,
# so the blur of resampling a window from 8x8 cells costs less) ...
RING = 1  # ... and its outer ring of cells left out (they straddle the window's edge: a re-framing's
# white margin bleeds into them)


def _area_matrix(x0: float, s: float, n: int = THUMB_SIDE, n_in: int = THUMB_SIDE) -> np.ndarray:
    """(n, n_in) weights: output cell j (the window [x0 + s*j/n, x0 + s*(j+1)/n] of the unit side)
    as the overlap-weighted mean of the n_in stored cells [i/n_in, (i+1)/n_in]."""
    lo = x0 + s * np.arange(n) / n
    hi = lo + s / n
    edges = np.arange(n_in + 1) / n_in
    ov = np.clip(np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1]), 0.0, None)
    return ov / ov.sum(axis=1, keepdims=True)


@lru_cache(maxsize=8)
def window_matrices(scales: tuple[float, ...] = SCALES, offsets: int = OFFSETS,
                    grid: int = GRID) -> tuple[np.ndarray, ...]:
    """Per window side s in `scales`: (o, grid, 8) float32 area-resampling matrices (`_area_matrix`)
    of the windows [x0, x0 + s] with x0 on `offsets` steps in [0, 1 - s] (one for s = 1). A window
    is a pair (row matrix, column matrix) of the same side: o * o windows per side."""
    out = []
    for s in scales:
        starts = [0.0] if s >= 1.0 else list(np.linspace(0.0, 1.0 - s, offsets))
        out.append(np.asarray([_area_matrix(o, s, grid) for o in starts], dtype=np.float32))
    return tuple(out)


def _thumbs(t: np.ndarray) -> np.ndarray:
    """(n, 192) uint8 thumb_rgb rows -> (n, 3, 8, 8) float32 (channel, row, column)."""
    t = np.ascontiguousarray(t, dtype=np.uint8).reshape(-1, THUMB_SIDE, THUMB_SIDE, 3)
    return np.ascontiguousarray(t.transpose(0, 3, 1, 2), dtype=np.float32)


def align_diff(ta: np.ndarray, tb: np.ndarray, block: int = 1024, *, grid: int = GRID,
               scales: tuple[float, ...] = SCALES, offsets: int = OFFSETS, ring: int = RING) -> np.ndarray:
    """Smallest mean absolute difference (levels) between one thumbnail and a window of the other,
    over the windows of `window_matrices` and both directions, on the interior cells of a grid x grid
    comparison grid; ta, tb: (n, 192) uint8 rows (`thumb_rgb`, paired row by row). Returns (n,)
    float32."""
    a, b = _thumbs(ta), _thumbs(tb)
    if len(a) != len(b):
        raise ValueError(f"align_diff needs paired rows, got {len(a)} and {len(b)}")
    if not 0 <= 2 * ring < grid:
        raise ValueError(f"ring must leave cells of the {grid}x{grid} grid, got {ring}")
    keep = slice(ring, grid - ring)  # only the interior cells are compared: resample only those
    mats = [m[:, keep] for m in window_matrices(scales, offsets, grid)]
    full = _area_matrix(0.0, 1.0, grid).astype(np.float32)[keep]  # the other image on the same grid
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), block):
        pa, pb = a[s:s + block], b[s:s + block]
        best = np.full(len(pa), np.inf, dtype=np.float32)
        for src, other in ((pa, pb), (pb, pa)):
            dst = full @ other @ full.T  # (k, 3, g, g)
            for m in mats:  # (o, g, 8) -> all o * o windows of this side in two matrix products
                o, g = m.shape[0], m.shape[1]
                flat = m.reshape(o * g, THUMB_SIDE)
                pred = (flat @ src @ flat.T).reshape(len(src), 3, o, g, o, g)  # [k, c, oy, y, ox, x]
                d = np.abs(pred - dst[:, :, None, :, None, :]).mean(axis=(1, 3, 5))
                best = np.minimum(best, d.reshape(len(src), -1).min(axis=1))
        out[s:s + block] = best
    return out


def verified(cos: np.ndarray, diff: np.ndarray | None, threshold: float, wide_threshold: float,
             max_align_diff: float) -> np.ndarray:
    """The link decision per pair: cos >= threshold, or cos >= wide_threshold and diff <=
    max_align_diff (diff NaN, e.g. a missing thumbnail: the strict threshold only; diff None: no
    verification at all)."""
    cos = np.asarray(cos)
    ok = cos >= threshold
    if diff is None or wide_threshold >= threshold:
        return ok
    d = np.asarray(diff, dtype=np.float32)
    return ok | ((cos >= wide_threshold) & (np.nan_to_num(d, nan=np.inf) <= max_align_diff))


def verify_links(sim: np.ndarray, ta: np.ndarray | None, tb: np.ndarray | None, threshold: float,
                 wide_threshold: float | None, max_align_diff: float) -> np.ndarray:
    """The two-stage decision (`verified`) for candidate pairs with cosines `sim` found at the wide
    threshold: ta / tb are the pairs' thumbnails ((n, 192) uint8, a row of zeros where an image has
    none, or None when no thumbnails are known), compared (`align_diff`) only for pairs in
    [wide_threshold, threshold) that both have one. Returns the bool mask of pairs that link."""
    sim = np.asarray(sim, dtype=np.float32)
    if wide_threshold is None or wide_threshold >= threshold or ta is None or tb is None:
        return sim >= threshold
    diff = np.full(len(sim), np.nan, dtype=np.float32)
    both = ta.any(axis=1) & tb.any(axis=1)  # an all-zero thumbnail is a missing one (black images: strict)
    k = np.flatnonzero((sim < threshold) & (sim >= wide_threshold) & both)
    if len(k):
        diff[k] = align_diff(ta[k], tb[k])
    return verified(sim, diff, threshold, wide_threshold, max_align_diff)
