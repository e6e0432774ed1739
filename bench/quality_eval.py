"""The quality stage's own cost per shard: `evaluate` against the way it collected reject details
before 2026-12-03, same rows, one run.

For one shard of N real images (default 10,000, the default shard size: the demo corpus's files,
repeated under distinct names, `bench.common.linked_corpus`) stage 1 and the hash pass run once;
then, in interleaved rounds, best of `--rounds`, in CPU-seconds of this process:
  evaluate      `curation.quality.evaluate` (reject details gathered through a long frame: one row
                per fired condition, grouped back by row);
  concat_list   the same `evaluate` with only its detail collector swapped for the former one,
                ``pl.concat_list(...).list.drop_nulls()`` over every condition's struct column;
and checks that both give the same rows. Writes bench/results/quality_eval.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from bench.common import REPO, linked_corpus, machine, today


def concat_list_details(df: pl.DataFrame, details: list[pl.Expr]) -> pl.Series:
    """``reject_details`` as `evaluate` gathered them before 2026-12-03 (its `_collect_details`
    before): concat_list over every condition's struct column, nulls dropped."""
    from curation.quality.checks import DETAIL_DTYPE

    return df.select(pl.concat_list([d.cast(DETAIL_DTYPE) for d in details]).list.drop_nulls()
                     .alias("reject_details")).to_series()


def evaluate_concat_list(inventory: pl.DataFrame, clusters: pl.DataFrame, cfg) -> pl.DataFrame:
    """`curation.quality.evaluate` itself, with only its detail collector swapped for the former one."""
    import importlib
    from unittest import mock

    module = importlib.import_module("curation.quality.evaluate")  # the module (the package re-exports the function)
    with mock.patch.object(module, "_collect_details", concat_list_details):
        return module.evaluate(inventory, clusters, cfg)


def run(n: int, rounds: int) -> dict:
    from assets.inventory import build_inventory
    from curation.dedup import DedupConfig, dedup_shard
    from curation.inventory import InventoryConfig
    from curation.quality import QualityConfig, evaluate

    root = linked_corpus(Path(tempfile.gettempdir()) / f"curation_quality_eval_{n}", n)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifest = pl.DataFrame({"image_id": [hashlib.sha1(str(p).encode()).hexdigest()[:16] for p in files],
                             "uri": [str(p) for p in files], "rel_path": [str(p.relative_to(root)) for p in files],
                             "listed_bytes": [p.stat().st_size for p in files], "listed_mtime": [0.0] * len(files)})
    inv = build_inventory(manifest, "s-000001", str(root), InventoryConfig(), workers=os.cpu_count() or 1)
    clusters, _ = dedup_shard(inv, None, DedupConfig())
    cfg = QualityConfig()
    fns = {"evaluate": evaluate, "concat_list": evaluate_concat_list}
    best = {k: float("inf") for k in fns}
    outs = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            outs[name] = fn(inv, clusters, cfg)
            best[name] = min(best[name], time.process_time() - t0)
    same = outs["evaluate"].equals(outs["concat_list"])
    if not same:
        raise SystemExit("evaluate and the concat_list reference disagree")
    cur = outs["evaluate"]
    return {
        "date": today(), "machine": machine(), "images": inv.height, "rounds": rounds,
        "rejected": int((~cur["keep"]).sum()), "conditions_recorded": int(cur["reject_details"].list.len().sum()),
        "cpu_s": {k: round(v, 4) for k, v in best.items()},
        "evaluate_over_concat_list": round(best["evaluate"] / best["concat_list"], 4),
        "identical_rows": same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    res = run(args.images, args.rounds)
    out = REPO / "bench" / "results" / "quality_eval.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
