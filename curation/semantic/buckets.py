"""Bucketed cross-shard index of the semantic pass: a query reads the buckets its vectors fall into.

`query_pairs` streams every earlier representative past the shard's keys, so its cost grows with
the corpus (a 10k shard: 0.74 s against 100k earlier rows, 4.0 s against 1M, plus reading the whole
index). This index bounds the work per query row instead:

* **Keys.** Every representative gets ``tables`` 32-bit SimHash keys (`bucket_keys`): the signs of
  x - center against 32 fixed hyperplanes per table (seed, dimension and table number only,
  independent of the band hyperplanes), hyperplane j giving bit 31 - j, so the first B hyperplanes are the top B
  bits of the key.
* **Parts.** An index part (one earlier shard, or a block of them) keeps, per table, its rows sorted
  by key (`build_part`; `save_part` / `load_part`: plain .npy files, memory-mapped when read). Parts
  are written once and never rewritten: new shards add parts. Rows sharing a B-bit prefix are one
  contiguous range of a table, for every B, so the bucket size is chosen at query time.
* **Bucket size.** With R earlier rows the query uses B = ceil(log2(R / rows_per_bucket)) prefix
  bits (`prefix_bits`): buckets hold ~rows_per_bucket rows on average whatever the corpus size. The
  rows a query examines still grow, sublinearly: a query's own buckets are denser than average
  (its near neighbours collide more often), like R^0.45 on the synthetic bench (a 10k shard: 186
  candidate pairs per query at 100k earlier rows, 1,065 at 5M; bench/results/semantic.json,
  `scale.bucket_index`), plus one lookup per part (log2 of the shard count).
* **Multi-probe.** A near copy flips a key bit mostly where the query lies close to that hyperplane,
  so each query probes, per table, the ``probes`` buckets obtained by flipping subsets of its
  ``flip_bits`` lowest-margin prefix bits, cheapest first (score: sum of squared margins of the
  flipped bits; ties by subset number, so deterministic). Recall against brute force is measured
  (bench/semantic.py, `scale.bucket_index`), not guaranteed.
* **Verification.** Candidates (once per (query, row) pair, whichever tables found it) pass the
  Hamming pre-filter of `hamming_limits` on the rows' n_bands * band_bits band-key bits (stored
  packed in the part; a true pair is dropped with probability <= 1e-9) and are then verified by
  exact cosine against the decoded index vector, like `query_pairs`.

`query_parts` returns the pairs and what it read (`BucketStats`: rows examined, 4 KiB pages of the
part arrays it touched). Results depend only on the parts' rows, not on how rows are grouped into
parts or on row order within a part, except through R (which fixes B).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from curation.semantic.config import SemanticDedupConfig
from curation.semantic.lsh import band_keys as _band_keys
from curation.semantic.lsh import hamming_limits, pack_bits
from curation.semantic.vectors import decode, dots, query_vectors

__all__ = ["BucketConfig", "BucketPart", "BucketStats", "brute_force_query", "bucket_keys", "build_part",
           "load_part", "prefix_bits", "probe_masks", "query_parts", "save_part"]

KEY_BITS = 32
PAGE = 4096


@dataclass(frozen=True)
class BucketConfig:
    """Search settings of the bucketed index (invalid values raise ValueError).

    tables: independent 32-bit keys per row (6: 24 bytes of keys and 48 of sorted tables per row).
    probes: buckets probed per query and table (16). flip_bits: lowest-margin bits whose flips make
    the probes (8: the 16 probes are the cheapest of 256 subsets). rows_per_bucket: the target
    rows per bucket that fixes the prefix length (1). Chosen on 100k synthetic rows (recall vs
    brute force at 0.97 / candidate pairs per query): 6x16 at 1 row 0.9993 / 200; 6x32 at 2 rows
    1.0 / 522; 8x16 at 1 row 1.0 / 259; 4x32 at 1 row 0.9993 / 234. Measured recall: bench/results/semantic.json."""

    tables: int = 6
    probes: int = 16
    flip_bits: int = 8
    rows_per_bucket: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.tables <= 64:
            raise ValueError("tables must be in [1, 64]")
        if not 1 <= self.flip_bits <= 16:
            raise ValueError("flip_bits must be in [1, 16]")
        if not 1 <= self.probes <= 1 << self.flip_bits:
            raise ValueError("probes must be in [1, 2**flip_bits]")
        if not self.rows_per_bucket > 0:
            raise ValueError("rows_per_bucket must be > 0")


@lru_cache(maxsize=64)
def _table_planes(seed: int, dim: int, table: int) -> np.ndarray:
    return np.random.default_rng([seed, dim, 4, table]).standard_normal((dim, KEY_BITS)).astype(np.float32)


def _bucket_planes(seed: int, dim: int, tables: int) -> np.ndarray:
    """(dim, tables * 32): table t's planes do not depend on how many tables there are."""
    return np.concatenate([_table_planes(seed, dim, t) for t in range(tables)], axis=1)


