"""The shard pipeline of the hash dedup stage: `dedup_shard` and its named steps.

`dedup_shard` deduplicates one shard (INVENTORY_SCHEMA rows) against itself and the index of all
earlier shards, in this order: prepare arrays (`prepare_arrays`); group byte-identical copies within
the shard (`exact_groups`); exact matches against the earlier index (`match_exact_earlier`); near
matches against earlier representatives (`match_near_earlier`); leader clustering of the rest within
the shard (`cluster_within_shard`); copies follow their canonical row (`follow_copies`); kinds of
local clusters (`local_kinds`); output rows (`build_rows`, DEDUP_SCHEMA); better copies of earlier
clusters (`curation.dedup.supersede.find_supersedes`) and this shard's index rows (`build_index`,
INDEX_SCHEMA, with the supersede records). Deterministic: the result depends only on the inputs.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.dedup.cluster import cluster_hashes
from curation.dedup.config import (
    FLAG_ELIGIBLE,
    FLAG_REP,
    FLAG_SAME_BYTES,
    FLAG_SUPERSEDES,
    INDEX_SCHEMA,
    DedupConfig,
    near_matchable,
)
from curation.dedup.earlier import match_exact_earlier, match_near_earlier
from curation.dedup.prepare import Assignment, ShardArrays, prepare_arrays
from curation.dedup.supersede import find_supersedes
from curation.schema import DEDUP_SCHEMA, conform

MATCH_FEATURES = ("thumb_rgb", "phash256")  # index columns only near-matchable rows carry (`build_index`)

__all__ = [
    "build_index", "build_rows", "cluster_within_shard", "dedup_shard", "exact_groups", "follow_copies",
    "local_kinds",
]

_DEFAULT_CONFIG = DedupConfig()  # frozen: safe to share as the default argument


def dedup_shard(
    current: pl.DataFrame,
    earlier_index: pl.DataFrame | None,
    cfg: DedupConfig = _DEFAULT_CONFIG,
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
      clustering in representative priority (`representative_rank`): largest width*height, then
      largest bytes, then uri, then image_id. "representative" (has members in this shard),
      "unique", "exact" or "near".
    is_representative: true for "representative" and "unique" rows and for "not_hashed" rows (their
    own singleton clusters). cluster_id is the representative's image_id, rep_shard its shard.
    distance: pHash Hamming distance to the representative (0 for representatives and exact copies;
    a byte-identical copy of a near member gets that member's distance and kind "near").
    """
    earlier = (pl.DataFrame(schema=INDEX_SCHEMA) if earlier_index is None or earlier_index.height == 0
               else conform(earlier_index, INDEX_SCHEMA))  # indexes written before a column existed: nulls
    if shard_seq is None:
        shard_seq = 0 if earlier.height == 0 else int(earlier["shard_seq"].max()) + 1  # type: ignore[arg-type]
    a = prepare_arrays(current, cfg)
    asg = Assignment.new(a.n)
    canon = exact_groups(a)
    is_canon = a.hashed & (canon == np.arange(a.n))
    match_exact_earlier(a, is_canon, earlier, asg)
    match_near_earlier(a, is_canon, earlier, asg, cfg)
    cluster_within_shard(a, is_canon, asg, cfg)
    follow_copies(a, canon, is_canon, asg)
    is_rep = local_kinds(a, asg)
    rows, cluster_id, rep_shard = build_rows(a, asg, is_rep, earlier)
    sup = find_supersedes(a, asg, earlier)
    return rows, build_index(a, asg, is_rep, cluster_id, rep_shard, shard_seq, sup)


def exact_groups(a: ShardArrays) -> np.ndarray:
    """Canonical row of every row: byte-identical rows (hashed, same sha64, pHash and dHash) point at
    the best-ranked of them; every other row points at itself."""
    ex = np.flatnonzero(a.hashed & a.has_sha)
    canon = np.arange(a.n, dtype=np.int64)
    if len(ex):
        sha64, phash, dhash = a.sha64, a.phash, a.dhash
        o = ex[np.lexsort((a.rank[ex], dhash[ex], phash[ex], sha64[ex]))]
        newgrp = np.ones(len(o), dtype=bool)
        newgrp[1:] = (sha64[o][1:] != sha64[o][:-1]) | (phash[o][1:] != phash[o][:-1]) | (dhash[o][1:] != dhash[o][:-1])
        gid = np.cumsum(newgrp) - 1
        head = o[np.flatnonzero(newgrp)]
        canon[o] = head[gid]
    return canon


