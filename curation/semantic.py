"""Optional second dedup pass: semantic (embedding) near duplicates, within a shard and across shards.

Why
---
Perceptual hashes (curation/dedup.py) miss crops and re-framings: a 3% crop per side moves pHash by
~6 bits, out of reach of any radius that keeps precision (recall on the demo's crops: 0.09). Image
embeddings barely move under such a crop (cosine 0.95-0.99 on the demo, see `SemanticDedupConfig`),
so this pass runs on stage 4's embeddings (the curated set, i.e. after the hash pass).

Design (mirrors curation/dedup.py)
----------------------------------
* **Deterministic.** Every random quantity (LSH hyperplanes, the index projection) comes from a fixed
  seed and the embedding dimension only: nothing is fitted to data, nothing depends on run order.
* **No chaining.** Leader (star) clustering in priority order (input order = curated order; the
  first row of the shard has the highest priority): an image joins a cluster only if its cosine
  with the cluster's *representative itself* is >= the threshold (`curation.dedup.leader_clusters`).
* **Shards are immutable.** Shard N is compared with the persisted index of shards 1..N-1 first: an
  image whose cosine with an earlier *representative* is >= the threshold joins that cluster (the
  earliest shard wins, then the highest similarity, then the smallest cluster_id). The rest is
  clustered within the shard. Earlier outputs are never rewritten.
* **No all-pairs comparison.** Candidates come from random-hyperplane LSH (SimHash) with banding:
  ``n_bands`` bands of ``band_bits`` sign bits each; two images are candidates when all bits of at
  least one band agree. For a pair at angle theta a bit agrees with probability 1 - theta/pi, so a
  band with probability p**band_bits and some band with 1 - (1 - p**band_bits)**n_bands. Every pair
  is emitted once (by the first band it shares) and verified by an exact cosine. The search is
  probabilistic: recall against brute force at the threshold is measured (bench/semantic.py).
* **Compact index.** The index keeps, for representatives only, the band keys (``n_bands`` x uint32)
  and the vector used to verify cross-shard candidates (``index_vectors``: the embedding as int8
  with a per-row scale, the default; float16, exact; or an int8 random projection). Cosine is
  scale-invariant, so no scale is stored. Within-shard similarities use the full embeddings.
* **Cross-shard cost.** `match_earlier` takes the earlier index as one frame or one frame per
  earlier shard (memory bounded by one shard's index); per earlier representative and band one
  lookup of its key in a direct table of the shard's keys (binary search when band_bits > 20),
  then each candidate pair (once, by its first shared band) goes through a Hamming pre-filter on
  all n_bands * band_bits key bits (popcount of packed words; `hamming_limits`: the distance a
  pair at cosine >= threshold - 0.01 exceeds with probability <= 1e-9, from the binomial law of
  SimHash bits, so results equal verifying every candidate; demo and synthetic: identical) and
  the survivors are verified by exact cosine, decoding only their index rows, in cache-sized
  blocks. 10k-image shard vs 1M earlier representatives: see bench/results/semantic.json.

Index schema (`index_schema(cfg, dim)`), one row per embedded image of every materialised shard::

    image_id str, shard str, shard_seq Int32, cluster_id str, rep_shard str, similarity Float32,
    is_representative bool, keys Array(UInt32, n_bands), vec Array(Int8 | Float16, dim | proj_dim)
    (keys and vec are null for members: only representatives are matched against)

Bytes per representative: 4 * n_bands + the vector: 192 + 1,280 (int8, 1280-d, the defaults) in
memory; see bench/results/semantic.json for Parquet sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from curation.dedup import leader_clusters

__all__ = [
    "SEMANTIC_SCHEMA",
    "SemanticDedupConfig",
    "band_keys",
    "brute_force_pairs",
    "index_schema",
    "lsh_pairs",
    "match_earlier",
    "decode",
    "encode",
    "fit_center",
    "hamming_limits",
    "query_vectors",
    "query_pairs",
    "semantic_dedup_shard",
]


VECTOR_ENCODINGS = ("float16", "int8", "proj")


@dataclass(frozen=True)
class SemanticDedupConfig:
    """Semantic near-duplicate rules and search parameters.

    enabled: False skips the pass (every image its own cluster; an empty index is still written).
    threshold: 0.97 cosine (L2-normalised embeddings, so cosine = dot product). Measured with the
        offline EfficientNet-Lite0 (1280-d) on the demo corpus (bench/semantic.py ->
        bench/results/semantic.json; every known copy embedded, float16 precision like stage 4):
        * copies vs their original (p1 / p5 / median; share below 0.97): 3%-per-side crops
          0.939 / 0.955 / 0.987, 10% below; brightness 0.931 / 0.956 / 0.984, 13%; downscales
          0.757 / 0.889 / 0.992, 17% (tiny sprites lose detail); JPEG re-encodes 0.896 / 0.928 /
          0.969, 56% (the hash pass catches 94% of these anyway); exact copies 1.0.
        * unrelated pairs (12.9M: all pairs of the 5,079 curated images outside known groups):
          median 0.69, p99 0.89; at or above 0.94: 3.9e-4 of pairs, 0.95: 1.5e-4, 0.96: 4.6e-5,
          0.97: 1.5e-5, 0.98: 7.3e-6. Nearly all are same-class MNIST digits (an ImageNet model sees
          "a white stroke on black": 1,605 digit pairs at 0.95, 56 at 0.97) and game tiles that are
          near-identical by design (planetLeft / planetMid / planetRight: 119 tile pairs at 0.97).
        * known groups, semantic pass after the hash pass (the pipeline), flagged / precision / crop
          recall / all-kinds recall: 0.95: 1,110 / 0.35 / 0.78 / 0.91; 0.96: 814 / 0.50 / 0.76 / 0.90;
          0.97: 647 / 0.65 / 0.77 / 0.90; 0.98: 578 / 0.70 / 0.63 / 0.87 (hash pass alone: 453 /
          0.78 / 0.13 / 0.74). Crop recall is capped at ~0.85 there because 17 of the 111 crop
          pairs lose a member to the quality filter before stage 4; on the pairs both kept, 0.97
          catches ~90%. "Precision" counts look-alike digits and the tile variants as errors.
        0.97 is where false links stop growing faster than caught copies (0.96 -> 0.97 halves the
        unrelated pairs and loses one crop). For photos (0.2-2 Mpx, skimage, tests/unit/
        test_semantic.py) crops score 0.94-0.99 (median 0.97) and unrelated photos stay < 0.94, so
        photo corpora without look-alikes can use 0.94-0.95 (with band_bits 14, n_bands 64). The
        leader clustering keeps clusters star-shaped either way: a false link costs one image,
        never a chain.
    band_bits / n_bands: 16 bits x 48 bands (192 bytes of keys per representative), hashing around
        the corpus centre (`fit_center`). On the demo embeddings a centred bit agrees with p ~0.85
        for pairs >= 0.95 and ~0.50 for random pairs. Measured recall vs brute force on the demo
        (5,079 real embeddings): 1.000 at 0.97 (16 x 32: 0.996), 0.89 at 0.95; candidates ~1% of
        all pairs (the demo is dense: 4,500 MNIST digits). For thresholds <= 0.95 use 14 x 64
        (recall 0.98 at 0.95, 2x the candidates).
    index_vectors: "int8". How the index keeps each representative's vector for cross-shard
        verification (the current shard is always verified with its full embeddings):
        * "float16": the embedding itself (2 * dim bytes; 2,560 for 1280-d). Exact: stage 4 stores
          float16-precision embeddings, so decisions equal brute force.
        * "int8": the embedding scaled to max |127| per row (dim bytes; 1,280). Cosines use the
          exact query vector and the de-biased int8 vector (rounding noise of variance 1/12 step**2
          per non-zero component is subtracted from the norm), error std ~0.0003: decisions differ
          from brute force only for pairs within ~0.001 of the threshold (demo: recall 0.98,
          precision 0.99 on the 1,966 pairs >= 0.95, which crowd the threshold).
        * "proj": a fixed Gaussian random projection to proj_dim dims, int8 (proj_dim bytes). Cheap,
          but on ReLU features (non-negative, sharing one large common direction) the projection's
          error is correlated across pairs (a per-seed bias of up to +-0.003 at 256-768 dims):
          demo recall vs brute force 0.86 at 256 dims. Not recommended for these embeddings.
    proj_dim: 256, dimensions for index_vectors="proj".
    seed: fixes the hyperplanes and the projection (changing it invalidates earlier indexes: the
        shard's index records nothing about it, so keep it fixed for a corpus).
    pair_batch: candidate pairs generated per batch (bounds memory; cosines are computed in blocks
        of at most 1,024 pairs).
    """

    enabled: bool = True
    threshold: float = 0.97
    band_bits: int = 16
    n_bands: int = 48
    index_vectors: str = "int8"
    proj_dim: int = 256
    seed: int = 20240611
    pair_batch: int = 1 << 18

    def __post_init__(self) -> None:
        if not (-1.0 <= self.threshold <= 1.0):
            raise ValueError("threshold must be a cosine in [-1, 1]")
        if not (1 <= self.band_bits <= 32):
            raise ValueError("band_bits must be in [1, 32]")
        if self.n_bands < 1:
            raise ValueError("n_bands must be >= 1")
        if self.proj_dim < 1:
            raise ValueError("proj_dim must be >= 1")
        if self.index_vectors not in VECTOR_ENCODINGS:
            raise ValueError(f"index_vectors must be one of {VECTOR_ENCODINGS}")


SEMANTIC_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String,
    "shard": pl.String,
    "cluster_id": pl.String,  # the representative's image_id
    "is_representative": pl.Boolean,
    "rep_shard": pl.String,
    "similarity": pl.Float32,  # cosine with the representative (1.0 for representatives)
}


def index_schema(cfg: SemanticDedupConfig, dim: int) -> dict[str, pl.DataType]:
    """Index columns for embeddings of dimension `dim` (`vec` depends on cfg.index_vectors)."""
    vec = {"float16": pl.Array(pl.Float16, dim), "int8": pl.Array(pl.Int8, dim),
           "proj": pl.Array(pl.Int8, cfg.proj_dim)}[cfg.index_vectors]
    return {
        "image_id": pl.String,
        "shard": pl.String,
        "shard_seq": pl.Int32,
        "cluster_id": pl.String,
        "rep_shard": pl.String,
        "similarity": pl.Float32,
        "is_representative": pl.Boolean,
        "keys": pl.Array(pl.UInt32, cfg.n_bands),
        "vec": vec,
    }


# --------------------------------------------------------------------------------------------------
# Random, data-independent hashing and projection
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _planes(seed: int, dim: int, bits: int) -> np.ndarray:
    return np.random.default_rng([seed, dim, 1]).standard_normal((dim, bits)).astype(np.float32)


@lru_cache(maxsize=8)
def _projection(seed: int, dim: int, pdim: int) -> np.ndarray:
    return np.random.default_rng([seed, dim, 2]).standard_normal((dim, pdim)).astype(np.float32)


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


def _int8(y: np.ndarray) -> np.ndarray:
    m = np.abs(y).max(axis=1, keepdims=True)
    return np.rint(y / np.where(m > 0, m, 1.0) * 127.0).astype(np.int8)


def encode(x: np.ndarray, cfg: SemanticDedupConfig, batch: int = 65536) -> np.ndarray:
    """The index's vector for unit rows `x` (cfg.index_vectors): float16 (n, dim), int8 (n, dim)
    scaled to max |127| per row, or int8 (n, proj_dim) of the fixed random projection."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x, dtype=np.float32)
    if cfg.index_vectors == "float16":
        return np.asarray(x, dtype=np.float32).astype(np.float16)
    n, dim = x.shape

    def rows(s: int) -> np.ndarray:  # float32 per batch (a float16 input is not copied whole)
        return np.asarray(x[s:s + batch], dtype=np.float32)

    if cfg.index_vectors == "int8":
        return np.concatenate([_int8(rows(s)) for s in range(0, n, batch)]) if n else np.empty((0, dim), np.int8)
    pm = _projection(cfg.seed, dim, cfg.proj_dim)
    return (np.concatenate([_int8(rows(s) @ pm) for s in range(0, n, batch)]) if n
            else np.empty((0, cfg.proj_dim), np.int8))


def decode(v: np.ndarray, cfg: SemanticDedupConfig) -> np.ndarray:
    """Unit float32 rows from index vectors; int8 rows are de-biased (the rounding noise, variance
    1/12 per non-zero component, is taken out of the norm so cosines are not pulled down)."""
    f = np.asarray(v, dtype=np.float32)
    n2 = (f * f).sum(axis=1)
    if cfg.index_vectors != "float16":
        n2 = np.maximum(n2 - (f != 0).sum(axis=1) / 12.0, n2 * 0.5)
    nrm = np.sqrt(n2)[:, None]
    return f / np.where(nrm > 0, nrm, 1.0)


def query_vectors(x: np.ndarray, cfg: SemanticDedupConfig) -> np.ndarray:
    """Unit float32 rows to compare with `decode`d index vectors: the embeddings themselves, or their
    (unrounded) projection for index_vectors="proj"."""
    if cfg.index_vectors != "proj" or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    return _unit(np.asarray(x, dtype=np.float32) @ _projection(cfg.seed, x.shape[1], cfg.proj_dim))


def _unit(q: np.ndarray) -> np.ndarray:
    """int8 (or float) rows -> float32 unit rows (zero rows stay zero)."""
    f = np.asarray(q, dtype=np.float32)
    nrm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(nrm > 0, nrm, 1.0)


def _dots(a: np.ndarray, b: np.ndarray, xa: np.ndarray, xb: np.ndarray, batch: int,
          decode_b=None) -> np.ndarray:
    """Row-wise dot products xa[a] . xb[b] (float32). Gathered in small blocks (cache-sized: 1,024
    pairs; the result per pair does not depend on the block). decode_b: applied to the gathered
    rows of xb (e.g. `decode` of raw int8 index rows, row-wise, so only candidate rows are decoded)."""
    out = np.empty(len(a), dtype=np.float32)
    step = min(batch, 1024)
    for s in range(0, len(a), step):
        vb = xb[b[s:s + step]]
        if decode_b is not None:
            vb = decode_b(vb)
        out[s:s + step] = np.einsum("ij,ij->i", xa[a[s:s + step]].astype(np.float32, copy=False),
                                    vb.astype(np.float32, copy=False))
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


def _pack_bits(keys: np.ndarray, band_bits: int) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# Pair search
# --------------------------------------------------------------------------------------------------


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of equal values."""
    new = np.ones(len(sorted_keys), dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    start = np.flatnonzero(new)
    length = np.diff(np.append(start, len(sorted_keys)))
    return start, length


def _pairs_in_runs(order: np.ndarray, start: np.ndarray, length: np.ndarray, max_pairs: int):
    """Yield (a, b) index arrays of all unordered pairs inside each run (a = earlier in `order`), in
    batches of about max_pairs pairs; a run with more pairs than a batch is emitted row by row."""
    keep = length > 1
    start, length = start[keep], length[keep]
    npairs = length * (length - 1) // 2
    s = 0
    while s < len(start):
        if npairs[s] > max_pairs:  # one huge run (a dense bucket): row by row
            members = order[start[s]:start[s] + length[s]]
            for k in range(len(members) - 1):
                yield np.full(len(members) - 1 - k, members[k]), members[k + 1:]
            s += 1
            continue
        cum = np.cumsum(npairs[s:])
        e = s + max(1, int(np.searchsorted(cum, max_pairs, side="right")))
        e = min(e, s + 1 + int(np.argmax(npairs[s + 1:e] > max_pairs)) if e > s + 1 and (npairs[s + 1:e] > max_pairs).any() else e)
        st, ln = start[s:e], length[s:e]
        # every (p, q) with 0 <= p < q < ln inside each run, vectorised
        pos = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
        cnt = np.repeat(ln, ln) - pos - 1
        src = np.repeat(np.repeat(st, ln) + pos, cnt)
        off = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt) + 1
        yield order[src], order[src + off]
        s = e


def lsh_pairs(keys: np.ndarray, x: np.ndarray, cfg: SemanticDedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All unordered pairs (i < j) sharing a band key whose cosine (rows of `x`, unit vectors) is
    >= cfg.threshold. Each pair is verified once (by the first band it shares). Returns (i, j, sim)
    sorted by (i, j)."""
    n = len(keys)
    out_i, out_j, out_s = [], [], []
    idx = np.arange(n, dtype=np.int64)
    for b in range(cfg.n_bands):
        col = keys[:, b]
        order = np.lexsort((idx, col))
        start, length = _runs(col[order])
        for a, c in _pairs_in_runs(order, start, length, cfg.pair_batch):
            if b:  # emitted by an earlier band already?
                earlier = (keys[a, :b] == keys[c, :b]).any(axis=1)
                a, c = a[~earlier], c[~earlier]
            if len(a) == 0:
                continue
            sim = _dots(a, c, x, x, cfg.pair_batch)
            ok = sim >= cfg.threshold
            if ok.any():
                lo, hi = np.minimum(a[ok], c[ok]), np.maximum(a[ok], c[ok])
                out_i.append(lo)
                out_j.append(hi)
                out_s.append(sim[ok])
    if not out_i:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32)
    i, j, s = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    o = np.lexsort((j, i))
    return i[o], j[o], s[o]


