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
- "celery": steps run in long-lived Celery workers on several machines, GPU steps on the `gpu`
  queue, the rest on `cpu` (orchestration/distributed.py, docs/deploy-several-machines.md).

Freshness (assets/freshness.py): each stage asset's code_version is a hash of the settings that
change its output (and of its upstream stages'), from the same resources the runs get, so changing
a setting marks exactly the affected stages stale; `curation_automation` (an automation condition
sensor, STOPPED by default so CLI users see no surprise runs) keeps curation_summary,
semantic_duplicates and few_shot_probe fresh. `build_definitions(resources)` builds it all for
given resources; `defs` is it for the environment's defaults.

The deployment is read when the definitions load (resources.environment.deployment()). Loaded by
the `dagster` CLI's `asset materialize` / `job execute` of a shard without DAGSTER_HOME (a run on a
throwaway instance that knows no shards), the process ends with one line naming DAGSTER_HOME, exit
status 2 (`refuse_ephemeral_cli_run`); nothing else changes. The definitions are checked against
the stage registry: every stage is an asset, every dataset a stage writes is an asset of that
stage's step, and every declared check exists.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import dagster as dg

from assets import checks as asset_checks
from assets import (
    classifications,
    dedup,
    embeddings,
    export,
    freshness,
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


def refuse_ephemeral_cli_run(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """End the process (one line on stderr, exit status 2) when it is the `dagster` CLI running a
    shard on a throwaway instance (`environment.ephemeral_cli_run`); do nothing otherwise."""
    problem = environment.ephemeral_cli_run(sys.argv if argv is None else argv, environ)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)


refuse_ephemeral_cli_run()


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


all_assets = dg.load_assets_from_modules([inventory, dedup, quality, embeddings, classifications, export, reports, semantic])
all_checks = [*asset_checks.ALL_CHECKS, semantic.semantic_representatives_exist, *export.EXPORT_CHECKS]


def check_against_registry(assets: Sequence[object], checks: list[dg.AssetChecksDefinition]) -> None:
    """Every registry stage is one step (op) writing exactly its declared datasets, with exactly its
    declared checks; nothing else is defined. Raises ValueError naming the first mismatch."""
    others = [a for a in assets if not isinstance(a, dg.AssetsDefinition)]
    if others:
        raise ValueError(f"only stage assets may be defined, found {others}")
    stage_assets = [a for a in assets if isinstance(a, dg.AssetsDefinition)]
    steps = {a.node_def.name: {k.to_user_string() for k in a.keys} for a in stage_assets}
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

def default_resources() -> dict:
    return {
        "corpus": CorpusResource(),
        "settings": StageSettings(),
        "embedder": EmbedderResource(),
        "classifier": ClassifierSettings(),
    }


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    resources = resources or default_resources()
    return dg.Definitions(
        assets=[*freshness.freshen(all_assets, resources), freshness.few_shot_examples],
        asset_checks=all_checks,
        jobs=ALL_JOBS,
        sensors=[build_new_files_sensor(curate_shard_job), freshness.automation_sensor()],
        resources=resources,
        executor=executor_for(environment.deployment()),
    )


defs = build_definitions()
