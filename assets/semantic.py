"""Optional stage, `semantic_duplicates`: embedding-based near duplicates (crops, re-framings) within
the shard and against every earlier shard (curation/semantic.py). It only records clusters; it does
not change `curated_images`."""

import time
from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from assets._common import BACKFILL_POLICY, OWNERS, check_per_shard, per_shard, read_stage
from assets.dedup import WAIT_FOR_EARLIER
from assets.embeddings import image_embeddings
from curation import storage
from orchestration.k8s import cpu_step_tags
from partitions.shards import SHARDS, ShardRegistry
from resources.corpus import CorpusResource

_INDEX_COLS = ["shard_seq", "cluster_id", "rep_shard", "is_representative", "keys", "vec"]


class SemanticDedupRunConfig(dg.Config):
    """Run config of `semantic_duplicates` (launchpad / job YAML under ops.semantic_duplicates.config).
    Defaults equal `curation.semantic.SemanticDedupConfig`'s (see its docstring for the measurements).
    The search settings (band_bits, n_bands, index_vectors, proj_dim, seed) are part of the index
    format: change them for a whole corpus only (re-materialise every shard), never between shards."""

    enabled: bool = Field(default=True, description="False: every image is its own cluster (no comparisons).")
    threshold: float = Field(default=0.97, description="Cosine similarity at or above which an image joins a representative.")
    band_bits: int = Field(default=16, description="SimHash bits per LSH band.")
    n_bands: int = Field(default=48, description="Number of LSH bands.")
    index_vectors: str = Field(default="int8", description="Index vectors: 'int8' (dim bytes), 'float16' (exact), 'proj'.")
    proj_dim: int = Field(default=256, description="Dimensions for index_vectors='proj'.")
    seed: int = Field(default=20240611, description="Seed of the hyperplanes and the projection (fixed per corpus).")

    def to_library(self):
        from curation.semantic import SemanticDedupConfig

        return SemanticDedupConfig(enabled=self.enabled, threshold=self.threshold, band_bits=self.band_bits,
                                   n_bands=self.n_bands, index_vectors=self.index_vectors, proj_dim=self.proj_dim,
                                   seed=self.seed)


def earlier_semantic_indexes(corpus: CorpusResource, registry: ShardRegistry, shard: str, context=None) -> list[str]:
    """The earlier shards' keys in registration order; fails (retryably) when any has no index yet."""
    earlier = registry.earlier_keys(shard)
    missing = [k for k in earlier if not storage.exists(corpus.stage_uri("semantic_index", k))]
    if missing:
        raise dg.Failure(
            f"semantic dedup of {shard} compares against every earlier shard, but {len(missing)} earlier shard(s) "
            f"have no semantic index yet: {missing[:10]}{'...' if len(missing) > 10 else ''}. Materialise "
            "semantic_duplicates for them first (this step retries automatically in backfills)."
        )
    return list(earlier)


def hashing_center(context, corpus: CorpusResource, registry: ShardRegistry, shard: str, emb: pl.DataFrame):
    """The corpus's LSH centre: fitted on the first registered shard's embeddings when that shard is
    first materialised, persisted at semantic_center/<first shard>.parquet and reused by every shard
    (re-materialising the first shard reuses it too, so earlier indexes stay valid)."""
    import numpy as np

    from curation.semantic import fit_center

    first = registry.keys()[0] if registry.keys() else shard
    uri = corpus.stage_uri("semantic_center", first)
    if storage.exists(uri):
        return read_stage(context, corpus, "semantic_center", first, asset="semantic_duplicates")["center"].to_numpy()[0]
    if shard != first:
        raise dg.Failure(f"semantic dedup of {shard} needs the hashing centre fitted on the first shard {first}; "
                         "materialise semantic_duplicates for it first (this step retries automatically).")
    x = emb["embedding"].list.to_array(int(emb["embedding"].list.len()[0])).to_numpy() if emb.height else None
    if x is None:
        raise dg.Failure(f"the first shard {first} has no embeddings to fit the hashing centre on", allow_retries=False)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    center = fit_center(x)
    storage.write_parquet(pl.DataFrame({"center": pl.Series([center], dtype=pl.Array(pl.Float32, len(center)))}), uri)
    return center


