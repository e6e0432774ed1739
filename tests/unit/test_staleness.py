"""Code versions follow the settings that change a stage's output (assets/freshness.py): a changed
setting gives its stage and every stage below it a new code version, nothing above it, and a
setting that does not change outputs (batch sizes, worker counts) changes no version."""

from __future__ import annotations

import importlib

import pytest

from assets.freshness import code_versions
from curation.stages import STAGES, lineage_versions, stage
from resources.classifier import ClassifierSettings
from resources.corpus import StageSettings
from resources.models import EmbedderResource


def below(name: str) -> set[str]:
    """`name` and every stage downstream of it, from the registry."""
    out = {name}
    for s in STAGES:
        if out & set(s.upstream):
            out.add(s.name)
    return out


def resources(**overrides):
    base = {"settings": StageSettings(inventory_workers=1), "embedder": EmbedderResource(device="cpu"),
            "classifier": ClassifierSettings(fewshot_uri="")}
    return {**base, **overrides}


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def test_a_quality_threshold_changes_curated_images_and_below_only():
    before = code_versions(resources())
    after = code_versions(resources(settings=StageSettings(inventory_workers=1, quality={"min_side": 64})))
    assert changed(before, after) == below("curated_images")
    assert {"raw_inventory", "dedup_clusters", "few_shot_probe"}.isdisjoint(changed(before, after))


@pytest.mark.parametrize("settings,first", [
    (StageSettings(inventory_workers=1, inventory={"max_pixels": 10_000_000}), "raw_inventory"),
    (StageSettings(inventory_workers=1, dedup={"phash_radius": 6}), "dedup_clusters"),
])
def test_each_stage_setting_marks_its_stage_and_below(settings, first):
    assert changed(code_versions(resources()), code_versions(resources(settings=settings))) == below(first)


def test_settings_that_do_not_change_outputs_change_no_version():
    before = code_versions(resources())
    for settings in (StageSettings(inventory_workers=3), StageSettings(inventory_workers=1, dedup={"pair_batch": 7}),
                     StageSettings(inventory_workers=1, inventory={"chunk_size": 16})):
        assert code_versions(resources(settings=settings)) == before
    assert code_versions(resources(embedder=EmbedderResource(device="cpu", batch_size=8))) == before


def test_the_embedder_environment_feeds_the_versions(monkeypatch):
    """EMBEDDER_* are read when the definitions load: the same variable the runs use moves the version
    of image_embeddings and below (and the probe, trained on that model), not curated_images."""
    import orchestration.definitions as definitions

    before = {k.to_user_string(): n.code_version for k, n in _graph(definitions)}
    monkeypatch.setenv("EMBEDDER_PRECISION", "bf16")
    definitions = importlib.reload(definitions)
    try:
        after = {k.to_user_string(): n.code_version for k, n in _graph(definitions)}
    finally:
        monkeypatch.delenv("EMBEDDER_PRECISION")
        importlib.reload(definitions)
    moved = {k for k in before if before[k] != after[k]}
    datasets = {d.name for s in STAGES for d in s.also_writes if s.name in below("image_embeddings")}
    assert moved == below("image_embeddings") | {"few_shot_probe"} | below("image_classifications") | datasets


def _graph(module):
    graph = module.defs.resolve_asset_graph()
    return [(k, graph.get(k)) for k in graph.get_all_asset_keys() if not graph.get(k).is_external]


def test_every_stage_asset_has_its_writers_version():
    import orchestration.definitions as definitions

    versions = code_versions(definitions.default_resources())
    for key, node in _graph(definitions):
        from curation.stages import writer_of

        assert node.code_version == versions[writer_of(key.to_user_string()).name], key


def test_the_algorithm_number_is_part_of_the_version():
    import dataclasses

    bumped = tuple(dataclasses.replace(s, algorithm=s.algorithm + 1) if s.name == "dedup_clusters" else s for s in STAGES)
    assert changed(lineage_versions({}), lineage_versions({}, bumped)) == below("dedup_clusters")
    # 2: the edge-ratio and clipping signals; 3: mid_ratio, flat_share, clip_boundary; 4: phash256;
    # 5: a cut-out the background swallows is hashed / thumbnailed on the contrasting background
    assert stage("raw_inventory").algorithm == 5
    assert stage("dedup_clusters").algorithm == 2  # 2: the 256-bit pHash check
    assert stage("image_embeddings").algorithm == 2  # 2: the same cut-outs embedded on the contrasting background
