"""bench/projection.py: projections computed from named result files only."""

import json

from bench.projection import projections


def _write(root, name, data):
    (root / name).write_text(json.dumps(data))


def test_projection_reads_only_named_inputs(tmp_path):
    _write(tmp_path, "inventory.json", {"date": "d1", "img_per_cpu_s": {"jpeg_stage_1_worker": 500.0},
                                        "parallel_efficiency_2_workers_cpu": 0.5})
    _write(tmp_path, "embeddings-nvidia-h100.json", {"date": "d2", "stage_img_per_s": 10_000.0})
    _write(tmp_path, "dedup.json", {"date": "d3", "dedup_5m_skewed_seconds": 60.0,
                                    "cross_shard": {"shard_10000_index_1000000": {"dedup_shard_seconds": 0.6}}})
    _write(tmp_path, "overhead.json", {"date": "d4", "dagster_overhead_fraction": 0.0,
                                       "plain_seconds": 5.0, "multiprocess_seconds": 11.0})
    _write(tmp_path, "demo.json", {"date": "d5", "stages": {"demo-000001": {"shard_report": {"elapsed_s": 12.0}}}})
    p = projections(tmp_path)
    five = p["five_million_gpu_node"]
    # stage 1: 5M / (500 * 16 * 0.5) = 1250 s; GPU 500 s; pipelined max + dedup 60 s = 1310 s
    assert five["parts_minutes"]["stage_1"] == round(1250 / 60, 1)
    assert five["minutes"] == round(1310 / 60, 1)
    one = p["one_million_this_machine"]
    # 1M / (500 * 2 * 0.5) = 2000 s; 100 shards x (0.6 + 12 + 6) s = 1860 s
    assert one["minutes"] == round(3860 / 60, 1)
    assert p["inputs"]["stage1_img_per_cpu_s"] == {"value": 500.0, "file": "bench/results/inventory.json",
                                                   "key": "img_per_cpu_s.jpeg_stage_1_worker", "measured": "d1"}


def test_projection_without_inputs_says_why(tmp_path):
    p = projections(tmp_path)
    assert p["five_million_gpu_node"]["minutes"] is None
    assert "missing" in p["one_million_this_machine"]["why_not"]
    assert p["inputs"]["stage1_img_per_cpu_s"]["value"] is None
