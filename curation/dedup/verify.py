"""Near-duplicate verification of candidate pairs: the three-signal rule of `DedupConfig`.

A candidate pair is a near duplicate when pHash distance <= ``phash_radius``, dHash distance <=
``dhash_radius`` and every chromaticity channel differs by at most ``max_chroma_diff`` (see
`chromaticity`). `verify_candidates` applies the rule to arrays of candidate pairs and also keeps
each pair only for the first block combination that reports it, so every pair is emitted once.
Used both by the within-shard search (`near_pairs`) and the cross-shard query (`query_index`).
"""

from __future__ import annotations

import numpy as np

from curation.dedup.config import DedupConfig
from curation.dedup.keys import bit_field

__all__ = ["chroma_limit", "chromaticity", "verify_candidates"]


def chromaticity(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 chromaticity: (mean_c + 8) / sum(mean + 8) * 255, rounded. Brightness and contrast
    changes leave it (nearly) unchanged; hue changes do not. Nulls are treated as grey."""
    rgb = np.stack([np.nan_to_num(np.asarray(c, dtype=np.float64), nan=128.0) for c in (r, g, b)], axis=1)
    rgb = np.clip(rgb, 0.0, 255.0) + 8.0
    return np.rint(rgb / rgb.sum(axis=1, keepdims=True) * 255.0).astype(np.uint8)


def chroma_limit(cfg: DedupConfig) -> int:
    """`max_chroma_diff` in uint8 chromaticity steps (the largest allowed per-channel difference)."""
    return int(np.floor(cfg.max_chroma_diff * 255.0 + 1e-9))


def verify_candidates(
    a: np.ndarray, b: np.ndarray, pa: np.ndarray, pb_: np.ndarray, da: np.ndarray, db_: np.ndarray,
    ca: np.ndarray, cb: np.ndarray, cfg: DedupConfig,
    plan_p: list[tuple[int, int]], plan_d: list[tuple[int, int]], jp: int, jd: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the candidate pairs (a[k], b[k]) that (1) satisfy every near-duplicate rule and (2) are
    reported by combination (jp, jd) and no earlier one, so every pair is emitted exactly once.
    pa/da/ca are the hash/chroma tables indexed by a, pb_/db_/cb by b. Filters progressively (pHash
    first: it rejects most candidates) so skewed data with big buckets stays cheap. Returns
    (a, b, pHash distance) of the kept pairs."""
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
    a, b, dp = a[keep], b[keep], dp[keep]
    cd = np.abs(ca[a].astype(np.int16) - cb[b].astype(np.int16)).max(axis=1)
    keep = np.flatnonzero(cd <= chroma_limit(cfg))
    return a[keep], b[keep], dp[keep].astype(np.int16)
