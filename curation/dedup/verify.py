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

from dataclasses import dataclass

import numpy as np

from curation.dedup.config import DedupConfig
from curation.dedup.keys import bit_field
from curation.imaging.features import THUMB_BYTES, bytes_array
from curation.imaging.hashes import DETAIL_BYTES

__all__ = ["VerifyFeatures", "as_features", "chroma_limit", "chromaticity", "detail_array", "verify_candidates"]


def chromaticity(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 chromaticity: (mean_c + 8) / sum(mean + 8) * 255, rounded. Brightness and contrast
    changes leave it (nearly) unchanged; hue changes do not. Nulls are treated as grey."""
    rgb = np.stack([np.nan_to_num(np.asarray(c, dtype=np.float64), nan=128.0) for c in (r, g, b)], axis=1)
    rgb = np.clip(rgb, 0.0, 255.0) + 8.0
    return np.rint(rgb / rgb.sum(axis=1, keepdims=True) * 255.0).astype(np.uint8)


def chroma_limit(cfg: DedupConfig) -> int:
    """`max_chroma_diff` in uint8 chromaticity steps (the largest allowed per-channel difference)."""
    return int(np.floor(cfg.max_chroma_diff * 255.0 + 1e-9))


def detail_array(values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """(n, DETAIL_BYTES) uint8 array of ``phash256`` values and a bool mask of the rows that have
    one (null or wrong-length values are zero rows with mask False)."""
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


def as_features(x: VerifyFeatures | np.ndarray) -> VerifyFeatures:
    """`VerifyFeatures` as given, or from a bare (n, 3) chroma array (strict rule for every pair)."""
    return x if isinstance(x, VerifyFeatures) else VerifyFeatures(np.ascontiguousarray(x, dtype=np.uint8).reshape(-1, 3))


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
    fa: VerifyFeatures, fb: VerifyFeatures, cfg: DedupConfig,
    plan_p: list[tuple[int, int]], plan_d: list[tuple[int, int]], jp: int, jd: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the candidate pairs (a[k], b[k]) that (1) satisfy the near-duplicate rule (module
    docstring) and (2) are reported by combination (jp, jd) and no earlier one, so every pair is
    emitted exactly once. pa/da/fa are the hash/feature tables indexed by a, pb_/db_/fb by b.
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
    a, b, dp, y = a[keep], b[keep], dp[keep], y[keep]
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
    return a[keep], b[keep], dp[keep].astype(np.int16)
