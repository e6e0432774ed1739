"""Random-hyperplane LSH (SimHash) for the semantic pass: centre, band keys, Hamming limits.

Deterministic: the hyperplanes come from a fixed seed and the embedding dimension only. `band_keys`
gives ``n_bands`` keys of ``band_bits`` sign bits per row (signs of x - centre); two rows are LSH
candidates when some band key is equal. `hamming_limits` bounds the Hamming distance over all key
bits that a true partner (cosine >= threshold - margin) exceeds only with probability 1e-9, from the
binomial law of SimHash bits; `pack_bits` packs keys into uint64 words for that pre-filter.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from curation.semantic.config import SemanticDedupConfig

__all__ = ["band_keys", "fit_center", "hamming_limits", "pack_bits"]


@lru_cache(maxsize=8)
def _planes(seed: int, dim: int, bits: int) -> np.ndarray:
    return np.random.default_rng([seed, dim, 1]).standard_normal((dim, bits)).astype(np.float32)



def fit_center(x: np.ndarray) -> np.ndarray:
    """The hashing centre: the mean of unit rows `x` (float32, dim). Embeddings of ReLU networks are
    non-negative, so they fill a narrow cone and hyperplanes through the origin barely split it
    (demo: a random pair agrees on 71% of bits, a pair at cosine >= 0.95 on 91%); hyperplanes through
    the centre split it evenly (50% vs 85%), which makes buckets ~100x smaller at 16 bits. Fitted
    once per corpus (on the first shard) and persisted; only candidate generation uses it."""
    x = np.asarray(x, dtype=np.float32)
    return x.mean(axis=0).astype(np.float32) if len(x) else np.zeros(x.shape[1], np.float32)


def band_keys(x: np.ndarray, cfg: SemanticDedupConfig, center: np.ndarray | None = None,
              batch: int = 65536) -> np.ndarray:
    """(n, n_bands) uint32 band keys: the signs of x - center against band_bits * n_bands fixed
    random hyperplanes, packed band_bits per key."""
    n, dim = x.shape
    planes = _planes(cfg.seed, dim, cfg.band_bits * cfg.n_bands)
    offset = np.zeros((1, planes.shape[1]), np.float32) if center is None else \
        (np.asarray(center, dtype=np.float32).reshape(1, dim) @ planes)
    weights = (np.uint32(1) << np.arange(cfg.band_bits, dtype=np.uint32)).astype(np.uint32)
    out = np.empty((n, cfg.n_bands), dtype=np.uint32)
    for s in range(0, n, batch):
        bits = (np.asarray(x[s:s + batch], dtype=np.float32) @ planes > offset).reshape(-1, cfg.n_bands, cfg.band_bits)
        out[s:s + batch] = (bits.astype(np.uint32) * weights).sum(axis=2, dtype=np.uint32)
    return out



_MISS_LOG10 = -9.0  # the Hamming pre-filter drops a true pair with probability <= 1e-9


@lru_cache(maxsize=64)
def _hamming_cutoffs(nbits: int, grid: int = 4096) -> np.ndarray:
    """cut[k]: the smallest h with P(Binomial(nbits, p) > h) <= 10**_MISS_LOG10 for p = k / grid."""
    from math import lgamma, log
    ks = np.arange(nbits + 1, dtype=np.float64)
    lc = np.array([lgamma(nbits + 1) - lgamma(k + 1) - lgamma(nbits - k + 1) for k in range(nbits + 1)])
    cut = np.empty(grid + 1, dtype=np.int64)
    for g in range(grid + 1):
        p = g / grid
        if p <= 0.0:
            cut[g] = 0
            continue
        if p >= 1.0:
            cut[g] = nbits
            continue
        lp = lc + ks * log(p) + (nbits - ks) * log(1.0 - p)
        tail = np.cumsum(np.exp(lp - lp.max())[::-1])[::-1] * np.exp(lp.max())  # P(X >= k)
        ok = np.flatnonzero(tail <= 10.0 ** _MISS_LOG10)  # P(X >= k) small: cut at k - 1
        cut[g] = (int(ok[0]) - 1) if len(ok) else nbits
    return cut


def pack_bits(keys: np.ndarray, band_bits: int) -> np.ndarray:
    """Band keys (n, n_bands) -> the same bits packed in uint64 words (zero padded)."""
    k = keys.astype(np.uint16) if band_bits <= 16 else keys.astype(np.uint32, copy=False)
    per = 8 // k.itemsize
    pad = (-k.shape[1]) % per
    if pad:
        k = np.concatenate([k, np.zeros((len(k), pad), k.dtype)], axis=1)
    return np.ascontiguousarray(k).view(np.uint64)


def hamming_limits(x: np.ndarray, cfg: SemanticDedupConfig, center: np.ndarray | None = None,
                   margin: float = 0.01) -> np.ndarray:
    """Per query row (unit `x`), the largest Hamming distance over all band_bits * n_bands SimHash
    bits that a partner with cosine >= threshold - margin can have except with probability 1e-9.

    Random hyperplanes (through `center`) split two vectors with probability angle / pi, where the
    angle is between x - center and y - center, bits independently (the planes are iid Gaussian),
    so the distance is Binomial(bits, angle / pi). The centred angle of a pair with x.y >= t is at
    most the worst case over the partner's y.c, which lies within |x - y| |c| <= sqrt(2 - 2t) |c|
    of x.c; that worst case is found in closed form (below). margin covers the index's int8
    rounding (the exact decision uses the decoded vector; keys come from the original). Checked on
    the demo's real embeddings: no pair at cosine >= 0.94 / 0.95 / 0.97 exceeds its limit."""
    x = np.asarray(x, dtype=np.float32)
    nbits = cfg.band_bits * cfg.n_bands
    t = max(-1.0, cfg.threshold - margin)
    c = np.zeros(x.shape[1], np.float64) if center is None else np.asarray(center, np.float64)
    cc = float(c @ c)
    a = (x.astype(np.float64) @ c)[:, None]
    delta = np.sqrt(max(0.0, 2.0 - 2.0 * t)) * np.sqrt(cc)
    # centred cosine as a function of the partner's b = y.c, with u = |y - c|^2 = 1 - 2b + |c|^2:
    # (A + u/2) / (|x - c| sqrt(u)), A = t - a + |c|^2 - (1 + |c|^2) / 2; convex in sqrt(u) when
    # A > 0 (minimum at u = 2A), increasing otherwise: the minimum over the interval is at an end
    # or at 2A clipped into it
    lo_u = np.maximum(1.0 - 2.0 * (a + delta) + cc, 1e-12)
    hi_u = np.maximum(1.0 - 2.0 * (a - delta) + cc, 1e-12)
    A = t - a + cc - (1.0 + cc) / 2.0
    u = np.concatenate([lo_u, hi_u, np.clip(2.0 * A, lo_u, hi_u)], axis=1)
    na = np.sqrt(np.maximum(1.0 - 2.0 * a + cc, 1e-12))
    cos_c = ((A + u / 2.0) / (na * np.sqrt(u))).min(axis=1) - 1e-3  # slack for rounding
    p = np.arccos(np.clip(cos_c, -1.0, 1.0)) / np.pi
    cut = _hamming_cutoffs(nbits)
    grid = len(cut) - 1
    return cut[np.minimum(np.ceil(p * grid).astype(np.int64), grid)]
