"""The semantic pass as assets: `semantic_duplicates`' step is the one writer of `semantic_index`
(with block files from the shared index store) and of `semantic_center` (first shard only), and
its results do not depend on the block files."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest

from resources.models import EmbedderResource
from tests.shards import materialization_metadata, sprite_shards

pytestmark = pytest.mark.slow


def test_semantic_pass_writes_its_datasets_once_and_blocks_change_nothing(tmp_path):
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from assets.semantic import semantic_duplicates

    shards = sprite_shards(tmp_path, "s", step=20, shard_size=3)
    out, keys = shards.out, shards.keys
    assert len(keys) == 3
    resources = shards.resources(embedder=EmbedderResource(device="cpu"))
    with shards.instance() as instance:
        assert dg.materialize([raw_inventory, dedup_clusters, curated_images, image_embeddings], instance=instance,
                              resources=resources, tags=shards.range_tags).success
        ivf_run = {"ops": {"semantic_duplicates": {"config": {"index": "ivf"}}}}
        for k in keys:
            assert dg.materialize([semantic_duplicates], partition_key=k, instance=instance, resources=resources,
                                  run_config=ivf_run).success
        assert sorted(materialization_metadata(instance, "semantic_center")) == [keys[0]]  # fitted once, on the first shard
        index = materialization_metadata(instance, "semantic_index")
        assert sorted(index) == keys
        for k in keys:
            assert index[k]["dagster/row_count"].value == pl.read_parquet(out / "semantic_index" / f"{k}.parquet").height
        # the partitioned index: shard 2 queried generation 1 (shard 1), shard 3 generation 2
        ivf = out / "semantic_index_ivf"
        assert sorted(p.name for p in ivf.iterdir()) == [f"gen-000001-{keys[0]}", f"gen-000002-{keys[1]}", "settings.json"]
        assert (ivf / f"gen-000002-{keys[1]}" / "block" / "vec.npy").exists()
        meta = materialization_metadata(instance, "semantic_duplicates")
        assert meta[keys[2]]["index"].value == "ivf" and meta[keys[2]]["ivf_generation_end"].value == 2
        assert not (out / "semantic_index_blocks").exists()  # the streaming path's blocks are not written
        before = pl.read_parquet(out / "semantic_duplicates" / f"{keys[2]}.parquet")
        assert meta[keys[2]]["earlier_shards_compared"].value == 2
        # the streaming path gives the same result, and writes / rebuilds its block files
        stream = {"ops": {"semantic_duplicates": {"config": {"index": "stream"}}}}
        blocks = out / "semantic_index_blocks"
        for _ in range(2):
            assert dg.materialize([semantic_duplicates], partition_key=keys[2], instance=instance, resources=resources,
                                  run_config=stream).success
            assert pl.read_parquet(out / "semantic_duplicates" / f"{keys[2]}.parquet").equals(before)
            assert (blocks / f"{keys[0]}__{keys[1]}.parquet").exists()  # rebuilt from the shards' own indexes
            shutil.rmtree(blocks)
        # the partitioned index is derived data too: rebuilt from the shards' indexes when missing
        shutil.rmtree(ivf / f"gen-000002-{keys[1]}")
        assert dg.materialize([semantic_duplicates], partition_key=keys[2], instance=instance, resources=resources,
                              run_config=ivf_run).success
        assert pl.read_parquet(out / "semantic_duplicates" / f"{keys[2]}.parquet").equals(before)
        assert (ivf / f"gen-000002-{keys[1]}" / "block" / "vec.npy").exists()
        # index settings are checked across shards: a different format is a clear error, not a silent mismatch
        other = {"ops": {"semantic_duplicates": {"config": {"n_bands": 32, "index": "ivf"}}}}
        res = dg.materialize([semantic_duplicates], partition_key=keys[2], instance=instance, resources=resources,
                             run_config=other, raise_on_error=False)
        assert not res.success
        bad = {"ops": {"semantic_duplicates": {"config": {"index": "hnsw"}}}}
        assert not dg.materialize([semantic_duplicates], partition_key=keys[2], instance=instance, resources=resources,
                                  run_config=bad, raise_on_error=False).success
