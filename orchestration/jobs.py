"""Jobs, built from the stage registry (curation/stages.py): the per-shard curation job (every
partitioned stage of the `curate` job), the optional semantic pass, the few-shot probe and the
corpus roll-up."""

from __future__ import annotations

import dagster as dg

from curation.stages import (
    CURATE,
    CURATION_SUMMARY,
    FEW_SHOT,
    FEW_SHOT_PROBE,
    SEMANTIC,
    SHARD_STAGES,
    SUMMARY,
    stages_in,
)
from partitions.shards import SHARDS

PARTITIONED_STAGES = SHARD_STAGES  # the curate_shard job's stages, in order


def _select(job: str) -> dg.AssetSelection:
    return dg.AssetSelection.assets(*(out for s in stages_in(job) for out in s.outputs))


curate_shard_job = dg.define_asset_job(
    name="curate_shard",
    selection=_select(CURATE),
    partitions_def=SHARDS,
    tags={"curation/stage": CURATE},
    description="Every stage for one shard: inventory, dedup, quality filter, embeddings, labels, head scores, "
                "training export, similarity index, report. "
                "Few-shot labels come from the stored probe: run few_shot_probe_job first.",
)

few_shot_probe_job = dg.define_asset_job(
    name=f"{FEW_SHOT_PROBE}_job",
    selection=_select(FEW_SHOT),
    tags={"curation/stage": FEW_SHOT},
    description="Trains the few-shot probe on the configured examples (run before the shards that should use it).",
)

summary_job = dg.define_asset_job(
    name=f"{CURATION_SUMMARY}_job",
    selection=_select(SUMMARY),
    tags={"curation/stage": SUMMARY},
    description="Rolls every shard up into the corpus report (duckdb).",
)

semantic_dedup_job = dg.define_asset_job(
    name="semantic_dedup",
    selection=_select(SEMANTIC),
    partitions_def=SHARDS,
    tags={"curation/stage": SEMANTIC},
    description="Optional second dedup pass for one shard: embedding (semantic) near duplicates, e.g. crops.",
)

ALL_JOBS = [curate_shard_job, few_shot_probe_job, summary_job, semantic_dedup_job]

# The Dagster job of each registry job group.
JOB_OF = {CURATE: curate_shard_job.name, FEW_SHOT: few_shot_probe_job.name, SUMMARY: summary_job.name,
          SEMANTIC: semantic_dedup_job.name}