def query_pairs(
    qkeys: np.ndarray, qvec: np.ndarray, ikeys: np.ndarray, ivec: np.ndarray, cfg: SemanticDedupConfig,
    index_batch: int = 1 << 20, *, max_hamming: np.ndarray | None = None, raw_index: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query row q, index row r) sharing a band key with projected cosine >= threshold.

    The shard's (small) keys are sorted per band; the index is streamed past them in batches and
    looked up in a direct table of the shard's keys (binary search when band_bits > 20), so the
    cost is O(index rows * n_bands) plus the candidates. qvec / ivec: unit float32 rows (`query_vectors`, `decode`); raw_index=True: ivec are
    the index's stored vectors (`encode`), decoded here for candidate rows only (same values).
    max_hamming: optional per-query limit (`hamming_limits`) on the Hamming distance over all key
    bits; candidates beyond it are dropped before the exact cosine (a true pair is dropped with
    probability <= 1e-9). Returns (q, r, sim) sorted by (q, r).
    """
    out_q, out_r, out_s = [], [], []
    nq = len(qkeys)
    if nq == 0 or len(ikeys) == 0:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32)
    dec = (lambda v: decode(v, cfg)) if raw_index else None
    qidx = np.arange(nq, dtype=np.int64)
    # keys < 2**band_bits: look them up in a direct table, not by binary search
    table = cfg.band_bits <= 20 and not (int(ikeys.max()) >> cfg.band_bits or int(qkeys.max()) >> cfg.band_bits)
    if max_hamming is not None:  # all key bits, packed (16 bits per band when they fit): less to gather
        qpack, ipack = _pack_bits(qkeys, cfg.band_bits), _pack_bits(ikeys, cfg.band_bits)
    for b in range(cfg.n_bands):
        qo = np.lexsort((qidx, qkeys[:, b]))
        qk = qkeys[qo, b]
        if table:
            counts = np.bincount(qk, minlength=1 << cfg.band_bits)
            starts = np.cumsum(counts) - counts
        for s in range(0, len(ikeys), index_batch):
            ik = ikeys[s:s + index_batch, b]
            if table:
                cnt = counts[ik]
                lo = starts[ik]
            else:
                lo = np.searchsorted(qk, ik, side="left")
                cnt = np.searchsorted(qk, ik, side="right") - lo
            hit = np.flatnonzero(cnt)
            if len(hit) == 0:
                continue
            c = cnt[hit]
            total = int(c.sum())
            r = np.repeat(hit, c) + s
            first = np.repeat(np.cumsum(c) - c, c)
            q = qo[np.repeat(lo[hit], c) + (np.arange(total, dtype=np.int64) - first)]
            for t in range(0, total, cfg.pair_batch):
                qq, rr = q[t:t + cfg.pair_batch], r[t:t + cfg.pair_batch]
                if max_hamming is not None:
                    ham = np.bitwise_count(np.bitwise_xor(qpack[qq], ipack[rr])).sum(axis=1, dtype=np.int64)
                    keep = ham <= max_hamming[qq]
                    qq, rr = qq[keep], rr[keep]
                if b:  # emitted by an earlier band already?
                    dup = (qkeys[qq, :b] == ikeys[rr, :b]).any(axis=1)
                    qq, rr = qq[~dup], rr[~dup]
                if len(qq) == 0:
                    continue
                # verify in index-row order (each index row is read once, from cache)
                o = np.argsort(rr, kind="stable")
                qq, rr = qq[o], rr[o]
                sim = _dots(qq, rr, qvec, ivec, cfg.pair_batch, dec)
                ok = sim >= cfg.threshold
                if ok.any():
                    out_q.append(qq[ok])
                    out_r.append(rr[ok])
                    out_s.append(sim[ok])
    if not out_q:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32)
    q, r, sim = np.concatenate(out_q), np.concatenate(out_r), np.concatenate(out_s)
    o = np.lexsort((r, q))
    return q[o], r[o], sim[o]


def brute_force_pairs(x: np.ndarray, threshold: float, block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: every pair (i < j) with x_i . x_j >= threshold, by blocked matrix products."""
    x = np.asarray(x, dtype=np.float32)
    out_i, out_j, out_s = [], [], []
    for s in range(0, len(x), block):
        sims = x[s:s + block] @ x[s:].T
        ii, jj = np.nonzero(sims >= threshold)
        keep = ii < jj  # jj is relative to s as well
        ii, jj = ii[keep], jj[keep]
        out_i.append(ii + s)
        out_j.append(jj + s)
        out_s.append(sims[ii, jj])
    if not out_i:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32)
    i, j, sv = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    o = np.lexsort((j, i))
    return i[o].astype(np.int64), j[o].astype(np.int64), sv[o]


