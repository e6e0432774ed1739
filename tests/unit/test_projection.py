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
    _write(tmp_path, "overhead.json", {"date": "d4", "dagster_overhead_fraction": 0.0, "plain_seconds": 5.0,
                                       "in_process_seconds": 5.5, "multiprocess_seconds": 11.0})
    _write(tmp_path, "demo.json", {"date": "d5", "stages": {"demo-000001": {"shard_report": {"elapsed_s": 12.0}}}})
    flat = {"dedup_clusters_first_last_decile_median_s": [0.3, 1.2]}
    _write(tmp_path, "million.json", {"date": "d6", "runs": {"sqlite": {"flatness": flat, "shards_run": 100,
                                                                        "shard_size": 10_000}}})
    p = projections(tmp_path)
    five = p["five_million_gpu_node"]
    # stage 1: 5M / (500 * 16 * 0.5) = 1250 s; GPU 500 s; pipelined max + dedup of 500 shards in
    # sequence on the million run's line: b = 0.9 s / 900k rows, a = 0.3 - 45k * b = 0.255 s;
    # 500 * 0.255 + b * 10k * (0 + 1 + ... + 499) = 127.5 + 1247.5 = 1375 s -> 2625 s
    assert five["parts_minutes"]["stage_1"] == round(1250 / 60, 1)
    assert five["parts_minutes"]["dedup"] == round(1375 / 60, 1)
    assert five["minutes"] == round(2625 / 60, 1)
    one = p["one_million_this_machine"]
    # 1M / (500 * 2 * 0.5) = 2000 s; 100 shards x (0.6 + 12 + (5.5 - 5.0)) s = 1310 s: the in-process executor
    assert one["minutes"] == round(3310 / 60, 1)
    assert p["inputs"]["stage1_img_per_cpu_s"] == {"value": 500.0, "file": "bench/results/inventory.json",
                                                   "key": "img_per_cpu_s.jpeg_stage_1_worker", "measured": "d1"}
    assert p["inputs"]["million_dedup_step_last_decile_s"] == {
        "value": 1.2, "file": "bench/results/million.json", "measured": "d6",
        "key": "runs.sqlite.flatness.dedup_clusters_first_last_decile_median_s.1"}


def test_projection_without_inputs_says_why(tmp_path):
    p = projections(tmp_path)
    assert p["five_million_gpu_node"]["minutes"] is None
    assert "missing" in p["one_million_this_machine"]["why_not"]
    assert p["inputs"]["stage1_img_per_cpu_s"]["value"] is None


def test_gap_to_the_measured_million_run(tmp_path):
    _write(tmp_path, "inventory.json", {"date": "d1", "img_per_cpu_s": {"jpeg_stage_1_worker": 500.0},
                                        "parallel_efficiency_2_workers_cpu": 0.5})
    _write(tmp_path, "demo.json", {"date": "d5", "stages": {"demo-000001": {"shard_report": {"elapsed_s": 12.0}}}})
    assert "why_not" in projections(tmp_path)["one_million_gap"]  # no measured run yet
    run = {"shards_run": 40, "sum_shard_wall_s": 1200.0, "total_wall_s": 1300.0, "cpu_ms_per_image": 1.5,
           "stage_seconds_total": {"raw_inventory": 800.0, "shard_report": 80.0}}
    _write(tmp_path, "million.json", {"date": "d6", "corpus": {"long_side_px": {"p50": 64}}, "runs": {"sqlite": run}})
    gap = projections(tmp_path)["one_million_gap"]
    # projected: 2000 s stage 1 + 100 x 12 s reports = 3200 s over 100 shards = 32 s a shard; measured 30 s
    assert gap["seconds_per_shard"] == {"projected": 32.0, "measured": 30.0, "measured_over_projected": 0.938}
    assert gap["minutes"]["measured"] is None and "40 of 100" in gap["minutes"]["why_not"]  # partial: no total
    assert gap["stage_1_seconds_per_shard"] == {"projected": 20.0, "measured": 20.0}
    assert gap["cpu_ms_per_image"]["projected_stage_1_jpeg_photos"] == 2.0
    _write(tmp_path, "million.json", {"date": "d6", "runs": {"sqlite": {**run, "shards_run": 100,
                                                                        "sum_shard_wall_s": 3000.0,
                                                                        "total_wall_s": 3300.0}}})
    full = projections(tmp_path)["one_million_gap"]["minutes"]
    assert full == {"projected": round(3200 / 60, 1), "measured": 55.0, "gap": round(55.0 - round(3200 / 60, 1), 1),
                    "measured_over_projected": round(55.0 / round(3200 / 60, 1), 3)}
