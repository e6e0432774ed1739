"""Shards of real sprites for the integration tests that materialise assets over several shards
(tests/integration/test_backfill.py, test_semantic_assets.py): copy a slice of arcade's sprites
into a source folder, register it as shards the way the sensor does, and give an instance that
knows those shards as dynamic partitions."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from partitions.discovery import discover_all
from partitions.shards import SHARDS_NAME
from resources.corpus import CorpusResource, StageSettings
from tests.conftest import arcade_sprites


@dataclass(frozen=True)
class SpriteShards:
    src: Path  # the source folder: a00.png, a01.png, ... then the extra copies
    out: Path  # the output root
    sprites: list[Path]  # the sprites copied, in order (a00 is sprites[0])
    corpus: CorpusResource
    keys: list[str]  # the registered shards, in order

    def resources(self, **extra: Any) -> dict[str, Any]:
        """corpus and one-worker settings (fast in tests), plus `extra` (embedder, classifier)."""
        return {"corpus": self.corpus, "settings": StageSettings(inventory_workers=1), **extra}

    @property
    def range_tags(self) -> dict[str, str]:
        """Tags of one run over all the shards (what a multi-shard backfill run carries)."""
        return {"dagster/asset_partition_range_start": self.keys[0], "dagster/asset_partition_range_end": self.keys[-1]}

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """A test instance that knows the shards."""
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(SHARDS_NAME, self.keys)
            yield instance


def sprite_shards(tmp_path: Path, source: str, *, step: int, shard_size: int, n: int = 9,
                  copies: Mapping[str, int] | None = None) -> SpriteShards:
    """`n` sprites (every `step`-th of arcade's set) as `<tmp_path>/src/aNN<suffix>`, plus `copies`
    (file name -> index of the sprite it copies; named to sort last, so it lands in a later shard),
    registered as shards of `shard_size` files of source `source`; outputs under `<tmp_path>/out`."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    sprites = arcade_sprites()[::step][:n]
    for i, p in enumerate(sprites):
        shutil.copyfile(p, src / f"a{i:02d}{p.suffix}")
    for name, i in (copies or {}).items():
        shutil.copyfile(sprites[i], src / name)
    corpus = CorpusResource(output_root=str(out), sources={source: str(src)}, shard_size=shard_size)
    keys = [s.key for s in discover_all(corpus.registry(), source, str(src), shard_size=shard_size)]
    return SpriteShards(src=src, out=out, sprites=sprites, corpus=corpus, keys=keys)


def materialized_partitions(instance: dg.DagsterInstance, asset: str, limit: int = 20) -> list[str]:
    """The partition of every materialisation of `asset`, sorted (a partition twice shows twice)."""
    return sorted(str(r.partition_key) for r in instance.fetch_materializations(dg.AssetKey(asset), limit=limit).records)


def materialization_metadata(instance: dg.DagsterInstance, asset: str, limit: int = 20) -> dict[str, Mapping[str, Any]]:
    """partition -> metadata of `asset`'s materialisation; fails if a partition was materialised twice."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=limit).records
    out = {str(r.partition_key): r.asset_materialization.metadata for r in records if r.asset_materialization}
    assert len(out) == len(records), f"{asset}: a partition materialised more than once {materialized_partitions(instance, asset)}"
    return out
