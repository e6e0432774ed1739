"""The code location: assets, checks, jobs, the sensor, resources and the executor for this deployment.

Executor by deployment (env CURATION_DEPLOYMENT):
- "local" (default): the in-process executor. A shard's stages form a chain (each needs the one
  before), so a process per step would buy no parallelism and cost ~3.5 s of start-up per step
  (66% of a 10,000-image shard's CPU work, bench/results/overhead.json, against 4.7% in process).
  Parallelism comes from running several shards at once (run queue limits in dagster.yaml), and
  the `gpu` pool limits GPU steps across runs.
- "k8s": dagster-k8s's `k8s_job_executor`, set on the Definitions (not on a job) so backfills and
  sensor runs get one pod per step too; GPU assets request `nvidia.com/gpu` through their
  `dagster-k8s/config` tags (orchestration/k8s.py).
- "celery": steps run in long-lived Celery workers on several machines, GPU steps on the `gpu`
  queue, the rest on `cpu` (orchestration/distributed.py, docs/deploy-several-machines.md).
"""

from __future__ import annotations

import os

import dagster as dg

from assets import checks as asset_checks
from assets import classifications, dedup, embeddings, inventory, quality, reports, semantic
from orchestration.jobs import curate_shard_job, semantic_dedup_job, summary_job
from orchestration.sensors import build_new_files_sensor
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource

DEPLOYMENT = os.environ.get("CURATION_DEPLOYMENT", "local")


def executor_for(deployment: str) -> dg.ExecutorDefinition:
    if deployment == "local":
        return dg.in_process_executor
    if deployment == "k8s":
        from orchestration.k8s import k8s_executor

        return k8s_executor()
    if deployment == "celery":
        from orchestration.distributed import celery_executor

        return celery_executor()
    raise ValueError(f"CURATION_DEPLOYMENT={deployment!r}: expected 'local', 'k8s' or 'celery'")


all_assets = dg.load_assets_from_modules([inventory, dedup, quality, embeddings, classifications, reports, semantic])

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=[*asset_checks.ALL_CHECKS, semantic.semantic_representatives_exist],
    jobs=[curate_shard_job, summary_job, semantic_dedup_job],
    sensors=[build_new_files_sensor(curate_shard_job)],
    resources={
        "corpus": CorpusResource(),
        "settings": StageSettings(),
        "embedder": EmbedderResource(),
        "classifier": ClassifierSettings(),
    },
    executor=executor_for(DEPLOYMENT),
)
