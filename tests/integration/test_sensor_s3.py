"""The new-files sensor against an S3 source served by a real S3-compatible server on loopback."""

from __future__ import annotations

import json

import dagster as dg

from partitions.shards import SHARDS
from resources.corpus import CorpusResource
from tests.conftest import arcade_sprites
from tests.integration.test_sensor import tick as _tick
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)


def test_s3_source_pages_registers_and_finds_new_objects(tmp_path, s3):
    bucket = s3.bucket
    sprites = arcade_sprites(30)
    for i, p in enumerate(sprites[:25]):
        s3.server.direct_client().put_object(Bucket=bucket, Key=f"raw/cam/{i:03d}.png", Body=p.read_bytes())
    s3.server.direct_client().put_object(Bucket=bucket, Key="raw/other/ignored.png", Body=sprites[0].read_bytes())
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"cam": f"s3://{bucket}/raw/cam"},
                            shard_size=10, page_size=12)
    with dg.instance_for_test() as instance:
        cursor, keys = None, []
        for _ in range(4):
            r = _tick(instance, corpus, cursor)
            keys += [rr.partition_key for rr in r.run_requests]
            cursor = r.cursor
        assert keys == ["cam-000001", "cam-000002", "cam-000003"]
        uris = [u for k in keys for u in corpus.registry().manifest(k)["uri"]]
        assert len(uris) == len(set(uris)) == 25 and all(u.startswith(f"s3://{bucket}/raw/cam/") for u in uris)
        assert json.loads(cursor)["cam"]["passes"] >= 1
        # new objects arrive
        for i, p in enumerate(sprites[25:]):
            s3.server.direct_client().put_object(Bucket=bucket, Key=f"raw/cam/new_{i:03d}.png", Body=p.read_bytes())
        new = []
        for _ in range(3):
            r = _tick(instance, corpus, cursor)
            new += [rr.partition_key for rr in r.run_requests]
            cursor = r.cursor
        assert new == ["cam-000004"] and len(corpus.registry().manifest("cam-000004")) == 5
        assert set(instance.get_dynamic_partitions(SHARDS.name)) == set(keys + new)
