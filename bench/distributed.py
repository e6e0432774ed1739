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


def _run_config(out: Path) -> dict:
    return {"resources": {"settings": {"config": {"inventory_workers": 1}}, "embedder": {"config": {"device": "cpu"}},
                          "classifier": {"config": {"fewshot_uri": ""}}, "corpus": {"config": {"output_root": str(out)}}}}


def _backfill(cl: Cluster, keys: list[str], out: Path, per_run: int, mode: str, tag: str) -> float:
    """Run the backfill's runs one after another; returns the wall time."""
    t0 = time.perf_counter()
    for i in range(0, len(keys), per_run):
        proc = cl.launch(keys[i:i + per_run], _run_config(out), f"{tag}-{i}", extra_env={"CURATION_DEPLOYMENT": mode})
        if proc.wait(3600) != 0:
            raise RuntimeError(f"{mode} run {tag}-{i} failed: {(cl.work / f'run-{tag}-{i}.log').read_text()[-3000:]}")
    return time.perf_counter() - t0


def _register(src: Path, out: Path, size: int) -> list[str]:
    import dagster as dg

    from partitions.discovery import discover_all
    from resources.corpus import CorpusResource

    corpus = CorpusResource(output_root=str(out), sources={"d": str(src)}, shard_size=size)
    keys = [s.key for s in discover_all(corpus.registry(), "d", str(src), shard_size=size)]
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
        warm_keys = _register(warm_src, work / "out-warm", 2)
        warm_s = _backfill(cl, warm_keys, work / "out-warm", 1, "celery", "warm")
        for size in sizes:
            src = linked_corpus(work / f"src-{size}", SHARDS * size)
            wall = {}
            for mode in ("local", "celery"):
                out = work / f"out-{size}-{mode}"
                keys = _register(src, out, size)
                assert len(keys) == SHARDS, keys
                wall[mode] = _backfill(cl, keys, out, args.per_run, mode, f"{mode}{size}")
                print(f"{SHARDS} shards of {size} images, {mode}: {wall[mode]:.1f} s", flush=True)
            runs = -(-SHARDS // args.per_run)
            over = wall["celery"] - wall["local"]
            results.append({
                "shard_images": size, "shards": SHARDS, "runs": runs, "shards_per_run": args.per_run,
                "in_process_seconds": round(wall["local"], 1), "distributed_seconds": round(wall["celery"], 1),
                "in_process_seconds_per_shard": round(wall["local"] / SHARDS, 2),
                "overhead_seconds_per_shard": round(over / SHARDS, 2),
                "overhead_fraction_of_shard": round(over / wall["local"], 3),
                "overhead_seconds_per_step": round(over / (runs * STEPS_PER_RUN), 2),
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
