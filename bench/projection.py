"""Projections rebuilt from measured inputs only: every input is read from a committed bench result and
named with its file and key, so a projection can always be traced to the run that measured it.

    python -m bench.projection          # prints the projections (bench.suite stores them in scale.json)

Two projections:
* ``five_million_gpu_node``: 5M images on one node like the lent GPU machine (16 cores, one GPU):
  stage 1 at the rate its 16-worker pool measured on that machine (`stage1_scaling-gpu-host-h200.json`;
  where that file is absent, the per-core CPU rate times the cores times the 2-worker efficiency), the GPU
  embedding stage at its measured rate, shards pipelined (CPU stages of shard k+1 beside the GPU stage
  of shard k), plus dedup of 5M hashes and Dagster's measured overhead fraction.
* ``one_million_this_machine``: stages 1-3 and the shard reports for 1M images on the 2-core machine the
  benches ran on (100 shards of 10,000; no embeddings): what `bench/million.py` would be compared with.

Neither is a measurement. ``one_million_gap`` sets ``one_million_this_machine`` against the measured
run of bench/million.py (bench/results/million.json, SQLite instance): total minutes when all 100 shards
ran, otherwise per shard; stage 1 and the reports part by part; and the CPU cost per image, which differs
because that run's corpus is small images (median long side ~60-70 px) where the projection's inputs were
measured on 500-1024 px JPEG photos.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import REPO

RESULTS = REPO / "bench" / "results"


class Inputs:
    """Measured values read from bench/results/*.json; each read is recorded with its file and key."""

    def __init__(self, root: Path = RESULTS) -> None:
        self.root = root
        self.used: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, dict] = {}

    def get(self, name: str, file: str, *keys: str | int) -> float | None:
        """The number at `keys` (dict keys; an int indexes a list) of bench/results/<file>, or None."""
        if file not in self._cache:
            p = self.root / file
            self._cache[file] = json.loads(p.read_text()) if p.exists() else {}
        v: Any = self._cache[file]
        measured = v.get("date")
        for k in keys:
            if isinstance(k, int):
                v = v[k] if isinstance(v, list) and -len(v) <= k < len(v) else None
            else:
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, dict) and isinstance(v.get("date"), str):
                measured = v["date"]  # the innermost dated record: e.g. one run of million.json
        value = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        self.used[name] = {"value": value, "file": f"bench/results/{file}", "key": ".".join(map(str, keys)),
                           "measured": measured}
        return value


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 1)


def five_million_gpu_node(inp: Inputs, cores: int = 16, n: int = 5_000_000) -> dict:
    per_core = inp.get("stage1_img_per_cpu_s", "inventory.json", "img_per_cpu_s", "jpeg_stage_1_worker")
    eff = inp.get("stage1_parallel_efficiency_2_workers", "inventory.json", "parallel_efficiency_2_workers_cpu")
    gpu = inp.get("embeddings_gpu_stage_img_per_s", "embeddings-nvidia-h100.json", "stage_img_per_s")
    flat = ("runs", "sqlite", "flatness", "dedup_clusters_first_last_decile_median_s")
    first = inp.get("million_dedup_step_first_decile_s", "million.json", *flat, 0)
    last = inp.get("million_dedup_step_last_decile_s", "million.json", *flat, 1)
    run_shards = inp.get("million_shards_run", "million.json", "runs", "sqlite", "shards_run")
    run_shard_size = inp.get("million_shard_size", "million.json", "runs", "sqlite", "shard_size")
    overhead = inp.get("dagster_overhead_fraction", "overhead.json", "dagster_overhead_fraction") or 0.0
    node = inp.get("stage1_img_per_s_16_workers_gpu_host", "stage1_scaling-gpu-host-h200.json",
                   "workers", str(cores), "img_per_s")
    if node:
        node_eff = inp.get("stage1_efficiency_16_workers_gpu_host", "stage1_scaling-gpu-host-h200.json",
                           "workers", str(cores), "efficiency_wall")
        stage1_s = n / node
        stage1_how = (f"stage 1 at the {node:.0f} img/s its {cores}-worker pool measured on the lent GPU host "
                      f"(wall efficiency {node_eff} against its own 1-worker rate; JPEG photos 500x375..1024x768)")
    elif per_core and eff:
        stage1_s = n / (per_core * cores * eff)
        stage1_how = (f"{cores} cores at the per-core rate and 2-worker efficiency measured on the 2-core VM "
                      "(16-worker efficiency not measured)")
    else:
        return {"minutes": None, "why_not": "stage 1 rate or parallel efficiency missing"}
    embed_s = n / gpu if gpu else None
    # The cross-shard dedup step (dedup_clusters: loading the earlier index, matching, clustering) is
    # linear in the earlier index, and shard k's step follows shard k-1's. Its cost per shard as a
    # line a + b * earlier rows through the million-image run's first and last decile medians (at
    # the median earlier rows of those shards: 45k and 945k for 100 shards of 10,000), summed over
    # the shards, not overlapped with anything (an upper bound).
    shards = n // 10_000
    dedup_s = None
    if first is not None and last is not None and run_shards and run_shard_size:
        q = max(1, int(run_shards) // 10)  # shards per decile, as bench/million.py's `flatness`
        rows_first = (q - 1) / 2 * run_shard_size  # shards 1..q have 0..q-1 earlier shards
        rows_last = (run_shards - q + (q - 1) / 2) * run_shard_size
        b = max(0.0, (last - first) / (rows_last - rows_first)) if rows_last > rows_first else 0.0
        a = max(0.0, first - b * rows_first)
        dedup_s = shards * a + b * 10_000 * shards * (shards - 1) / 2
    total = (max(stage1_s, embed_s or 0.0) + (dedup_s or 0.0)) / (1 - overhead)
    return {
        "images": n, "minutes": _minutes(total),
        "parts_minutes": {"stage_1": _minutes(stage1_s), "embeddings_gpu": _minutes(embed_s),
                          "dedup": _minutes(dedup_s)},
        "assumptions": [
            stage1_how,
            "shards pipelined: wall = max(CPU stages, GPU stage) + dedup, divided by (1 - Dagster overhead)",
            f"dedup: {shards} shards of 10,000 in sequence, each costing the million-image run's dedup_clusters "
            "step (first / last decile medians, a line in the earlier rows) at its earlier rows (mean 2.5M): "
            "an upper bound, not overlapped",
            "JPEG photos 500x375..1024x768 (the inventory bench's corpus); the semantic pass is not included",
        ],
    }


def one_million_this_machine(inp: Inputs, cores: int = 2, n: int = 1_000_000, shard: int = 10_000) -> dict:
    per_core = inp.get("stage1_img_per_cpu_s", "inventory.json", "img_per_cpu_s", "jpeg_stage_1_worker")
    eff = inp.get("stage1_parallel_efficiency_2_workers", "inventory.json", "parallel_efficiency_2_workers_cpu")
    cross = inp.get("dedup_shard_10k_vs_1m_index_seconds", "dedup.json", "cross_shard",
                    "shard_10000_index_1000000", "dedup_shard_seconds")
    plain = inp.get("shard_10k_plain_seconds", "overhead.json", "plain_seconds")
    in_process = inp.get("shard_10k_dagster_in_process_seconds", "overhead.json", "in_process_seconds")
    report_s = inp.get("shard_report_seconds_2000_images", "demo.json", "stages", "demo-000001", "shard_report",
                       "elapsed_s")
    if not (per_core and eff):
        return {"minutes": None, "why_not": "stage 1 rate or parallel efficiency missing"}
    shards = n // shard
    stage1_s = n / (per_core * cores * eff)
    dedup_s = shards * (cross or 0.0)  # every shard against an index of up to 1M rows: an upper bound
    # the shard report's cost is mostly thumbnails of a bounded sample, so per shard, not per image
    reports_s = shards * (report_s or 0.0)
    # seconds Dagster adds per 10k shard, with the in-process executor `curate run` and bench/million.py use
    dagster_s = shards * max(0.0, (in_process or 0.0) - (plain or 0.0))
    total = stage1_s + dedup_s + reports_s + dagster_s
    return {
        "images": n, "shards": shards, "minutes": _minutes(total),
        "parts_minutes": {"stage_1": _minutes(stage1_s), "dedup": _minutes(dedup_s), "reports": _minutes(reports_s),
                          "dagster": _minutes(dagster_s)},
        "assumptions": [
            f"{cores} workers at the measured per-core rate and efficiency (JPEG photos; small packaged "
            "graphics decode faster, large ones slower)",
            "dedup: every shard costs what a 10k shard against a 1M-row index cost (upper bound)",
            "shard report: the demo's measured report time per shard (2,000 images, loaded machine)",
            "Dagster: the seconds its in-process executor (what `curate run` and bench/million.py use) added "
            "to a 10k shard, per shard",
            "the measured run (bench/million.py) is set against this figure in one_million_gap",
        ],
    }


def one_million_gap(inp: Inputs, projected: dict, backend: str = "sqlite") -> dict:
    """The measured million-image run against ``one_million_this_machine`` (see the module doc)."""
    run = ("runs", backend)
    shards = inp.get("million_shards_run", "million.json", *run, "shards_run")
    shard_wall = inp.get("million_sum_shard_wall_s", "million.json", *run, "sum_shard_wall_s")
    total = inp.get("million_total_wall_s", "million.json", *run, "total_wall_s")
    stage1 = inp.get("million_raw_inventory_s", "million.json", *run, "stage_seconds_total", "raw_inventory")
    reports = inp.get("million_shard_report_s", "million.json", *run, "stage_seconds_total", "shard_report")
    cpu_ms = inp.get("million_cpu_ms_per_image", "million.json", *run, "cpu_ms_per_image")
    long_p50 = inp.get("million_long_side_p50_px", "million.json", "corpus", "long_side_px", "p50")
    per_core = inp.get("stage1_img_per_cpu_s", "inventory.json", "img_per_cpu_s", "jpeg_stage_1_worker")
    if not (shards and shard_wall and projected.get("minutes")):
        return {"why_not": "no measured million-image run (bench/results/million.json) or no projection"}
    n_proj = projected["shards"]
    per_shard_proj = projected["minutes"] * 60 / n_proj
    per_shard_meas = shard_wall / shards
    out: dict = {
        "backend": backend, "shards_measured": int(shards), "shards_projected": n_proj,
        "seconds_per_shard": {"projected": round(per_shard_proj, 1), "measured": round(per_shard_meas, 1),
                              "measured_over_projected": round(per_shard_meas / per_shard_proj, 3)},
    }
    if shards >= n_proj and total:
        out["minutes"] = {"projected": projected["minutes"], "measured": _minutes(total),
                          "gap": round(total / 60 - projected["minutes"], 1),
                          "measured_over_projected": round(total / 60 / projected["minutes"], 3)}
    else:
        out["minutes"] = {"projected": projected["minutes"], "measured": None,
                          "why_not": f"only {int(shards)} of {n_proj} shards were run: compare seconds per shard"}
    parts = projected.get("parts_minutes", {})
    if stage1 is not None and parts.get("stage_1"):
        out["stage_1_seconds_per_shard"] = {"projected": round(parts["stage_1"] * 60 / n_proj, 1),
                                            "measured": round(stage1 / shards, 1)}
    if reports is not None and parts.get("reports") is not None:
        out["report_seconds_per_shard"] = {"projected": round(parts["reports"] * 60 / n_proj, 1),
                                           "measured": round(reports / shards, 1)}
    if cpu_ms and per_core:
        out["cpu_ms_per_image"] = {
            "projected_stage_1_jpeg_photos": round(1000 / per_core, 3),
            "measured_all_stages_small_images": cpu_ms,
            "note": (f"the run's images have a median long side of {long_p50:.0f} px (packaged graphics, "
                     "Fashion-MNIST, photo tiles) against 500-1024 px photos for the projection's stage-1 rate; "
                     "measured CPU is the driver's whole process tree (every stage, Dagster, the reports)")
            if long_p50 else None}
    return out


def projections(root: Path = RESULTS) -> dict:
    inp = Inputs(root)
    out = {"five_million_gpu_node": five_million_gpu_node(inp), "one_million_this_machine": one_million_this_machine(inp)}
    out["one_million_gap"] = one_million_gap(inp, out["one_million_this_machine"])
    out["inputs"] = inp.used
    return out


if __name__ == "__main__":
    print(json.dumps(projections(), indent=2))
