"""Jobs: the per-shard curation job (every partitioned stage) and the corpus roll-up."""

from __future__ import annotations

import dagster as dg

from partitions.shards import SHARDS

PARTITIONED_STAGES = (
    "raw_inventory",
    "dedup_clusters",
    "curated_images",
    "image_embeddings",
    "image_classifications",
    "shard_report",
)

curate_shard_job = dg.define_asset_job(
    name="curate_shard",
    selection=dg.AssetSelection.assets(*PARTITIONED_STAGES),
    partitions_def=SHARDS,
    tags={"curation/stage": "curate"},
    description="All six stages for one shard: inventory, dedup, quality filter, embeddings, labels, report.",
)

summary_job = dg.define_asset_job(
    name="curation_summary_job",
    selection=dg.AssetSelection.assets("few_shot_probe", "curation_summary"),
    tags={"curation/stage": "summary"},
    description="Trains the few-shot probe and rolls every shard up into the corpus report (duckdb).",
)

semantic_dedup_job = dg.define_asset_job(
    name="semantic_dedup",
    selection=dg.AssetSelection.assets("semantic_duplicates"),
    partitions_def=SHARDS,
    tags={"curation/stage": "semantic"},
    description="Optional second dedup pass for one shard: embedding (semantic) near duplicates, e.g. crops.",
)
