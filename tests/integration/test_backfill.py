"""Backfills run several shards per run (multi-run backfill policy): one run over a range of shards
materialises every stage of every shard in order, with cross-shard dedup and checks per shard."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest

from assets._common import BACKFILL_POLICY
from resources.classifier import ClassifierSettings
from resources.models import EmbedderResource
from tests.shards import materialization_metadata, materialized_partitions, sprite_shards

pytestmark = pytest.mark.slow


def test_every_partitioned_asset_backfills_in_multi_shard_runs():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.partitions_def is not None:
            assert node.backfill_policy == BACKFILL_POLICY, key
            assert BACKFILL_POLICY.max_partitions_per_run > 1


def test_one_run_over_a_range_of_shards(tmp_path):
    from assets.checks import ALL_CHECKS
    from assets.classifications import image_classifications
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from assets.reports import shard_report

    shards = sprite_shards(tmp_path, "r", step=25, shard_size=4,
                           copies={"z_copy_of_a00.png": 0})  # lands in the last shard: a cross-shard duplicate
    out, sprites, keys = shards.out, shards.sprites, shards.keys
    assert keys == ["r-000001", "r-000002", "r-000003"]
    resources = shards.resources(embedder=EmbedderResource(device="cpu"), classifier=ClassifierSettings(fewshot_uri=""))
    assets = [raw_inventory, dedup_clusters, curated_images, image_embeddings, image_classifications, shard_report]
    with shards.instance() as instance:
        res = dg.materialize([*assets, *ALL_CHECKS], instance=instance, resources=resources, tags=shards.range_tags)
        assert res.success
        assert all(e.passed for e in res.get_asset_check_evaluations())
        for asset in ("raw_inventory", "shard_report"):
            assert materialized_partitions(instance, asset) == keys, asset
        # every shard's outputs, and the copy in the last shard joined the first shard's cluster
        for k in keys:
            assert (out / "reports" / "shards" / k / "report.html").exists()
        inv1 = pl.read_parquet(out / "raw_inventory" / "r-000001.parquet")
        cl3 = pl.read_parquet(out / "dedup_clusters" / "r-000003.parquet")
        inv3 = pl.read_parquet(out / "raw_inventory" / "r-000003.parquet")
        copy_id = inv3.filter(pl.col("rel_path") == "z_copy_of_a00.png")["image_id"][0]
        row = cl3.filter(pl.col("image_id") == copy_id).row(0, named=True)
        orig_id = inv1.filter(pl.col("rel_path") == f"a00{sprites[0].suffix}")["image_id"][0]
        assert row["rep_shard"] == "r-000001" and row["cluster_id"] == orig_id and row["dup_kind"] == "exact"
        # few-shot is off (no examples): recorded as unavailable with the reason, never trained here
        for r in instance.fetch_materializations(dg.AssetKey("image_classifications"), limit=10).records:
            assert r.asset_materialization.metadata["few_shot"].value.startswith("unavailable: few-shot is disabled")
        cls = pl.read_parquet(out / "image_classifications" / "r-000001.parquet")
        assert cls.height > 0 and cls["fs_label"].null_count() == cls.height
        assert not (out / "models" / "few_shot_probe.json").exists()


def test_dedup_reads_earlier_indexes_as_blocks_and_results_do_not_depend_on_them(tmp_path):
    """Shard N reads shards 1..N-1 as O(log N) block files; deleting or staling blocks changes nothing."""
    from assets.dedup import dedup_clusters
    from assets.inventory import raw_inventory

    shards = sprite_shards(tmp_path, "b", step=30, shard_size=2,
                           copies={"z_copy.png": 1})  # 10 files, shards of 2: the copy is in shard 5
    out, keys = shards.out, shards.keys
    assert len(keys) == 5
    resources = shards.resources()
    blocks = out / "dedup_index_blocks"
    with shards.instance() as instance:
        for k in keys:
            assert dg.materialize([raw_inventory, dedup_clusters], partition_key=k, instance=instance,
                                  resources=resources).success
        names = sorted(p.name for p in blocks.iterdir())
        assert names == [f"{keys[0]}__{keys[1]}.parquet", f"{keys[0]}__{keys[3]}.parquet", f"{keys[2]}__{keys[3]}.parquet"]
        before = pl.read_parquet(out / "dedup_clusters" / f"{keys[4]}.parquet")
        copy = before.filter(pl.col("dup_kind") == "exact")
        assert copy.height == 1 and copy["rep_shard"][0] == keys[0]  # found through the [1, 4] block
        # without any block file the same rows are read (and the blocks are rebuilt)
        shutil.rmtree(blocks)
        assert dg.materialize([dedup_clusters], partition_key=keys[4], instance=instance, resources=resources).success
        assert pl.read_parquet(out / "dedup_clusters" / f"{keys[4]}.parquet").equals(before)
        assert (blocks / f"{keys[0]}__{keys[3]}.parquet").exists()
        # re-materialising shard 2 drops the blocks that contain it, and closes its own again
        assert dg.materialize([dedup_clusters], partition_key=keys[1], instance=instance, resources=resources).success
        assert sorted(p.name for p in blocks.iterdir()) == [f"{keys[0]}__{keys[1]}.parquet", f"{keys[2]}__{keys[3]}.parquet"]


def test_multi_shard_run_records_each_shards_own_metadata(tmp_path):
    """A run over a range of shards records, for every partition, that shard's own row count and
    time, not the range's totals (Dagster would attach a step's metadata to every partition)."""
    from assets.dedup import dedup_clusters
    from assets.inventory import raw_inventory
    from assets.reports import stage_timings

    shards = sprite_shards(tmp_path, "m", step=25, shard_size=4)
    out, keys = shards.out, shards.keys
    assert len(keys) == 3
    with shards.instance() as instance:
        res = dg.materialize([raw_inventory, dedup_clusters], instance=instance, resources=shards.resources(),
                             tags=shards.range_tags)
        assert res.success
        for asset in ("raw_inventory", "dedup_clusters"):
            mats = materialization_metadata(instance, asset)
            assert sorted(mats) == keys, asset
            for k in keys:
                rows = pl.read_parquet(out / asset / f"{k}.parquet").height
                md = mats[k]
                assert md["dagster/row_count"].value == rows, (asset, k)
                assert md["path"].value == str(out / asset / f"{k}.parquet"), (asset, k)
        sizes = [pl.read_parquet(out / "raw_inventory" / f"{k}.parquet").height for k in keys]
        assert sizes == [4, 4, 1]
        inv = materialization_metadata(instance, "raw_inventory")
        assert [inv[k]["decoded"].value + inv[k]["errors"].value for k in keys] == sizes
        # the report's time per stage is the shard's own time, not the range's total
        for k in keys:
            assert stage_timings(instance, k)["raw_inventory"] == inv[k]["elapsed_s"].value
        total = sum(inv[k]["elapsed_s"].value for k in keys)
        assert all(inv[k]["elapsed_s"].value < total for k in keys)
