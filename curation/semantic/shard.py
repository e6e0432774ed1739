"""The shard pipeline of the semantic pass: `semantic_dedup_shard` and its named steps.

Steps: unit embeddings (`unit_embeddings`) and their band keys; matches against earlier
representatives (`match_earlier`); leader clustering of the rest within the shard in input order
(`cluster_within_shard`); output rows (SEMANTIC_SCHEMA) and this shard's index rows (`build_index`,
`index_schema`). Deterministic: the result depends only on the inputs and the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import polars as pl

from curation.dedup.cluster import leader_clusters
from curation.semantic.config import SEMANTIC_SCHEMA, SemanticDedupConfig, index_schema
from curation.semantic.lsh import band_keys
from curation.semantic.match import match_earlier, match_earlier_ivf
from curation.semantic.pairs import lsh_pairs
from curation.semantic.vectors import encode
from curation.semantic.verify import verify_links

__all__ = ["applied_config", "build_index", "cluster_within_shard", "semantic_dedup_shard", "thumbnails", "unit_embeddings"]

_DEFAULT_CONFIG = SemanticDedupConfig()  # frozen: safe to share as the default argument


def unit_embeddings(col: pl.Series) -> np.ndarray:
    """(n, dim) float32 L2-normalised rows of an embedding column (List or Array; zero rows stay
    zero; (0, 0) when empty). Null embeddings raise ValueError."""
    if col.null_count():
        raise ValueError(f"{col.null_count()} null embeddings: drop rows whose embedding failed first")
    if len(col) == 0:
        return np.empty((0, 0), dtype=np.float32)
    if isinstance(col.dtype, pl.List):
        col = col.list.to_array(int(col.list.len()[0]))
    x = np.ascontiguousarray(col.to_numpy(), dtype=np.float32)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(nrm > 0, nrm, 1.0)


def thumbnails(current: pl.DataFrame) -> np.ndarray | None:
    """(n, 192) uint8 stage-1 thumbnails of the ``thumb_rgb`` column (zero rows where null), or None
    without the column (then only the strict threshold applies)."""
    if "thumb_rgb" not in current.columns:
        return None
    from curation.imaging.features import thumb_array

    return thumb_array(current["thumb_rgb"].cast(pl.Binary))[0]


def cluster_within_shard(
    keys: np.ndarray, x: np.ndarray, rest: np.ndarray, cl_local: np.ndarray, sim: np.ndarray, cfg: SemanticDedupConfig,
    thumbs: np.ndarray | None = None,
) -> None:
    """Leader clustering of the rows `rest` (input order is the priority) over LSH pairs that link
    (cosine >= threshold, or >= wide_threshold and verified on `thumbs`, `verify_links`): sets
    cl_local (the leader's row) and sim (cosine with the leader) of members in place."""
    if len(rest) <= 1:
        return
    i, j, s = lsh_pairs(keys[rest], x[rest], replace(cfg, threshold=cfg.search_threshold))
    if cfg.search_threshold < cfg.threshold:
        ok = verify_links(s, None if thumbs is None else thumbs[rest[i]], None if thumbs is None else thumbs[rest[j]],
                          cfg.threshold, cfg.wide_threshold, cfg.max_align_diff)
        i, j, s = i[ok], j[ok], s[ok]
    lead = leader_clusters(len(rest), i, j, np.arange(len(rest)))
    cl_local[rest] = rest[lead]
    if len(i):
        member = lead[j] == i  # the leader outranks its members, so the pair is (leader, member)
        sim[rest[j[member]]] = s[member]


def build_index(
    rows: pl.DataFrame, keys: np.ndarray, x: np.ndarray, is_rep: np.ndarray, cfg: SemanticDedupConfig,
    dim: int, shard_seq: int, thumbs: np.ndarray | None = None,
) -> pl.DataFrame:
    """This shard's index rows (`index_schema`): the output rows plus shard_seq, with keys, the
    encoded vector (`encode`) and the thumbnail (null when unknown) for representatives only."""
    schema = index_schema(cfg, dim)
    if len(x):
        vec = encode(x, cfg)
    else:
        width = cfg.proj_dim if cfg.index_vectors == "proj" else dim
        vec = np.empty((0, width), np.float16 if cfg.index_vectors == "float16" else np.int8)
    rep_mask = pl.Series(is_rep, dtype=pl.Boolean)
    thumb = (pl.Series("thumb", [bytes(t) if t.any() else None for t in thumbs], dtype=pl.Binary)
             if thumbs is not None else pl.Series("thumb", [None] * len(rows), dtype=pl.Binary))
    return rows.with_columns(
        pl.when(rep_mask).then(thumb).otherwise(None).alias("thumb"),
        pl.lit(shard_seq, dtype=pl.Int32).alias("shard_seq"),
        pl.when(rep_mask).then(pl.Series("keys", keys, dtype=schema["keys"])).otherwise(None).alias("keys"),
        pl.when(rep_mask).then(pl.Series("vec", vec, dtype=schema["vec"])).otherwise(None).alias("vec"),
    ).select(list(schema)).cast(schema)  # type: ignore[arg-type]


def applied_config(current: pl.DataFrame, cfg: SemanticDedupConfig) -> SemanticDedupConfig:
    """The rule `semantic_dedup_shard` applies to `current`: when its ``model`` column holds one
    model_id, that model's calibrated rule (`cfg.for_model`), else `cfg` unchanged."""
    if "model" in current.columns and current.height:
        models = current["model"].drop_nulls().unique().to_list()
        if len(models) == 1:
            return cfg.for_model(models[0])
    return cfg


def semantic_dedup_shard(
    current: pl.DataFrame,
    earlier_index: pl.DataFrame | Iterable[pl.DataFrame] | None,
    cfg: SemanticDedupConfig = _DEFAULT_CONFIG,
    *,
    shard_seq: int | None = None,
    center: np.ndarray | None = None,
    earlier_ivf: tuple | None = None,
    ivf_stats: dict | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Semantic dedup of one shard's embeddings against itself and the earlier shards' index.

    current: columns image_id, shard, embedding (List(Float32) or Array; no nulls; L2-normalised,
        re-normalised here anyway), optionally thumb_rgb (stage 1's thumbnail: the two-stage rule,
        `cfg.wide_threshold`). Row order is the representative priority (first row highest).
    earlier_index: the earlier shards' index rows (`index_schema`): one frame, an iterable of frames
        (one per earlier shard; memory bounded by one), or None.
    shard_seq: the shard's registration number, recorded in its index rows (earlier shards win).
        Default: one more than the largest in earlier_index when that is a DataFrame, else 0.
    center: the corpus's hashing centre (`fit_center`, fitted once on the first shard and the same
        for every shard: the index's keys depend on it). None hashes around the origin (correct,
        but many more candidates for non-negative embeddings).
    earlier_ivf: (quantizer, parts, IvfConfig) of the partitioned index of the earlier shards
        (`curation.semantic.ivf`, `IvfStore.earlier`): matched with `match_earlier_ivf` instead of
        streaming `earlier_index` (then ignored); ivf_stats (a dict) receives the query's `IvfStats`.
    Returns (rows: SEMANTIC_SCHEMA, one per `current` row in the same order; index rows of this
    shard: `index_schema`, keys and vec set for representatives only). Deterministic.
    cfg.enabled False: every row is its own representative (similarity 1.0), no comparisons.
    A ``model`` column (one model_id) selects that model's calibrated threshold (`cfg.for_model`).
    """
    cfg = applied_config(current, cfg)
    n = current.height
    x = unit_embeddings(current["embedding"])
    thumbs = thumbnails(current)
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
        if earlier_ivf is not None:
            quant, parts, icfg = earlier_ivf
            m = match_earlier_ivf(x, keys, quant, parts, cfg, icfg, center=center, thumbs=thumbs, stats=ivf_stats)
        else:
            m = match_earlier(x, keys, earlier_index, cfg, center=center, thumbs=thumbs)
        joined = m["q"].to_numpy().astype(np.int64)
        sim[joined] = m["s"].to_numpy()
        if len(joined):
            cluster_id = cluster_id.scatter(joined, m["cluster_id"])
            rep_shard = rep_shard.scatter(joined, m["rep_shard"])
        is_joined = np.zeros(n, dtype=bool)
        is_joined[joined] = True
        rest = np.flatnonzero(~is_joined)
        cluster_within_shard(keys, x, rest, cl_local, sim, cfg, thumbs)
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
    return rows, build_index(rows, keys, x, is_rep, cfg, dim, shard_seq, thumbs)
