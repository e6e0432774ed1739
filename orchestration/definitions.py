"""The code location: assets, checks, jobs, the sensor, resources and the executor for this deployment.

Executor by deployment (env CURATION_DEPLOYMENT):
- "local" (default): the in-process executor. A shard's stages form a chain (each needs the one
  before), so a process per step would buy no parallelism and cost ~3.5 s of start-up per step
  (66% of a 10,000-image shard's CPU work, bench/results/overhead.json, against 4.7% in process).
  Parallelism comes from running several shards at once (run queue limits in dagster.yaml), and
  the `gpu` pool limits GPU steps across runs.
- "k8s": dagster-k8s's `k8s_job_executor`, set on the Definitions (not on a job) so backfills and
  sensor runs get one pod per step too; each stage's abstract compute profile (curation/stages.py)
  becomes its pod spec through the executor's `per_step_k8s_config` (orchestration/k8s.py), so GPU
  stages request `nvidia.com/gpu`.

The deployment is read when the definitions load (resources.environment.deployment()). The
definitions are checked against the stage registry: every stage is an asset, every dataset a stage
writes is an asset of that stage's step, and every declared check exists.
"""

from __future__ import annotations

import dagster as dg

from assets import checks as asset_checks
from assets import (
    classifications,
    dedup,
    embeddings,
    export,
    inventory,
    quality,
    reports,
    semantic,
)
from curation.stages import STAGES
from orchestration.jobs import ALL_JOBS, curate_shard_job
from orchestration.sensors import build_new_files_sensor
from resources import environment
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource


def executor_for(deployment: str) -> dg.ExecutorDefinition:
    if deployment == "local":
        return dg.in_process_executor
    if deployment == "k8s":
        from orchestration.k8s import k8s_executor

        return k8s_executor()
    raise ValueError(f"CURATION_DEPLOYMENT={deployment!r}: expected 'local' or 'k8s'")


all_assets = dg.load_assets_from_modules([inventory, dedup, quality, embeddings, classifications, export, reports, semantic])
all_checks = [*asset_checks.ALL_CHECKS, semantic.semantic_representatives_exist, *export.EXPORT_CHECKS]


def check_against_registry(assets: list[dg.AssetsDefinition], checks: list[dg.AssetChecksDefinition]) -> None:
    """Every registry stage is one step (op) writing exactly its declared datasets, with exactly its
    declared checks; nothing else is defined. Raises ValueError naming the first mismatch."""
    steps = {a.node_def.name: {k.to_user_string() for k in a.keys} for a in assets}
    declared = {s.name: set(s.outputs) for s in STAGES}
    if steps != declared:
        raise ValueError(f"asset steps {steps} differ from the stage registry {declared}")
    found: dict[str, set[str]] = {}
    for c in checks:
        for key in c.check_keys:
            found.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    expected = {s.name: set(s.checks) for s in STAGES if s.checks}
    if found != expected:
        raise ValueError(f"asset checks {found} differ from the stage registry {expected}")


check_against_registry(all_assets, all_checks)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=ALL_JOBS,
    sensors=[build_new_files_sensor(curate_shard_job)],
    resources={
        "corpus": CorpusResource(),
        "settings": StageSettings(),
        "embedder": EmbedderResource(),
        "classifier": ClassifierSettings(),
    },
    executor=executor_for(environment.deployment()),
)