def cluster_within_shard(a: ShardArrays, is_canon: np.ndarray, asg: Assignment, cfg: DedupConfig) -> None:
    """Leader clustering (`cluster_hashes`, representative rank order) of the canonical rows that
    joined no earlier cluster; only eligible rows near-match. Updates `asg` in place."""
    rest = np.flatnonzero(is_canon & (asg.cl_earlier < 0))
    if len(rest):
        lead, d = cluster_hashes(a.phash[rest], a.dhash[rest], a.feats.take(rest), a.rank[rest], cfg, a.eligible[rest])
        asg.cl_local[rest] = rest[lead]
        asg.dist[rest] = d


def follow_copies(a: ShardArrays, canon: np.ndarray, is_canon: np.ndarray, asg: Assignment) -> None:
    """Byte-identical copies take their canonical row's cluster: "exact" (distance 0) when the
    canonical row is byte-identical to its representative, else "near" with its distance."""
    copies = np.flatnonzero(a.hashed & ~is_canon)
    if len(copies) == 0:
        return
    c = canon[copies]
    cl_earlier, cl_local, kind = asg.cl_earlier, asg.cl_local, asg.kind
    cl_earlier[copies] = cl_earlier[c]
    cl_local[copies] = np.where(cl_earlier[c] >= 0, copies, cl_local[c])
    from_earlier = cl_earlier[c] >= 0
    canon_is_rep = ~from_earlier & (cl_local[c] == c)
    canon_exact = np.where(from_earlier, kind[c] == "exact", canon_is_rep)
    kind[copies] = np.where(canon_exact, "exact", "near")
    asg.dist[copies] = np.where(canon_exact, 0, asg.dist[c])


def local_kinds(a: ShardArrays, asg: Assignment) -> np.ndarray:
    """Kinds of the rows clustered within the shard ("representative" with members, else "unique";
    members not yet decided are "near") and "not_hashed"; returns the is-representative mask of
    local clusters."""
    n, kind = a.n, asg.kind
    local = a.hashed & (asg.cl_earlier < 0)
    is_rep = local & (asg.cl_local == np.arange(n))
    members = local & ~is_rep
    has_members = np.zeros(n, dtype=bool)
    has_members[asg.cl_local[members]] = True
    kind[is_rep] = np.where(has_members[is_rep], "representative", "unique")
    asg.dist[is_rep] = 0
    mem_idx = np.flatnonzero(members)
    if len(mem_idx):
        unset = mem_idx[kind[mem_idx] == ""]  # copies were set by follow_copies
        kind[unset] = "near"
    kind[~a.hashed] = "not_hashed"
    return is_rep


def build_rows(
    a: ShardArrays, asg: Assignment, is_rep: np.ndarray, earlier: pl.DataFrame
) -> tuple[pl.DataFrame, pl.Series, pl.Series]:
    """DEDUP_SCHEMA rows, plus the cluster_id and rep_shard columns: local rows point at their
    representative, rows that joined an earlier cluster take that cluster's ids."""
    n, hashed = a.n, a.hashed
    ids = a.image_id.alias("image_id")
    shards = a.shard.alias("shard")
    local = hashed & (asg.cl_earlier < 0)
    ptr = np.where(local, asg.cl_local, np.arange(n))
    cluster_id = ids.gather(ptr).alias("cluster_id")
    rep_shard = shards.gather(ptr).alias("rep_shard")
    joined = np.flatnonzero(hashed & (asg.cl_earlier >= 0))
    if len(joined):
        picked = earlier.select(pl.col("cluster_id").cast(pl.String), pl.col("rep_shard").cast(pl.String))[
            asg.cl_earlier[joined]]
        cluster_id = cluster_id.scatter(joined, picked["cluster_id"])
        rep_shard = rep_shard.scatter(joined, picked["rep_shard"])
    out = pl.DataFrame({
        "image_id": ids,
        "shard": shards,
        "cluster_id": cluster_id,
        "is_representative": pl.Series(is_rep | ~hashed),
        "dup_kind": pl.Series(asg.kind.tolist(), dtype=pl.String),
        "rep_shard": rep_shard,
        "distance": pl.Series(asg.dist, dtype=pl.Int16),
    }).with_columns(
        pl.when(pl.Series(hashed)).then(pl.col("distance")).otherwise(None).alias("distance")
    )
    return conform(out, DEDUP_SCHEMA), cluster_id, rep_shard


