"""Matching one shard against the persisted index of earlier shards (`INDEX_SCHEMA`).

Earlier shards are immutable: a row of the current shard can only *join* an earlier cluster, never
change it. Only the shard's canonical rows (the best copy of each byte-identical group) are matched;
their copies follow them later.

* `match_exact_earlier`: a canonical row with the same (sha64, pHash, dHash) as an earlier row
  joins that row's cluster: kind "exact" (distance 0) when that row is byte-identical to its
  representative, else "near" with that row's distance.
* `match_near_earlier`: an eligible canonical row within the near-duplicate rules of an earlier
  eligible *representative* (or a copy that superseded one, see `curation.dedup.supersede`) joins
  that cluster (kind "near"); verification uses the thumbnails and 256-bit pHashes stored in the
  index, decoded only for the representatives that candidate pairs reach (a 10k shard against 1M
  synthetic earlier rows: decoding every representative's features was 3.0 s of the step's 3.1 s).
* `best_earlier_match`: among several earlier candidates for a row, which one wins.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.dedup.config import FLAG_SAME_BYTES, DedupConfig, near_matchable
from curation.dedup.prepare import Assignment, ShardArrays
from curation.dedup.query import query_index
from curation.dedup.verify import VerifyFeatures, detail_array
from curation.imaging.features import thumb_array

__all__ = ["best_earlier_match", "index_features", "match_exact_earlier", "match_near_earlier"]


def best_earlier_match(candidates: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """One row per query row ``q``: the candidate first in `order` (ascending), e.g. earliest shard
    (``seq``), then smallest distance (``d``), then smallest cluster_id (``cid``), then index row
    (``r``) for a total order. Returns the kept candidates sorted by q."""
    return candidates.sort(["q", *order]).unique(subset="q", keep="first", maintain_order=True)


# the INDEX_SCHEMA columns `index_features` reads
FEATURE_INPUTS = ("chroma_r", "chroma_g", "chroma_b", "thumb_rgb", "phash256", "width", "height")


def index_features(rows: pl.DataFrame) -> VerifyFeatures:
    """`VerifyFeatures` of INDEX_SCHEMA rows (chroma, thumbnails, 256-bit pHashes, sizes; nulls where
    absent)."""
    chroma = rows.select("chroma_r", "chroma_g", "chroma_b").to_numpy().astype(np.uint8)
    thumb, has = thumb_array(rows["thumb_rgb"])
    detail, has_d = detail_array(rows["phash256"])
    return VerifyFeatures.build(chroma, thumb, has, rows["width"].cast(pl.Float64).to_numpy(),
                                rows["height"].cast(pl.Float64).to_numpy(), detail, has_d)


def match_exact_earlier(a: ShardArrays, is_canon: np.ndarray, earlier: pl.DataFrame, asg: Assignment) -> None:
    """Join canonical rows that are byte-identical (sha64, pHash, dHash) to an earlier row to that
    row's cluster (earliest shard, then smallest cluster_id wins). Updates `asg` in place."""
    if earlier.height == 0 or not (a.hashed & a.has_sha).any():
        return
    q_all = np.flatnonzero(is_canon & a.has_sha)
    left = pl.DataFrame({"q": q_all}).with_columns(
        pl.Series("sha64", a.sha64[q_all]),
        pl.Series("phash", a.phash[q_all]),
        pl.Series("dhash", a.dhash[q_all]),
    )
    e_has = earlier["sha64"].is_not_null().to_numpy()
    right = pl.DataFrame({
        "r": np.flatnonzero(e_has),
        "sha64": earlier["sha64"].fill_null(0).to_numpy().astype(np.uint64)[e_has],
        "phash": earlier["phash"].to_numpy()[e_has].astype(np.uint64),
        "dhash": earlier["dhash"].to_numpy()[e_has].astype(np.uint64),
    })
    m = left.join(right, on=["sha64", "phash", "dhash"], how="inner")
    if m.height == 0:
        return
    r_all = m["r"].to_numpy()
    e_seq = earlier["shard_seq"].to_numpy().astype(np.int64)
    m = m.with_columns(pl.Series("seq", e_seq[r_all]), earlier["cluster_id"].cast(pl.String).gather(r_all).alias("cid"))
    m = best_earlier_match(m, ["seq", "cid", "r"])
    q = m["q"].to_numpy()
    r = m["r"].to_numpy()
    asg.cl_earlier[q] = r
    e_dist = earlier["distance"].fill_null(0).to_numpy().astype(np.int16)
    same = (earlier["flags"].to_numpy()[r] & FLAG_SAME_BYTES) != 0
    asg.dist[q] = np.where(same, 0, e_dist[r])
    asg.kind[q] = np.where(same, "exact", "near")


def match_near_earlier(
    a: ShardArrays, is_canon: np.ndarray, earlier: pl.DataFrame, asg: Assignment, cfg: DedupConfig
) -> None:
    """Join eligible canonical rows not matched yet to the cluster of an earlier eligible
    representative within the near-duplicate rules (earliest shard, then smallest pHash distance,
    then smallest cluster_id wins). Updates `asg` in place."""
    pend = np.flatnonzero(is_canon & a.eligible & (asg.cl_earlier < 0))
    if earlier.height == 0 or len(pend) == 0:
        return
    e_flags = earlier["flags"].to_numpy()
    reps = np.flatnonzero(near_matchable(e_flags))
    if len(reps) == 0:
        return
    feature_rows = earlier.select(FEATURE_INPUTS)

    def rep_features(i: np.ndarray) -> VerifyFeatures:  # only the reps that candidate pairs reach
        return index_features(feature_rows[reps[i]])

    qq, rr, dd = query_index(
        a.phash[pend], a.dhash[pend], a.feats.take(pend),
        earlier["phash"].to_numpy()[reps].astype(np.uint64),
        earlier["dhash"].to_numpy()[reps].astype(np.uint64),
        rep_features, cfg,
    )
    if len(qq) == 0:
        return
    rows = reps[rr]
    e_seq = earlier["shard_seq"].to_numpy().astype(np.int64)
    m = best_earlier_match(pl.DataFrame({
        "q": pend[qq], "r": rows, "seq": e_seq[rows], "d": dd, "cid": earlier["cluster_id"].cast(pl.String).gather(rows),
    }), ["seq", "d", "cid", "r"])
    q = m["q"].to_numpy()
    asg.cl_earlier[q] = m["r"].to_numpy()
    asg.dist[q] = m["d"].to_numpy().astype(np.int16)
    asg.kind[q] = "near"
