"""Optional stage, `semantic_duplicates`: embedding-based near duplicates (crops, re-framings,
re-renders) within the shard and against every earlier shard (curation/semantic/). It reads the
embeddings of stage 4 (the kept images) and stage 1's thumbnails (`thumb_rgb`, for the two-stage
rule's crop-aware verification). It only records clusters; it does not change `curated_images`."""

import time
from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from assets._common import check_per_shard, per_shard_outputs, read_stage
from assets.factory import stage_asset
from curation import storage
from curation.index_store import IndexStore, MissingEarlierIndexError
from curation.scalars import max_int
from curation.semantic.ivf_store import INDEX_METHODS, IndexSettingsError, index_settings
from curation.stages import (
    IMAGE_EMBEDDINGS,
    RAW_INVENTORY,
    SEMANTIC_CENTER,
    SEMANTIC_DUPLICATES,
    SEMANTIC_INDEX,
    stage,
)
from partitions.shards import SHARDS, ShardRegistry
from resources.corpus import CorpusResource

STAGE = stage(SEMANTIC_DUPLICATES)

_INDEX_COLS = ["shard_seq", "cluster_id", "rep_shard", "is_representative", "keys", "vec", "thumb"]


class SemanticDedupRunConfig(dg.Config):
    """Run config of `semantic_duplicates` (launchpad / job YAML under ops.semantic_duplicates.config).
    Defaults equal `curation.semantic.SemanticDedupConfig`'s (see its docstring for the measurements).
    The search settings (band_bits, n_bands, index_vectors, proj_dim, seed) are part of the index
    format: change them for a whole corpus only (re-materialise every shard), never between shards."""

    enabled: bool = Field(default=True, description="False: every image is its own cluster (no comparisons).")
    threshold: float = Field(default=0.97, description="Cosine similarity at or above which an image joins a representative.")
    calibrated: bool = Field(default=True, description=(
        "Use the embedding model's calibrated rule (threshold, wide_threshold, max_align_diff) when one is recorded."))
    wide_threshold: float | None = Field(default=None, description=(
        "Two-stage rule: cosine from which a pair joins when its crop-aware thumbnail difference is <= "
        "max_align_diff (None: threshold alone)."))
    max_align_diff: float = Field(default=6.0, description=(
        "Largest crop-aware 8x8 thumbnail difference (levels) of a verified pair."))
    band_bits: int = Field(default=16, description="SimHash bits per LSH band.")
    n_bands: int = Field(default=48, description="Number of LSH bands.")
    index_vectors: str = Field(default="int8", description="Index vectors: 'int8' (dim bytes), 'float16' (exact), 'proj'.")
    proj_dim: int = Field(default=256, description="Dimensions for index_vectors='proj'.")
    seed: int = Field(default=20240611, description="Seed of the hyperplanes and the projection (fixed per corpus).")
    index: str = Field(default="stream", description=(
        "Cross-shard search: 'stream' (every earlier representative, linear in the corpus) or 'ivf' (partitioned "
        "index, semantic_index_ivf/: reads only the lists nearest each image; not the default: on the synthetic "
        "bench its recall fell to 0.71 at 5M earlier rows, bench/results/semantic.json scale.ivf_index)."))
    ivf_list_rows: int = Field(default=256, description="'ivf': target rows per list (part of the index format).")
    ivf_nprobe: int = Field(default=16, description="'ivf': lists probed per image (more: higher recall, slower).")

    def to_library(self):
        from curation.semantic import SemanticDedupConfig

        return SemanticDedupConfig(enabled=self.enabled, threshold=self.threshold, calibrated=self.calibrated,
                                   wide_threshold=self.wide_threshold, max_align_diff=self.max_align_diff,
                                   band_bits=self.band_bits,
                                   n_bands=self.n_bands, index_vectors=self.index_vectors, proj_dim=self.proj_dim,
                                   seed=self.seed)

    def to_ivf(self):
        """The partitioned index's settings (`curation.semantic.ivf.IvfConfig`; ValueError when invalid)."""
        from curation.semantic.ivf import IvfConfig

        return IvfConfig(list_rows=self.ivf_list_rows, nprobe=self.ivf_nprobe)


def semantic_index_store(corpus: CorpusResource, context=None) -> IndexStore:
    """The semantic pass's cross-shard index (`semantic_index/<shard>.parquet` and its block files)."""
    read = ((lambda key: read_stage(context, corpus, SEMANTIC_INDEX, key, asset=STAGE.name))
            if context is not None else None)
    return IndexStore(SEMANTIC_INDEX, lambda key: corpus.stage_uri(SEMANTIC_INDEX, key),
                      corpus.stage_dir(f"{SEMANTIC_INDEX}_blocks"), read)


