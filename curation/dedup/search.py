"""Within-shard near-pair search: every pair within the rules, by exact multi-index hashing.

For each (pHash block, dHash block) combination the items are sorted by composite key; runs of
equal keys give the candidate pairs, which `verify_candidates` checks. The search is exact (it finds
every pair brute force finds); every pair is emitted once. Everything is vectorised numpy: one
in-place 64-bit sort per combination. The key length is 64/(phash_radius+1) + 64/(dhash_radius+1)
bits: 2/4 (32-bit keys) and 4/4 (~26-bit keys) cluster 5M hashes in seconds, the default 4/8
(~20-bit keys, 45 combinations) in ~45 CPU-seconds (uniform hashes; dense near-copy modes cost more),
while 8/8 (~14-bit keys) is fine for 100k
but far too slow for 5M.
"""

from __future__ import annotations

import numpy as np

from curation.dedup.config import DedupConfig
from curation.dedup.keys import GOLDEN, LOW32, U64, bit_mask, block_plan
from curation.dedup.verify import VerifyFeatures, as_features, verify_candidates

__all__ = ["near_pairs", "near_pairs_packed"]


def near_pairs(
    phash: np.ndarray, dhash: np.ndarray, chroma: np.ndarray | VerifyFeatures, cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All unordered pairs (i < j) within the near-duplicate rules, found by exact multi-index hashing.

    phash, dhash: uint64 arrays (n,); chroma: `VerifyFeatures`, or a uint8 (n, 3) `chromaticity`
    array alone (no thumbnails: every pair takes the strict rule). Returns (i, j, dist)
    sorted by (i, j) (int64, int64, int16), dist being the pHash Hamming distance.
    """
    packed = near_pairs_packed(phash, dhash, chroma, cfg)
    packed.sort()
    i = (packed >> U64(32)).astype(np.int64)
    j = (packed & LOW32).astype(np.int64)
    ph = np.asarray(phash, dtype=np.uint64)
    return i, j, np.bitwise_count(ph[i] ^ ph[j]).astype(np.int16)


def near_pairs_packed(phash: np.ndarray, dhash: np.ndarray, chroma: np.ndarray | VerifyFeatures,
                      cfg: DedupConfig) -> np.ndarray:
    """`near_pairs` as one uint64 per pair, ``i << 32 | j`` (i < j), unsorted: 8 bytes per link.

    For each (pHash block, dHash block) combination the items are sorted by (composite key << 32 |
    item index) in one uint64 buffer; runs of equal keys give the candidate pairs, which are verified
    in batches of ``cfg.pair_batch``. Working memory besides the inputs (19 bytes per item) is about
    35 bytes per item (two reused uint64 buffers, run bookkeeping) plus the batch (~100 bytes per
    candidate) and the result (8 bytes per link, twice while the batches are concatenated).
    """
    phash = np.ascontiguousarray(phash, dtype=np.uint64)
    dhash = np.ascontiguousarray(dhash, dtype=np.uint64)
    feats = as_features(chroma)
    n = len(phash)
    if n >= 1 << 32:
        raise ValueError("at most 2**32 - 1 hashes per call")
    if n < 2:
        return np.empty(0, np.uint64)
    plan_p, plan_d = block_plan(cfg)
    out: list[np.ndarray] = []
    comb = np.empty(n, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    for jp, pb in enumerate(plan_p):
        for jd, db in enumerate(plan_d):
            # comb = composite key << 32 | index, computed in place
            np.right_shift(phash, U64(pb[0]), out=comb)
            np.bitwise_and(comb, bit_mask(pb[1]), out=comb)
            np.left_shift(comb, U64(db[1]), out=comb)
            np.right_shift(dhash, U64(db[0]), out=tmp)
            np.bitwise_and(tmp, bit_mask(db[1]), out=tmp)
            np.bitwise_or(comb, tmp, out=comb)
            if pb[1] + db[1] > 32:
                np.multiply(comb, GOLDEN, out=comb)
                np.right_shift(comb, U64(32), out=comb)
            np.left_shift(comb, U64(32), out=comb)
            tmp[:] = np.arange(n, dtype=np.uint64)
            np.bitwise_or(comb, tmp, out=comb)
            comb.sort()  # key-major, index-minor: deterministic, and pairs come out with i < j
            halves = comb.view(np.uint32).reshape(n, 2)  # little-endian: [:, 0] index, [:, 1] key
            if np.little_endian:
                order, key = halves[:, 0], halves[:, 1]
            else:  # pragma: no cover - big-endian hosts
                order, key = halves[:, 1], halves[:, 0]
            same = key[1:] == key[:-1]
            pos = np.flatnonzero(same)  # positions with at least one later item in their run
            if len(pos) == 0:
                continue
            last = np.flatnonzero(~same)  # last position of every run except the final one
            last = np.append(last, n - 1)
            del same
            cnt = last[np.searchsorted(last, pos)] - pos  # later items in the same run
            del last
            csum = np.cumsum(cnt)
            # emit candidates in batches of about cfg.pair_batch pairs
            lo = 0
            while lo < len(pos):
                base = csum[lo - 1] if lo else 0
                hi = int(np.searchsorted(csum, base + cfg.pair_batch, side="right"))
                hi = max(hi, lo + 1)
                c = cnt[lo:hi]
                total = int(csum[hi - 1] - base)
                left = np.repeat(pos[lo:hi], c)
                right = np.arange(total, dtype=np.int64)
                right -= np.repeat(csum[lo:hi] - c - base, c)
                right += left
                right += 1
                a = order[left].astype(np.int64)
                b = order[right].astype(np.int64)
                del left, right
                a, b, _ = verify_candidates(a, b, phash, phash, dhash, dhash, feats, feats, cfg, plan_p, plan_d, jp, jd)
                if len(a):
                    pk = a.astype(np.uint64)
                    pk <<= U64(32)
                    pk |= b.astype(np.uint64)
                    out.append(pk)
                del a, b
                lo = hi
            del pos, cnt, csum
    del comb, tmp
    if not out:
        return np.empty(0, np.uint64)
    return out[0] if len(out) == 1 else np.concatenate(out)
