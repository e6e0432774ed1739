"""Multi-index keys over pHash and dHash: the block plan, composite keys and presence-table slots.

pHash is cut into ``phash_radius + 1`` contiguous bit blocks and dHash into ``dhash_radius + 1``.
By the pigeonhole principle a pair within both radii has at least one identical pHash block *and*
one identical dHash block, so it shares the composite key of some (pHash block, dHash block)
combination. Composite keys are at most 32 bits (wider ones are folded by a multiplicative hash;
collisions only add candidates, which verification rejects). Pure functions of uint64 arrays.
The within-shard search (`curation.dedup.search`) uses this plan; the cross-shard query keys on
pairs of pHash blocks instead (`curation.dedup.query.query_plan`).
"""

from __future__ import annotations

import numpy as np

from curation.dedup.config import DedupConfig

__all__ = ["GOLDEN", "LOW32", "SLOT_BITS", "U64", "bit_field", "bit_mask", "block_plan", "composite_key", "slot",
           "split_blocks"]


U64 = np.uint64
LOW32 = U64(0xFFFFFFFF)
GOLDEN = U64(0x9E3779B97F4A7C15)


def split_blocks(m: int) -> list[tuple[int, int]]:
    """Split 64 bits into `m` contiguous blocks of near-equal width: [(shift, width), ...]."""
    base, extra = divmod(64, m)
    out, shift = [], 0
    for b in range(m):
        w = base + (1 if b < extra else 0)
        out.append((shift, w))
        shift += w
    return out


def block_plan(cfg: DedupConfig) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """pHash blocks (``phash_radius + 1``) and dHash blocks (``dhash_radius + 1``); every pair within
    both radii has an identical pHash block and an identical dHash block (pigeonhole)."""
    return split_blocks(cfg.phash_radius + 1), split_blocks(cfg.dhash_radius + 1)


def bit_mask(width: int) -> np.uint64:
    return U64((1 << width) - 1) if width < 64 else U64(0xFFFFFFFFFFFFFFFF)


def bit_field(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (h >> U64(shift)) & bit_mask(width)


def composite_key(p: np.ndarray, d: np.ndarray, pb: tuple[int, int], db: tuple[int, int]) -> np.ndarray:
    """32-bit key of (pHash block, dHash block); folded by a multiplicative hash when wider than 32
    bits (collisions only add candidates, which the block-equality check rejects)."""
    key = (bit_field(p, *pb) << U64(db[1])) | bit_field(d, *db)
    if pb[1] + db[1] > 32:
        key = (key * GOLDEN) >> U64(32)
    return key


SLOT_BITS = 20


def slot(key: np.ndarray) -> np.ndarray:
    """Top 20 bits of a multiplicative hash of a composite key (presence-table slot)."""
    return ((key * GOLDEN) >> U64(64 - SLOT_BITS)).astype(np.intp)
