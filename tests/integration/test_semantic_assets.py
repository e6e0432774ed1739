"""The semantic pass as assets: `semantic_duplicates`' step is the one writer of `semantic_index`
(with block files from the shared index store) and of `semantic_center` (first shard only), and
its results do not depend on the block files."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest

from partitions.discovery import discover_all
from partitions.shards import SHARDS
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource
from tests.conftest import arcade_sprites

pytestmark = pytest.mark.slow


def test_semantic_pass_writes_its_datasets_once_and_blocks_change_nothing(tmp_path):
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from assets.semantic import semantic_duplicates

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    sprites = arcade_sprites()[::20][:9]
    for i, p in enumerate(sprites):
        shutil.copyfile(p, src / f"a{i:02d}{p.suffix}")
    corpus = CorpusResource(output_root=str(out), sources={"s": str(src)}, shard_size=3)
    keys = [s.key for s in discover_all(corpus.registry(), "s", str(src), shard_size=3)]
    assert len(keys) == 3
    resources = {"corpus": corpus, "settings": StageSettings(inventory_workers=1),
                 "embedder": EmbedderResource(device="cpu")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, keys)
        assert dg.materialize([raw_inventory, dedup_clusters, curated_images, image_embeddings], instance=instance,
                              resources=resources, tags={"dagster/asset_partition_range_start": keys[0],
                                                         "dagster/asset_partition_range_end": keys[-1]}).success
        for k in keys:
            assert dg.materialize([semantic_duplicates], partition_key=k, instance=instance, resources=resources).success
        mats = lambda asset: {r.partition_key: r.asset_materialization.metadata  # noqa: E731
                              for r in instance.fetch_materializations(dg.AssetKey(asset), limit=20).records}
        assert sorted(mats("semantic_center")) == [keys[0]]  # fitted once, on the first shard
        index = mats("semantic_index")
        assert sorted(index) == keys
        for k in keys:
            assert index[k]["dagster/row_count"].value == pl.read_parquet(out / "semantic_index" / f"{k}.parquet").height
        blocks = out / "semantic_index_blocks"
        assert sorted(p.name for p in blocks.iterdir()) == [f"{keys[0]}__{keys[1]}.parquet"]
        assert index[keys[1]]["blocks_written"].value == f"{keys[0]}__{keys[1]}.parquet"
        before = pl.read_parquet(out / "semantic_duplicates" / f"{keys[2]}.parquet")
        assert mats("semantic_duplicates")[keys[2]]["earlier_shards_compared"].value == 2
        shutil.rmtree(blocks)
        assert dg.materialize([semantic_duplicates], partition_key=keys[2], instance=instance, resources=resources).success
        assert pl.read_parquet(out / "semantic_duplicates" / f"{keys[2]}.parquet").equals(before)
        assert (blocks / f"{keys[0]}__{keys[1]}.parquet").exists()  # rebuilt from the shards' own indexes
