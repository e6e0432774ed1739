"""The benchmark suite: one command, real images, every figure as a ratio to its ceiling measured in
the same run, and projections (5M images on a GPU node, 1M on this machine) from measured inputs only.

    make bench            # = .venv/bin/python -m bench.suite

Runs, in order (each writes its own JSON under bench/results/):
  bench/inventory.py     stage 1 vs bare decode of the same files, 1 and 2 workers, worker peak RSS
                         as the shard grows from 1,000 to 50,000 images;
  bench/stage1_scaling.py stage 1's pool at 1, 2, ... workers (up to the cores) against one worker and
                         against the same number of processes doing only the draft decode (the
                         hardware's own scaling); the 16-worker figures come from
                         bench/results/stage1_scaling-gpu-host-h200.json, run on the lent H200 host
                         through bench/device_run.sh;
  bench/dedup.py         5M / 1M synthetic hashes clustered, search recall vs brute force on real
                         hashes, bytes per image, cross-shard query cost, precision/recall on real
                         labelled duplicate groups at two corpus sizes;
  bench/embeddings.py    the embedding stage vs the bare model and a naive end-to-end loop (CPU here;
                         the GPU figures come from bench/results/embeddings-nvidia-h100.json, run on the
                         lent H100 through the same script);
  bench/decode_pool.py   the embedding stage's CPU decode of PNG graphics in reader threads vs decode
                         processes vs independent processes (the cores' ceiling), same files, one run;
  bench/peers.py         stage 1 (and stage 1 + dedup) beside imagehash, imagededup and fastdup, each
                         in its own venv, on the same files: images per CPU-second, peak RSS, ratios;
  bench/overhead.py Dagster's own time per shard at the default shard size (10,000 images);
  bench/quality_eval.py  the quality stage's `evaluate` on a 10,000-image shard against the way it
                         gathered reject details before (concat_list), same rows, CPU-seconds;
  bench/accuracy.py      the quality filter's per-reason precision/recall and false rejects of clean
                         graphics and photos, and the hash dedup's pairwise precision/recall (all and
                         <= 48 px) and kept-copy-is-largest rate, beside plain imagehash and
                         imagededup, on labelled sets built from packaged real images (cached under
                         data/bench/accuracy/);
then merges them into bench/results/scale.json with the projections of bench/projection.py (every
input named with its result file and key) and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import REPO, machine, today
from bench.projection import projections

RESULTS = REPO / "bench" / "results"
GPU_RESULT = RESULTS / "embeddings-nvidia-h100.json"


def _run(module: str, *args: str) -> float:
    t0 = time.monotonic()
    print(f"\n=== {module} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, check=True)
    return time.monotonic() - t0


def _load(name: str) -> dict:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else {}


def merge() -> dict:
    inv, dedup, orch = _load("inventory.json"), _load("dedup.json"), _load("overhead.json")
    cpu_emb, gpu = _load("embeddings-cpu.json"), _load(GPU_RESULT.name)
    acc = _load("accuracy.json")
    out = {
        "date": today(),
        "machine": machine(),
        "cpu_stage_img_per_s_per_core": inv.get("cpu_stage_img_per_s_per_core"),
        "decode_ceiling_img_per_s_per_core": inv.get("decode_ceiling_img_per_s_per_core"),
        "cpu_stage_vs_decode_ratio": inv.get("stage_vs_decode_ratio"),
        "cpu_stage_vs_draft_decode_ratio": inv.get("stage_vs_draft_decode_ratio"),
        "cpu_stage_scaling_2_workers": inv.get("scaling_2_workers"),
        "cpu_stage_vs_bare_decode_png": inv.get("stage_vs_bare_decode_png_cpu"),
        "cpu_stage_parallel_efficiency_2_workers": inv.get("parallel_efficiency_2_workers_cpu"),
        "peers": _load("peers.json").get("ratios"),
        "peak_rss_mb": inv.get("peak_rss_mb_by_shard_size"),
        "scaling_curve_by_shard_size": inv.get("memory_by_shard_size"),
        "dedup_5m_seconds": dedup.get("dedup_5m_seconds"),
        "dedup_1m_seconds": dedup.get("dedup_1m_seconds"),
        "dedup_5m_skewed_seconds": dedup.get("dedup_5m_skewed_seconds"),
        "dedup_recall": dedup.get("dedup_recall"),
        "dedup_bytes_per_image": dedup.get("dedup_bytes_per_image"),
        "dedup_labelled": {k: dedup.get(k) for k in ("precision_small", "recall_small", "largest_cluster_small",
                                                     "images_small", "precision_large", "recall_large",
                                                     "largest_cluster_large", "images_large")},
        "dedup_cross_shard": dedup.get("cross_shard"),
        "dagster_overhead_fraction": orch.get("dagster_overhead_fraction"),
        "dagster_overhead": {k: orch.get(k) for k in ("shard_images", "plain_seconds", "in_process_seconds",
                                                      "multiprocess_seconds", "overhead_fraction_in_process",
                                                      "overhead_fraction_multiprocess")},
        "embeddings_cpu": {k: cpu_emb.get(k) for k in ("model", "model_only_img_per_s", "ceiling_img_per_s",
                                                       "stage_img_per_s", "stage_over_ceiling")},
        "embeddings_gpu": {k: gpu.get(k) for k in ("device_name", "date", "model", "model_only_img_per_s",
                                                   "ceiling_img_per_s", "stage_img_per_s", "stage_over_ceiling",
                                                   "peak_rss_mb", "peak_gpu_mem_mb")},
        "stage1_scaling": {name: {k: _load(f"stage1_scaling-{name}.json").get(k) for k in (
            "date", "top_workers", "efficiency_wall_at_top", "efficiency_cpu_at_top", "decode_scaling_at_top",
            "efficiency_vs_hardware_at_top")} for name in ("cpu2", "gpu-host-h200")},
        "embeddings_decode_pool": {k: _load("decode_pool.json").get(k) for k in (
            "workers", "img_per_s", "processes_over_threads", "processes_over_ceiling")},
    }
    if acc:
        out["accuracy"] = accuracy_summary(acc)
    out["projections"] = projections(RESULTS)
    return out


def accuracy_summary(acc: dict) -> dict:
    """The headline figures of bench/results/accuracy.json, each with its target's verdict."""
    q, d = acc.get("quality", {}), acc.get("dedup", {})
    p1 = d.get("pipeline_one_shard", {})
    peers = {k: d.get(k, {}).get("f1") for k in ("imagehash_phash_white", "imagededup_phash_defaults")}
    return {
        "quality_reasons_below_target": sorted(r for r, v in q.get("per_reason", {}).items() if not v.get("met")),
        "clean_graphics_false_reject": q.get("clean_graphics_false_reject"),
        "clean_photo_false_reject": q.get("clean_photo_false_reject"),
        "dedup_precision": p1.get("precision"), "dedup_recall": p1.get("recall"),
        "dedup_recall_small": p1.get("recall_small"), "dedup_f1": p1.get("f1"),
        "dedup_kept_largest_two_shards": d.get("pipeline_two_shards", {}).get("kept_largest"),
        "peer_f1": peers, "met": {**q.get("met", {}), **{f"dedup_{k}": v for k, v in d.get("met", {}).items()}},
    }


