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
                                   "image_classifications", "shard_report")
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
