"""Deployment-wide settings: where sources are, where outputs go, how big shards are, and the
per-stage knobs. Everything here is plain configuration (no secrets): S3 credentials are read by
s3fs from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) only.

Defaults come from the deployment's environment (`resources.environment`, read when the code
location loads). A bad environment variable does not stop the location from loading: it is
listed in `environment_errors` (visible in the launchpad) and fails every run and sensor tick
that uses the resource with its one-line message, never retried. A bad explicit value raises
`SettingError` (one line naming the setting, the value, what is allowed) when the resource is built.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from curation import storage
from partitions.shards import ShardRegistry
from resources import environment as env
from resources.environment import PROJECT_ROOT, SettingError, parse_sources  # noqa: F401 (public names)
from resources.stages import (
    DedupSettings,
    ExportSettings,
    HeadSettings,
    InventorySettings,
    QualitySettings,
    SimilaritySettings,
)


def default_output_root() -> str:
    return env.value_or_default("CURATION_OUTPUT_ROOT")


def default_sources() -> dict[str, str]:
    """CURATION_SOURCES, or the demo corpus when unset; no sources when it is bad (reported)."""
    return {} if env.problems(["CURATION_SOURCES"]) else env.read("CURATION_SOURCES")


def environment_errors(names) -> list[str]:
    return [str(e) for e in env.problems(names)]


def fail_on_environment_errors(errors: list[str]) -> None:
    """Fail the run or tick being set up when the deployment's environment had bad values."""
    if errors:
        more = f" (and {len(errors) - 1} more: {'; '.join(errors[1:])})" if len(errors) > 1 else ""
        raise dg.Failure(description=errors[0] + more, allow_retries=False)


class CorpusResource(dg.ConfigurableResource):
    """Where images come from and where every stage's outputs go."""

    output_root: str = Field(default_factory=default_output_root,
                             description="Local folder or s3://bucket/prefix for all outputs ($CURATION_OUTPUT_ROOT).")
    sources: dict[str, str] = Field(default_factory=default_sources,
                                    description="Source name -> local folder or s3:// prefix ($CURATION_SOURCES).")
    shard_size: int = Field(default_factory=lambda: env.value_or_default("CURATION_SHARD_SIZE"),
                            description="Files per shard, >= 1 (default 10,000 or $CURATION_SHARD_SIZE).")
    page_size: int = Field(default=100_000, description="Files listed per source per sensor tick, >= 1.")
    environment_errors: list[str] = Field(
        default_factory=lambda: environment_errors(env.CORPUS_VARS),
        description="Bad deployment environment variables found when the code location loaded; while any "
                    "is listed, every run and sensor tick fails with its message. Fix the variable.")

    def model_post_init(self, context) -> None:
        env.location("CorpusResource.output_root", self.output_root)
        for name, uri in self.sources.items():
            env.source_name("CorpusResource.sources", name)
            env.location(f"CorpusResource.sources[{name}]", uri)
        env.positive_int("CorpusResource.shard_size", self.shard_size)
        env.positive_int("CorpusResource.page_size", self.page_size)

    def setup_for_execution(self, context) -> None:
        fail_on_environment_errors(self.environment_errors)

    def check_sources(self) -> None:
        """Every source exists and can be listed (SettingError naming the first that cannot)."""
        for name, uri in sorted(self.sources.items()):
            env.check_source(name, uri, "CorpusResource.sources")

    def registry(self) -> ShardRegistry:
        return ShardRegistry(self.output_root)

    def stage_uri(self, stage: str, shard: str, suffix: str = ".parquet") -> str:
        return storage.join(self.output_root, stage, f"{shard}{suffix}")

    def stage_dir(self, stage: str, *parts: str) -> str:
        return storage.join(self.output_root, stage, *parts)

    def source_root(self, source: str) -> str:
        try:
            return self.sources[source]
        except KeyError:
            raise dg.Failure(f"shard belongs to source {source!r}, which is not configured; configured: "
                             f"{sorted(self.sources)} (set CURATION_SOURCES)", allow_retries=False) from None


class StageSettings(dg.ConfigurableResource):
    """Per-stage settings, typed (resources/stages.py): each mirrors its library config dataclass,
    with its defaults shown in the launchpad; `settings.<stage>.to_library()` gives the dataclass.
    A dict of overrides is accepted too (`StageSettings(quality={"min_side": 64})`); an unknown key
    fails with the list of known keys."""

    inventory: InventorySettings = Field(default_factory=InventorySettings,
                                         description="curation.inventory.InventoryConfig")
    inventory_workers: int = Field(default=0, description="processes per inventory step; 0 = all cores")
    dedup: DedupSettings = Field(default_factory=DedupSettings, description="curation.dedup.DedupConfig")
    quality: QualitySettings = Field(default_factory=QualitySettings, description="curation.quality.QualityConfig")
    export: ExportSettings = Field(default_factory=ExportSettings, description="curation.export.ExportConfig")
    similarity: SimilaritySettings = Field(default_factory=SimilaritySettings,
                                           description="curation.similarity.IndexConfig")
    heads: list[HeadSettings] = Field(default_factory=list,
                                      description="model heads over the embeddings (curation.heads.HeadSpec each): "
                                                  "score_<name> columns in image_scores, optional reject reasons")

    def model_post_init(self, context) -> None:
        if self.inventory_workers < 0:
            raise SettingError("StageSettings.inventory_workers", self.inventory_workers,
                               "a whole number >= 0 (0 = one process per core)")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise SettingError("StageSettings.heads", names, "heads with distinct names")
