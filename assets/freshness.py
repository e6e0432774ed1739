"""What keeps the asset graph fresh, and tells a user what is stale: code versions tied to the
deployment's settings, the observed few-shot examples, and the declarative automation conditions.

Code versions. Every stage asset's `code_version` is `curation.stages.lineage_versions` of the
settings that change that stage's output, read from the same resources the runs use (the code
location's `StageSettings`, `EmbedderResource`, `ClassifierSettings`, which take their defaults from
the environment when the location loads; `stage_settings` lists which fields count). A stage's
version includes its upstream stages' versions, so a changed quality threshold gives
`curated_images` and every stage below it a new code version (Dagster shows them "stale: has a new
code version", partition by partition) while `raw_inventory` and `dedup_clusters` keep theirs.
Settings overridden in one run's launchpad config are not seen here: they apply to that run only.

`few_shot_examples` is an observable source asset over the examples folder
(`ClassifierSettings.fewshot_uri`): its data version is a hash of the listing (label/file names),
so `few_shot_probe`, which depends on it, goes stale, and is re-trained by automation, only when
examples are added, removed, renamed or relabelled.

Automation (run by the `curation_automation` sensor, off by default, orchestration/definitions.py):
- `curation_summary`: after any shard's report is new, once no shard report is in progress.
- `corpus_manifest`: after any shard's export is new, once no shard export is in progress.
- `semantic_duplicates`: per shard, `eager()`: after that shard's embeddings are new.
- `few_shot_probe`: after the examples' data version changed (not when few-shot is disabled).
- `few_shot_examples`: observed on `EXAMPLES_CRON` (every 5 minutes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from assets._common import make_config
from assets.factory import with_freshness
from curation.stages import (
    COMPUTE_TAG,
    CORPUS_MANIFEST,
    CURATED_IMAGES,
    CURATION_SUMMARY,
    DEDUP_CLUSTERS,
    FEW_SHOT_EXAMPLES,
    FEW_SHOT_PROBE,
    IMAGE_CLASSIFICATIONS,
    IMAGE_EMBEDDINGS,
    RAW_INVENTORY,
    SEMANTIC_DUPLICATES,
    lineage_versions,
)
from resources.classifier import ClassifierSettings

# `observable_source_asset` is beta in dagster 1.13; its use here is covered by tests/integration/test_automation.py.
warnings.filterwarnings("ignore", message="Function `observable_source_asset`", category=dg.BetaWarning)

EXAMPLES_CRON = "*/5 * * * *"
AC = dg.AutomationCondition


def _fields(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}


def stage_settings(resources: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage -> the settings that change its output (batch sizes, worker counts, devices do not)."""
    from assets.semantic import SemanticDedupRunConfig
    from curation.dedup import DedupConfig
    from curation.inventory import InventoryConfig
    from curation.quality import QualityConfig

    settings, classifier = resources["settings"], resources["classifier"]
    spec = resources["embedder"].spec()
    model = {"kind": spec.kind, "model_name": spec.model_name, "pretrained": spec.pretrained,
             "precision": spec.precision}
    return {
        RAW_INVENTORY: _fields(make_config(InventoryConfig, settings.inventory), ("chunk_size", "start_method")),
        DEDUP_CLUSTERS: _fields(make_config(DedupConfig, settings.dedup), ("pair_batch", "index_batch")),
        CURATED_IMAGES: _fields(make_config(QualityConfig, settings.quality)),
        IMAGE_EMBEDDINGS: model,
        # what the examples are is few_shot_examples' data version (a dep), not the folder's path
        FEW_SHOT_PROBE: {**model, "few_shot": bool(classifier.fewshot_uri)},
        IMAGE_CLASSIFICATIONS: {
            "labels": list(classifier.labels), "templates": list(classifier.templates), "top_k": classifier.top_k,
            "min_confidence": classifier.min_confidence, "fewshot_min_confidence": classifier.fewshot_min_confidence,
            "few_shot": bool(classifier.fewshot_uri)},
        # run config, not a resource: the defaults (a launchpad override applies to that run only)
        SEMANTIC_DUPLICATES: SemanticDedupRunConfig().model_dump(),
    }


def code_versions(resources: Mapping[str, Any]) -> dict[str, str]:
    return lineage_versions(stage_settings(resources))


def automation_conditions(resources: Mapping[str, Any]) -> dict[str, dg.AutomationCondition]:
    def after_new(what: str) -> dg.AutomationCondition:
        return (AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress()
                & ~AC.in_progress()).with_label(f"after new shard {what}, none in progress")

    out: dict[str, dg.AutomationCondition] = {CURATION_SUMMARY: after_new("reports"),
                                              CORPUS_MANIFEST: after_new("exports"), SEMANTIC_DUPLICATES: AC.eager()}
    if resources["classifier"].fewshot_uri:
        out[FEW_SHOT_PROBE] = (AC.any_deps_match(AC.data_version_changed()).since_last_handled()
                               & ~AC.in_progress()).with_label("after the few-shot examples changed")
    return out


def examples_version(root: str) -> tuple[str, int]:
    """(hash of the sorted label/file listing, number of examples) of the examples folder `root`."""
    from curation.classify import list_labelled_examples

    try:
        examples = list_labelled_examples(root)
    except ValueError:  # no examples (yet): one fixed version, the probe step reports why
        return "no-examples", 0
    names = sorted(f"{label}/{uri.rsplit('/', 1)[-1]}" for uri, label in examples.iter_rows())
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16], len(names)


@dg.observable_source_asset(
    name=FEW_SHOT_EXAMPLES, group_name="ml", op_tags={COMPUTE_TAG: "cpu"},
    automation_condition=AC.cron_tick_passed(EXAMPLES_CRON).with_label(f"observed on {EXAMPLES_CRON}"),
    description="The labelled few-shot examples (one sub-folder per label, ClassifierSettings.fewshot_uri). "
                "Its data version is a hash of the listing: few_shot_probe is stale when it changes.")
def few_shot_examples(classifier: ClassifierSettings) -> dg.ObserveResult:
    if not classifier.fewshot_uri:
        return dg.ObserveResult(data_version=dg.DataVersion("disabled"), metadata={"few_shot": "disabled"})
    version, n = examples_version(classifier.fewshot_uri)
    return dg.ObserveResult(data_version=dg.DataVersion(version),
                            metadata={"examples": n, "path": dg.MetadataValue.path(classifier.fewshot_uri)})


def freshen(assets: Sequence[object], resources: Mapping[str, Any]) -> list[dg.AssetsDefinition]:
    """The stage assets with their code versions and automation conditions for these resources."""
    versions, conditions = code_versions(resources), automation_conditions(resources)
    out = []
    for a in assets:
        if not isinstance(a, dg.AssetsDefinition):
            raise TypeError(f"expected the stage assets as AssetsDefinitions, got {type(a).__name__}")
        out.append(with_freshness(a, versions, conditions))
    return out


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "curation_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        description="Keeps curation_summary, semantic_duplicates and few_shot_probe fresh after new shards / "
                    "changed examples (assets/freshness.py). Off by default: the `curate` CLI materialises "
                    "them itself; turn it on for daemon-driven deployments.")
