"""Data-quality gates on every stage. Blocking checks stop downstream stages of the same run when a
bad output would poison them; their results appear on each asset's Checks tab in the UI."""

import warnings

import dagster as dg
import numpy as np
import polars as pl

from assets._common import check_per_shard
from curation import storage
from curation.scalars import max_int
from curation.stages import (
    CURATED_IMAGES,
    DEDUP_CLUSTERS,
    IMAGE_CLASSIFICATIONS,
    IMAGE_EMBEDDINGS,
    RAW_INVENTORY,
)
from partitions.shards import SHARDS
from resources.corpus import CorpusResource

# Partitioned asset checks (one result per shard) are a preview feature of dagster 1.13; the
# behaviour used here (check runs with its asset's partition) is covered by our tests.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)


def _read(corpus: CorpusResource, stage: str, shard: str, columns: list[str] | None = None) -> pl.DataFrame:
    return storage.read_parquet(corpus.stage_uri(stage, shard), columns=columns)


def _dupes(df: pl.DataFrame) -> int:
    return int(len(df) - df["image_id"].n_unique())


@dg.asset_check(asset=RAW_INVENTORY, blocking=True, partitions_def=SHARDS,
                description="One inventory row per manifest entry (never fewer), and no duplicate ids.")
def inventory_matches_manifest(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _inventory_matches_manifest_one(corpus, shard))


def _inventory_matches_manifest_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    manifest = corpus.registry().manifest(shard)
    inv = _read(corpus, RAW_INVENTORY, shard, ["image_id", "error_code"])
    missing = set(manifest["image_id"]) - set(inv["image_id"])
    return dg.AssetCheckResult(
        passed=len(inv) == len(manifest) and not missing and _dupes(inv) == 0,
        metadata={"manifest_rows": len(manifest), "inventory_rows": len(inv), "missing": len(missing),
                  "duplicate_ids": _dupes(inv)},
    )


@dg.asset_check(asset=DEDUP_CLUSTERS, blocking=True, partitions_def=SHARDS,
                description="Every cluster's representative exists (in this shard or an earlier one) and ids are unique.")
def dedup_representatives_exist(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _dedup_representatives_exist_one(corpus, shard))


def _dedup_representatives_exist_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    df = _read(corpus, DEDUP_CLUSTERS, shard)
    local = df.filter(pl.col("rep_shard") == shard)
    reps_here = set(df.filter(pl.col("is_representative"))["image_id"])
    missing_local = set(local["cluster_id"]) - reps_here
    earlier = df.filter(pl.col("rep_shard") != shard)
    missing_earlier = 0
    for rep_shard, group in earlier.group_by("rep_shard"):
        rep_shard = rep_shard[0]
        uri = corpus.stage_uri(DEDUP_CLUSTERS, rep_shard)
        other = storage.read_parquet(uri, columns=["image_id", "is_representative"]).filter(pl.col("is_representative"))
        missing_earlier += len(set(group["cluster_id"]) - set(other["image_id"]))
    one_rep = max_int(df.filter(pl.col("is_representative")).group_by("cluster_id").len()["len"])
    return dg.AssetCheckResult(
        passed=not missing_local and missing_earlier == 0 and _dupes(df) == 0 and one_rep <= 1,
        metadata={"clusters_without_representative": len(missing_local) + missing_earlier,
                  "duplicate_ids": _dupes(df), "max_representatives_per_cluster": one_rep},
    )


@dg.asset_check(asset=CURATED_IMAGES, blocking=True, partitions_def=SHARDS,
                description="Every inventory row has a decision; every reject has at least one reason; "
                            "no duplicate ids.")
def curated_decisions_complete(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _curated_decisions_complete_one(corpus, shard))


def _curated_decisions_complete_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    cur = _read(corpus, CURATED_IMAGES, shard)
    inv = _read(corpus, RAW_INVENTORY, shard, ["image_id"])
    no_reason = int(cur.filter(~pl.col("keep") & (pl.col("reasons").list.len() == 0)).height)
    return dg.AssetCheckResult(
        passed=len(cur) == len(inv) and no_reason == 0 and _dupes(cur) == 0,
        metadata={"rows": len(cur), "inventory_rows": len(inv), "rejects_without_reason": no_reason},
    )


@dg.asset_check(asset=IMAGE_EMBEDDINGS, blocking=True, partitions_def=SHARDS,
                description="Finite, unit-norm vectors of one dimension, at most one per kept image "
                            "(kept images that failed to decode here carry an error instead).")
def embeddings_valid(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _embeddings_valid_one(corpus, shard))


def _embeddings_valid_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    emb = _read(corpus, IMAGE_EMBEDDINGS, shard).filter(pl.col("embedding").is_not_null())
    kept = _read(corpus, CURATED_IMAGES, shard, ["image_id", "keep"]).filter(pl.col("keep"))
    if len(emb) == 0:
        return dg.AssetCheckResult(passed=len(kept) == 0, metadata={"rows": 0, "kept": len(kept)})
    mat = np.asarray(emb["embedding"].to_list(), dtype=np.float32)
    norms = np.linalg.norm(mat, axis=1)
    dims = {len(v) for v in emb["embedding"].to_list()[:1000]}
    finite = bool(np.isfinite(mat).all())
    unit = bool(np.all(np.abs(norms - 1.0) < 1e-2))
    return dg.AssetCheckResult(
        passed=finite and unit and len(dims) == 1 and len(emb) <= len(kept) and _dupes(emb) == 0,
        metadata={"rows": len(emb), "kept": len(kept), "dims": str(sorted(dims)), "finite": finite,
                  "max_norm_error": float(np.max(np.abs(norms - 1.0)))},
    )


@dg.asset_check(asset=IMAGE_CLASSIFICATIONS, blocking=False, partitions_def=SHARDS,
                description="Probabilities lie in [0, 1]; top-k probabilities sum to at most 1 (to 1 over all labels).")
def classification_probabilities(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _classification_probabilities_one(corpus, shard))


def _classification_probabilities_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    df = _read(corpus, IMAGE_CLASSIFICATIONS, shard)
    bad = 0
    if len(df) and df["zs_topk_probs"].null_count() < len(df):
        sums = df.select(pl.col("zs_topk_probs").list.sum()).to_series().drop_nulls()
        bad += int(((sums > 1.0 + 1e-3) | (sums < 0)).sum())
    for col in ("zs_prob", "fs_prob"):
        s = df[col].drop_nulls()
        bad += int(((s < 0) | (s > 1 + 1e-6)).sum())
    return dg.AssetCheckResult(passed=bad == 0, metadata={"rows": len(df), "violations": bad})


ALL_CHECKS = [
    inventory_matches_manifest,
    dedup_representatives_exist,
    curated_decisions_complete,
    embeddings_valid,
    classification_probabilities,
]
