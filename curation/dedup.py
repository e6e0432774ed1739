"""Stage 2: exact and near-duplicate clustering of one shard against itself and all earlier shards.

Overview
--------
* **Exact duplicates** share the file's sha256 (the index keeps a 64-bit prefix, and an exact match
  also requires equal pHash and dHash, so a prefix collision cannot merge two different images).
  Exact matching needs no image content, so flat/near-empty images can still be exact duplicates.
* **Near duplicates** must agree on *three* independent signals with the cluster's representative:
  pHash Hamming distance <= ``phash_radius``, dHash Hamming distance <= ``dhash_radius`` and a colour
  check (chromaticity, see `DedupConfig`). Only *eligible* images (enough contrast and grey-level
  entropy) take part: the hashes of flat or near-empty images carry no information.
* **No chaining.** Clusters are built by leader (star) clustering in representative-priority order:
  an image joins a cluster only if it is within the radii of the cluster's *representative itself*.
  Connected components over pair links would chain A~B~C into one cluster although A and C differ.
* **Shards are immutable once materialised.** A shard is compared with the persisted index of all
  earlier shards first: an image that is an exact copy of an earlier row joins that row's cluster;
  an eligible image within the radii of an earlier *representative* joins that representative's
  cluster (the earliest shard wins, then the smallest pHash distance, then the smaller cluster_id).
  Everything else is clustered within the shard, with representative priority: largest pixel count,
  then largest file size, then uri (then image_id). Earlier shards' outputs are never rewritten, so a
  representative's ``dup_kind`` says "unique" in its own shard even if later shards add members.
* **No all-pairs comparison.** Candidate pairs come from multi-index hashing over *both* hashes
  (`near_pairs`): pHash is cut into ``phash_radius + 1`` bit blocks and dHash into
  ``dhash_radius + 1`` blocks. By the pigeonhole principle a pair within both radii has at least one
  identical pHash block *and* one identical dHash block, so it shares the composite key of some
  (pHash block, dHash block) combination: the search is exact (it finds every pair brute force
  finds), and the composite keys are 32 bits long for the default radii (3 x 5 combinations), so
  buckets stay tiny even for 5M uniform hashes. Each pair is emitted once, by the first combination it matches, then
  verified (pHash first, which rejects most candidates). Everything is vectorised numpy: one
  in-place 64-bit sort per combination. Larger radii stay exact but cost more: the key length is
  64/(phash_radius+1) + 64/(dhash_radius+1) bits, so 8/8 (~14-bit keys) is fine for 100k images but
  far too slow for 5M; 4/4 (5 x 5 combinations, ~26-bit keys) still clusters 5M in seconds.
* **Cross-shard cost.** `query_index` sorts the *shard's* composite keys and streams the earlier
  index past them in chunks: per index row and combination one key computation and one lookup in a
  1 MiB presence table (~0.07 us per index row in total with the default radii, i.e. ~0.4 s per
  shard at 5M earlier images, less than reading the index from Parquet); candidate generation,
  verification and clustering are proportional to the shard and its matches, and earlier shards are
  never re-clustered. (A 10k shard: 0.03 s against 100k earlier rows, 0.14 s against 1M.)

Index schema (`INDEX_SCHEMA`), one row per hashed image of every materialised shard::

    image_id str, shard str, shard_seq Int32, cluster_id str, rep_shard str, distance Int16,
    sha64 UInt64 (first 64 bits of sha256), phash UInt64, dhash UInt64,
    chroma_r/g/b UInt8 (chromaticity * 255), flags UInt8 (bit0 eligible, bit1 representative,
    bit2 byte-identical to the representative)

The numeric part is 4 + 2 + 8 + 8 + 8 + 3 + 1 = 34 bytes per image; measured (bench/dedup.py) the
whole row is ~72 bytes in memory (polars, with the strings) and ~25 bytes in zstd Parquet (the three
64-bit hashes are incompressible; ids, shard names and flags compress away). The near-duplicate
search touches only phash, dhash, chroma and flags of eligible representatives (20 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from curation.schema import DEDUP_SCHEMA, conform

__all__ = [
    "DedupConfig",
    "INDEX_SCHEMA",
    "block_plan",
    "chromaticity",
    "cluster_hashes",
    "dedup_shard",
    "leader_clusters",
    "near_pairs",
    "query_index",
]

INDEX_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String,
    "shard": pl.String,
    "shard_seq": pl.Int32,  # registration order of the shard (0, 1, 2, ...): earlier shards win
    "cluster_id": pl.String,
    "rep_shard": pl.String,
    "distance": pl.Int16,  # pHash distance to the representative (0 for the representative)
    "sha64": pl.UInt64,  # first 16 hex digits of sha256; exact match also needs equal phash+dhash
    "phash": pl.UInt64,
    "dhash": pl.UInt64,
    "chroma_r": pl.UInt8,  # chromaticity (channel mean / sum of channel means) * 255
    "chroma_g": pl.UInt8,
    "chroma_b": pl.UInt8,
    "flags": pl.UInt8,  # FLAG_ELIGIBLE | FLAG_REP | FLAG_SAME_BYTES
}

FLAG_ELIGIBLE = 1  # may take part in near-duplicate matching
FLAG_REP = 2  # representative of its cluster (the only rows later shards near-match against)
FLAG_SAME_BYTES = 4  # byte-identical to its representative (representatives themselves included)

_U64 = np.uint64
_LOW32 = _U64(0xFFFFFFFF)
_GOLDEN = _U64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate rules. Defaults were chosen on real labelled groups (skimage photos and tiles,
    LFW faces, MNIST digits, arcade sprites; each original plus resize, JPEG re-encode, 2-5% crop and
    brightness change), where ~0.35% of *unrelated* pairs lie within pHash distance 10 (mostly
    look-alike digits and sprites), a rate that turns into billions of false links at 5M images.

    phash_radius: 2. pHash (DCT of a 32x32 grey image, 64 bits) survives resizing, re-encoding and
        brightness changes with distance 0-2 in ~90% of cases; 2-5% crops move it by ~6 (median), so
        crops are out of reach of any radius that keeps precision (the embedding stage is the place
        for them). imagehash's pHash sets exactly the 32 bits above the median, so distances are
        even: 3 is the same as 2, 5 the same as 4. Radius 10 links 0.35% of unrelated pairs, 8
        links 0.15%. On 20k labelled images (3,000 MNIST digits as hard negatives), pHash <= 2 with
        dHash <= 4 gave precision 0.979 / recall 0.722; pHash <= 4 with dHash <= 4 0.949 / 0.735.
        Look-alike images (digits, icons, sprites) are what breaks precision, and their number grows
        with the square of the corpus, so the tight radius is the default for 5M images.
    dhash_radius: 4. dHash (horizontal gradient signs of a 9x8 grey image) fails differently from
        pHash (local and sign-based versus global and frequency-based), so requiring both cuts
        unrelated links several-fold at the same recall. On the 20k set with pHash <= 2: dHash <= 3
        precision 0.986 / recall 0.711, <= 4 0.979 / 0.722, <= 5 0.972 / 0.729, <= 6 0.963 / 0.731;
        4 keeps recall on resize / JPEG / brightness copies at ~0.9 or more on every corpus tried.
        The search cost is set by both radii: 3 x 5 block combinations, 32-bit composite keys.
    max_chroma_diff: 0.02. Both hashes are computed on the grey image, so images that differ only in
        colour (a recoloured sprite, a channel swap) hash alike. Chromaticity (channel mean divided
        by the sum of the channel means, after +8 to stabilise dark images) ignores brightness and
        contrast changes, which are legitimate duplicate transforms: 99% of true pairs differ by
        < 0.01, while swapping red and blue of a colourful image moves it by 0.09 (median). 0.02
        in every channel is the limit. Limitation: stage 1 only provides global channel means, so a
        recoloured *small* object on a large plain background (a red vs a green gem sprite on
        white) moves the means too little to be told apart.
    min_contrast: 5.0 grey levels (std). A flat image (one colour, or JPEG noise around one colour)
        has a std of 0-3; its pHash bits are the signs of rounding noise, so flat images would all
        "match" each other and form one giant cluster of unrelated files.
    min_entropy: 0.5 bits. Near-empty images (a tiny mark on a plain background: 90% background has
        ~0.5 bits) have hashes dominated by the background. Ineligible images are still exact
        duplicates by sha256.
    pair_batch: candidate pairs verified per batch (bounds memory: ~100 bytes per candidate).
    index_batch: index rows streamed per batch in `query_index`.
    """

    phash_radius: int = 2
    dhash_radius: int = 4
    max_chroma_diff: float = 0.02
    min_contrast: float = 5.0
    min_entropy: float = 0.5
    pair_batch: int = 1 << 19
    index_batch: int = 1 << 20

    def __post_init__(self) -> None:
        if not (0 <= self.phash_radius < 32 and 0 <= self.dhash_radius < 32):
            raise ValueError("radii must be in [0, 32)")
        if self.max_chroma_diff < 0:
            raise ValueError("max_chroma_diff must be >= 0")