def table(s: dict) -> str:
    rows = [
        ("stage 1, img/s per core", s["cpu_stage_img_per_s_per_core"], "bare decode", s["decode_ceiling_img_per_s_per_core"],
         s["cpu_stage_vs_decode_ratio"]),
        ("dedup 5M hashes, s", s["dedup_5m_seconds"], "target", 120, round(120 / s["dedup_5m_seconds"], 2) if s["dedup_5m_seconds"] else None),
        ("dedup search recall", s["dedup_recall"], "brute force", 1.0, s["dedup_recall"]),
        ("embeddings GPU, img/s", s["embeddings_gpu"].get("stage_img_per_s"), "end-to-end ceiling",
         s["embeddings_gpu"].get("ceiling_img_per_s"), s["embeddings_gpu"].get("stage_over_ceiling")),
        ("Dagster overhead per shard", s["dagster_overhead_fraction"], "target", 0.05, None),
    ]
    lines = [f"{'figure':32s} {'value':>10s}  {'against':20s} {'ceiling':>10s} {'ratio':>6s}"]
    for name, v, what, c, r in rows:
        lines.append(f"{name:32s} {v!s:>10s}  {what:20s} {c!s:>10s} {r!s:>6s}")
    lines.append(f"peak RSS of an inventory worker by shard size (MB): {s['peak_rss_mb']}")
    if "accuracy" in s:
        a = s["accuracy"]
        lines.append(f"accuracy: clean graphics / photos falsely rejected {a['clean_graphics_false_reject']} / "
                     f"{a['clean_photo_false_reject']} (targets 0.03 / 0.02); quality reasons below target "
                     f"{a['quality_reasons_below_target']}; dedup P {a['dedup_precision']} R {a['dedup_recall']} "
                     f"R<=48px {a['dedup_recall_small']} F1 {a['dedup_f1']} vs peers {a['peer_f1']}")
    for name, p in s.get("projections", {}).items():
        if name != "inputs":
            lines.append(f"projection {name}: {p.get('minutes')} min {p.get('parts_minutes')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merge-only", action="store_true", help="only merge the existing results into scale.json")
    args = ap.parse_args()
    timings = {}
    if not args.merge_only:
        timings["inventory"] = _run("bench.inventory", "--shard-sizes", "1000,5000,20000,50000")
        timings["stage1_scaling"] = _run("bench.stage1_scaling", "--out", str(RESULTS / "stage1_scaling-cpu2.json"))
        timings["peers"] = _run("bench.peers")
        timings["dedup"] = _run("bench.dedup")
        timings["embeddings_cpu"] = _run("bench.embeddings", "--device", "cpu")
        timings["decode_pool"] = _run("bench.decode_pool")
        timings["overhead"] = _run("bench.overhead")
        timings["quality_eval"] = _run("bench.quality_eval")
        timings["accuracy"] = _run("bench.accuracy")
    scale = merge()
    if timings:
        scale["suite_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    (RESULTS / "scale.json").write_text(json.dumps(scale, indent=2))
    print("\n" + table(scale))


if __name__ == "__main__":
    main()
