"""Dedup precision as the corpus grows (not a test; not in `make bench`: 6 min at 300k, 28 at 1M, 2 cores).

Why: on the 3,722-image labelled set (bench/accuracy.py) the hash pass links look-alikes rarely,
but look-alike pairs grow with the square of the corpus, and the million-image run
(bench/million.py) measured pair precision 0.53 at 1M. This bench reproduces that growth at a size
that runs in minutes and compares verification rules side by side on the same inventory:

1. the corpus: `bench.million_corpus.generate` (the million run's generator: packaged clip art,
   sprites, Fashion-MNIST, photo tiles; 11 duplicate variants per base, hue shifts as negatives),
   `--images` images, cached under `--work`;
2. stage 1: `curation.inventory.iter_inventory` (2 workers), cached as `<work>/inventory.parquet`;
3. the hash pass as the pipeline runs it: `dedup_shard` per shard of `--shard-size` in listing
   order, each against the index of every earlier shard, once per rule:
   * `default`: `DedupConfig()`;
   * `no_detail_check`: the same with the 256-bit pHash check off (`max_detail_distance=256`), the
     rule before the check existed;
4. pair precision / recall on the manifest's groups (bench.accuracy.pair_scores), overall, for
   images <= 48 px, per base kind and at nested prefixes of the shards (corpus-size growth);
5. `earlier_index`: the default rule's index of every shard, as the last shard reads it: bytes and
   read time, beside the same rows with the verification features on every row (the format before
   2026-12-03; only near-matchable rows carry them now).

Writes bench/results/dedup_scale.json (`runs.<images>`; a run at another size keeps the others).
Usage: python -m bench.dedup_scale [--images 300000]; the committed runs: 300,000 and 1,000,000.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import polars as pl

from bench.accuracy import drop_scores, pair_scores
from bench.common import machine, today
from bench.million_corpus import generate
from curation.dedup import DedupConfig
from curation.dedup.shard import dedup_shard
from curation.inventory import InventoryConfig, iter_inventory

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "dedup_scale.json"
# openclipart's shapes/stars/star_<n>pt<k>step.png: 1,375 star polygons of 5-100 points drawn by one
# script. Fitted to the corpus's 48-160 px most of them render as the same ring or disc, so the
# hash pass links different files of the series (94% of the clip-art false pairs at 300,000 images):
# duplicates to the eye, different groups to the labels. Scored with and without them.
STAR_SERIES = r"/shapes/stars/star_[0-9]+pt[0-9]+step\.png$"
RULES = {"default": DedupConfig(), "no_detail_check": DedupConfig(max_detail_distance=256)}


def inventory(work: Path, manifest: pl.DataFrame, root: Path) -> pl.DataFrame:
    cached = work / "inventory.parquet"
    if cached.exists():
        inv = pl.read_parquet(cached)
        if "phash256" in inv.columns and inv.height == manifest.height:
            return inv
    uris = [str(root / p) for p in manifest["path"]]
    man = pl.DataFrame({"image_id": [hashlib.sha1(u.encode()).hexdigest()[:16] for u in uris], "uri": uris,
                        "rel_path": manifest["path"], "listed_bytes": manifest["bytes"],
                        "listed_mtime": [0.0] * len(uris)})
    t0 = time.perf_counter()
    inv = pl.concat(list(iter_inventory(man, "s", str(root), InventoryConfig(), workers=2, batch_size=2048)))
    print(f"stage 1: {inv.height} images in {time.perf_counter() - t0:.0f} s", flush=True)
    inv.write_parquet(cached)
    return inv


def run_rule(inv: pl.DataFrame, shard_size: int, cfg: DedupConfig) -> tuple[pl.DataFrame, float, pl.DataFrame]:
    """The hash pass shard by shard (listing order), each against every earlier shard's index.
    Returns (clusters, CPU-s, the index of every shard)."""
    outs, index = [], None
    t0 = time.process_time()
    for seq, start in enumerate(range(0, inv.height, shard_size)):
        shard = inv.slice(start, shard_size).with_columns(pl.lit(f"s{seq:04d}").alias("shard"))
        rows, idx = dedup_shard(shard, index, cfg, shard_seq=seq)
        outs.append(rows.select("image_id", "cluster_id").with_columns(pl.lit(seq).alias("seq")))
        index = idx if index is None else pl.concat([index, idx], how="diagonal_relaxed")
    assert index is not None, "an inventory of at least one row"
    return pl.concat(outs), time.process_time() - t0, index


def index_read_cost(index: pl.DataFrame, inv: pl.DataFrame, work: Path, rounds: int = 5) -> dict:
    """The index every shard of the run wrote, as the last shard would read it (one Parquet file
    written and read by `curation.storage`), beside the same rows with the verification features
    (MATCH_FEATURES) on every row, as indexes were written before 2026-12-03: bytes and read time,
    interleaved rounds, best of `rounds`."""
    from curation import storage
    from curation.dedup.shard import MATCH_FEATURES

    every = index.drop(*MATCH_FEATURES).join(inv.select("image_id", *MATCH_FEATURES), on="image_id", how="left",
                                             maintain_order="left").select(index.columns)
    files = {"matchable_rows_only": work / "index_now.parquet", "every_row": work / "index_every_row.parquet"}
    storage.write_parquet(index, str(files["matchable_rows_only"]))
    storage.write_parquet(every, str(files["every_row"]))
    best = {k: [float("inf"), float("inf")] for k in files}
    for _ in range(rounds):
        for k, f in files.items():
            c0, w0 = time.process_time(), time.perf_counter()
            storage.read_parquet(str(f))
            best[k] = [min(best[k][0], time.process_time() - c0), min(best[k][1], time.perf_counter() - w0)]
    out: dict = {"rows": index.height, "rows_with_features": int(index["thumb_rgb"].is_not_null().sum()), "rounds": rounds}
    for k, f in files.items():
        out[k] = {"bytes": f.stat().st_size, "read_cpu_s": round(best[k][0], 3), "read_wall_s": round(best[k][1], 3)}
        f.unlink()
    out["bytes_ratio"] = round(out["matchable_rows_only"]["bytes"] / out["every_row"]["bytes"], 3)
    out["read_cpu_ratio"] = round(out["matchable_rows_only"]["read_cpu_s"] / out["every_row"]["read_cpu_s"], 3)
    return out


def scores(df: pl.DataFrame) -> dict:
    group, cluster = df["group"].to_numpy(), df["cluster_id"].to_numpy()
    ids = df["image_id"].to_numpy()
    small = df.select(pl.max_horizontal("width", "height") <= 48).to_series().to_numpy()
    out = {**pair_scores(group, cluster, small), **drop_scores(ids, group, cluster)}
    out["by_base_kind"] = {}
    for kind in sorted(df["base_kind"].unique()):
        m = (df["base_kind"] == kind).to_numpy()
        s = {**pair_scores(group[m], cluster[m], small[m]), **drop_scores(ids[m], group[m], cluster[m])}
        out["by_base_kind"][kind] = {k: s[k] for k in ("precision", "recall", "positive_pairs", "predicted_pairs",
                                                       "drop_precision", "drop_recall")}
    m = ~df["source"].str.contains(STAR_SERIES).to_numpy()
    s = {**pair_scores(group[m], cluster[m], small[m]), **drop_scores(ids[m], group[m], cluster[m])}
    out["without_star_series"] = {"images": int(m.sum()), **{k: s[k] for k in (
        "precision", "recall", "f1", "precision_small", "recall_small", "drop_precision", "drop_recall")}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/curation_dedup_scale"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    work = args.work / f"n{args.images}_s{args.seed}"
    root = work / "corpus"
    t0 = time.perf_counter()
    manifest = generate(root, args.images, args.seed, args.shard_size).sort("rank")
    inv = inventory(work, manifest, root)
    lab = inv.select("image_id", "rel_path").join(
        manifest.select(pl.col("path").alias("rel_path"), "group", "base_kind", "source", "width", "height"),
        on="rel_path", how="left", maintain_order="left")
    n_shards = -(-inv.height // args.shard_size)
    prefixes = sorted({max(1, n_shards // 10), max(1, n_shards // 3), n_shards})
    res: dict = {"date": today(), "machine": machine(), "images": inv.height, "shard_size": args.shard_size,
                 "shards": n_shards, "groups": int(manifest["group"].n_unique()), "seed": args.seed,
                 "corpus": "bench.million_corpus.generate (the million run's generator)", "rules": {}}
    for name, cfg in RULES.items():
        clusters, cpu, index = run_rule(inv, args.shard_size, cfg)
        df = lab.join(clusters, on="image_id", how="left", maintain_order="left")
        entry = {"max_detail_distance": cfg.max_detail_distance, "dedup_cpu_s": round(cpu, 1), **scores(df),
                 "by_corpus_size": {}}
        for p in prefixes:
            sub = df.filter(pl.col("seq") < p)
            s = pair_scores(sub["group"].to_numpy(), sub["cluster_id"].to_numpy(),
                            sub.select(pl.max_horizontal("width", "height") <= 48).to_series().to_numpy())
            entry["by_corpus_size"][str(sub.height)] = {k: s[k] for k in ("precision", "recall", "f1")}
        res["rules"][name] = entry
        if name == "default":
            res["earlier_index"] = index_read_cost(index, inv, work)
            print("earlier index:", res["earlier_index"], flush=True)
        print(f"{name:16s} P {entry['precision']} R {entry['recall']} F1 {entry['f1']} "
              f"(<= 48 px P {entry['precision_small']} R {entry['recall_small']}; drops P {entry['drop_precision']} "
              f"R {entry['drop_recall']}; without the star series P {entry['without_star_series']['precision']}) "
              f"{cpu:.0f} CPU-s", flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = old.get("runs", {})
    runs[str(inv.height)] = res  # one entry per corpus size; other sizes' entries are kept
    args.out.write_text(json.dumps({"what": __doc__.splitlines()[0], "runs": dict(sorted(runs.items(), key=lambda kv: int(kv[0])))},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
