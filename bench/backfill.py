"""A backfill of 500 shards launched through the webserver's GraphQL API (what the UI's
"Materialize → partitions" does) and executed by the daemon, on embedded defaults.

500 shards of 2 real images each (hard links into the demo corpus) are registered; the six
partitioned assets are backfilled for all 500 partitions. With the multi-run backfill policy
(`CURATION_BACKFILL_SHARDS_PER_RUN`, default here 25) that is 20 runs; the run queue allows 3 runs of
one backfill at a time (dagster.yaml). Writes bench/results/backfill.json: wall time, runs, shards
per run, failures, and outputs found per stage.

    .venv/bin/python -m bench.backfill [--shards 500] [--per-run 25]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, linked_corpus, machine, today
from tests.browser import kill_group
from tests.integration.test_ui import BACKFILL, LAUNCH, PARTITIONED, Graphql, free_port, kill_leftovers, start, wait_for_location

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=500)
    ap.add_argument("--per-run", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    work = Path(tempfile.gettempdir()) / "curation_bench_backfill"
    shutil.rmtree(work, ignore_errors=True)
    home, out = work / "home", work / "out"
    home.mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    src = linked_corpus(work / "src", 2 * args.shards)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), CURATION_OUTPUT_ROOT=str(out), CURATION_SOURCES=f"bf={src}",
               CURATION_SHARD_SIZE="2", CURATION_FEWSHOT_URI="", CURATION_BACKFILL_SHARDS_PER_RUN=str(args.per_run),
               PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    reg = subprocess.run([sys.executable, "-m", "orchestration.cli", "register"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    print(reg.stdout.strip().splitlines()[-1])
    keys = [f"bf-{i:06d}" for i in range(1, args.shards + 1)]
    port = free_port()
    logs = {"webserver": work / "webserver.log", "daemon": work / "daemon.log"}
    procs = {}
    try:
        procs["webserver"] = start([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                                    "-p", str(port)], env, logs["webserver"])
        procs["daemon"] = start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, logs["daemon"])
        gql = Graphql(f"http://127.0.0.1:{port}")
        wait_for_location(gql, procs, logs)
        t0 = time.monotonic()
        res = gql(LAUNCH, params={"assetSelection": [{"path": [a]} for a in PARTITIONED], "partitionNames": keys,
                                  "fromFailure": False, "title": f"bench: {args.shards} shards"})["launchPartitionBackfill"]
        assert res["__typename"] == "LaunchBackfillSuccess", res
        bid = res["backfillId"]
        last = None
        while time.monotonic() - t0 < args.timeout:
            last = gql(BACKFILL, id=bid)["partitionBackfillOrError"]
            if last["status"] in {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}:
                break
            time.sleep(5)
        wall = time.monotonic() - t0
        runs = gql("""query($id: String!) { partitionBackfillOrError(backfillId: $id) {
            ... on PartitionBackfill { runs(limit: 1000) { id status } } } }""", id=bid)["partitionBackfillOrError"]["runs"]
    finally:
        for name in ("daemon", "webserver"):
            kill_group(procs.get(name), grace_s=15)
        kill_leftovers(str(home))
    found = {stage: sum(1 for k in keys if (out / stage / f"{k}.parquet").exists()) for stage in PARTITIONED
             if stage != "shard_report"}
    found["shard_report"] = sum(1 for k in keys if (out / "reports" / "shards" / k / "report.html").exists())
    result = {
        "date": today(), "machine": machine(), "shards": args.shards, "images": 2 * args.shards,
        "shards_per_run": args.per_run, "status": last and last["status"], "wall_seconds": round(wall, 1),
        "runs": len(runs), "runs_succeeded": sum(r["status"] == "SUCCESS" for r in runs),
        "outputs_found_per_stage": found,
        "seconds_per_shard": round(wall / args.shards, 2),
    }
    (REPO / "bench" / "results" / "backfill.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