def semantic_ivf_store(corpus: CorpusResource, cfg, icfg):
    """The semantic pass's partitioned index (`semantic_index_ivf/`, curation/semantic/ivf_store.py),
    rebuilt from the shards' `semantic_index` files where parts are missing."""
    from curation.semantic.ivf_store import IvfStore

    return IvfStore(corpus.stage_dir(f"{SEMANTIC_INDEX}_ivf"),
                    lambda key: storage.read_parquet(corpus.stage_uri(SEMANTIC_INDEX, key)), cfg, icfg)


def hashing_center(context, corpus: CorpusResource, registry: ShardRegistry, shard: str, emb: pl.DataFrame):
    """(centre, written now) for the corpus's LSH centre: fitted on the first registered shard's
    embeddings when that shard is first materialised, persisted at semantic_center/<first shard>.parquet
    and reused by every shard (re-materialising the first shard reuses it too, so earlier indexes
    stay valid)."""
    import numpy as np

    from curation.semantic import fit_center

    first = registry.keys()[0] if registry.keys() else shard
    uri = corpus.stage_uri(SEMANTIC_CENTER, first)
    if storage.exists(uri):
        return read_stage(context, corpus, SEMANTIC_CENTER, first, asset=STAGE.name)["center"].to_numpy()[0], False
    if shard != first:
        raise dg.Failure(f"semantic dedup of {shard} needs the hashing centre fitted on the first shard {first}; "
                         f"materialise {STAGE.name} for it first (this step retries automatically).")
    x = emb["embedding"].list.to_array(int(emb["embedding"].list.len()[0])).to_numpy() if emb.height else None
    if x is None:
        raise dg.Failure(f"the first shard {first} has no embeddings to fit the hashing centre on", allow_retries=False)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    center = fit_center(x)
    storage.write_parquet(pl.DataFrame({"center": pl.Series([center], dtype=pl.Array(pl.Float32, len(center)))}), uri)
    return center, True


def _iter_representatives(store: IndexStore, keys: list[str], shard: str) -> Iterator[pl.DataFrame]:
    """The earlier shards' index rows, one block file at a time, representatives only (memory bounded
    by one block; the result does not depend on how rows are grouped, see curation.semantic.match_earlier)."""
    for df in store.iter_earlier(keys, shard):  # indexes written before thumbnails have no "thumb"
        yield df.select([c for c in _INDEX_COLS if c in df.columns]).filter(pl.col("is_representative"))


def with_thumbnails(context, corpus: CorpusResource, shard: str, emb: pl.DataFrame) -> pl.DataFrame:
    """`emb` with stage 1's ``thumb_rgb`` (INVENTORY_SCHEMA) joined by image_id (null where the
    inventory has none: those pairs take the strict threshold alone)."""
    inv = read_stage(context, corpus, RAW_INVENTORY, shard, columns=["image_id", "thumb_rgb"])
    return emb.join(inv, on="image_id", how="left", maintain_order="left")


@stage_asset(STAGE.name)
def semantic_duplicates(context: dg.AssetExecutionContext, config: SemanticDedupRunConfig, corpus: CorpusResource):
    yield from per_shard_outputs(context, lambda shard: _semantic_duplicates_one(context, config, corpus, shard),
                             STAGE.outputs)


