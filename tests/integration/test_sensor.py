"""The new-files sensor, evaluated with build_sensor_context against a real (ephemeral) instance."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from orchestration.sensors import evaluate_new_files
from partitions.shards import SHARDS, ShardRegistry
from resources.corpus import CorpusResource
from tests.conftest import write_real_images


def tick(instance, corpus, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = evaluate_new_files(ctx, corpus)
    # what the daemon does with the result: add the partitions
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_new_files_become_shards_and_runs_once(tmp_path, instance):
    src = tmp_path / "src"
    write_real_images(src, 7)
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"cam": str(src)}, shard_size=3, page_size=100)
    r1 = tick(instance, corpus)
    keys = [rr.partition_key for rr in r1.run_requests]
    assert keys == ["cam-000001", "cam-000002", "cam-000003"]
    assert set(instance.get_dynamic_partitions(SHARDS.name)) == set(keys)
    assert all(rr.run_key == f"shard:{k}" for rr, k in zip(r1.run_requests, keys))
    # no new files: skip, no runs
    r2 = tick(instance, corpus, r1.cursor)
    assert not r2.run_requests and "no new files" in (r2.skip_reason.skip_message if r2.skip_reason else "")
    # new files arrive
    write_real_images(src, 4, start=100)
    r3 = tick(instance, corpus, r2.cursor)
    new = [rr.partition_key for rr in r3.run_requests]
    assert new == ["cam-000004", "cam-000005"]
    reg = ShardRegistry(corpus.output_root)
    assert sum(len(reg.manifest(k)) for k in reg.keys()) == 11


def test_cursor_survives_restart_and_pages_across_ticks(tmp_path, instance):
    src = tmp_path / "src"
    write_real_images(src, 10)
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"cam": str(src)}, shard_size=2, page_size=4)
    r1 = tick(instance, corpus)
    state = json.loads(r1.cursor)
    assert state["cam"]["after"] and state["cam"]["passes"] == 0  # stopped mid-listing
    # "restart": a fresh evaluation with only the stored cursor string
    r2 = tick(instance, corpus, r1.cursor)
    r3 = tick(instance, corpus, r2.cursor)
    got = [rr.partition_key for r in (r1, r2, r3) for rr in r.run_requests]
    assert len(got) == len(set(got)) == 5
    assert json.loads(r3.cursor)["cam"]["passes"] == 1


def test_registered_shards_missing_from_instance_are_reconciled(tmp_path, instance):
    src = tmp_path / "src"
    write_real_images(src, 4)
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"cam": str(src)}, shard_size=2)
    # registry written, but the tick that did it never reached the instance
    from curation.sources import list_source

    files, _ = list_source(str(src))
    corpus.registry().register("cam", files, 2)
    r = tick(instance, corpus)
    assert sorted(rr.partition_key for rr in r.run_requests) == ["cam-000001", "cam-000002"]


def test_missing_source_fails_the_tick_with_one_line(tmp_path, instance):
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"gone": str(tmp_path / "nope")})
    with pytest.raises(dg.Failure, match=r"CorpusResource.sources\[gone\]=.*an existing folder") as exc:
        tick(instance, corpus)
    assert "\n" not in str(exc.value.description)


def test_a_missing_source_does_not_stop_the_others(tmp_path, instance):
    src = tmp_path / "src"
    write_real_images(src, 3)
    corpus = CorpusResource(output_root=str(tmp_path / "out"), shard_size=10,
                            sources={"cam": str(src), "gone": str(tmp_path / "nope")})
    r = tick(instance, corpus)
    assert [rr.partition_key for rr in r.run_requests] == ["cam-000001"]