# --------------------------------------------------------------------------------------------------
# Shard-level API
# --------------------------------------------------------------------------------------------------


def _to_numpy(col: pl.Series) -> np.ndarray:
    if col.null_count():
        raise ValueError(f"{col.null_count()} null embeddings: drop rows whose embedding failed first")
    if len(col) == 0:
        return np.empty((0, 0), dtype=np.float32)
    if isinstance(col.dtype, pl.List):
        col = col.list.to_array(int(col.list.len()[0]))
    return np.ascontiguousarray(col.to_numpy(), dtype=np.float32)


_MATCH_COLS = ["shard_seq", "cluster_id", "rep_shard", "is_representative", "keys", "vec"]


def match_earlier(
    x: np.ndarray, keys: np.ndarray, earlier: pl.DataFrame | Iterable[pl.DataFrame] | None, cfg: SemanticDedupConfig,
    chunk: int = 131072, *, center: np.ndarray | None = None, prefilter: bool = True,
) -> pl.DataFrame:
    """Best earlier representative for each query row with cosine >= threshold: the earliest shard,
    then the highest similarity, then the smallest cluster_id. `earlier` may be one index frame or
    an iterable of them (e.g. one per earlier shard, read lazily: memory is then bounded by one
    shard's index). center: the hashing centre `keys` were computed with (for the Hamming
    pre-filter, `hamming_limits`; prefilter=False verifies every candidate, "proj" always does).
    Index vectors are decoded for candidate rows only. Returns columns q (row of x), cluster_id,
    rep_shard, similarity, shard_seq."""
    empty = pl.DataFrame(schema={"q": pl.Int64, "seq": pl.Int32, "s": pl.Float32, "cluster_id": pl.String,
                                 "rep_shard": pl.String})
    if earlier is None or len(x) == 0:
        return empty
    frames = [earlier] if isinstance(earlier, pl.DataFrame) else earlier
    qvec = query_vectors(x, cfg)
    max_ham = hamming_limits(x, cfg, center) if prefilter and cfg.index_vectors != "proj" else None
    best = empty
    for frame in frames:
        if frame is None or frame.height == 0:
            continue
        usable = pl.col("is_representative") & pl.col("keys").is_not_null() & pl.col("vec").is_not_null()
        reps = frame.select(_MATCH_COLS)
        if not reps.select(usable.fill_null(False).all()).item():  # copy only when some rows are unusable
            reps = reps.filter(usable)
        if reps.height == 0:
            continue
        found = []
        for s in range(0, reps.height, chunk):
            part = reps.slice(s, chunk)
            qq, rr, ss = query_pairs(keys, qvec, part["keys"].to_numpy().astype(np.uint32, copy=False),
                                     part["vec"].to_numpy(), cfg, max_hamming=max_ham, raw_index=True)
            found.append((qq, rr + s, ss))
        qq, rr, ss = (np.concatenate([f[k] for f in found]) for k in range(3))
        if len(qq) == 0:
            continue
        m = pl.DataFrame({
            "q": qq, "seq": reps["shard_seq"].cast(pl.Int32).gather(rr), "s": ss,
            "cluster_id": reps["cluster_id"].cast(pl.String).gather(rr),
            "rep_shard": reps["rep_shard"].cast(pl.String).gather(rr),
        })
        best = pl.concat([best, m.cast(empty.schema)])  # type: ignore[arg-type]
        best = best.sort(["q", "seq", "s", "cluster_id"], descending=[False, False, True, False]).unique(
            subset="q", keep="first", maintain_order=True)
    return best


