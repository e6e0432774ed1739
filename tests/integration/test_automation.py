"""Automation and staleness against real materialisations (assets/freshness.py).

1. The automation conditions, evaluated tick by tick as the `curation_automation` sensor does
   (`dg.evaluate_automation_conditions` with the cursor carried over): a new shard's curation
   requests `curation_summary` and that shard's `semantic_duplicates`; changed few-shot examples
   request `few_shot_probe`; a tick where nothing changed requests nothing.
2. Staleness as Dagster's own resolver (the one behind the UI's "stale" badges) reports it: after a
   quality threshold change, the reloaded definitions show `curated_images` and everything below it
   stale for the materialised shard, `raw_inventory` and `dedup_clusters` fresh; re-running the
   shard makes it all fresh again.
"""

from __future__ import annotations

import datetime
import shutil

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from orchestration.definitions import build_definitions
from orchestration.jobs import JOB_OF
from partitions.discovery import discover_all
from partitions.shards import SHARDS
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource
from tests.conftest import arcade_sprites, mnist_digits

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus_setup(tmp_path):
    src, out, fewshot = tmp_path / "src", tmp_path / "out", tmp_path / "fewshot"
    src.mkdir()
    for i, p in enumerate(arcade_sprites()[::25][:8]):
        shutil.copyfile(p, src / f"a{i:02d}{p.suffix}")
    X, y = mnist_digits(2000)
    for label in (0, 1):
        (fewshot / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(y == label)[:4]:
            Image.fromarray(X[i]).resize((64, 64)).save(fewshot / str(label) / f"{i}.png")
    corpus = CorpusResource(output_root=str(out), sources={"r": str(src)}, shard_size=4)
    keys = [s.key for s in discover_all(corpus.registry(), "r", str(src), shard_size=4)]
    assert keys == ["r-000001", "r-000002"]

    def resources(**settings):
        return {"corpus": corpus, "settings": StageSettings(inventory_workers=1, **settings),
                "embedder": EmbedderResource(device="cpu"), "classifier": ClassifierSettings(fewshot_uri=str(fewshot))}

    return keys, fewshot, resources


def run(defs: dg.Definitions, job: str, instance, partition: str | None = None) -> None:
    result = defs.resolve_job_def(JOB_OF[job]).execute_in_process(instance=instance, partition_key=partition)
    assert result.success


class Ticks:
    """The automation sensor's evaluations, one per call, with its cursor carried between them.

    Ticks run on a clock of their own that starts now and advances 1 ms per tick, so the examples'
    5-minute cron passes only when a test moves the clock (`later`), never because the test itself
    happened to run across a 5-minute boundary."""

    def __init__(self, defs: dg.Definitions, instance):
        self.defs, self.instance, self.cursor = defs, instance, None
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self, later: datetime.timedelta = datetime.timedelta(milliseconds=1)) -> dict[str, set]:
        self.now += later
        result = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self.cursor,
                                                   evaluation_time=self.now)
        self.cursor = result.cursor
        graph = self.defs.resolve_asset_graph()
        out = {}
        for key in graph.get_all_asset_keys():
            if graph.get(key).automation_condition is not None:
                requested = result.get_requested_partitions(key)
                if requested:
                    out[key.to_user_string()] = set(requested)
        return out


def observe_examples(defs: dg.Definitions, instance) -> None:
    from dagster._core.definitions.observe import observe

    from assets.freshness import few_shot_examples

    assert observe([few_shot_examples], instance=instance, resources=defs.resources).success


def test_automation_requests_exactly_what_new_shards_and_examples_need(corpus_setup):
    keys, fewshot, resources = corpus_setup
    defs = build_definitions(resources())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, keys)
        tick = Ticks(defs, instance)
        assert tick() == {}  # nothing materialised: nothing to follow up
        run(defs, "curate", instance, keys[0])
        # shard 1 landed: its semantic pass, the summary and the corpus manifest; shard 2 (no embeddings) not
        assert tick() == {"semantic_duplicates": {keys[0]}, "curation_summary": {None}, "corpus_manifest": {None}}
        assert tick() == {}  # requested once, not again while nothing changes
        run(defs, "semantic", instance, keys[0])
        run(defs, "summary", instance)
        assert tick() == {}
        run(defs, "curate", instance, keys[1])
        assert tick() == {"semantic_duplicates": {keys[1]}, "curation_summary": {None}, "corpus_manifest": {None}}
        assert tick() == {}

        observe_examples(defs, instance)  # first observation of the examples: train the probe
        assert tick() == {"few_shot_probe": {None}}
        assert tick() == {}
        observe_examples(defs, instance)  # observed again, same listing: nothing
        assert tick() == {}
        shutil.copyfile(next((fewshot / "0").iterdir()), fewshot / "1" / "added.png")
        observe_examples(defs, instance)  # an example added: re-train
        assert tick() == {"few_shot_probe": {None}}
        assert tick() == {}
        # the examples folder itself is observed on its cron, by the same sensor
        assert tick(later=datetime.timedelta(minutes=6)) == {"few_shot_examples": {None}}
        assert tick() == {}


def stale_status(defs: dg.Definitions, instance, partition: str) -> dict[str, str]:
    """Every materialised stage asset's status, as the UI gets it (CachingStaleStatusResolver)."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    out = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_external or key.to_user_string() in ("few_shot_probe", "semantic_center"):
            continue
        out[key.to_user_string()] = resolver.get_status(key, partition if node.is_partitioned else None).value
    return out


def test_a_quality_threshold_change_marks_curated_images_and_below_stale(corpus_setup):
    from curation.stages import STAGES

    keys, _, resources = corpus_setup
    defs = build_definitions(resources())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, keys)
        run(defs, "curate", instance, keys[0])
        run(defs, "semantic", instance, keys[0])
        run(defs, "summary", instance)
        before = stale_status(defs, instance, keys[0])
        assert set(before.values()) == {"FRESH"}, before

        changed = build_definitions(resources(quality={"min_side": 64}))  # reloaded with the new threshold
        after = stale_status(changed, instance, keys[0])
        below = {"curated_images"}
        for s in STAGES:
            if below & set(s.upstream):
                below.add(s.name)
        below |= {d.name for s in STAGES if s.name in below for d in s.also_writes if not d.skippable}
        assert {k for k, v in after.items() if v == "STALE"} == below, after
        assert after["raw_inventory"] == after["dedup_clusters"] == after["dedup_index"] == "FRESH"
        assert stale_status(changed, instance, keys[1])["curated_images"] == "MISSING"

        # the cause is the one the UI shows: a new code version, on the stage itself
        from dagster._core.definitions.data_version import CachingStaleStatusResolver
        from dagster._core.loader import LoadingContextForTest

        resolver = CachingStaleStatusResolver(instance, changed.resolve_asset_graph(), LoadingContextForTest(instance))
        causes = resolver.get_stale_causes(dg.AssetKey("image_embeddings"), keys[0])
        assert [c.reason for c in causes] == ["has a new code version"]

        run(changed, "curate", instance, keys[0])  # re-running the shard makes its chain fresh again
        again = stale_status(changed, instance, keys[0])
        assert {k for k, v in again.items() if v == "STALE"} == {
            "semantic_duplicates", "semantic_index", "curation_summary", "corpus_manifest"}, again
