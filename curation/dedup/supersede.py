"""The best copy wins across shards, without rewriting earlier shards: supersede records.

Shards are immutable once materialised, so when a later shard brings a better copy of a picture
whose cluster lives in an earlier shard, the later shard *records* it instead of changing the
earlier output:

* `find_supersedes` (a step of `dedup_shard`): among the rows of the shard that joined an earlier
  cluster, the best one per cluster (`representative_rank`: most pixels, then most bytes, then uri,
  then image_id) supersedes the cluster's best copy so far when it has strictly more pixels, or
  as many pixels and strictly more bytes. The best copy so far is the earlier index row of that
  cluster flagged FLAG_REP or FLAG_SUPERSEDES with the most pixels, then bytes (ties: the earlier
  copy stays; an earlier row without a recorded size is never superseded). The superseding row
  keeps its shard-level dedup row (a member of the earlier cluster: cluster_id, rep_shard,
  dup_kind as before, is_representative false) and its index row gets FLAG_SUPERSEDES with
  ``supersedes`` / ``superseded_shard`` naming the copy it replaces. Later shards near-match
  against it like a representative, so a chain 48 px -> 64 px -> 256 px is recorded link by link.
* `supersede_records(index)`: the supersede records of index rows (SUPERSEDE_SCHEMA), i.e. the
  ``dedup_index`` rows with FLAG_SUPERSEDES: nothing new has to be persisted.
* `shard_keep(curated, records)`: one shard's `curated_images` with its own records applied (the
  superseding copy kept, naming what it replaces; never depends on later shards).
* `corpus_keep(curated, records)`: the corpus-level keep decision. Per cluster with records, the
  candidates are the representative (the cluster_id) and its superseders in shard order (each
  better than the one before); the winner is the last candidate that is acceptable, i.e. kept at
  shard level or rejected only as ``duplicate``. The winner is kept; every other candidate that was
  kept at shard level is dropped with reason ``superseded``. Clusters without records, and
  clusters whose candidates all fail quality, are unchanged. The corpus report (`curation_summary`)
  and the export's corpus manifest (`curation.export.corpus`) read through it.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import polars as pl

from curation.dedup.config import FLAG_REP, FLAG_SUPERSEDES
from curation.dedup.prepare import Assignment, ShardArrays
from curation.schema import Schema

__all__ = ["SUPERSEDE_SCHEMA", "SUPERSEDED", "corpus_keep", "find_supersedes", "shard_keep", "supersede_records"]

SUPERSEDED = "superseded"
BEST_COPY_METRIC = "best_copy_pixels"  # the `superseded` reject detail: pixels of the copy that won

SUPERSEDE_SCHEMA: Schema = {
    "cluster_id": pl.String,  # the cluster (its first representative's image_id)
    "image_id": pl.String,  # the better copy, in `shard`
    "shard": pl.String,
    "shard_seq": pl.Int32,
    "supersedes": pl.String,  # the cluster's best copy before it
    "superseded_shard": pl.String,
}


def _px(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    w, h = np.asarray(width, dtype=np.int64), np.asarray(height, dtype=np.int64)
    return np.where((w >= 0) & (h >= 0), w * h, -1)


def find_supersedes(a: ShardArrays, asg: Assignment, earlier: pl.DataFrame) -> tuple[np.ndarray, list, list]:
    """(bool mask of the rows that supersede, per row the image_id and shard it supersedes or
    None); see the module docstring for the rule."""
    n = a.n
    mask = np.zeros(n, dtype=bool)
    sup_id: list = [None] * n
    sup_shard: list = [None] * n
    rows = np.flatnonzero(a.hashed & (asg.cl_earlier >= 0))
    if len(rows) == 0 or earlier.height == 0:
        return mask, sup_id, sup_shard
    cid = earlier["cluster_id"].cast(pl.String).gather(asg.cl_earlier[rows])
    mine = pl.DataFrame({"row": rows, "cluster_id": cid, "rank": a.rank[rows],
                         "px": _px(a.width[rows], a.height[rows]), "by": a.nbytes[rows]})
    best = mine.sort("rank").unique(subset="cluster_id", keep="first")
    e = earlier.select(
        pl.col("cluster_id").cast(pl.String), pl.col("image_id").cast(pl.String).alias("k_id"),
        pl.col("shard").cast(pl.String).alias("k_shard"), pl.col("shard_seq").alias("k_seq"),
        (pl.col("width").cast(pl.Int64) * pl.col("height").cast(pl.Int64)).alias("k_px"),
        pl.col("bytes").cast(pl.Int64).fill_null(-1).alias("k_by"), pl.col("flags"),
    ).filter((pl.col("flags") & (FLAG_REP | FLAG_SUPERSEDES)) != 0)
    e = e.join(best.select("cluster_id"), on="cluster_id", how="semi")
    keeper = e.sort(["k_px", "k_by", "k_seq"], descending=True, nulls_last=True).unique(
        subset="cluster_id", keep="first")
    m = best.join(keeper, on="cluster_id", how="inner").filter(
        pl.col("k_px").is_not_null() & (pl.col("px") >= 0)
        & ((pl.col("px") > pl.col("k_px")) | ((pl.col("px") == pl.col("k_px")) & (pl.col("by") > pl.col("k_by")))))
    for r, kid, ks in m.select("row", "k_id", "k_shard").iter_rows():
        mask[r] = True
        sup_id[r] = kid
        sup_shard[r] = ks
    return mask, sup_id, sup_shard


def supersede_records(index: pl.DataFrame) -> pl.DataFrame:
    """SUPERSEDE_SCHEMA rows of the index rows flagged FLAG_SUPERSEDES (any number of shards)."""
    if "supersedes" not in index.columns:
        return pl.DataFrame(schema=SUPERSEDE_SCHEMA)
    rec = index.filter(((pl.col("flags") & FLAG_SUPERSEDES) != 0) & pl.col("supersedes").is_not_null())
    return rec.select([pl.col(c).cast(t) for c, t in SUPERSEDE_SCHEMA.items()])


Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def corpus_keep(curated: Frame, records: pl.DataFrame, *, trace: bool = False) -> Frame:
    """The corpus-level view of curated rows (CURATED_SCHEMA: image_id, keep, reasons, ...).

    `curated` must hold the rows of the shard(s) to decide and the rows of every image that
    `records` (SUPERSEDE_SCHEMA, of those shards and all later ones) names as superseder; rows of
    representatives not in `curated` are simply not output. Returns `curated` (a DataFrame or a
    LazyFrame, returned as the same kind) with ``keep`` and ``reasons`` (and ``reject_details``
    when present: the winner's ``duplicate`` entry removed, a ``superseded`` entry added to each
    dropped copy, metric ``best_copy_pixels`` = the winner's width x height, no threshold)
    replaced by the corpus-level decision (module docstring), same rows and order. `trace` adds
    ``superseded_by``: the winner's image_id on the rows dropped as superseded, else null."""
    lazy = curated.lazy()
    columns = lazy.collect_schema().names()
    if records.height == 0:
        if not trace:
            return curated
        out = lazy.with_columns(pl.lit(None, pl.String).alias("superseded_by"))
        return out.collect() if isinstance(curated, pl.DataFrame) else out
    reps = records.select("cluster_id", pl.col("cluster_id").alias("image_id"), pl.lit(-1, pl.Int32).alias("shard_seq"))
    chain = pl.concat([reps.unique(), records.select("cluster_id", "image_id", "shard_seq")]).lazy()
    sized = "width" in columns and "height" in columns
    px = (pl.col("width").cast(pl.Int64) * pl.col("height").cast(pl.Int64)) if sized else pl.lit(None, pl.Int64)
    status = lazy.join(chain.select("image_id"), on="image_id", how="semi").select(
        "image_id",
        (pl.col("keep") | (pl.col("reasons").list.set_difference(pl.lit(["duplicate"])).list.len() == 0)).alias("ok"),
        px.alias("px"))
    chain = chain.join(status, on="image_id", how="left").with_columns(pl.col("ok").fill_null(False))
    winner = (chain.filter(pl.col("ok")).sort("shard_seq").group_by("cluster_id")
              .agg(pl.col("image_id").last().alias("winner"), pl.col("px").last().alias("winner_px")))
    chain = chain.join(winner, on="cluster_id", how="inner").with_columns(
        (pl.col("image_id") == pl.col("winner")).alias("wins")).select(
        "image_id", "wins", "winner", "winner_px").unique("image_id", keep="first")
    out = lazy.join(chain, on="image_id", how="left", maintain_order="left")
    decided = pl.col("wins").is_not_null()
    drop = decided & ~pl.col("wins") & pl.col("keep")
    wins = decided & pl.col("wins")
    updates = [
        pl.when(decided).then(pl.col("wins")).otherwise(pl.col("keep")).alias("keep"),
        pl.when(drop).then(pl.col("reasons").list.concat(pl.lit([SUPERSEDED])))
        .when(wins).then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.col("reasons")).alias("reasons"),
    ]
    if "reject_details" in columns:
        dtype = lazy.collect_schema()["reject_details"]
        inner = dtype.inner if isinstance(dtype, pl.List) else None
        if isinstance(inner, pl.Struct):
            fill = {"reason": pl.lit(SUPERSEDED), "metric": pl.lit(BEST_COPY_METRIC), "value": pl.col("winner_px")}
            entry = pl.struct(*[fill.get(f.name, pl.lit(None)).cast(f.dtype).alias(f.name) for f in inner.fields])
            updates.append(
                pl.when(drop).then(pl.col("reject_details").list.concat(pl.concat_list(entry)))
                .when(wins).then(pl.lit([], dtype=dtype))
                .otherwise(pl.col("reject_details")).alias("reject_details"))
    if trace:
        updates.append(pl.when(drop).then(pl.col("winner")).otherwise(None).alias("superseded_by"))
    out = out.with_columns(updates)
    out = out.select(*columns, *(["superseded_by"] if trace else []))
    return out.collect() if isinstance(curated, pl.DataFrame) else out


