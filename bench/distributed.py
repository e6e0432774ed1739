"""The distributed path's overhead: a 12-shard backfill through Celery workers (CURATION_DEPLOYMENT=
celery) against the same backfill on one machine in process (CURATION_DEPLOYMENT=local), side by
side in one run, at several shard sizes.

Both modes run the same runs the backfill policy makes (`--per-run` shards per run, one run at a
time so the per-step cost is not hidden by concurrency) with `dagster job execute` against one
Postgres instance. The distributed side uses a private Redis broker and three long-lived workers
(two `cpu`, one `gpu`, started once and warmed by one run outside the timing, as on a deployment).
Per shard size it reports the wall time of each mode, the overhead per shard (seconds and fraction
of the shard's in-process wall time) and per step. Writes bench/results/distributed.json.

    .venv/bin/python -m bench.distributed [--sizes 2,16] [--per-run 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import REPO, linked_corpus, machine, today
from tests.celery_cluster import Cluster

SHARDS = 12
STEPS_PER_RUN = 11  # six stages and five checks (orchestration/jobs.py curate_shard)


def _pg_database() -> tuple[dict[str, str], callable]:
    import psycopg2

    conn = psycopg2.connect(os.environ.get("CURATION_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"))
    conn.autocommit = True
    name = f"curation_bench_{uuid.uuid4().hex[:10]}"
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_DB": name,
           "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": os.environ.get("PGPASSWORD", "")}

    def drop():
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()

    return env, drop


def _run_config(out: Path, source: str, src: Path) -> dict:
    corpus = {"output_root": str(out), "sources": {source: str(src)}}
    return {"resources": {"settings": {"config": {"inventory_workers": 1}}, "embedder": {"config": {"device": "cpu"}},
                          "classifier": {"config": {"fewshot_uri": ""}}, "corpus": {"config": corpus}}}


def _backfill(cl: Cluster, keys: list[str], run_config: dict, per_run: int, mode: str, tag: str) -> float:
    """Run the backfill's runs one after another; returns the wall time."""
    t0 = time.perf_counter()
    for i in range(0, len(keys), per_run):
        proc = cl.launch(keys[i:i + per_run], run_config, f"{tag}-{i}", extra_env={"CURATION_DEPLOYMENT": mode})
        if proc.wait(3600) != 0:
            raise RuntimeError(f"{mode} run {tag}-{i} failed: {(cl.work / f'run-{tag}-{i}.log').read_text()[-3000:]}")
    return time.perf_counter() - t0


def _time_outside_steps(tag_prefix: str) -> tuple[float, float, int]:
    """(run time, time outside any step, steps) summed over the runs whose test-run tag starts with
    tag_prefix: run start to run success, less each step's own start-to-success time."""
    import dagster as dg

    run_s = outside = 0.0
    steps = 0
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            if not run.tags.get("curation/test-run", "").startswith(tag_prefix + "-"):
                continue
            events = instance.get_records_for_run(run.run_id, of_type={
                dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS,
                dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}).records
            ts = {(e.event_log_entry.dagster_event_type, e.event_log_entry.step_key): e.event_log_entry.timestamp
                  for e in events}
            total = ts[(dg.DagsterEventType.RUN_SUCCESS, None)] - ts[(dg.DagsterEventType.RUN_START, None)]
            inside = sum(end - ts[(dg.DagsterEventType.STEP_START, key)] for (kind, key), end in ts.items()
                         if kind == dg.DagsterEventType.STEP_SUCCESS)
            run_s += total
            outside += total - inside
            steps += sum(1 for kind, _ in ts if kind == dg.DagsterEventType.STEP_SUCCESS)
    return run_s, outside, steps