def _semantic_duplicates_one(context: dg.AssetExecutionContext, config: SemanticDedupRunConfig,
                             corpus: CorpusResource, shard: str) -> dict[str, dict]:
    from curation.semantic import semantic_dedup_shard
    from curation.semantic.shard import applied_config
    from partitions.shards import shard_seq

    t0 = time.monotonic()
    if config.index not in INDEX_METHODS:
        raise dg.Failure(f"semantic_duplicates: index must be one of {INDEX_METHODS}, got {config.index!r}",
                         allow_retries=False)
    try:
        cfg, icfg = config.to_library(), config.to_ivf()
    except ValueError as exc:
        raise dg.Failure(f"semantic_duplicates: {exc}", allow_retries=False) from exc
    registry = corpus.registry()
    keys = registry.keys()
    emb = read_stage(context, corpus, IMAGE_EMBEDDINGS, shard, columns=["image_id", "shard", "model", "embedding"])
    skipped = int(emb["embedding"].null_count())
    emb = with_thumbnails(context, corpus, shard, emb.filter(pl.col("embedding").is_not_null()))
    store = semantic_index_store(corpus, context)
    ivf = semantic_ivf_store(corpus, cfg, icfg)
    if emb.height:
        try:
            ivf.check_settings(index_settings(cfg, icfg if config.index == "ivf" else None,
                                              int(emb["embedding"].list.len()[0])))
        except IndexSettingsError as exc:
            raise dg.Failure(f"semantic dedup of {shard}: {exc}", allow_retries=False) from exc
    center, center_written = hashing_center(context, corpus, registry, shard, emb)
    ivf_stats: dict = {}
    earlier = None
    try:
        if config.index == "ivf":
            earlier = ivf.earlier(keys, shard)
            rows, index = semantic_dedup_shard(emb, None, cfg, shard_seq=shard_seq(shard), center=center,
                                               earlier_ivf=None if earlier is None else (earlier[0], earlier[1], icfg),
                                               ivf_stats=ivf_stats)
        else:
            rows, index = semantic_dedup_shard(emb, _iter_representatives(store, keys, shard), cfg,
                                               shard_seq=shard_seq(shard), center=center)
    except MissingEarlierIndexError as exc:
        raise dg.Failure(f"semantic dedup of {exc}. Materialise {STAGE.name} for them first "
                         "(this step retries automatically in backfills).") from exc
    uri, index_uri = corpus.stage_uri(STAGE.name, shard), corpus.stage_uri(SEMANTIC_INDEX, shard)
    storage.write_parquet(rows, uri)
    storage.write_parquet(index, index_uri)
    # the stream path's block files are written only when it is used (stale ones are always dropped);
    # the partitioned index drops its parts holding an older version of this shard and files this one
    blocks = store.write_blocks(keys, shard, write=config.index == "stream")
    if config.index == "ivf":
        ivf_written = ivf.add_shard(keys, shard, index, quant=None if earlier is None else earlier[0])
    else:
        ivf.invalidate(keys, shard)
        ivf_written = []
    used = applied_config(emb, cfg)  # the rule semantic_dedup_shard applied
    sizes = rows.group_by("cluster_id").len()
    cross = int((rows["rep_shard"] != rows["shard"]).fill_null(False).sum())
    out = {
        STAGE.name: {
            "dagster/row_count": len(rows),
            "path": dg.MetadataValue.path(uri),
            "clusters": int(sizes.height),
            "duplicates": int((~rows["is_representative"]).sum()),
            "cross_shard_duplicates": cross,
            "largest_cluster": max_int(sizes["len"]),
            "threshold": float(used.threshold),
            "search_threshold": float(used.search_threshold),  # = threshold when the two-stage rule is off
            "max_align_diff": float(used.max_align_diff),
            "enabled": cfg.enabled,
            "skipped_without_embedding": skipped,
            "earlier_shards_compared": len(registry.earlier_keys(shard)),
            "index": config.index,
            **({"ivf_generation_end": earlier[2], "ivf_lists": int(earlier[0].n_lists), "ivf_parts_read": len(earlier[1]),
                "ivf_earlier_rows": int(ivf_stats.get("earlier_rows", 0)),
                "ivf_candidates_per_image": round(ivf_stats.get("candidates", 0) / max(1, len(rows)), 1),
                "ivf_parts_written": len(ivf_written)} if earlier is not None else {}),
            "elapsed_s": round(time.monotonic() - t0, 3),
        },
        SEMANTIC_INDEX: {
            "dagster/row_count": len(index),
            "path": dg.MetadataValue.path(index_uri),
            "blocks_written": ", ".join(b.rsplit("/", 1)[-1] for b in blocks) or "none",
        },
    }
    if center_written:
        out[SEMANTIC_CENTER] = {"path": dg.MetadataValue.path(corpus.stage_uri(SEMANTIC_CENTER, shard)),
                                "dim": len(center), "fitted_on": shard}
    return out


@dg.asset_check(asset=STAGE.name, blocking=False, partitions_def=SHARDS,
                description="Every semantic cluster's representative exists (in this shard or an earlier one), "
                            "one representative per cluster, unique ids.")
def semantic_representatives_exist(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _semantic_representatives_exist_one(corpus, shard))


def _semantic_representatives_exist_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    df = storage.read_parquet(corpus.stage_uri(STAGE.name, shard))
    reps_here = set(df.filter(pl.col("is_representative"))["image_id"])
    missing = len(set(df.filter(pl.col("rep_shard") == shard)["cluster_id"]) - reps_here)
    for (rep_shard,), group in df.filter(pl.col("rep_shard") != shard).group_by("rep_shard"):
        other = storage.read_parquet(corpus.stage_uri(STAGE.name, rep_shard),
                                     columns=["image_id", "is_representative"]).filter(pl.col("is_representative"))
        missing += len(set(group["cluster_id"]) - set(other["image_id"]))
    dup_ids = int(len(df) - df["image_id"].n_unique())
    one_rep = max_int(df.filter(pl.col("is_representative")).group_by("cluster_id").len()["len"])
    return dg.AssetCheckResult(
        passed=missing == 0 and dup_ids == 0 and one_rep <= 1,
        metadata={"clusters_without_representative": missing, "duplicate_ids": dup_ids,
                  "max_representatives_per_cluster": one_rep},
    )
