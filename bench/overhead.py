"""Dagster's own time per shard: the same CPU stages run as plain functions and through Dagster.

For one shard of N real images (default 10,000, the default shard size) this measures, in one run:
  plain        raw_inventory -> dedup_clusters -> curated_images as plain function calls with the
               same Parquet writes (the work itself);
  in_process   the same three assets materialised through Dagster with the in-process executor in
               a SQLite instance (run launch, event log, metadata, resources);
  multiprocess the same through the multiprocess executor (a process per step, as runs launched by
               the daemon or a backfill execute by default).
overhead fraction = (dagster - plain) / dagster, in wall seconds (the minimum of each mode over the
interleaved rounds) and in CPU seconds of the whole process tree (this process, its reaped children
and every live descendant with the children it reaped, e.g. the forkserver and the stage-1 workers
it forked; the median of each mode): CPU is what other jobs on a shared machine distort least.
Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, linked_corpus, machine, today

STAGES = ["raw_inventory", "dedup_clusters", "curated_images"]
# dedup_clusters is a multi-asset that also writes dedup_index: a job selects both or neither
SELECTION = [*STAGES, "dedup_index"]


_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process, its reaped children and every live descendant
    (with what each of those reaped: the forkserver's cutime holds its finished workers)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    return total


def _settled_cpu() -> float:
    time.sleep(0.3)  # let the forkserver reap the workers the run just closed
    return tree_cpu_seconds()


def _plain(manifest, shard, root, out_root) -> float:
    from assets.inventory import build_inventory
    from curation import storage
    from curation.dedup import DedupConfig, dedup_shard
    from curation.inventory import InventoryConfig
    from curation.quality import QualityConfig, evaluate

    t0 = time.perf_counter()
    inv = build_inventory(manifest, shard, root, InventoryConfig(), workers=os.cpu_count() or 1)
    storage.write_parquet(inv, f"{out_root}/raw_inventory/{shard}.parquet")
    clusters, index = dedup_shard(inv, None, DedupConfig())
    storage.write_parquet(clusters, f"{out_root}/dedup_clusters/{shard}.parquet")
    storage.write_parquet(index, f"{out_root}/dedup_index/{shard}.parquet")
    cur = evaluate(inv, clusters, QualityConfig())
    storage.write_parquet(cur, f"{out_root}/curated_images/{shard}.parquet")
    return time.perf_counter() - t0


def bench_job():
    """The three CPU stages as a job (module-level so the multiprocess executor can reconstruct it)."""
    import dagster as dg

    from orchestration.definitions import defs
    from partitions.shards import SHARDS

    job = dg.define_asset_job("bench_cpu_stages", selection=dg.AssetSelection.assets(*SELECTION), partitions_def=SHARDS)
    return dg.Definitions(assets=defs.assets, resources=defs.resources, jobs=[job]).resolve_job_def("bench_cpu_stages")


def run(n: int, workdir: Path, rounds: int = 3) -> dict:
    import dagster as dg

    os.environ["CURATION_SOURCES"] = f"bench={workdir / 'src'}"
    src = linked_corpus(workdir / "src", n)
    for p in src.rglob("*.*"):  # warm the page cache so no mode pays for cold reads
        p.read_bytes()
    samples: dict[str, list[float]] = {"plain": [], "in_process": [], "multiprocess": []}
    cpu: dict[str, list[float]] = {"plain": [], "in_process": [], "multiprocess": []}
    # plain and in-process alternate over `rounds` (this machine is noisy; the minimum of each is
    # compared), the multiprocess executor is measured once for reference
    schedule = [m for _ in range(rounds) for m in ("plain", "in_process")] + ["multiprocess"]
    for i, mode in enumerate(schedule):
        out_root = workdir / f"out_{i}"
        home = workdir / f"home_{i}"
        for d in (out_root, home):
            shutil.rmtree(d, ignore_errors=True)
        home.mkdir(parents=True)
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
        os.environ["CURATION_OUTPUT_ROOT"] = str(out_root)
        os.environ["DAGSTER_HOME"] = str(home)
        from partitions.discovery import discover_all
        from partitions.shards import ShardRegistry

        reg = ShardRegistry(str(out_root))
        [shard] = discover_all(reg, "bench", str(workdir / "src"), shard_size=n)
        c0 = _settled_cpu()
        if mode == "plain":
            samples[mode].append(_plain(reg.manifest(shard.key), shard.key, str(workdir / "src"), str(out_root)))
            cpu[mode].append(_settled_cpu() - c0)
        else:
            import importlib

            import orchestration.definitions

            importlib.reload(orchestration.definitions)  # settings are read when the code location loads
            with dg.DagsterInstance.get() as instance:
                instance.add_dynamic_partitions("shards", [shard.key])
                t0 = time.perf_counter()
                if mode == "in_process":
                    ok = bench_job().execute_in_process(instance=instance, partition_key=shard.key).success
                else:
                    with dg.execute_job(dg.reconstructable(bench_job), instance=instance,
                                        tags={"dagster/partition": shard.key}) as res:
                        ok = res.success
                samples[mode].append(time.perf_counter() - t0)
                assert ok, f"{mode} run failed"
            cpu[mode].append(_settled_cpu() - c0)
        shutil.rmtree(out_root, ignore_errors=True)
    results = {k: min(v) for k, v in samples.items()}
    cpu_med = {k: float(np.median(v)) for k, v in cpu.items()}
    return {
        "shard_images": n,
        "plain_seconds": round(results["plain"], 2),
        "in_process_seconds": round(results["in_process"], 2),
        "multiprocess_seconds": round(results["multiprocess"], 2),
        "overhead_fraction_in_process": round((results["in_process"] - results["plain"]) / results["in_process"], 4),
        "overhead_fraction_multiprocess": round((results["multiprocess"] - results["plain"]) / results["multiprocess"], 4),
        "samples_seconds": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in cpu_med.items()},
        "cpu_overhead_fraction_in_process": round((cpu_med["in_process"] - cpu_med["plain"]) / cpu_med["in_process"], 4),
        "cpu_overhead_seconds_in_process": round(cpu_med["in_process"] - cpu_med["plain"], 3),
        "cpu_samples_seconds": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "overhead.json"))
    args = ap.parse_args()
    workdir = Path(tempfile.gettempdir()) / "curation_bench_orchestration"
    out = {"date": today(), "machine": machine(), "stages": STAGES, **run(args.images, workdir, args.rounds)}
    # the local deployment runs a shard's chain of stages with the in-process executor
    out["dagster_overhead_fraction"] = out["overhead_fraction_in_process"]
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
