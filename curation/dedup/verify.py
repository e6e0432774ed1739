"""Near-duplicate verification of candidate pairs: the two-stage rule of `DedupConfig`.

Stage one (the search, `near_pairs` / `query_index`) yields every pair within the *candidate* radii
(pHash distance <= ``phash_radius`` and dHash distance <= ``dhash_radius``). Stage two keeps a
candidate pair when

* both images have a stored thumbnail (`curation.imaging.features`, ``thumb_rgb``): their aspect
  ratios agree (|log(w/h) difference| <= ``max_aspect_diff``), every cell and channel of the two
  8x8 RGB thumbnails differs by at most ``max_thumb_diff`` levels and, where both also have a
  256-bit pHash (``phash256``, `curation.imaging.hashes.phash256_batch`), those differ in at most
  ``max_detail_distance`` bits (rows analysed before that column existed skip this last check);
* otherwise (rows written before thumbnails existed): pHash distance <= ``strict_phash_radius``,
  dHash distance <= ``strict_dhash_radius`` and every chromaticity channel differs by at most
  ``max_chroma_diff`` (see `chromaticity`), the rule of the one-stage search.

`verify_candidates` applies the rule to arrays of candidate pairs and also keeps each pair only for
the first block combination that reports it, so every pair is emitted once. `VerifyFeatures` holds
the per-image verification inputs. Used both by the within-shard search and the cross-shard query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.dedup.config import DedupConfig
from curation.dedup.keys import bit_field
from curation.imaging.features import THUMB_BYTES, bytes_array
from curation.imaging.hashes import DETAIL_BYTES

__all__ = ["FeatureSource", "VerifyFeatures", "as_features", "chroma_limit", "chromaticity", "detail_array", "feature_source",
           "verify_candidates", "verify_features"]


def chromaticity(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 chromaticity: (mean_c + 8) / sum(mean + 8) * 255, rounded. Brightness and contrast
    changes leave it (nearly) unchanged; hue changes do not. Nulls are treated as grey."""
    rgb = np.stack([np.nan_to_num(np.asarray(c, dtype=np.float64), nan=128.0) for c in (r, g, b)], axis=1)
    rgb = np.clip(rgb, 0.0, 255.0) + 8.0
    return np.rint(rgb / rgb.sum(axis=1, keepdims=True) * 255.0).astype(np.uint8)


def chroma_limit(cfg: DedupConfig) -> int:
    """`max_chroma_diff` in uint8 chromaticity steps (the largest allowed per-channel difference)."""
    return int(np.floor(cfg.max_chroma_diff * 255.0 + 1e-9))


def detail_array(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, DETAIL_BYTES) uint8 array of ``phash256`` values (a list of bytes / None or a polars
    Binary Series) and a bool mask of the rows that have one (null or wrong-length values are zero
    rows with mask False)."""
    return bytes_array(values, DETAIL_BYTES)


@dataclass(frozen=True)
class VerifyFeatures:
    """Per-image verification inputs (length n): chroma uint8 (n, 3); thumb uint8 (n, THUMB_BYTES),
    has_thumb bool (n,) and log_aspect float32 (n,) = log(width / height), or all three None when
    no image has a thumbnail (every pair then takes the strict rule); detail uint8 (n, DETAIL_BYTES)
    256-bit pHashes with has_detail bool (n,), or both None when no image has one."""

    chroma: np.ndarray
    thumb: np.ndarray | None = None
    has_thumb: np.ndarray | None = None
    log_aspect: np.ndarray | None = None
    detail: np.ndarray | None = None
    has_detail: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> VerifyFeatures:
        if self.thumb is None:
            return VerifyFeatures(self.chroma[idx])
        detail = None if self.detail is None else self.detail[idx]
        has_detail = None if self.has_detail is None else self.has_detail[idx]
        return VerifyFeatures(self.chroma[idx], self.thumb[idx], self.has_thumb[idx], self.log_aspect[idx],  # type: ignore[index]
                              detail, has_detail)

    @classmethod
    def build(cls, chroma: np.ndarray, thumb: np.ndarray | None, has_thumb: np.ndarray | None,
              width: np.ndarray | None, height: np.ndarray | None,
              detail: np.ndarray | None = None, has_detail: np.ndarray | None = None) -> VerifyFeatures:
        """From thumbnails (`curation.imaging.features.thumb_array`), pixel sizes (null/0 -> 1) and
        256-bit pHashes (`detail_array`; optional)."""
        chroma = np.ascontiguousarray(chroma, dtype=np.uint8).reshape(-1, 3)
        if thumb is None or has_thumb is None or not bool(np.any(has_thumb)):
            return cls(chroma)
        w = np.maximum(np.nan_to_num(np.asarray(width, dtype=np.float64), nan=1.0), 1.0)
        h = np.maximum(np.nan_to_num(np.asarray(height, dtype=np.float64), nan=1.0), 1.0)
        thumb = np.ascontiguousarray(thumb, dtype=np.uint8).reshape(-1, THUMB_BYTES)
        if detail is None or has_detail is None or not bool(np.any(has_detail)):
            detail = has_detail = None
        else:
            detail = np.ascontiguousarray(detail, dtype=np.uint8).reshape(-1, DETAIL_BYTES)
            has_detail = np.asarray(has_detail, dtype=bool)
        return cls(chroma, thumb, np.asarray(has_thumb, dtype=bool), np.log(w / h).astype(np.float32),
                   detail, has_detail)


# Features of a table given eagerly, as a bare (n, 3) chroma array, or lazily: a function of row
# numbers (sorted, unique) that returns their `VerifyFeatures` in that order, called only for the
# rows of candidate pairs that passed the hash rules (an earlier-shard index of millions of rows
# then never decodes the thumbnails and 256-bit pHashes of rows no query comes near).
FeatureSource = VerifyFeatures | np.ndarray | Callable[[np.ndarray], VerifyFeatures]


def as_features(x: VerifyFeatures | np.ndarray) -> VerifyFeatures:
    """`VerifyFeatures` as given, or from a bare (n, 3) chroma array (strict rule for every pair)."""
    return x if isinstance(x, VerifyFeatures) else VerifyFeatures(np.ascontiguousarray(x, dtype=np.uint8).reshape(-1, 3))


def feature_source(x: FeatureSource) -> VerifyFeatures | Callable[[np.ndarray], VerifyFeatures]:
    """A lazy source as given, else `as_features(x)`."""
    if not isinstance(x, (VerifyFeatures, np.ndarray)) and callable(x):
        return x
    return as_features(x)


def _thumb_ok(fa: VerifyFeatures, fb: VerifyFeatures, a: np.ndarray, b: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Aspect, largest thumbnail cell difference and (pairs that both have one) 256-bit pHash
    distance within the limits (pairs that both have a thumbnail)."""
    ok = np.abs(fa.log_aspect[a] - fb.log_aspect[b]) <= cfg.max_aspect_diff  # type: ignore[index]
    out = np.zeros(len(a), dtype=bool)
    idx = np.flatnonzero(ok)
    for s in range(0, len(idx), 1 << 16):  # bounded temporaries: 192 bytes per pair and side
        k = idx[s:s + (1 << 16)]
        d = np.abs(fa.thumb[a[k]].astype(np.int16) - fb.thumb[b[k]].astype(np.int16)).max(axis=1)  # type: ignore[index]
        out[k] = d <= cfg.max_thumb_diff
    if fa.detail is not None and fb.detail is not None:
        idx = np.flatnonzero(out & fa.has_detail[a] & fb.has_detail[b])  # type: ignore[index]
        for s in range(0, len(idx), 1 << 16):
            k = idx[s:s + (1 << 16)]
            bits = np.bitwise_count(fa.detail[a[k]] ^ fb.detail[b[k]]).sum(axis=1, dtype=np.int32)
            out[k] = bits <= cfg.max_detail_distance
    return out