def semantic_dedup_shard(
    current: pl.DataFrame,
    earlier_index: pl.DataFrame | Iterable[pl.DataFrame] | None,
    cfg: SemanticDedupConfig = SemanticDedupConfig(),
    *,
    shard_seq: int | None = None,
    center: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Semantic dedup of one shard's embeddings against itself and the earlier shards' index.

    current: columns image_id, shard, embedding (List(Float32) or Array; no nulls; L2-normalised,
        re-normalised here anyway). Row order is the representative priority (first row highest).
    earlier_index: the earlier shards' index rows (`index_schema`): one frame, an iterable of frames
        (one per earlier shard; memory bounded by one), or None.
    shard_seq: the shard's registration number, recorded in its index rows (earlier shards win).
        Default: one more than the largest in earlier_index when that is a DataFrame, else 0.
    center: the corpus's hashing centre (`fit_center`, fitted once on the first shard and the same
        for every shard: the index's keys depend on it). None hashes around the origin (correct,
        but many more candidates for non-negative embeddings).
    Returns (rows: SEMANTIC_SCHEMA, one per `current` row in the same order; index rows of this
    shard: `index_schema`, keys and vec set for representatives only). Deterministic.
    cfg.enabled False: every row is its own representative (similarity 1.0), no comparisons.
    """
    n = current.height
    x = _to_numpy(current["embedding"])
    if n:
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(nrm > 0, nrm, 1.0)
    dim = x.shape[1] if n else 1
    if shard_seq is None:
        shard_seq = (int(earlier_index["shard_seq"].max()) + 1  # type: ignore[arg-type]
                     if isinstance(earlier_index, pl.DataFrame) and earlier_index.height else 0)

    ids = current["image_id"].cast(pl.String)
    shards = current["shard"].cast(pl.String) if "shard" in current.columns else pl.Series([None] * n, dtype=pl.String)
    cl_local = np.arange(n, dtype=np.int64)
    sim = np.ones(n, dtype=np.float32)
    joined = np.empty(0, np.int64)
    keys = band_keys(x, cfg, center) if n else np.empty((0, cfg.n_bands), np.uint32)
    cluster_id = ids.alias("cluster_id")
    rep_shard = shards.alias("rep_shard")

    if cfg.enabled and n:
        # 1) against earlier representatives (earliest shard, then highest similarity, then cluster_id)
        m = match_earlier(x, keys, earlier_index, cfg, center=center)
        joined = m["q"].to_numpy().astype(np.int64)
        sim[joined] = m["s"].to_numpy()
        cluster_id = cluster_id.scatter(joined, m["cluster_id"]) if len(joined) else cluster_id
        rep_shard = rep_shard.scatter(joined, m["rep_shard"]) if len(joined) else rep_shard
        # 2) the rest: leader clustering within the shard in input order
        is_joined = np.zeros(n, dtype=bool)
        is_joined[joined] = True
        rest = np.flatnonzero(~is_joined)
        if len(rest) > 1:
            i, j, s = lsh_pairs(keys[rest], x[rest], cfg)
            lead = leader_clusters(len(rest), i, j, np.arange(len(rest)))
            cl_local[rest] = rest[lead]
            if len(i):
                member = lead[j] == i  # the leader outranks its members, so the pair is (leader, member)
                sim[rest[j[member]]] = s[member]
        moved = rest[cl_local[rest] != rest]
        if len(moved):
            cluster_id = cluster_id.scatter(moved, ids.gather(cl_local[moved]))
            rep_shard = rep_shard.scatter(moved, shards.gather(cl_local[moved]))

    is_rep = cl_local == np.arange(n)
    is_rep[joined] = False
    rows = pl.DataFrame({
        "image_id": ids,
        "shard": shards,
        "cluster_id": cluster_id.alias("cluster_id"),
        "is_representative": pl.Series(is_rep, dtype=pl.Boolean),
        "rep_shard": rep_shard.alias("rep_shard"),
        "similarity": pl.Series(np.minimum(sim, 1.0), dtype=pl.Float32),
    }, schema=SEMANTIC_SCHEMA)

    schema = index_schema(cfg, dim)
    vec = encode(x, cfg) if n else np.empty((0, schema["vec"].size), np.float16 if cfg.index_vectors == "float16" else np.int8)  # type: ignore[union-attr]
    rep_mask = pl.Series(is_rep, dtype=pl.Boolean)
    index = rows.with_columns(
        pl.lit(shard_seq, dtype=pl.Int32).alias("shard_seq"),
        pl.when(rep_mask).then(pl.Series("keys", keys, dtype=schema["keys"])).otherwise(None).alias("keys"),
        pl.when(rep_mask).then(pl.Series("vec", vec, dtype=schema["vec"])).otherwise(None).alias("vec"),
    ).select(list(schema)).cast(schema)  # type: ignore[arg-type]
    return rows, index
