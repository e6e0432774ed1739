"""Stage 3, `curated_images`: the quality-filtered set, with every reject's reasons. A copy that
supersedes an earlier shard's copy of its cluster (the shard's own `dedup_index` records,
curation/dedup/supersede.py) is kept here (`shard_keep`); the earlier copy is dropped only in the
corpus-level view (`corpus_keep`), never by rewriting the earlier shard."""


import time

import dagster as dg

from assets._common import counts_md, make_config, per_shard, read_stage
from assets.factory import stage_asset
from curation import storage
from curation.dedup import shard_keep, supersede_records
from curation.quality import QualityConfig, evaluate, reject_counts
from curation.stages import CURATED_IMAGES, DEDUP_CLUSTERS, DEDUP_INDEX, RAW_INVENTORY
from resources.corpus import CorpusResource, StageSettings


@stage_asset(CURATED_IMAGES)
def curated_images(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _curated_images_one(context, corpus, settings, shard))


def _curated_images_one(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    t0 = time.monotonic()
    cfg = make_config(QualityConfig, settings.quality)
    inventory = read_stage(context, corpus, RAW_INVENTORY, shard)
    clusters = read_stage(context, corpus, DEDUP_CLUSTERS, shard)
    curated = evaluate(inventory, clusters, cfg)
    if cfg.reject_duplicates:  # else every copy is kept anyway
        index = read_stage(context, corpus, DEDUP_INDEX, shard, asset=DEDUP_CLUSTERS)
        curated = shard_keep(curated, supersede_records(index))
    uri = corpus.stage_uri(CURATED_IMAGES, shard)
    storage.write_parquet(curated, uri)
    kept = int(curated["keep"].sum())
    return {
        "dagster/row_count": len(curated),
        "path": dg.MetadataValue.path(uri),
        "kept": kept,
        "rejected": len(curated) - kept,
        "supersedes_earlier": int(curated["supersedes"].is_not_null().sum()),
        "keep_rate": round(kept / max(1, len(curated)), 4),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "rejects_by_reason": counts_md(reject_counts(curated)),
    }
