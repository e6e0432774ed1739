"""Pair search of the semantic pass: LSH candidates verified by exact cosine, and brute force.

* `lsh_pairs`: within one shard, every pair sharing a band key with cosine >= threshold (each pair
  verified once, by the first band it shares). Probabilistic recall (see SemanticDedupConfig).
* `query_pairs`: (shard row, index row) pairs sharing a band key with cosine >= threshold; the
  index is streamed past the shard's sorted keys (direct table lookup when band_bits <= 20), with
  an optional Hamming pre-filter (`hamming_limits`) and decoding of candidate index rows only.
* `brute_force_pairs`: the exact reference, by blocked matrix products.
All return pairs sorted by (first, second) with their float32 cosines.
"""

from __future__ import annotations

import numpy as np

from curation.semantic.config import SemanticDedupConfig
from curation.semantic.lsh import pack_bits
from curation.semantic.vectors import decode, dots

__all__ = ["brute_force_pairs", "lsh_pairs", "query_pairs"]


def _sorted_pairs(
    out_a: list[np.ndarray], out_b: list[np.ndarray], out_s: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate batches of (a, b, cosine) and sort them by (a, b); empty int64 / float32 arrays
    when there are none."""
    if not out_a:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32)
    a, b, s = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)
    o = np.lexsort((b, a))
    return a[o], b[o], s[o]


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
        over = npairs[s + 1:e] > max_pairs
        e = min(e, s + 1 + int(np.argmax(over)) if e > s + 1 and over.any() else e)
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
            sim = dots(a, c, x, x, cfg.pair_batch)
            ok = sim >= cfg.threshold
            if ok.any():
                lo, hi = np.minimum(a[ok], c[ok]), np.maximum(a[ok], c[ok])
                out_i.append(lo)
                out_j.append(hi)
                out_s.append(sim[ok])
    return _sorted_pairs(out_i, out_j, out_s)


def query_pairs(
    qkeys: np.ndarray, qvec: np.ndarray, ikeys: np.ndarray, ivec: np.ndarray, cfg: SemanticDedupConfig,
    index_batch: int = 1 << 20, *, max_hamming: np.ndarray | None = None, raw_index: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query row q, index row r) sharing a band key with projected cosine >= threshold.

    The shard's (small) keys are sorted per band; the index is streamed past them in batches and
    looked up in a direct table of the shard's keys (binary search when band_bits > 20), so the
    cost is O(index rows * n_bands) plus the candidates. qvec / ivec: unit float32 rows (`query_vectors`,
    `decode`); raw_index=True: ivec are
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
        qpack, ipack = pack_bits(qkeys, cfg.band_bits), pack_bits(ikeys, cfg.band_bits)
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
                sim = dots(qq, rr, qvec, ivec, cfg.pair_batch, dec)
                ok = sim >= cfg.threshold
                if ok.any():
                    out_q.append(qq[ok])
                    out_r.append(rr[ok])
                    out_s.append(sim[ok])
    return _sorted_pairs(out_q, out_r, out_s)


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
    i, j, sv = _sorted_pairs(out_i, out_j, out_s)
    return i.astype(np.int64), j.astype(np.int64), sv
