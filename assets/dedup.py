"""Stage 2, `dedup_clusters`: exact and near duplicates within the shard and against every earlier shard."""


import time
import dagster as dg
import polars as pl

from assets._common import BACKFILL_POLICY, OWNERS, counts_md, make_config, per_shard, read_stage
from assets.inventory import raw_inventory
from curation import storage
from orchestration.k8s import cpu_step_tags
from partitions.shards import SHARDS, ShardRegistry
from resources.corpus import CorpusResource, StageSettings

# Dedup of shard N reads the dedup index of shards 1..N-1. In a parallel backfill an earlier shard
# may not be done yet: the step then fails with a clear message and retries with backoff, so the
# result never depends on the order in which shards happened to run.
WAIT_FOR_EARLIER = dg.RetryPolicy(max_retries=8, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def load_earlier_index(corpus: CorpusResource, registry: ShardRegistry, shard: str, context=None) -> pl.DataFrame | None:
    earlier = registry.earlier_keys(shard)
    frames, missing = [], []
    for key in earlier:
        uri = corpus.stage_uri("dedup_index", key)
        if not storage.exists(uri):
            missing.append(key)
            continue
        frames.append(read_stage(context, corpus, "dedup_index", key, asset="dedup_clusters") if context is not None
                      else storage.read_parquet(uri))
    if missing:
        raise dg.Failure(
            f"dedup of {shard} compares against every earlier shard, but {len(missing)} earlier shard(s) "
            f"have no dedup index yet: {missing[:10]}{'...' if len(missing) > 10 else ''}. Materialise "
            "dedup_clusters for them first (this step retries automatically in backfills)."
        )
    return pl.concat(frames, how="vertical_relaxed") if frames else None


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[raw_inventory],
    group_name="dedup",
    kinds={"python", "polars", "parquet"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="2", memory="8Gi"),
    retry_policy=WAIT_FOR_EARLIER,
    description=(
        "Exact (sha256) and near (perceptual-hash) duplicate clusters, within the shard and against every "
        "earlier shard, with one deterministic representative per cluster (see README 'Dedup')."
    ),
)
def dedup_clusters(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _dedup_clusters_one(context, corpus, settings, shard))


def _dedup_clusters_one(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    from curation.dedup import DedupConfig, dedup_shard

    t0 = time.monotonic()
    registry = corpus.registry()
    inventory = read_stage(context, corpus, "raw_inventory", shard)
    earlier = load_earlier_index(corpus, registry, shard, context)
    cfg = make_config(DedupConfig, settings.dedup)
    clusters, index = dedup_shard(inventory, earlier, cfg)
    if len(clusters) != len(inventory):
        raise dg.Failure(f"dedup returned {len(clusters)} rows for {len(inventory)} inventory rows")
    uri = corpus.stage_uri("dedup_clusters", shard)
    storage.write_parquet(clusters, uri)
    storage.write_parquet(index, corpus.stage_uri("dedup_index", shard))
    kinds = dict(clusters.group_by("dup_kind").len().iter_rows())
    sizes = clusters.group_by("cluster_id").len()
    cross = int((clusters["rep_shard"] != clusters["shard"]).fill_null(False).sum())
    return {
        "dagster/row_count": len(clusters),
        "path": dg.MetadataValue.path(uri),
        "clusters": int(sizes.height),
        "largest_cluster": int(sizes["len"].max() or 0),
        "duplicates": int((~clusters["is_representative"]).sum()),
        "cross_shard_duplicates": cross,
        "earlier_shards_compared": len(registry.earlier_keys(shard)),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "by_kind": counts_md({str(k): int(v) for k, v in kinds.items()}, ("kind", "images")),
    }