def _iter_indexes(context, corpus: CorpusResource, keys: list[str]) -> Iterator[pl.DataFrame]:
    """One earlier shard's index at a time (representative rows only): memory bounded by one shard."""
    for key in keys:
        df = read_stage(context, corpus, "semantic_index", key, columns=_INDEX_COLS, asset="semantic_duplicates")
        yield df.filter(pl.col("is_representative"))


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[image_embeddings],
    group_name="dedup",
    kinds={"python", "polars", "parquet"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="2", memory="4Gi"),
    retry_policy=WAIT_FOR_EARLIER,
    description=(
        "Semantic (embedding cosine) near-duplicate clusters of the embedded images, within the shard and "
        "against every earlier shard: catches crops and re-framings that perceptual hashes miss. Writes "
        "semantic_duplicates/<shard>.parquet and the compact semantic_index/<shard>.parquet."
    ),
)
def semantic_duplicates(context: dg.AssetExecutionContext, config: SemanticDedupRunConfig,
                        corpus: CorpusResource) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _semantic_duplicates_one(context, config, corpus, shard))


def _semantic_duplicates_one(context: dg.AssetExecutionContext, config: SemanticDedupRunConfig,
                             corpus: CorpusResource, shard: str) -> dict:
    from curation.semantic import semantic_dedup_shard
    from partitions.shards import shard_seq

    t0 = time.monotonic()
    cfg = config.to_library()
    registry = corpus.registry()
    emb = read_stage(context, corpus, "image_embeddings", shard, columns=["image_id", "shard", "embedding"])
    skipped = int(emb["embedding"].null_count())
    emb = emb.filter(pl.col("embedding").is_not_null())
    earlier_keys = earlier_semantic_indexes(corpus, registry, shard, context)
    center = hashing_center(context, corpus, registry, shard, emb)
    rows, index = semantic_dedup_shard(emb, _iter_indexes(context, corpus, earlier_keys), cfg,
                                       shard_seq=shard_seq(shard), center=center)
    uri = corpus.stage_uri("semantic_duplicates", shard)
    storage.write_parquet(rows, uri)
    storage.write_parquet(index, corpus.stage_uri("semantic_index", shard))
    sizes = rows.group_by("cluster_id").len()
    cross = int((rows["rep_shard"] != rows["shard"]).fill_null(False).sum())
    return {
        "dagster/row_count": len(rows),
        "path": dg.MetadataValue.path(uri),
        "clusters": int(sizes.height),
        "duplicates": int((~rows["is_representative"]).sum()),
        "cross_shard_duplicates": cross,
        "largest_cluster": int(sizes["len"].max() or 0),
        "threshold": float(cfg.threshold),
        "enabled": cfg.enabled,
        "skipped_without_embedding": skipped,
        "earlier_shards_compared": len(earlier_keys),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }


@dg.asset_check(asset=semantic_duplicates, blocking=False, partitions_def=SHARDS,
                description="Every semantic cluster's representative exists (in this shard or an earlier one), "
                            "one representative per cluster, unique ids.")
def semantic_representatives_exist(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _semantic_representatives_exist_one(corpus, shard))


def _semantic_representatives_exist_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    df = storage.read_parquet(corpus.stage_uri("semantic_duplicates", shard))
    reps_here = set(df.filter(pl.col("is_representative"))["image_id"])
    missing = len(set(df.filter(pl.col("rep_shard") == shard)["cluster_id"]) - reps_here)
    for (rep_shard,), group in df.filter(pl.col("rep_shard") != shard).group_by("rep_shard"):
        other = storage.read_parquet(corpus.stage_uri("semantic_duplicates", rep_shard),
                                     columns=["image_id", "is_representative"]).filter(pl.col("is_representative"))
        missing += len(set(group["cluster_id"]) - set(other["image_id"]))
    dup_ids = int(len(df) - df["image_id"].n_unique())
    one_rep = int(df.filter(pl.col("is_representative")).group_by("cluster_id").len()["len"].max() or 0)
    return dg.AssetCheckResult(
        passed=missing == 0 and dup_ids == 0 and one_rep <= 1,
        metadata={"clusters_without_representative": missing, "duplicate_ids": dup_ids,
                  "max_representatives_per_cluster": one_rep},
    )
