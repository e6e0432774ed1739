"""The stage registry: one writer per dataset, upstream before downstream, names derived from it."""

from __future__ import annotations

import dataclasses

import pytest

from curation import stages
from curation.stages import (
    STAGES,
    Compute,
    Dataset,
    Stage,
    check_registry,
    stage,
    writer_of,
)


def test_every_dataset_has_one_writer_and_upstreams_come_first():
    check_registry(STAGES)
    outputs = [d for s in STAGES for d in s.outputs]
    assert len(outputs) == len(set(outputs))
    assert writer_of("dedup_index").name == "dedup_clusters"
    assert writer_of("semantic_center").name == writer_of("semantic_index").name == "semantic_duplicates"
    assert "few_shot_probe" in stage("image_classifications").upstream
    assert stages.SHARD_STAGES == ("raw_inventory", "dedup_clusters", "curated_images", "image_embeddings",
                                   "image_classifications", "image_scores", "curated_export", "similarity_index",
                                   "shard_report")
    assert {"image_scores", "similarity_index"} <= set(stage("shard_report").upstream)
    assert "image_scores" in stage("curated_export").upstream
    assert stages.REPORT_STAGES == stages.SHARD_STAGES[:-1]
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        stage("nope")


def test_a_broken_registry_is_refused():
    inv = stage("raw_inventory")
    twice = dataclasses.replace(stage("curated_images"), also_writes=(Dataset("dedup_index", "again"),))
    with pytest.raises(ValueError, match=r"more than one writer: \['dedup_index'\]"):
        check_registry((inv, stage("dedup_clusters"), twice))
    with pytest.raises(ValueError, match="upstream"):
        check_registry((stage("curated_images"), inv))
    assert isinstance(Stage("x", (), "g", "curate", "d").compute, Compute)


def test_compute_profiles_are_consistent():
    assert [s.name for s in STAGES if s.compute.kind == "gpu"] == ["image_embeddings"]
    with pytest.raises(ValueError, match="at least one GPU"):
        Compute(kind="gpu", gpus=0)
    with pytest.raises(ValueError, match="expected 'cpu' or 'gpu'"):
        Compute(kind="tpu")  # type: ignore[arg-type]


def test_definitions_are_checked_against_the_registry():
    from orchestration.definitions import all_assets, all_checks, check_against_registry

    check_against_registry(all_assets, all_checks)
    with pytest.raises(ValueError, match="differ from the stage registry"):
        check_against_registry([a for a in all_assets if a.node_def.name != "shard_report"], all_checks)
    with pytest.raises(ValueError, match="asset checks"):
        check_against_registry(all_assets, all_checks[1:])


def test_environment_is_read_when_asked(monkeypatch):
    from resources import environment

    monkeypatch.delenv("CURATION_BACKFILL_SHARDS_PER_RUN", raising=False)
    monkeypatch.delenv("CURATION_DEPLOYMENT", raising=False)
    assert environment.backfill_shards_per_run() == 10 and environment.deployment() == "local"
    monkeypatch.setenv("CURATION_BACKFILL_SHARDS_PER_RUN", "4")
    assert environment.backfill_shards_per_run() == 4
    # a bad value never stops the definitions loading: the default applies and the problem is
    # reported (one line naming the variable) by the settings checks that fail runs and ticks
    for bad in ("0", "ten"):
        monkeypatch.setenv("CURATION_BACKFILL_SHARDS_PER_RUN", bad)
        assert environment.backfill_shards_per_run() == 10
        [problem] = environment.problems(["CURATION_BACKFILL_SHARDS_PER_RUN"])
        assert f"CURATION_BACKFILL_SHARDS_PER_RUN={bad}" in str(problem) or bad in str(problem)