def _margins(x: np.ndarray, seed: int, center: np.ndarray | None, tables: int, batch: int = 65536) -> np.ndarray:
    """(n, tables * 32) float32: (x - center) . plane for every key hyperplane."""
    n, dim = x.shape
    planes = _bucket_planes(seed, dim, tables)
    off = np.zeros((1, planes.shape[1]), np.float32) if center is None else \
        np.asarray(center, np.float32).reshape(1, dim) @ planes
    out = np.empty((n, planes.shape[1]), np.float32)
    for s in range(0, n, batch):
        out[s:s + batch] = np.asarray(x[s:s + batch], dtype=np.float32) @ planes - off
    return out


_WEIGHTS = (np.uint32(1) << np.arange(KEY_BITS - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)


def _pack(margins: np.ndarray, tables: int) -> np.ndarray:
    bits = (margins > 0).reshape(len(margins), tables, KEY_BITS).astype(np.uint32)
    return (bits * _WEIGHTS).sum(axis=2, dtype=np.uint32)


def bucket_keys(x: np.ndarray, cfg: SemanticDedupConfig, center: np.ndarray | None = None,
                bcfg: BucketConfig = BucketConfig()) -> np.ndarray:
    """(n, tables) uint32 keys of unit rows `x` (hyperplane j of a table is bit 31 - j)."""
    x = np.asarray(x)
    if len(x) == 0:
        return np.empty((0, bcfg.tables), np.uint32)
    return _pack(_margins(x, cfg.seed, center, bcfg.tables), bcfg.tables)


def prefix_bits(n_rows: int, rows_per_bucket: float) -> int:
    """Prefix length B for R earlier rows: ceil(log2(R / rows_per_bucket)), within [1, 32]."""
    if n_rows <= rows_per_bucket:
        return 1
    return int(min(KEY_BITS, max(1, int(np.ceil(np.log2(n_rows / rows_per_bucket) - 1e-9)))))


@lru_cache(maxsize=8)
def _subsets(k: int) -> np.ndarray:
    return ((np.arange(1 << k)[:, None] >> np.arange(k)) & 1).astype(np.float32)


def probe_masks(margins: np.ndarray, bits: int, probes: int, flip_bits: int) -> np.ndarray:
    """(n, probes') uint32 XOR masks over the top `bits` key bits of one table, cheapest first
    (mask 0, the query's own bucket, always first). margins: (n, 32) for that table's hyperplanes.
    probes' = min(probes, 2**min(flip_bits, bits))."""
    k = min(flip_bits, bits)
    am = np.abs(margins[:, :bits]).astype(np.float32)
    low = np.argsort(am, axis=1, kind="stable")[:, :k]  # the k lowest-margin prefix bits
    subs = _subsets(k)
    score = (np.take_along_axis(am, low, 1) ** 2) @ subs.T  # (n, 2**k); subset 0 scores 0
    p = min(probes, 1 << k)
    top = np.argsort(score, axis=1, kind="stable")[:, :p]
    bitval = (np.uint32(1) << (KEY_BITS - 1 - low).astype(np.uint32)).astype(np.uint32)
    masks = np.zeros(top.shape, np.uint32)
    for j in range(k):
        masks |= np.where((top >> j) & 1 == 1, bitval[:, j:j + 1], np.uint32(0))
    return masks


@dataclass
class BucketPart:
    """One append-only part of the index: `keys` (n, tables) uint32 in row order, per table the row
    numbers sorted by key (`order`, (tables, n) uint32) and the sorted keys (`sorted_keys`), the
    index vectors `vec` (n, width; `encode`) and the rows' band keys packed (`band`, `pack_bits`:
    the Hamming pre-filter) in row order. Row r is the part's r-th representative."""

    keys: np.ndarray
    order: np.ndarray
    sorted_keys: np.ndarray
    vec: np.ndarray
    band: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def build_part(keys: np.ndarray, vec: np.ndarray, band_keys: np.ndarray, cfg: SemanticDedupConfig) -> BucketPart:
    """A part from its rows' `bucket_keys`, index vectors and band keys (`band_keys`; same row order)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint32)
    if not len(keys) == len(vec) == len(band_keys):
        raise ValueError(f"{len(keys)} key rows, {len(vec)} vectors and {len(band_keys)} band key rows")
    rows = np.arange(len(keys), dtype=np.uint32)
    order = np.empty((keys.shape[1], len(keys)), np.uint32)
    for t in range(keys.shape[1]):
        order[t] = np.lexsort((rows, keys[:, t]))
    sorted_keys = np.take_along_axis(keys.T, order.astype(np.int64), axis=1)
    return BucketPart(keys, order, np.ascontiguousarray(sorted_keys), np.ascontiguousarray(vec),
                      pack_bits(np.asarray(band_keys, np.uint32), cfg.band_bits))


_FILES = ("keys", "order", "sorted_keys", "vec", "band")


def save_part(part: BucketPart, folder: str) -> None:
    """Write a part as .npy files under `folder` (local disk; written once, never rewritten)."""
    os.makedirs(folder, exist_ok=True)
    for name in _FILES:
        tmp = os.path.join(folder, f".{name}.tmp.npy")
        np.save(tmp, getattr(part, name))
        os.replace(tmp, os.path.join(folder, f"{name}.npy"))


def load_part(folder: str, mmap: bool = True) -> BucketPart:
    """A part written by `save_part`, memory-mapped by default (only the pages a query touches are read)."""
    if mmap:
        return BucketPart(*(np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r") for name in _FILES))
    return BucketPart(*(np.load(os.path.join(folder, f"{name}.npy")) for name in _FILES))


@dataclass
class BucketStats:
    """What a query examined: rows (candidate entries over all tables, before de-duplication),
    pairs (distinct candidate pairs), verified (passed the Hamming pre-filter), bytes_read (4 KiB
    pages of the parts' arrays touched, counted per array), prefix_bits, earlier_rows, parts."""

    earlier_rows: int = 0
    parts: int = 0
    prefix_bits: int = 0
    rows: int = 0
    pairs: int = 0
    verified: int = 0
    bytes_read: int = 0
    per_part_pairs: list[int] = field(default_factory=list)


def _pages(positions: np.ndarray, itemsize: int, row_bytes: int = 0) -> int:
    """Bytes of the distinct 4 KiB pages holding items `positions` (each row_bytes long, or itemsize)."""
    if len(positions) == 0:
        return 0
    size = row_bytes or itemsize
    first = np.sort(positions.astype(np.int64) * size // PAGE)
    first = first[np.concatenate(([True], first[1:] != first[:-1]))]
    span = max(1, -(-size // PAGE))
    return int(len(first) * span * PAGE) if span > 1 else int(len(first) * PAGE)


def query_parts(
    parts: list[BucketPart], x: np.ndarray, cfg: SemanticDedupConfig, center: np.ndarray | None = None,
    bcfg: BucketConfig = BucketConfig(), *, margin: float = 0.01, raw_index: bool = True,
    qband_keys: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, BucketStats]:
    """Pairs (query row q, part p, row r of part p) with cosine >= cfg.threshold among the bucket
    candidates of unit rows `x`, sorted by (q, p, r), with their cosines and the `BucketStats`.
    raw_index: the parts hold `encode`d vectors (decoded here for verified rows only); False: unit
    float rows. qband_keys: the rows' `band_keys` when already computed (else computed here).
    Deterministic."""
    stats = BucketStats(earlier_rows=int(sum(len(p) for p in parts)), parts=len(parts))
    e = np.empty(0, np.int64)
    if len(x) == 0 or stats.earlier_rows == 0:
        return e, e, e, np.empty(0, np.float32), stats
    x = np.asarray(x, dtype=np.float32)
    bits = prefix_bits(stats.earlier_rows, bcfg.rows_per_bucket)
    stats.prefix_bits = bits
    m = _margins(x, cfg.seed, center, bcfg.tables)
    qkeys = _pack(m, bcfg.tables)
    shift = np.uint64(KEY_BITS - bits)
    lo_keys, hi_keys = [], []
    for t in range(bcfg.tables):
        masks = probe_masks(m[:, t * KEY_BITS:(t + 1) * KEY_BITS], bits, bcfg.probes, bcfg.flip_bits)
        prefix = ((qkeys[:, t:t + 1] ^ masks).astype(np.uint64) >> shift).ravel()
        lo_keys.append(prefix << shift)
        hi_keys.append((prefix + np.uint64(1)) << shift)  # uint64: no overflow at prefix 2**bits - 1
    nprobe = lo_keys[0].size // len(x)
    qvec = query_vectors(x, cfg)
    qband = pack_bits(_band_keys(x, cfg, center) if qband_keys is None else qband_keys, cfg.band_bits)
    limit = hamming_limits(x, cfg, center, margin)
    dec = (lambda v: decode(v, cfg)) if raw_index else None
    hits: list[tuple[np.ndarray, ...]] = []
    for pi, part in enumerate(parts):
        n = len(part)
        if n and part.keys.shape[1] < bcfg.tables:
            raise ValueError(f"part {pi} has {part.keys.shape[1]} key tables, the query uses {bcfg.tables}")
        if n == 0:
            stats.per_part_pairs.append(0)
            continue
        codes = []
        for t in range(bcfg.tables):
            sk = part.sorted_keys[t]
            lo = np.searchsorted(sk, lo_keys[t], side="left")
            hi = np.searchsorted(sk, hi_keys[t], side="left")
            cnt = (hi - lo).astype(np.int64)
            total = int(cnt.sum())
            stats.rows += total
            if total == 0:
                continue
            first = np.repeat(np.cumsum(cnt) - cnt, cnt)
            pos = np.repeat(lo, cnt) + (np.arange(total, dtype=np.int64) - first)
            stats.bytes_read += _pages(np.concatenate([pos, lo]), 4) + _pages(pos, 4)  # sorted_keys, order
            rows = part.order[t][pos].astype(np.int64)
            qi = np.repeat(np.repeat(np.arange(len(x), dtype=np.int64), nprobe), cnt)
            codes.append(qi * n + rows)
        if not codes:
            stats.per_part_pairs.append(0)
            continue
        code = np.sort(np.concatenate(codes))  # sorted by (q, r); each pair once below
        if len(code) > 1:
            code = code[np.concatenate(([True], code[1:] != code[:-1]))]
        stats.pairs += len(code)
        stats.per_part_pairs.append(len(code))
        qq, rr = code // n, code % n
        stats.bytes_read += _pages(rr, 8, part.band.shape[1] * 8)
        ham = np.empty(len(qq), np.int64)
        step = 1 << 16
        for b in range(0, len(qq), step):
            ham[b:b + step] = np.bitwise_count(np.bitwise_xor(qband[qq[b:b + step]], part.band[rr[b:b + step]])).sum(
                axis=1, dtype=np.int64)
        keep = ham <= limit[qq]
        qq, rr = qq[keep], rr[keep]
        stats.verified += len(qq)
        if len(qq):
            hits.append(verify_exact(qq, rr, pi, qvec, part.vec, cfg, dec, stats))
    return (*sorted_hits(hits), stats)


def verify_exact(qq: np.ndarray, rr: np.ndarray, pi: int, qvec: np.ndarray, vec: np.ndarray,
                 cfg: SemanticDedupConfig, dec, stats) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs (query row qq[k], row rr[k] of part `pi`, whose vectors are `vec`) with
    an exact cosine >= cfg.threshold, as (q, p, r, cosine); each vector row is read once, in row
    order, and counted in `stats.bytes_read` (pages touched). `dec` decodes raw index vectors."""
    o = np.argsort(rr, kind="stable")
    qq, rr = qq[o], rr[o]
    stats.bytes_read += _pages(rr, 1, vec.shape[1] * vec.itemsize)
    sim = dots(qq, rr, qvec, vec, cfg.pair_batch, dec)
    hit = sim >= cfg.threshold
    return qq[hit], np.full(int(hit.sum()), pi, np.int64), rr[hit], sim[hit]


def sorted_hits(hits: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`verify_exact` results of several parts as one (q, p, r, cosine), sorted by (q, p, r)."""
    if not hits:
        e = np.empty(0, np.int64)
        return e, e, e, np.empty(0, np.float32)
    q, p, r, s = (np.concatenate(a) for a in zip(*hits, strict=True))
    o = np.lexsort((r, p, q))
    return q[o], p[o], r[o], s[o]


def brute_force_query(
    x: np.ndarray, parts: list[BucketPart], cfg: SemanticDedupConfig, block: int = 65536, *, raw_index: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference for `query_parts`: every (q, p, r) whose cosine (query_vectors vs decoded index
    vectors, by matrix products) is >= cfg.threshold, sorted by (q, p, r)."""
    qvec = query_vectors(np.asarray(x, dtype=np.float32), cfg)
    out = []
    for pi, part in enumerate(parts):
        for start in range(0, len(part), block):
            v = np.asarray(part.vec[start:start + block])
            v = decode(v, cfg) if raw_index else v.astype(np.float32)
            sims = qvec @ v.T
            a, b = np.nonzero(sims >= cfg.threshold)
            out.append((a.astype(np.int64), np.full(len(a), pi, np.int64), b.astype(np.int64) + start, sims[a, b]))
    if not out:
        e = np.empty(0, np.int64)
        return e, e, e, np.empty(0, np.float32)
    q, p, r, s = (np.concatenate([o[k] for o in out]) for k in range(4))
    o = np.lexsort((r, p, q))
    return q[o], p[o], r[o], s[o]
