"""The stage registry: every stage of the pipeline declared once, as plain data (no Dagster).

Each `Stage` names its upstream stages, the datasets it writes (`outputs`: the first is the stage's
own table; the others are datasets the same step writes, each with exactly this one writer), its
compute profile (cpu/gpu with resource sizes), retry policy, group, checks and job. The Dagster
asset factory (assets/factory.py) builds the assets from it, the orchestration layer maps compute
profiles to pod specs and builds jobs from it, and the library reads output folder names and the
stage order of reports from it. A dataset's output folder is its name (`<output_root>/<dataset>/`).

API: `STAGES` (registry order = execution order), `stage(name)`, `stages_in(job)`,
`SHARD_STAGES` / `REPORT_STAGES` (names), `writer_of(dataset)`, `Dataset`, `Compute`, `Retry`,
`lineage_versions(settings)`.

Versions: each stage has an `algorithm` number; bump it when a change to the stage's code changes
its output. `lineage_versions` turns (algorithm, the stage's output-relevant settings, the versions
of its upstream stages) into a short hash per stage: the assets' `code_version`, so a changed
setting marks that stage and every stage below it stale, and nothing above it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# The op tag that carries a step's compute kind ("cpu" / "gpu"); GPU steps also run in this pool.
COMPUTE_TAG = "curation/compute"
GPU_POOL = "gpu"

# Jobs a stage belongs to.
CURATE, SEMANTIC, FEW_SHOT, SUMMARY = "curate", "semantic", "few_shot", "summary"


@dataclass(frozen=True)
class Compute:
    """Abstract compute profile of a step; orchestration/k8s.py turns it into a pod spec."""

    kind: Literal["cpu", "gpu"] = "cpu"
    cpu: str = "2"
    memory: str = "8Gi"
    cpu_limit: str | None = "4"
    memory_limit: str | None = "16Gi"
    gpus: int = 0

    def __post_init__(self):
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"compute kind {self.kind!r}: expected 'cpu' or 'gpu'")
        if (self.kind == "gpu") != (self.gpus > 0):
            raise ValueError("a gpu profile requests at least one GPU, a cpu profile none")


@dataclass(frozen=True)
class Retry:
    """Retry policy of a step: `max_retries` with exponential backoff from `delay_s`, +/- jitter."""

    max_retries: int = 2
    delay_s: float = 5


@dataclass(frozen=True)
class Dataset:
    """A dataset a stage writes. `partitioned`: one file per shard; `skippable`: not every run of
    the step writes it (e.g. written for one shard only)."""

    name: str
    description: str
    kinds: frozenset[str] = frozenset({"parquet"})
    partitioned: bool = True
    skippable: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]
    group: str
    job: str
    description: str
    compute: Compute = Compute()
    retry: Retry = Retry()
    kinds: frozenset[str] = frozenset({"python", "polars", "parquet"})
    checks: tuple[str, ...] = ()
    also_writes: tuple[Dataset, ...] = ()  # datasets besides the stage's own table, same step
    partitioned: bool = True
    in_report: bool = False  # has an entry in the report's time per stage
    algorithm: int = 1  # bump when the stage's code changes its output (part of its code_version)
    sources: tuple[str, ...] = ()  # observed external inputs (source assets) the stage reads

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name, *(d.name for d in self.also_writes))


# Stage and dataset names: the only place they are spelled out (output folders are these names).
FEW_SHOT_PROBE = "few_shot_probe"
RAW_INVENTORY = "raw_inventory"
DEDUP_CLUSTERS = "dedup_clusters"
DEDUP_INDEX = "dedup_index"
CURATED_IMAGES = "curated_images"
IMAGE_EMBEDDINGS = "image_embeddings"
IMAGE_CLASSIFICATIONS = "image_classifications"
IMAGE_SCORES = "image_scores"
CURATED_EXPORT = "curated_export"
SIMILARITY_INDEX = "similarity_index"
SHARD_REPORT = "shard_report"
SEMANTIC_DUPLICATES = "semantic_duplicates"
SEMANTIC_INDEX = "semantic_index"
SEMANTIC_CENTER = "semantic_center"
CURATION_SUMMARY = "curation_summary"
CORPUS_MANIFEST = "corpus_manifest"
FEW_SHOT_EXAMPLES = "few_shot_examples"  # the labelled examples folder, an observed source


RETRY = Retry(max_retries=2, delay_s=5)
# Shard N compares against shards 1..N-1: in a parallel backfill an earlier shard may not be done
# yet, so the step fails with a clear message and retries with backoff (results never depend on the
# order shards happened to run in).
WAIT_FOR_EARLIER = Retry(max_retries=8, delay_s=15)

SMALL_CPU = Compute(cpu="1", memory="4Gi", cpu_limit="2", memory_limit="8Gi")

STAGES: tuple[Stage, ...] = (
    Stage(
        FEW_SHOT_PROBE, (), "ml", FEW_SHOT, partitioned=False, sources=(FEW_SHOT_EXAMPLES,),
        kinds=frozenset({"pytorch", "scikitlearn", "json"}), compute=Compute(cpu="2", memory="8Gi"),
        description=("A linear probe trained on embeddings of the few-shot examples (one sub-folder per label), "
                     "stored as JSON (no pickle) with its validation accuracy; applied to every shard by "
                     "image_classifications, which never trains it."),
    ),
    Stage(
        # algorithm 2: edge ratios, clipping; 3: texture; 4: phash256; 5: swallowed cut-outs on black
        RAW_INVENTORY, (), "ingest", CURATE, in_report=True, algorithm=5,
        compute=Compute(cpu="4", memory="8Gi", cpu_limit="8", memory_limit="16Gi"),
        checks=("inventory_matches_manifest",),
        description=("One row per file in the shard's manifest, never fewer: URI, bytes, mtime, sha256, format, "
                     "size after EXIF orientation, mode, aHash/dHash/pHash/wHash and quality metrics from ONE decode; "
                     "unreadable files get an error code and message, and the shard still succeeds."),
    ),
    Stage(
        DEDUP_CLUSTERS, (RAW_INVENTORY,), "dedup", CURATE, in_report=True, algorithm=2,  # 2: 256-bit pHash check
        compute=Compute(cpu="2", memory="8Gi"), retry=WAIT_FOR_EARLIER,
        checks=("dedup_representatives_exist",),
        also_writes=(Dataset(
            DEDUP_INDEX,
            "Compact hash index of the shard (sha256, perceptual hashes, cluster ids) that later shards dedup "
            "against; with its block files (dedup_index_blocks/<first>__<last>.parquet, curation/index_store.py) "
            "so shard N reads O(log N) files.", frozenset({"parquet"})),),
        description=("Exact (sha256) and near (perceptual-hash) duplicate clusters, within the shard and against every "
                     "earlier shard, with one deterministic representative per cluster (see README 'Dedup')."),
    ),
    Stage(
        CURATED_IMAGES, (RAW_INVENTORY, DEDUP_CLUSTERS), "curation", CURATE, in_report=True,
        compute=SMALL_CPU, checks=("curated_decisions_complete",), algorithm=2,
        description=("Cluster representatives that pass the configurable checks (size, aspect ratio, brightness, "
                     "contrast, entropy, sharpness), and copies that supersede a smaller copy of an earlier shard "
                     "(`supersedes`); every other image with all of its reasons."),
    ),
    Stage(
        IMAGE_EMBEDDINGS, (CURATED_IMAGES,), "ml", CURATE, in_report=True, algorithm=2,  # 2: swallowed cut-outs on black
        kinds=frozenset({"pytorch", "polars", "parquet"}),
        compute=Compute(kind="gpu", gpus=1, cpu="4", memory="24Gi", cpu_limit="8", memory_limit="32Gi"),
        checks=("embeddings_valid",),
        description=("L2-normalised image embeddings (float16 precision) of every kept image, written in chunks so a "
                     "killed step resumes after its last completed chunk. Model from the `embedder` resource."),
    ),
    Stage(
        IMAGE_CLASSIFICATIONS, (IMAGE_EMBEDDINGS, FEW_SHOT_PROBE), "ml", CURATE, in_report=True,
        kinds=frozenset({"pytorch", "polars", "parquet"}), compute=Compute(cpu="2", memory="8Gi"),
        checks=("classification_probabilities",),
        description=("Zero-shot labels from text prompts (top-k with probabilities, 'unknown' below the confidence bar; "
                     "needs a model with a text tower) and few-shot labels from the stored `few_shot_probe` (null, with "
                     "the reason in the metadata, when there is no probe trained on the current model)."),
    ),
    Stage(
        IMAGE_SCORES, (IMAGE_EMBEDDINGS,), "ml", CURATE, in_report=True, compute=SMALL_CPU,
        description=("Model-head scores over the embeddings (one Float column score_<name> per configured head, e.g. an "
                     "aesthetic or NSFW head) and the head reasons each image fails (`low_aesthetic`, `nsfw`), with "
                     "details. A head trained on another embedding model or dimension fails the step (not retried). "
                     "With no heads configured: ids and empty reasons only."),
    ),
    Stage(
        CURATED_EXPORT, (RAW_INVENTORY, CURATED_IMAGES, IMAGE_EMBEDDINGS, IMAGE_CLASSIFICATIONS, IMAGE_SCORES), "export", CURATE,
        in_report=True, kinds=frozenset({"python", "webdataset", "parquet"}), compute=SMALL_CPU,
        checks=("export_complete",),
        description=("Training-ready export of the kept images that also pass every head: WebDataset tars (original "
                     "bytes + JSON metadata, optional .npy embedding) and one Hugging Face-readable Parquet manifest per "
                     "shard under <output_root>/curated_export/; images that could not be exported are in errors/. "
                     "Atomic and resumable (curation/export)."),
    ),
    Stage(
        SIMILARITY_INDEX, (IMAGE_EMBEDDINGS,), "ml", CURATE, in_report=True,
        kinds=frozenset({"python", "faiss"}), compute=SMALL_CPU, checks=("similarity_index_complete",),
        description=("Nearest-neighbour index over the embeddings, one faiss HNSW segment per shard "
                     "(<output_root>/similarity_index/<shard>.faiss + .ids.parquet): a new shard builds only its own "
                     "segment. Queried by `curate similar` and the report's similar-images view."),
    ),
    Stage(
        SHARD_REPORT, (RAW_INVENTORY, DEDUP_CLUSTERS, CURATED_IMAGES, IMAGE_EMBEDDINGS,
                         IMAGE_CLASSIFICATIONS, IMAGE_SCORES, SIMILARITY_INDEX), "reports", CURATE,
        kinds=frozenset({"python", "html", "polars"}), compute=SMALL_CPU,
        description=("What was kept, dropped and why for one shard: a self-contained HTML report (thumbnails, duplicate "
                     "strips, rejects per reason, classes, embedding map, time per stage) and summary.json."),
    ),
    Stage(
        SEMANTIC_DUPLICATES, (IMAGE_EMBEDDINGS, RAW_INVENTORY), "dedup", SEMANTIC,
        compute=Compute(cpu="2", memory="4Gi"), retry=WAIT_FOR_EARLIER,
        checks=("semantic_representatives_exist",),
        also_writes=(
            Dataset(SEMANTIC_INDEX,
                    "Compact semantic index of the shard (LSH band keys, quantised vectors of representatives) that "
                    "later shards compare against; with block files (semantic_index_blocks/, the default search) "
                    "or partitioned (IVF) parts (semantic_index_ivf/, index='ivf')."),
            Dataset(SEMANTIC_CENTER,
                    "The corpus's LSH hashing centre, fitted once on the first registered shard's embeddings and "
                    "reused by every shard (written by the first shard's step only).", skippable=True),
        ),
        description=("Semantic (embedding cosine) near-duplicate clusters of the embedded images, within the shard and "
                     "against every earlier shard: catches crops and re-framings that perceptual hashes miss."),
    ),
    Stage(
        CURATION_SUMMARY, (SHARD_REPORT,), "reports", SUMMARY, partitioned=False, algorithm=2,
        kinds=frozenset({"duckdb", "html", "polars"}), compute=SMALL_CPU, retry=Retry(max_retries=0),
        description=("Every shard rolled up: per-shard stage counts from one duckdb query over the stage outputs, and "
                     "the corpus HTML report + summary.json (same sections as the shard reports, aggregated), with "
                     "the best copy across shards applied (an earlier, smaller copy is rejected as `superseded`)."),
    ),
    Stage(
        CORPUS_MANIFEST, (CURATED_EXPORT,), "export", SUMMARY, partitioned=False,
        kinds=frozenset({"python", "polars", "parquet"}), compute=SMALL_CPU, retry=Retry(max_retries=0),
        description=("The export's corpus-level manifest (<output_root>/corpus_manifest/manifest.parquet): exactly "
                     "the samples a training job should read across every exported shard, i.e. per duplicate cluster "
                     "the best exported copy, with the tar, key and shard manifest each lives in. Earlier shards' "
                     "tars are never rewritten: a copy a later shard superseded stays in its tar, unlisted."),
    ),
)

_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {sorted(_BY_NAME)}") from None


def stages_in(job: str) -> tuple[Stage, ...]:
    return tuple(s for s in STAGES if s.job == job)


def writer_of(dataset: str) -> Stage:
    """The one stage whose step writes `dataset`."""
    (writer,) = [s for s in STAGES if dataset in s.outputs]
    return writer


def check_registry(stages: tuple[Stage, ...]) -> None:
    """Each dataset has exactly one writer, and every stage's upstream stages come before it."""
    datasets = [d for s in stages for d in s.outputs]
    dupes = sorted({d for d in datasets if datasets.count(d) > 1})
    if dupes:
        raise ValueError(f"datasets with more than one writer: {dupes}")
    seen: set[str] = set()
    for s in stages:
        unknown = [u for u in s.upstream if u not in seen]
        if unknown:
            raise ValueError(f"stage {s.name}: upstream {unknown} not declared before it")
        seen.add(s.name)


check_registry(STAGES)


def lineage_versions(settings: Mapping[str, Any], stages: tuple[Stage, ...] = STAGES) -> dict[str, str]:
    """Stage name -> 12-hex-digit version of (name, algorithm, `settings[name]` (JSON-able, only
    the settings that change the output; absent = none), the upstream stages' versions)."""
    out: dict[str, str] = {}
    for s in stages:
        payload = {"stage": s.name, "algorithm": s.algorithm, "settings": settings.get(s.name),
                   "upstream": [out[u] for u in s.upstream]}
        text = json.dumps(payload, sort_keys=True, default=str)
        out[s.name] = hashlib.sha256(text.encode()).hexdigest()[:12]
    return out

# Names derived from the registry.
SHARD_STAGES: tuple[str, ...] = tuple(s.name for s in stages_in(CURATE))  # the curate_shard job, in order
REPORT_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.in_report)  # time per stage, in order