def verify_candidates(
    a: np.ndarray, b: np.ndarray, pa: np.ndarray, pb_: np.ndarray, da: np.ndarray, db_: np.ndarray,
    fa: VerifyFeatures, fb: VerifyFeatures | Callable[[np.ndarray], VerifyFeatures], cfg: DedupConfig,
    plan_p: list[tuple[int, int]], plan_d: list[tuple[int, int]], jp: int, jd: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the candidate pairs (a[k], b[k]) that (1) satisfy the near-duplicate rule (module
    docstring) and (2) are reported by combination (jp, jd) and no earlier one, so every pair is
    emitted exactly once. pa/da/fa are the hash/feature tables indexed by a, pb_/db_/fb by b (fb
    may be a lazy source, see `FeatureSource`: asked for the rows that pass the hash rules only).
    Filters progressively (pHash first: it rejects most candidates) so skewed data with big buckets
    stays cheap. Returns (a, b, pHash distance) of the kept pairs."""
    x = pa[a] ^ pb_[b]
    dp = np.bitwise_count(x)
    keep = np.flatnonzero((dp <= cfg.phash_radius) & (bit_field(x, *plan_p[jp]) == 0))
    a, b, x, dp = a[keep], b[keep], x[keep], dp[keep]
    y = da[a] ^ db_[b]
    ok = (np.bitwise_count(y) <= cfg.dhash_radius) & (bit_field(y, *plan_d[jd]) == 0)
    for sft, w in plan_p[:jp]:
        ok &= bit_field(x, sft, w) != 0
    for sft, w in plan_d[:jd]:
        ok &= bit_field(y, sft, w) != 0
    keep = np.flatnonzero(ok)
    return verify_features(a[keep], b[keep], dp[keep], y[keep], fa, fb, cfg)


def verify_features(
    a: np.ndarray, b: np.ndarray, dp: np.ndarray, y: np.ndarray,
    fa: VerifyFeatures, fb: VerifyFeatures | Callable[[np.ndarray], VerifyFeatures], cfg: DedupConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage two of the rule for candidate pairs (a[k], b[k]) already within both candidate radii
    (dp: their pHash distances, y: their dHash XORs): the thumbnail rule where both have a
    thumbnail, else the strict rule (module docstring). fb may be a lazy `FeatureSource`. Returns
    (a, b, pHash distance) of the kept pairs."""
    b_rows = b  # returned; `b` indexes fb from here on
    if not isinstance(fb, VerifyFeatures):
        if len(b) == 0:
            return a, b, dp.astype(np.int16)
        rows, b = np.unique(b, return_inverse=True)
        fb = fb(rows)
    if fa.thumb is not None and fb.thumb is not None:
        both = fa.has_thumb[a] & fb.has_thumb[b]  # type: ignore[index]
    else:
        both = np.zeros(len(a), dtype=bool)
    passed = np.zeros(len(a), dtype=bool)
    t = np.flatnonzero(both)
    if len(t):
        passed[t] = _thumb_ok(fa, fb, a[t], b[t], cfg)
    s = np.flatnonzero(~both & (dp <= cfg.strict_phash_radius) & (np.bitwise_count(y) <= cfg.strict_dhash_radius))
    if len(s):
        cd = np.abs(fa.chroma[a[s]].astype(np.int16) - fb.chroma[b[s]].astype(np.int16)).max(axis=1)
        passed[s] = cd <= chroma_limit(cfg)
    keep = np.flatnonzero(passed)
    return a[keep], b_rows[keep], dp[keep].astype(np.int16)