def build_index(
    a: ShardArrays, asg: Assignment, is_rep: np.ndarray, cluster_id: pl.Series, rep_shard: pl.Series,
    shard_seq: int, sup: tuple[np.ndarray, list, list],
) -> pl.DataFrame:
    """This shard's INDEX_SCHEMA rows (hashed rows only), with the flags later shards match on and
    the supersede records (`find_supersedes`: mask, superseded image_id and shard per row)."""
    hashed, chroma = a.hashed, a.chroma
    flags = (
        a.eligible.astype(np.uint8) * FLAG_ELIGIBLE
        + is_rep.astype(np.uint8) * FLAG_REP
        + (hashed & (is_rep | (asg.kind == "exact"))).astype(np.uint8) * FLAG_SAME_BYTES
        + sup[0].astype(np.uint8) * FLAG_SUPERSEDES
    ).astype(np.uint8)
    h = np.flatnonzero(hashed)
    matchable = near_matchable(flags)
    idx = pl.DataFrame({
        "image_id": a.image_id.gather(h),
        "shard": a.shard.gather(h),
        "shard_seq": pl.Series(np.full(len(h), shard_seq, dtype=np.int32)),
        "cluster_id": cluster_id.gather(h),
        "rep_shard": rep_shard.gather(h),
        "distance": pl.Series(asg.dist[h], dtype=pl.Int16),
        "sha64": pl.Series(a.sha64[h], dtype=pl.UInt64),
        "phash": pl.Series(a.phash[h], dtype=pl.UInt64),
        "dhash": pl.Series(a.dhash[h], dtype=pl.UInt64),
        "chroma_r": pl.Series(chroma[h, 0], dtype=pl.UInt8),
        "chroma_g": pl.Series(chroma[h, 1], dtype=pl.UInt8),
        "chroma_b": pl.Series(chroma[h, 2], dtype=pl.UInt8),
        "flags": pl.Series(flags[h], dtype=pl.UInt8),
        "width": pl.Series(a.width[h], dtype=pl.Int64),
        "height": pl.Series(a.height[h], dtype=pl.Int64),
        "bytes": pl.Series(a.nbytes[h], dtype=pl.Int64),
        "thumb_rgb": a.thumb_rgb.gather(h),
        "phash256": a.phash256.gather(h),
        "supersedes": pl.Series([sup[1][i] for i in h.tolist()], dtype=pl.String),
        "superseded_shard": pl.Series([sup[2][i] for i in h.tolist()], dtype=pl.String),
    }).with_columns(
        [pl.when(pl.col(c) >= 0).then(pl.col(c)).otherwise(None).alias(c) for c in ("width", "height", "bytes")]
    ).with_columns(
        pl.when(pl.Series(a.has_sha[h])).then(pl.col("sha64")).otherwise(None).alias("sha64"),
        # only eligible representatives and superseding rows are near-matched by later shards
        # (`match_near_earlier`), so only they keep the verification features: on a corpus where most
        # rows are copies the index, and what every later shard reads of it, shrinks by up to 224 bytes
        # (uncompressed) a row
        *[pl.when(pl.Series(matchable[h])).then(pl.col(c)).otherwise(None).alias(c) for c in MATCH_FEATURES],
    )
    return conform(idx, INDEX_SCHEMA)
