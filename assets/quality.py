"""Stage 3, `curated_images`: the quality-filtered set, with every reject's reasons."""


import time
import dagster as dg

from assets._common import BACKFILL_POLICY, OWNERS, RETRY, counts_md, per_shard, read_stage
from assets.dedup import dedup_clusters
from assets.inventory import raw_inventory
from curation import storage
from orchestration.k8s import cpu_step_tags
from curation.quality import QualityConfig, evaluate, reject_counts
from partitions.shards import SHARDS
from resources.corpus import CorpusResource, StageSettings


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[raw_inventory, dedup_clusters],
    group_name="curation",
    kinds={"python", "polars", "parquet"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="1", memory="4Gi", cpu_limit="2", memory_limit="8Gi"),
    retry_policy=RETRY,
    description=(
        "Cluster representatives that pass the configurable checks (size, aspect ratio, brightness, "
        "contrast, entropy, sharpness); every other image with all of its reasons."
    ),
)
def curated_images(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _curated_images_one(context, corpus, settings, shard))


def _curated_images_one(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    t0 = time.monotonic()
    try:
        cfg = QualityConfig.from_overrides(settings.quality)
    except ValueError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    inventory = read_stage(context, corpus, "raw_inventory", shard)
    clusters = read_stage(context, corpus, "dedup_clusters", shard)
    curated = evaluate(inventory, clusters, cfg)
    uri = corpus.stage_uri("curated_images", shard)
    storage.write_parquet(curated, uri)
    kept = int(curated["keep"].sum())
    return {
        "dagster/row_count": len(curated),
        "path": dg.MetadataValue.path(uri),
        "kept": kept,
        "rejected": len(curated) - kept,
        "keep_rate": round(kept / max(1, len(curated)), 4),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "rejects_by_reason": counts_md(reject_counts(curated)),
    }