def _register(source: str, src: Path, out: Path, size: int) -> list[str]:
    import dagster as dg

    from partitions.discovery import discover_all
    from resources.corpus import CorpusResource

    corpus = CorpusResource(output_root=str(out), sources={source: str(src)}, shard_size=size)
    keys = [s.key for s in discover_all(corpus.registry(), source, str(src), shard_size=size)]
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("shards", [k for k in keys if not instance.has_dynamic_partition("shards", k)])
    return keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2,16", help="images per shard, comma-separated")
    ap.add_argument("--per-run", type=int, default=6, help="shards per backfill run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.gettempdir()) / "curation_bench_distributed"
    shutil.rmtree(work, ignore_errors=True)
    home = work / "home"
    home.mkdir(parents=True)
    shutil.copyfile(REPO / "deploy" / "dagster-prod.yaml", home / "dagster.yaml")
    pg_env, drop = _pg_database()
    env = {**pg_env, "DAGSTER_HOME": str(home), "DAGSTER_COMPUTE_LOG_DIR": str(work / "compute_logs"),
           "CURATION_DEPLOYMENT": "celery", "CURATION_OUTPUT_ROOT": str(work / "out"), "CUDA_VISIBLE_DEVICES": ""}
    os.environ.update(env)
    cl = Cluster(work, env)
    results = []
    try:
        cl.start_broker()
        t0 = time.perf_counter()
        for name, queue in (("cpu-a", "cpu"), ("cpu-b", "cpu"), ("gpu-a", "gpu")):
            cl.start_worker(name, queue)
        worker_start_s = time.perf_counter() - t0
        warm_src = linked_corpus(work / "src-warm", 2)
        warm_keys = _register("warm", warm_src, work / "out-warm", 2)
        warm_s = _backfill(cl, warm_keys, _run_config(work / "out-warm", "warm", warm_src), 1, "celery", "warm")
        for size in sizes:
            src = linked_corpus(work / f"src-{size}", SHARDS * size)
            wall = {}
            for mode in ("local", "celery"):
                out, source = work / f"out-{size}-{mode}", f"s{size}"
                keys = _register(source, src, out, size)
                assert len(keys) == SHARDS, keys
                wall[mode] = _backfill(cl, keys, _run_config(out, source, src), args.per_run, mode, f"{mode}{size}")
                print(f"{SHARDS} shards of {size} images, {mode}: {wall[mode]:.1f} s", flush=True)
            runs = -(-SHARDS // args.per_run)
            over = wall["celery"] - wall["local"]
            split = {mode: _time_outside_steps(f"{mode}{size}") for mode in ("local", "celery")}
            outside_over = split["celery"][1] - split["local"][1]
            step_time = {mode: split[mode][0] - split[mode][1] for mode in split}
            results.append({
                "shard_images": size, "shards": SHARDS, "runs": runs, "shards_per_run": args.per_run,
                "in_process_seconds": round(wall["local"], 1), "distributed_seconds": round(wall["celery"], 1),
                "in_process_seconds_per_shard": round(wall["local"] / SHARDS, 2),
                "overhead_seconds_per_shard": round(over / SHARDS, 2),
                "overhead_fraction_of_shard": round(over / wall["local"], 3),
                "overhead_seconds_per_step": round(over / (runs * STEPS_PER_RUN), 2),
                # the orchestration cost alone: time of the runs outside their steps (dispatch, polling,
                # events), which excludes what the steps do (e.g. model loads, cached in warm workers)
                "steps_seconds": {m: round(v, 1) for m, v in step_time.items()},
                "outside_steps_seconds": {m: round(split[m][1], 1) for m in split},
                "dispatch_overhead_seconds_per_step": round(outside_over / split["celery"][2], 2),
                "dispatch_overhead_seconds_per_shard": round(outside_over / SHARDS, 2),
                "dispatch_overhead_fraction_of_shard_step_time": round(outside_over / step_time["local"], 3),
            })
    finally:
        cl.close()
        drop()
    report = {
        "date": today(), "machine": machine(), "load_average_1_5_15_at_end": [round(x, 1) for x in os.getloadavg()],
        "setup": ("one Redis broker, 2 cpu + 1 gpu Celery workers (solo pool) on this machine, CPU only; "
                  "runs one at a time via `dagster job execute`, Postgres instance"),
        "worker_start_seconds_all_three": round(worker_start_s, 1), "warm_up_run_seconds": round(warm_s, 1),
        "results": results,
    }
    dst = REPO / "bench" / "results" / "distributed.json"
    dst.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