def shard_keep(curated: pl.DataFrame, records: pl.DataFrame) -> pl.DataFrame:
    """`curated_images` of one shard with that shard's own supersede records applied: a row that
    supersedes an earlier cluster's best copy and is acceptable (kept, or rejected only as a
    duplicate) is kept, with ``supersedes`` / ``superseded_shard`` naming the copy it replaces;
    every other row is unchanged (both columns null). Depends only on this shard's inputs, so
    the shard's output never changes when later shards arrive; the earlier copy is dropped in
    the corpus-level view (`corpus_keep` over every shard), not in its own shard's file."""
    own = records.filter(pl.col("image_id").is_in(curated["image_id"].implode()))
    out = corpus_keep(curated, own)
    names = own.select("image_id", pl.col("supersedes").alias("_sup"), pl.col("superseded_shard").alias("_sup_shard"))
    out = out.drop("supersedes", "superseded_shard", strict=False).join(names, on="image_id", how="left",
                                                                        maintain_order="left")
    won = pl.col("keep") & pl.col("_sup").is_not_null()
    return out.with_columns(pl.when(won).then(pl.col("_sup")).otherwise(None).cast(pl.String).alias("supersedes"),
                            pl.when(won).then(pl.col("_sup_shard")).otherwise(None).cast(pl.String)
                            .alias("superseded_shard")).drop("_sup", "_sup_shard").select(
        *[c for c in curated.columns if c not in ("supersedes", "superseded_shard")], "supersedes", "superseded_shard")
