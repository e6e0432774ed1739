"""Deployment-wide settings: where sources are, where outputs go, how big shards are, and the
per-stage knobs. Everything here is plain configuration (no secrets): S3 credentials are read by
s3fs from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from curation import storage
from partitions.shards import DEFAULT_SHARD_SIZE, ShardRegistry, validate_source_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_output_root() -> str:
    return os.environ.get("CURATION_OUTPUT_ROOT") or str(PROJECT_ROOT / "data" / "outputs")


def parse_sources(text: str) -> dict[str, str]:
    """Parse `name=uri[,name=uri...]` (the CURATION_SOURCES environment variable)."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, uri = item.partition("=")
        if not sep or not uri:
            raise ValueError(f"CURATION_SOURCES entry {item!r} must look like name=/path or name=s3://bucket/prefix")
        out[validate_source_name(name.strip())] = uri.strip()
    return out


def default_sources() -> dict[str, str]:
    env = os.environ.get("CURATION_SOURCES")
    if env:
        return parse_sources(env)
    return {"demo": str(PROJECT_ROOT / "data" / "demo_corpus")}


class CorpusResource(dg.ConfigurableResource):
    """Where images come from and where every stage's outputs go."""

    output_root: str = Field(default_factory=default_output_root,
                             description="Local folder or s3://bucket/prefix for all outputs.")
    sources: dict[str, str] = Field(default_factory=default_sources,
                                    description="Source name -> local folder or s3:// prefix.")
    shard_size: int = Field(default_factory=lambda: int(os.environ.get("CURATION_SHARD_SIZE", DEFAULT_SHARD_SIZE)),
                            description="Files per shard (default 10,000).")
    page_size: int = Field(default=100_000, description="Files listed per source per sensor tick.")

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
                             f"{sorted(self.sources)} (set CURATION_SOURCES)") from None


class StageSettings(dg.ConfigurableResource):
    """Per-stage overrides of the library defaults (documented in README 'Configuration').

    Each mapping is passed to that stage's config dataclass; an unknown key fails the step with the
    list of known keys.
    """

    inventory: dict[str, Any] = Field(default_factory=dict, description="curation.inventory.InventoryConfig overrides")
    inventory_workers: int = Field(default=0, description="processes per inventory step; 0 = all cores")
    dedup: dict[str, Any] = Field(default_factory=dict, description="curation.dedup.DedupConfig overrides")
    quality: dict[str, Any] = Field(default_factory=dict, description="curation.quality.QualityConfig overrides")