# --------------------------------------------------------------------------------------------------
# Low-level: block plan, pair search, leader clustering
# --------------------------------------------------------------------------------------------------


def _blocks(m: int) -> list[tuple[int, int]]:
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
    return _blocks(cfg.phash_radius + 1), _blocks(cfg.dhash_radius + 1)


def _mask(width: int) -> np.uint64:
    return _U64((1 << width) - 1) if width < 64 else _U64(0xFFFFFFFFFFFFFFFF)


def _field(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    return (h >> _U64(shift)) & _mask(width)


def _composite_key(p: np.ndarray, d: np.ndarray, pb: tuple[int, int], db: tuple[int, int]) -> np.ndarray:
    """32-bit key of (pHash block, dHash block); folded by a multiplicative hash when wider than 32
    bits (collisions only add candidates, which the block-equality check rejects)."""
    key = (_field(p, *pb) << _U64(db[1])) | _field(d, *db)
    if pb[1] + db[1] > 32:
        key = (key * _GOLDEN) >> _U64(32)
    return key


_SLOT_BITS = 20


def _slot(key: np.ndarray) -> np.ndarray:
    """Top 20 bits of a multiplicative hash of a composite key (presence-table slot)."""
    return ((key * _GOLDEN) >> _U64(64 - _SLOT_BITS)).astype(np.intp)


def chromaticity(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 chromaticity: (mean_c + 8) / sum(mean + 8) * 255, rounded. Brightness and contrast
    changes leave it (nearly) unchanged; hue changes do not. Nulls are treated as grey."""
    rgb = np.stack([np.nan_to_num(np.asarray(c, dtype=np.float64), nan=128.0) for c in (r, g, b)], axis=1)
    rgb = np.clip(rgb, 0.0, 255.0) + 8.0
    return np.rint(rgb / rgb.sum(axis=1, keepdims=True) * 255.0).astype(np.uint8)


def _chroma_limit(cfg: DedupConfig) -> int:
    return int(np.floor(cfg.max_chroma_diff * 255.0 + 1e-9))


def _verify(
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
    keep = np.flatnonzero((dp <= cfg.phash_radius) & (_field(x, *plan_p[jp]) == 0))
    a, b, x, dp = a[keep], b[keep], x[keep], dp[keep]
    y = da[a] ^ db_[b]
    ok = (np.bitwise_count(y) <= cfg.dhash_radius) & (_field(y, *plan_d[jd]) == 0)
    for sft, w in plan_p[:jp]:
        ok &= _field(x, sft, w) != 0
    for sft, w in plan_d[:jd]:
        ok &= _field(y, sft, w) != 0
    keep = np.flatnonzero(ok)
    a, b, dp = a[keep], b[keep], dp[keep]
    cd = np.abs(ca[a].astype(np.int16) - cb[b].astype(np.int16)).max(axis=1)
    keep = np.flatnonzero(cd <= _chroma_limit(cfg))
    return a[keep], b[keep], dp[keep].astype(np.int16)


def near_pairs(
    phash: np.ndarray, dhash: np.ndarray, chroma: np.ndarray, cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All unordered pairs (i < j) within the near-duplicate rules, found by exact multi-index hashing.

    phash, dhash: uint64 arrays (n,); chroma: uint8 (n, 3) from `chromaticity`. Returns (i, j, dist)
    sorted by (i, j) (int64, int64, int16), dist being the pHash Hamming distance.
    """
    packed = _near_pairs_packed(phash, dhash, chroma, cfg)
    packed.sort()
    i = (packed >> _U64(32)).astype(np.int64)
    j = (packed & _LOW32).astype(np.int64)
    ph = np.asarray(phash, dtype=np.uint64)
    return i, j, np.bitwise_count(ph[i] ^ ph[j]).astype(np.int16)


def _near_pairs_packed(phash: np.ndarray, dhash: np.ndarray, chroma: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """`near_pairs` as one uint64 per pair, ``i << 32 | j`` (i < j), unsorted: 8 bytes per link.

    For each (pHash block, dHash block) combination the items are sorted by (composite key << 32 |
    item index) in one uint64 buffer; runs of equal keys give the candidate pairs, which are verified
    in batches of ``cfg.pair_batch``. Working memory besides the inputs (19 bytes per item) is about
    35 bytes per item (two reused uint64 buffers, run bookkeeping) plus the batch (~100 bytes per
    candidate) and the result (8 bytes per link, twice while the batches are concatenated).
    """
    phash = np.ascontiguousarray(phash, dtype=np.uint64)
    dhash = np.ascontiguousarray(dhash, dtype=np.uint64)
    chroma = np.ascontiguousarray(chroma, dtype=np.uint8).reshape(-1, 3)
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
            np.right_shift(phash, _U64(pb[0]), out=comb)
            np.bitwise_and(comb, _mask(pb[1]), out=comb)
            np.left_shift(comb, _U64(db[1]), out=comb)
            np.right_shift(dhash, _U64(db[0]), out=tmp)
            np.bitwise_and(tmp, _mask(db[1]), out=tmp)
            np.bitwise_or(comb, tmp, out=comb)
            if pb[1] + db[1] > 32:
                np.multiply(comb, _GOLDEN, out=comb)
                np.right_shift(comb, _U64(32), out=comb)
            np.left_shift(comb, _U64(32), out=comb)
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
                a, b, _ = _verify(a, b, phash, phash, dhash, dhash, chroma, chroma, cfg, plan_p, plan_d, jp, jd)
                if len(a):
                    pk = a.astype(np.uint64)
                    pk <<= _U64(32)
                    pk |= b.astype(np.uint64)
                    out.append(pk)
                del a, b
                lo = hi
            del pos, cnt, csum
    del comb, tmp
    if not out:
        return np.empty(0, np.uint64)
    return out[0] if len(out) == 1 else np.concatenate(out)


def leader_clusters(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Leader (star) clustering: process items in increasing `rank` (0 = highest priority); an item
    not yet assigned becomes a leader and takes every unassigned item it is linked to. Returns the
    leader index of every item (leaders point to themselves).

    Every member is linked to its own leader, so clusters cannot chain. Implemented as rounds over
    the edge list (equivalent to the sequential greedy, i.e. the lexicographically-first maximal
    independent set): in each round an undecided item whose highest-priority leader neighbour
    outranks all its undecided higher-priority neighbours becomes that leader's member; an undecided
    item whose higher-priority neighbours are all members becomes a leader. The number of rounds is the longest chain of
    decisions (a handful on real data); after 64 rounds the rest is finished sequentially.
    """
    rank = np.asarray(rank)
    leader = np.arange(n, dtype=np.int64)
    if len(i) == 0:
        return leader
    # work on the linked items only, with int32 ids (memory and time proportional to the links)
    is_node = np.zeros(n, dtype=bool)
    is_node[i] = True
    is_node[j] = True
    nodes = np.flatnonzero(is_node)
    del is_node
    m = len(nodes)
    if m >= 1 << 31:
        raise ValueError("too many linked items")
    local = np.full(n, -1, dtype=np.int32)
    local[nodes] = np.arange(m, dtype=np.int32)
    li = local[i]  # fresh arrays: _leader_rounds may reorder them in place
    lj = local[j]
    del local
    local_rank = np.empty(m, dtype=np.int32)
    local_rank[np.argsort(rank[nodes], kind="stable")] = np.arange(m, dtype=np.int32)
    leader[nodes] = nodes[_leader_rounds(m, li, lj, local_rank)]
    return leader


def _leader_from_packed(n: int, holder: list[np.ndarray], rank: np.ndarray, sub: np.ndarray | None) -> np.ndarray:
    """`leader_clusters` on packed pairs (``i << 32 | j``, indices into `sub` when given). Takes the
    array out of `holder` so that it is freed as soon as the compact int32 ids exist."""
    packed = holder.pop()
    leader = np.arange(n, dtype=np.int64)
    if len(packed) == 0:
        return leader
    halves = packed.view(np.uint32).reshape(-1, 2)  # views, no copy
    i, j = (halves[:, 1], halves[:, 0]) if np.little_endian else (halves[:, 0], halves[:, 1])
    m_all = n if sub is None else len(sub)
    is_node = np.zeros(m_all, dtype=bool)
    is_node[i] = True
    is_node[j] = True
    nodes = np.flatnonzero(is_node)  # in `sub` coordinates when sub is given
    del is_node
    m = len(nodes)
    local = np.full(m_all, -1, dtype=np.int32)
    local[nodes] = np.arange(m, dtype=np.int32)
    li = local[i]
    lj = local[j]
    del local, halves, i, j, packed
    glob = nodes if sub is None else sub[nodes]
    local_rank = np.empty(m, dtype=np.int32)
    local_rank[np.argsort(np.asarray(rank)[glob], kind="stable")] = np.arange(m, dtype=np.int32)
    leader[glob] = glob[_leader_rounds(m, li, lj, local_rank)]
    return leader


def _leader_rounds(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """`leader_clusters` on compact ids 0..n-1 with `rank` a permutation of 0..n-1."""
    leader = np.arange(n, dtype=np.int64)
    # orient every link from the higher-priority end u to v, in place (i and j are owned here)
    for s0 in range(0, len(i), 1 << 22):  # chunked: no link-sized temporaries
        ic, jc = i[s0:s0 + (1 << 22)], j[s0:s0 + (1 << 22)]
        swap = np.flatnonzero(rank[ic] > rank[jc])
        t = ic[swap]
        ic[swap] = jc[swap]
        jc[swap] = t
    u, v = i, j
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    UNDEC, LEAD, MEMB = 0, 1, 2
    state = np.full(n, LEAD, dtype=np.int8)
    state[v] = UNDEC  # items with no higher-priority neighbour are leaders at once
    big = np.int32(n + 1) if n + 1 < 2**31 else np.int64(n + 1)
    for _ in range(64):
        live = state[v] == UNDEC
        if not live.any():
            return leader
        if not live.all():
            u, v = u[live], v[live]
        del live
        # per undecided item: best (lowest) rank among leader and among undecided in-neighbours
        best_lead = np.full(n, big, dtype=big.dtype)
        best_und = np.full(n, big, dtype=big.dtype)
        is_cand = np.zeros(n, dtype=bool)
        for s0 in range(0, len(u), 1 << 22):  # chunked: no link-sized temporaries
            uc, vc = u[s0:s0 + (1 << 22)], v[s0:s0 + (1 << 22)]
            su = state[uc]
            fl = su == LEAD
            np.minimum.at(best_lead, vc[fl], rank[uc[fl]])
            fu = su == UNDEC
            np.minimum.at(best_und, vc[fu], rank[uc[fu]])
            is_cand[vc] = True
        cand = np.flatnonzero(is_cand)
        del is_cand
        bl, bu = best_lead[cand], best_und[cand]
        # a leader outranks every undecided in-neighbour: whatever they become, it wins
        join = bl < bu
        got = cand[join]
        leader[got] = by_rank[bl[join]]
        state[got] = MEMB
        # no leader and no undecided in-neighbour (all are members): a new leader
        state[cand[(bl == big) & (bu == big)]] = LEAD
    # sequential finish (pathological chains only)
    live = state[v] == UNDEC
    u, v = u[live], v[live]
    o = np.lexsort((rank[v], rank[u]))
    u, v = u[o], v[o]
    undecided = np.flatnonzero(state == UNDEC)
    incoming: dict[int, list[int]] = {}
    for a, b in zip(u.tolist(), v.tolist()):
        incoming.setdefault(b, []).append(a)
    for x in undecided[np.argsort(rank[undecided])].tolist():
        lead = -1
        for a in incoming.get(x, ()):  # in increasing rank of a
            if state[a] == LEAD:
                lead = a
                break
        if lead >= 0:
            leader[x] = lead
            state[x] = MEMB
        else:
            state[x] = LEAD
    return leader


def cluster_hashes(
    phash: np.ndarray,
    dhash: np.ndarray,
    chroma: np.ndarray,
    rank: np.ndarray,
    cfg: DedupConfig,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate leader clustering of n hashes; the engine under `dedup_shard` and the bench.

    phash, dhash: uint64 (n,); chroma: uint8 (n, 3) from `chromaticity`; rank: representative
    priority per item (lower = better, ties broken by position); eligible: bool mask of items allowed
    to near-match (others stay singletons). Returns (leader index per item, pHash distance to the
    leader as int16, 0 for leaders). Exact (pigeonhole) candidate search, star clusters: every
    member is within the radii of its leader. Memory: the inputs (19 bytes per item) + ~33 bytes
    per item + ~24 bytes per link (bench: 52 bytes per image for 5M uniform hashes, 79 for 5M skewed
    hashes with 14.7M links).
    """
    phash = np.asarray(phash, dtype=np.uint64)
    dhash = np.asarray(dhash, dtype=np.uint64)
    n = len(phash)
    rank = np.asarray(rank, dtype=np.int64)
    if eligible is None or bool(np.all(eligible)):
        holder = [_near_pairs_packed(phash, dhash, chroma, cfg)]
        leader = _leader_from_packed(n, holder, rank, None)
    else:
        sub = np.flatnonzero(np.asarray(eligible, dtype=bool))
        holder = [_near_pairs_packed(phash[sub], dhash[sub], np.asarray(chroma)[sub], cfg)]
        leader = _leader_from_packed(n, holder, rank, sub)
    dist = np.zeros(n, dtype=np.int16)
    mem = np.flatnonzero(leader != np.arange(n))
    dist[mem] = np.bitwise_count(phash[mem] ^ phash[leader[mem]])
    return leader, dist


def query_index(
    phash: np.ndarray,
    dhash: np.ndarray,
    chroma: np.ndarray,
    index_phash: np.ndarray,
    index_dhash: np.ndarray,
    index_chroma: np.ndarray,
    cfg: DedupConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query q, index row r) pairs within the near-duplicate rules, exact multi-index search.

    The query side (a shard) is sorted by composite key once per combination; the index is streamed
    in batches of ``cfg.index_batch`` rows and looked up with searchsorted, so memory is bounded and
    the candidate and verification work is proportional to the matches of the shard. Returns
    (q, r, pHash distance) sorted by (q, r).
    """
    phash = np.asarray(phash, dtype=np.uint64)
    dhash = np.asarray(dhash, dtype=np.uint64)
    chroma = np.asarray(chroma, dtype=np.uint8).reshape(-1, 3)
    ip = np.asarray(index_phash, dtype=np.uint64)
    idh = np.asarray(index_dhash, dtype=np.uint64)
    ic = np.asarray(index_chroma, dtype=np.uint8).reshape(-1, 3)
    e = np.empty(0, np.int64)
    if len(phash) == 0 or len(ip) == 0:
        return e, e, np.empty(0, np.int16)
    plan_p, plan_d = block_plan(cfg)
    qidx = np.arange(len(phash), dtype=np.uint64)
    out_q: list[np.ndarray] = []
    out_r: list[np.ndarray] = []
    out_d: list[np.ndarray] = []
    for jp, pb in enumerate(plan_p):
        for jd, db in enumerate(plan_d):
            comb = (_composite_key(phash, dhash, pb, db) << _U64(32)) | qidx
            comb.sort()
            qkey = comb >> _U64(32)
            qorder = (comb & _LOW32).astype(np.int64)
            # a 2**20-slot presence table of the shard's keys (1 MiB, cache-resident) rejects almost
            # every index row with one multiply and one gather; only hits are binary-searched
            present = np.zeros(1 << _SLOT_BITS, dtype=bool)
            present[_slot(qkey)] = True
            for s in range(0, len(ip), cfg.index_batch):
                ikey = _composite_key(ip[s:s + cfg.index_batch], idh[s:s + cfg.index_batch], pb, db)
                rows = np.flatnonzero(present[_slot(ikey)])
                if len(rows) == 0:
                    continue
                ikey = ikey[rows]
                lo = np.searchsorted(qkey, ikey, side="left")
                cnt = np.searchsorted(qkey, ikey, side="right") - lo
                hit = np.flatnonzero(cnt)
                if len(hit) == 0:
                    continue
                rows, lo, c = rows[hit], lo[hit], cnt[hit]
                total = int(c.sum())
                r = np.repeat(rows, c)
                first = np.repeat(np.cumsum(c) - c, c)
                qpos = np.repeat(lo, c) + (np.arange(total, dtype=np.int64) - first)
                q = qorder[qpos]
                r = r + s
                q, r, dp = _verify(q, r, phash, ip, dhash, idh, chroma, ic, cfg, plan_p, plan_d, jp, jd)
                if len(q):
                    out_q.append(q)
                    out_r.append(r)
                    out_d.append(dp)
    if not out_q:
        return e, e, np.empty(0, np.int16)
    q = np.concatenate(out_q)
    r = np.concatenate(out_r)
    d = np.concatenate(out_d)
    o = np.lexsort((r, q))
    return q[o], r[o], d[o]


# --------------------------------------------------------------------------------------------------
# Shard-level API
# --------------------------------------------------------------------------------------------------


def _empty_index() -> pl.DataFrame:
    return pl.DataFrame(schema=INDEX_SCHEMA)


def _sha64(col: pl.Series) -> np.ndarray:
    """First 64 bits of the sha256 hex digest as uint64, 0 where null (callers mask nulls)."""
    s = col.cast(pl.String).str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return s.fill_null(0).to_numpy().astype(np.uint64)


def _arr(df: pl.DataFrame, name: str, dtype, fill) -> np.ndarray:
    if name not in df.columns:
        return np.full(df.height, fill, dtype=dtype)
    return df[name].fill_null(fill).to_numpy().astype(dtype)


def dedup_shard(
    current: pl.DataFrame,
    earlier_index: pl.DataFrame | None,
    cfg: DedupConfig = DedupConfig(),
    *,
    shard_seq: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deduplicate one shard (INVENTORY_SCHEMA rows) against itself and the earlier shards' index.

    Returns (rows conforming to DEDUP_SCHEMA, one per `current` row in the same order; this shard's
    index rows, INDEX_SCHEMA, to persist and pass, concatenated with the earlier ones, to later
    shards). `shard_seq` is the shard's registration number; by default one more than the largest
    in `earlier_index` (0 without one). The result depends only on the inputs (deterministic).

    Per row:
    * error_code set (or a hash missing): "not_hashed", its own singleton cluster, distance null.
    * byte-identical to an earlier shard's row: joins that row's cluster ("exact" when that row is
      byte-identical to its representative, else "near" with that row's distance).
    * eligible and within the rules of an earlier representative: joins it ("near"); earliest shard,
      then smallest pHash distance, then smallest cluster_id wins.
    * otherwise clustered within the shard (byte-identical copies follow their best copy) by leader
      clustering in representative priority: largest width*height, then largest bytes, then uri,
      then image_id. "representative" (has members in this shard), "unique", "exact" or "near".
    is_representative: true for "representative" and "unique" rows and for "not_hashed" rows (their
    own singleton clusters). cluster_id is the representative's image_id, rep_shard its shard.
    distance: pHash Hamming distance to the representative (0 for representatives and exact copies;
    a byte-identical copy of a near member gets that member's distance and kind "near").
    """
    n = current.height
    earlier = _empty_index() if earlier_index is None or earlier_index.height == 0 else earlier_index
    if shard_seq is None:
        shard_seq = 0 if earlier.height == 0 else int(earlier["shard_seq"].max()) + 1  # type: ignore[arg-type]

    image_id = current["image_id"].cast(pl.String)
    shard_col = current["shard"].cast(pl.String) if "shard" in current.columns else pl.Series([None] * n, dtype=pl.String)
    err = current["error_code"].is_not_null().to_numpy() if "error_code" in current.columns else np.zeros(n, bool)
    ph_null = current["phash"].is_null().to_numpy()
    dh_null = current["dhash"].is_null().to_numpy()
    hashed = ~err & ~ph_null & ~dh_null
    phash = _arr(current, "phash", np.uint64, 0)
    dhash = _arr(current, "dhash", np.uint64, 0)
    has_sha = current["sha256"].is_not_null().to_numpy() if "sha256" in current.columns else np.zeros(n, bool)
    sha64 = _sha64(current["sha256"]) if "sha256" in current.columns else np.zeros(n, np.uint64)
    chroma = chromaticity(*(current[c].cast(pl.Float64).to_numpy() if c in current.columns else np.full(n, np.nan)
                            for c in ("color_mean_r", "color_mean_g", "color_mean_b")))
    contrast = _arr(current, "contrast", np.float64, 0.0)
    entropy = _arr(current, "entropy", np.float64, 0.0)
    eligible = hashed & (contrast >= cfg.min_contrast) & (entropy >= cfg.min_entropy)

    # representative priority within the shard: pixels desc, bytes desc, uri asc, image_id asc
    pri = pl.DataFrame({
        "px": (current["width"].cast(pl.Int64) * current["height"].cast(pl.Int64)).fill_null(-1),
        "by": current["bytes"].cast(pl.Int64).fill_null(-1),
        "uri": current["uri"].cast(pl.String).fill_null(""),
        "id": current["image_id"].cast(pl.String).fill_null(""),
    })
    order = pri.with_row_index("i").sort(["px", "by", "uri", "id"], descending=[True, True, False, False])["i"]
    rank = np.empty(n, dtype=np.int64)
    rank[order.to_numpy()] = np.arange(n)

    # outputs (indices into current, or into `earlier`)
    cl_local = np.arange(n, dtype=np.int64)  # local representative index (when not earlier)
    cl_earlier = np.full(n, -1, dtype=np.int64)  # earlier index row whose cluster is joined
    dist = np.zeros(n, dtype=np.int16)
    kind = np.full(n, "", dtype=object)

    # 1) exact groups within the shard: key (sha64, phash, dhash); canonical = best rank
    ex = np.flatnonzero(hashed & has_sha)
    canon = np.arange(n, dtype=np.int64)
    if len(ex):
        o = ex[np.lexsort((rank[ex], dhash[ex], phash[ex], sha64[ex]))]
        newgrp = np.ones(len(o), dtype=bool)
        newgrp[1:] = (sha64[o][1:] != sha64[o][:-1]) | (phash[o][1:] != phash[o][:-1]) | (dhash[o][1:] != dhash[o][:-1])
        gid = np.cumsum(newgrp) - 1
        head = o[np.flatnonzero(newgrp)]
        canon[o] = head[gid]
    is_canon = hashed & (canon == np.arange(n))

    # 2) exact matches against earlier shards (canonical rows only; copies follow)
    e_seq = earlier["shard_seq"].to_numpy().astype(np.int64) if earlier.height else np.empty(0, np.int64)
    e_cluster = earlier["cluster_id"].cast(pl.String) if earlier.height else pl.Series([], dtype=pl.String)
    if earlier.height and len(ex):
        e_sha = earlier["sha64"].fill_null(0).to_numpy().astype(np.uint64)
        e_has = earlier["sha64"].is_not_null().to_numpy()
        left = pl.DataFrame({"q": np.flatnonzero(is_canon & has_sha), })
        left = left.with_columns(
            pl.Series("sha64", sha64[left["q"].to_numpy()]),
            pl.Series("phash", phash[left["q"].to_numpy()]),
            pl.Series("dhash", dhash[left["q"].to_numpy()]),
        )
        right = pl.DataFrame({
            "r": np.flatnonzero(e_has),
            "sha64": e_sha[e_has],
            "phash": earlier["phash"].to_numpy()[e_has].astype(np.uint64),
            "dhash": earlier["dhash"].to_numpy()[e_has].astype(np.uint64),
        })
        m = left.join(right, on=["sha64", "phash", "dhash"], how="inner")
        if m.height:
            r_all = m["r"].to_numpy()
            m = m.with_columns(pl.Series("seq", e_seq[r_all]), e_cluster.gather(r_all).alias("cid"))
            m = m.sort(["q", "seq", "cid", "r"]).unique(subset="q", keep="first", maintain_order=True)
            q = m["q"].to_numpy()
            r = m["r"].to_numpy()
            cl_earlier[q] = r
            e_flags = earlier["flags"].to_numpy()
            e_dist = earlier["distance"].fill_null(0).to_numpy().astype(np.int16)
            same = (e_flags[r] & FLAG_SAME_BYTES) != 0
            dist[q] = np.where(same, 0, e_dist[r])
            kind[q] = np.where(same, "exact", "near")

    # 3) near matches against earlier representatives
    pend = np.flatnonzero(is_canon & eligible & (cl_earlier < 0))
    if earlier.height and len(pend):
        e_flags = earlier["flags"].to_numpy()
        reps = np.flatnonzero((e_flags & (FLAG_ELIGIBLE | FLAG_REP)) == (FLAG_ELIGIBLE | FLAG_REP))
        if len(reps):
            e_chroma = earlier.select("chroma_r", "chroma_g", "chroma_b").to_numpy()[reps].astype(np.uint8)
            qq, rr, dd = query_index(
                phash[pend], dhash[pend], chroma[pend],
                earlier["phash"].to_numpy()[reps].astype(np.uint64),
                earlier["dhash"].to_numpy()[reps].astype(np.uint64),
                e_chroma, cfg,
            )
            if len(qq):
                rows = reps[rr]
                m = pl.DataFrame({
                    "q": pend[qq], "r": rows, "seq": e_seq[rows], "d": dd, "cid": e_cluster.gather(rows),
                }).sort(["q", "seq", "d", "cid", "r"]).unique(subset="q", keep="first", maintain_order=True)
                q = m["q"].to_numpy()
                cl_earlier[q] = m["r"].to_numpy()
                dist[q] = m["d"].to_numpy().astype(np.int16)
                kind[q] = "near"

    # 4) within-shard leader clustering of the remaining canonical rows
    rest = np.flatnonzero(is_canon & (cl_earlier < 0))
    if len(rest):
        lead, d = cluster_hashes(phash[rest], dhash[rest], chroma[rest], rank[rest], cfg, eligible[rest])
        cl_local[rest] = rest[lead]
        dist[rest] = d

    # 5) byte-identical copies follow their canonical row
    copies = np.flatnonzero(hashed & ~is_canon)
    if len(copies):
        c = canon[copies]
        cl_earlier[copies] = cl_earlier[c]
        cl_local[copies] = np.where(cl_earlier[c] >= 0, copies, cl_local[c])
        from_earlier = cl_earlier[c] >= 0
        canon_is_rep = ~from_earlier & (cl_local[c] == c)
        # exact if the canonical is byte-identical to its representative
        canon_exact = np.where(from_earlier, kind[c] == "exact", canon_is_rep)
        kind[copies] = np.where(canon_exact, "exact", "near")
        dist[copies] = np.where(canon_exact, 0, dist[c])

    # 6) kinds and ids for local clusters
    local = hashed & (cl_earlier < 0)
    is_rep = local & (cl_local == np.arange(n))
    members = local & ~is_rep
    has_members = np.zeros(n, dtype=bool)
    has_members[cl_local[members]] = True
    kind[is_rep] = np.where(has_members[is_rep], "representative", "unique")
    dist[is_rep] = 0
    mem_idx = np.flatnonzero(members)
    if len(mem_idx):
        # within-shard near members whose kind is not yet set (copies were set in step 5)
        unset = mem_idx[kind[mem_idx] == ""]
        kind[unset] = "near"

    # ids: local rows point at their representative; joined rows take the earlier cluster's ids
    ids = image_id.alias("image_id")
    shards = shard_col.alias("shard")
    ptr = np.where(local, cl_local, np.arange(n))
    cluster_id = ids.gather(ptr).alias("cluster_id")
    rep_shard = shards.gather(ptr).alias("rep_shard")
    joined = np.flatnonzero(hashed & (cl_earlier >= 0))
    if len(joined):
        picked = earlier.select(pl.col("cluster_id").cast(pl.String), pl.col("rep_shard").cast(pl.String))[
            cl_earlier[joined]]
        cluster_id = cluster_id.scatter(joined, picked["cluster_id"])
        rep_shard = rep_shard.scatter(joined, picked["rep_shard"])
    kind[~hashed] = "not_hashed"

    out = pl.DataFrame({
        "image_id": ids,
        "shard": shards,
        "cluster_id": cluster_id,
        "is_representative": pl.Series(is_rep | ~hashed),
        "dup_kind": pl.Series(kind.tolist(), dtype=pl.String),
        "rep_shard": rep_shard,
        "distance": pl.Series(dist, dtype=pl.Int16),
    }).with_columns(
        pl.when(pl.Series(hashed)).then(pl.col("distance")).otherwise(None).alias("distance")
    )
    out = conform(out, DEDUP_SCHEMA)

    # this shard's index rows (hashed rows only)
    flags = (
        eligible.astype(np.uint8) * FLAG_ELIGIBLE
        + is_rep.astype(np.uint8) * FLAG_REP
        + (hashed & (is_rep | (kind == "exact"))).astype(np.uint8) * FLAG_SAME_BYTES
    ).astype(np.uint8)
    h = np.flatnonzero(hashed)
    idx = pl.DataFrame({
        "image_id": ids.gather(h),
        "shard": shards.gather(h),
        "shard_seq": pl.Series(np.full(len(h), shard_seq, dtype=np.int32)),
        "cluster_id": cluster_id.gather(h),
        "rep_shard": rep_shard.gather(h),
        "distance": pl.Series(dist[h], dtype=pl.Int16),
        "sha64": pl.Series(sha64[h], dtype=pl.UInt64),
        "phash": pl.Series(phash[h], dtype=pl.UInt64),
        "dhash": pl.Series(dhash[h], dtype=pl.UInt64),
        "chroma_r": pl.Series(chroma[h, 0], dtype=pl.UInt8),
        "chroma_g": pl.Series(chroma[h, 1], dtype=pl.UInt8),
        "chroma_b": pl.Series(chroma[h, 2], dtype=pl.UInt8),
        "flags": pl.Series(flags[h], dtype=pl.UInt8),
    }).with_columns(pl.when(pl.Series(has_sha[h])).then(pl.col("sha64")).otherwise(None).alias("sha64"))
    return out, conform(idx, INDEX_SCHEMA)
