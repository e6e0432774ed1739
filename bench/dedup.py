"""Benchmark of the dedup stage (not a test). Writes bench/results/dedup.json.

Measured in one run:
  * clustering time of 1M and 5M synthetic uniform 64-bit pHash/dHash pairs with `cluster_hashes`
    (the engine of `dedup_shard`), and of 5M *skewed* hashes (every hash a real corpus hash with
    0-10 random bit flips, so ~20k dense modes instead of a uniform spread: leader clustering on a
    realistic number of links), with one 8x8 RGB thumbnail per mode so every candidate takes the
    thumbnail verification;
  * bytes per image: tracemalloc peak of the clustering call (numpy allocations are traced) plus
    its inputs (19 bytes per image) and outputs, divided by n;
  * recall of the multi-index search against brute force on ~20k REAL hashes (skimage photos and
    tiles, LFW faces, MNIST digits, arcade sprites, each with resize / JPEG / crop / brightness
    variants), at the configured radii and at radius 8/8;
  * cross-shard cost: `query_index` and the whole `dedup_shard` for a 10k shard against earlier
    indexes of 100k and 1M rows, and 1k / 100k shards against 1M (cost = a light linear scan of the
    index, ~0.07 us per index row, plus work proportional to the shard); the index rows carry an
    8x8 thumbnail and a 256-bit pHash like real ones, and beside it what decoding those for every
    row would cost (`decode_all_index_features_seconds`: the step decodes them for candidate rows
    only);
  * precision / recall / largest cluster on the labelled groups at two corpus sizes (~4k and ~20k
    images): precision and recall as defined in tests/unit/test_dedup.py `score`.

The labelled corpus is cached under $TMPDIR/curation_bench_dedup (built with 2 processes, ~1 min).

Usage: python bench/dedup.py [--quick | --clustering-only | --cross-shard-only]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402
from curation.dedup import (  # noqa: E402
    INDEX_SCHEMA,
    DedupConfig,
    VerifyFeatures,
    chromaticity,
    cluster_hashes,
    dedup_shard,
    near_pairs,
    query_index,
)
from curation.dedup.earlier import index_features  # noqa: E402
from curation.imaging.features import THUMB_BYTES  # noqa: E402
from curation.imaging.hashes import DETAIL_BYTES  # noqa: E402
from curation.schema import INVENTORY_SCHEMA  # noqa: E402
from tests.unit.test_dedup import build_corpus, distinct_sources, load_sources, score  # noqa: E402

CORPUS_VERSION = 2


def _build_chunk(args: tuple[list, int]) -> pl.DataFrame:
    sources, seed = args
    return build_corpus(sources, seed=seed)


def labelled_corpus(quick: bool) -> pl.DataFrame:
    cache = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "curation_bench_dedup"
    cache.mkdir(parents=True, exist_ok=True)
    # the cache is keyed by the inventory's columns too: a stage-1 change (new signals) rebuilds it
    cols = hashlib.sha1(",".join(f"{k}:{v}" for k, v in INVENTORY_SCHEMA.items()).encode()).hexdigest()[:8]
    path = cache / f"corpus_v{CORPUS_VERSION}_{cols}{'_quick' if quick else ''}.parquet"
    if path.exists():
        return pl.read_parquet(path)
    n_mnist, n_tiles = (600, 200) if quick else (3000, 800)
    sources = distinct_sources(load_sources(n_mnist=n_mnist, n_arcade=800, n_lfw=200, max_tiles=n_tiles))
    chunks = [(sources[k::2], k) for k in range(2)]
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(_build_chunk, chunks))
    # make groups unique across the two chunks
    parts[1] = parts[1].with_columns(pl.col("group") + 1_000_000)
    df = pl.concat(parts)
    df.write_parquet(path)
    return df


def brute_pairs(P: np.ndarray, D: np.ndarray, C: np.ndarray, rp: int, rd: int, lim: int) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for s in range(0, len(P), 2048):
        dp = np.bitwise_count(P[s:s + 2048, None] ^ P[None, :])
        dd = np.bitwise_count(D[s:s + 2048, None] ^ D[None, :])
        a, b = np.nonzero((dp <= rp) & (dd <= rd))
        a = a + s
        keep = (a < b) & (np.abs(C[a].astype(np.int16) - C[b].astype(np.int16)).max(1) <= lim)
        out.update(zip(a[keep].tolist(), b[keep].tolist()))
    return out


def search_recall(df: pl.DataFrame, cfg: DedupConfig) -> dict:
    el = ((df["contrast"] >= cfg.min_contrast) & (df["entropy"] >= cfg.min_entropy)).to_numpy()
    P = df["phash"].to_numpy()[el]
    D = df["dhash"].to_numpy()[el]
    C = chromaticity(df["color_mean_r"].to_numpy(), df["color_mean_g"].to_numpy(), df["color_mean_b"].to_numpy())[el]
    lim = int(np.floor(cfg.max_chroma_diff * 255 + 1e-9))
    res = {"n_real_hashes": int(len(P))}
    # chroma only (no thumbnails): every pair takes the strict rule, set equal to the candidate
    # radii here, so the search is checked against brute force at those radii
    for tag, c in (("default", DedupConfig(strict_phash_radius=cfg.phash_radius, strict_dhash_radius=cfg.dhash_radius)),
                   ("r4", DedupConfig(phash_radius=4, dhash_radius=4, strict_phash_radius=4, strict_dhash_radius=4)),
                   ("r8", DedupConfig(phash_radius=8, dhash_radius=8, strict_phash_radius=8, strict_dhash_radius=8))):
        t0 = time.perf_counter()
        truth = brute_pairs(P, D, C, c.phash_radius, c.dhash_radius, lim)
        t1 = time.perf_counter()
        i, j, _ = near_pairs(P, D, C, c)
        t2 = time.perf_counter()
        found = set(zip(i.tolist(), j.tolist()))
        res[tag] = {
            "phash_radius": c.phash_radius, "dhash_radius": c.dhash_radius,
            "brute_force_pairs": len(truth), "found_pairs": len(found),
            "recall": len(found & truth) / max(1, len(truth)),
            "false_pairs": len(found - truth),
            "brute_force_seconds": round(t1 - t0, 3), "search_seconds": round(t2 - t1, 3),
        }
        print(f"recall vs brute force ({tag}): {res[tag]}", flush=True)
    return res


def time_cluster(P: np.ndarray, D: np.ndarray, cfg: DedupConfig, label: str, thumbs: np.ndarray | None = None) -> dict:
    """Clustering time; with `thumbs` ((n, 192) uint8) every candidate takes the thumbnail check."""
    n = len(P)
    C = np.full((n, 3), 85, np.uint8)
    if thumbs is not None:
        C = VerifyFeatures(C, thumbs, np.ones(n, bool), np.zeros(n, np.float32))
    rank = np.arange(n, dtype=np.int64)
    gc.collect()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    leader, dist = cluster_hashes(P, D, C, rank, cfg)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs = P.nbytes + D.nbytes + (C.nbytes if thumbs is None else C.chroma.nbytes + thumbs.nbytes + 5 * n)
    sizes = np.bincount(leader)
    out = {
        "n": n, "seconds": round(sec, 2), "cpu_seconds": round(cpu, 2), "load_avg_1min": round(os.getloadavg()[0], 1),
        "peak_traced_bytes_per_image_excl_inputs": round(peak / n, 1),
        "bytes_per_image": round((peak + inputs) / n, 1),
        "clusters": int((sizes > 0).sum()), "largest_cluster": int(sizes.max()),
        "members": int((leader != np.arange(n)).sum()),
    }
    print(f"cluster {label}: {out}", flush=True)
    del leader, dist, C, rank
    return out


def _random_binary(n: int, width: int, rng: np.random.Generator) -> pl.Series:
    blob = rng.bytes(n * width)
    return pl.Series([blob[i * width:(i + 1) * width] for i in range(n)], dtype=pl.Binary)


def synthetic_index(n: int, seq0: int, rng: np.random.Generator, features: bool = True) -> pl.DataFrame:
    """An earlier-shard index (INDEX_SCHEMA) of n uniform random hashes. With `features` every row
    carries a random 8x8 thumbnail and 256-bit pHash, as rows analysed by the current stage 1 do (so
    the cost of reading them is measured); without, they are null (rows from before those columns)."""
    ids = [f"{k:016x}" for k in range(seq0 * 10_000_000, seq0 * 10_000_000 + n)]
    thumbs = _random_binary(n, THUMB_BYTES, rng) if features else pl.Series([None] * n, dtype=pl.Binary)
    details = _random_binary(n, DETAIL_BYTES, rng) if features else pl.Series([None] * n, dtype=pl.Binary)
    return pl.DataFrame({
        "image_id": ids, "shard": "old", "shard_seq": np.zeros(n, np.int32), "cluster_id": ids,
        "rep_shard": "old", "distance": np.zeros(n, np.int16),
        "sha64": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
        "phash": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
        "dhash": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
        "chroma_r": np.full(n, 85, np.uint8), "chroma_g": np.full(n, 85, np.uint8),
        "chroma_b": np.full(n, 85, np.uint8), "flags": np.full(n, 3, np.uint8),
        "width": np.full(n, 256, np.int32), "height": np.full(n, 256, np.int32), "bytes": np.full(n, 20_000, np.int64),
        "thumb_rgb": thumbs, "phash256": details,  # the shard's rows have none: the strict rule decides
        "supersedes": pl.Series([None] * n, dtype=pl.String), "superseded_shard": pl.Series([None] * n, dtype=pl.String),
    }).select([pl.col(c).cast(t) for c, t in INDEX_SCHEMA.items()])


def synthetic_shard(n: int, index: pl.DataFrame, n_dups: int, rng: np.random.Generator) -> pl.DataFrame:
    P = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    D = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    pick = rng.choice(index.height, n_dups, replace=False)
    flips = np.uint64(1) << rng.integers(0, 64, (n_dups, 2)).astype(np.uint64)
    P[:n_dups] = index["phash"].to_numpy()[pick] ^ flips[:, 0]
    D[:n_dups] = index["dhash"].to_numpy()[pick] ^ flips[:, 1]
    return pl.DataFrame({
        "image_id": [f"new{k:013x}" for k in range(n)], "uri": [f"/new/{k}.jpg" for k in range(n)],
        "shard": "new", "bytes": np.full(n, 100_000), "sha256": [f"{k:064x}" for k in range(n)],
        "width": np.full(n, 640), "height": np.full(n, 480), "phash": P, "dhash": D,
        "color_mean_r": np.full(n, 100.0), "color_mean_g": np.full(n, 100.0), "color_mean_b": np.full(n, 100.0),
        "contrast": np.full(n, 50.0), "entropy": np.full(n, 6.0),
    }).select([pl.col(c).cast(t) if c in ("image_id", "uri", "shard", "bytes", "sha256", "width", "height", "phash",
                                          "dhash", "color_mean_r", "color_mean_g", "color_mean_b", "contrast",
                                          "entropy") else pl.lit(None, dtype=t).alias(c)
               for c, t in INVENTORY_SCHEMA.items()])


def cross_shard(cfg: DedupConfig, cases: list[tuple[int, int]], rounds: int = 3) -> dict:
    """(shard rows, earlier index rows) cases; every shard has 10% planted near copies of index rows."""
    rng = np.random.default_rng(7)
    res = {}
    indexes: dict[int, pl.DataFrame] = {}
    for n_shard, m in cases:
        if m not in indexes:
            indexes[m] = synthetic_index(m, 1, rng)
        index = indexes[m]
        shard = synthetic_shard(n_shard, index, n_shard // 10, rng)
        q = shard["phash"].to_numpy(), shard["dhash"].to_numpy(), np.full((shard.height, 3), 85, np.uint8)
        ix = index["phash"].to_numpy(), index["dhash"].to_numpy(), np.full((m, 3), 85, np.uint8)
        times: dict[str, list[float]] = {"query": [], "shard": [], "decode_all": []}
        for _ in range(rounds):  # interleaved; the best of each is reported (shared, noisy machine)
            t0 = time.perf_counter()
            qq, rr, _ = query_index(*q, *ix, cfg)
            t1 = time.perf_counter()
            out, _ = dedup_shard(shard, index, cfg)
            t2 = time.perf_counter()
            index_features(index)  # what decoding every earlier row's thumbnail + 256-bit pHash costs
            t3 = time.perf_counter()
            times["query"].append(t1 - t0)
            times["shard"].append(t2 - t1)
            times["decode_all"].append(t3 - t2)
        joined = int((out["rep_shard"] == "old").sum())
        key = f"shard_{n_shard}_index_{m}"
        res[key] = {"index_rows": m, "shard_rows": shard.height, "query_index_seconds": round(min(times["query"]), 3),
                    "dedup_shard_seconds": round(min(times["shard"]), 3), "planted_near_dups": n_shard // 10,
                    "joined_earlier_clusters": joined, "query_pairs": int(len(qq)),
                    "index_rows_with_thumbnails": int(index["thumb_rgb"].is_not_null().sum()),
                    "decode_all_index_features_seconds": round(min(times["decode_all"]), 3),
                    "rounds": rounds}
        print(f"cross-shard {key}: {res[key]}", flush=True)
    return res


def labelled_quality(df: pl.DataFrame, cfg: DedupConfig) -> dict:
    groups = np.array(sorted(df["group"].unique().to_list()))
    rng = np.random.default_rng(0)
    small = set(rng.choice(groups, len(groups) // 5, replace=False).tolist())
    inv_cols = list(INVENTORY_SCHEMA)
    res = {}
    for tag, sub in (("small", df.filter(pl.col("group").is_in(list(small)))), ("large", df)):
        t0 = time.perf_counter()
        out, _ = dedup_shard(sub.select(inv_cols), None, cfg)
        sec = time.perf_counter() - t0
        s = score(out, sub)
        s = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
        s["groups"] = int(sub["group"].n_unique())
        s["seconds"] = round(sec, 3)
        kinds = sub["rel_path"].str.split("/").list.first().value_counts()
        s["sources_by_kind"] = {k: int(v) // 5 for k, v in kinds.iter_rows()}
        res[tag] = s
        print(f"labelled {tag}: {s}", flush=True)
    # the same large corpus split into two shards (cross-shard path): quality must not drop
    half = set(groups[: len(groups) // 2].tolist())
    s1 = df.filter(pl.col("group").is_in(list(half)) | (pl.col("variant") == "orig")).with_columns(pl.lit("a").alias("shard"))
    s2 = df.filter(~pl.col("image_id").is_in(s1["image_id"].to_list())).with_columns(pl.lit("b").alias("shard"))
    o1, i1 = dedup_shard(s1.select(inv_cols), None, cfg)
    o2, _ = dedup_shard(s2.select(inv_cols), i1, cfg)
    s = score(pl.concat([o1, o2]), df)
    res["large_two_shards"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
    print(f"labelled large, two shards: {res['large_two_shards']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small corpus, 1M instead of 5M")
    ap.add_argument("--clustering-only", action="store_true",
                    help="only the 1M/5M clustering timings (skewed modes from the quick corpus); updates those "
                         "keys of bench/results/dedup.json and keeps the rest")
    ap.add_argument("--skewed", type=int, default=None,
                    help="hashes in the skewed clustering run (default: 5M, 1M with --quick); the skewed run's "
                         "links grow with the square of the copies per mode, so at the default radii 5M skewed "
                         "hashes can take tens of minutes")
    ap.add_argument("--cross-shard-only", action="store_true",
                    help="only the cross-shard step (a 10k / 1k / 100k shard against 100k / 1M earlier rows); "
                         "updates that key of bench/results/dedup.json and keeps the rest")
    args = ap.parse_args()
    if args.clustering_only:
        clustering_only()
        return
    if args.cross_shard_only:
        cross_shard_only()
        return
    cfg = DedupConfig()
    t_start = time.perf_counter()
    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"load_avg_at_start": list(os.getloadavg()),
                                "note": "machine shared with other jobs; numpy single-threaded"},
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }

    t0 = time.perf_counter()
    df = labelled_corpus(args.quick)
    result["labelled_corpus"] = {"images": df.height, "groups": int(df["group"].n_unique()),
                                 "build_or_load_seconds": round(time.perf_counter() - t0, 1)}
    print(f"labelled corpus: {result['labelled_corpus']}", flush=True)

    rec = search_recall(df, cfg)
    result["search_recall"] = rec
    result["dedup_recall"] = rec["default"]["recall"]

    result["labelled"] = labelled_quality(df, cfg)
    for tag in ("small", "large"):
        q = result["labelled"][tag]
        result[f"precision_{tag}"] = q["precision"]
        result[f"recall_{tag}"] = q["recall"]
        result[f"largest_cluster_{tag}"] = q["largest_cluster"]
        result[f"images_{tag}"] = q["n_images"]

    n = args.skewed or (1_000_000 if args.quick else 5_000_000)
    runs = clustering_runs(cfg, df["phash"].to_numpy(), df["dhash"].to_numpy(),
                           [1_000_000] if args.quick else [1_000_000, 5_000_000], n)
    result["clustering"] = runs
    result["dedup_1m_seconds"] = runs["uniform_1000000"]["seconds"]
    result["skewed_run"] = {"n": n, "modes": df.height, "copies_per_mode": round(n / df.height, 1),
                            **{k: runs[f"skewed_{n}"][k] for k in ("seconds", "cpu_seconds", "bytes_per_image",
                                                                   "largest_cluster", "members")}}
    if not args.quick:
        result["dedup_5m_seconds"] = runs["uniform_5000000"]["seconds"]
        result["dedup_5m_skewed_seconds"] = runs["skewed_5000000"]["seconds"] if n == 5_000_000 else None
        result["dedup_bytes_per_image"] = runs["uniform_5000000"]["bytes_per_image"]
        result["dedup_bytes_per_image_skewed"] = runs[f"skewed_{n}"]["bytes_per_image"]
    else:
        result["dedup_bytes_per_image"] = runs["uniform_1000000"]["bytes_per_image"]

    # the whole shard-level function on one big shard (1M rows, 10% planted near copies within it)
    rng1 = np.random.default_rng(11)
    seed_index = synthetic_index(100_000, 3, rng1)
    big = synthetic_shard(1_000_000, seed_index, 0, rng1)
    bp, bd = big["phash"].to_numpy().copy(), big["dhash"].to_numpy().copy()
    flips = np.uint64(1) << rng1.integers(0, 64, (100_000, 2)).astype(np.uint64)
    bp[:100_000] = bp[500_000:600_000] ^ flips[:, 0]  # 100k near copies of other rows of the shard
    bd[:100_000] = bd[500_000:600_000] ^ flips[:, 1]
    big = big.with_columns(pl.Series("phash", bp), pl.Series("dhash", bd))
    t0 = time.perf_counter()
    big_out, _ = dedup_shard(big, None, cfg)
    result["dedup_shard_1m_rows_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"dedup_shard on a 1M-row shard: {result['dedup_shard_1m_rows_seconds']} s, "
          f"{int((big_out['dup_kind'] == 'near').sum())} near", flush=True)
    del big, big_out, seed_index

    result["cross_shard"] = cross_shard(cfg, CROSS_SHARD_CASES)
    idx_bytes = synthetic_index(100_000, 2, np.random.default_rng(1))
    buf = REPO / "bench" / "results" / ".dedup_index_probe.parquet"
    idx_bytes.write_parquet(buf, compression="zstd")
    result["index_bytes_per_image"] = {
        "in_memory": round(idx_bytes.estimated_size() / idx_bytes.height, 1),
        "parquet_zstd": round(buf.stat().st_size / idx_bytes.height, 1),
        "search_columns": 20,
    }
    buf.unlink()
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out = REPO / "bench" / "results" / "dedup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


def clustering_runs(cfg: DedupConfig, real_p: np.ndarray, real_d: np.ndarray, sizes: list[int], n_skewed: int) -> dict:
    """Uniform runs of `sizes` and one skewed run of `n_skewed` hashes (modes: the real hashes)."""
    rng = np.random.default_rng(0)
    runs = {}
    for n in sizes:
        P = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        D = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        runs[f"uniform_{n}"] = time_cluster(P, D, cfg, f"uniform {n}")
        del P, D
    n = n_skewed
    base = rng.integers(0, len(real_p), n)
    P = real_p[base].copy()
    D = real_d[base].copy()
    for H in (P, D):
        k = rng.integers(0, 11, n)
        for t in range(10):
            bit = np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)
            H ^= np.where(t < k, bit, np.uint64(0))
    thumbs = np.random.default_rng(1).integers(0, 256, (len(real_p), 192), dtype=np.uint8)[base]
    runs[f"skewed_{n}"] = time_cluster(P, D, cfg, f"skewed {n}", thumbs)
    return runs


def clustering_only() -> None:
    cfg = DedupConfig()
    df = labelled_corpus(quick=True)
    runs = clustering_runs(cfg, df["phash"].to_numpy(), df["dhash"].to_numpy(), [5_000_000], 5_000_000)
    _update_results({
        "clustering": runs,
        "dedup_5m_seconds": runs["uniform_5000000"]["seconds"],
        "dedup_5m_skewed_seconds": runs["skewed_5000000"]["seconds"],
        "dedup_bytes_per_image": runs["uniform_5000000"]["bytes_per_image"],
        "dedup_bytes_per_image_skewed": runs["skewed_5000000"]["bytes_per_image"],
        "clustering_rerun": {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                             "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
                             "machine": machine() | {"load_avg_at_start": list(os.getloadavg())},
                             "note": "--clustering-only: skewed modes from the quick corpus; the other keys are "
                                     "from the last full run (its config)"},
    })
    print(json.dumps({k: v["seconds"] for k, v in runs.items()}))


def _update_results(keys: dict) -> None:
    """Replace `keys` in bench/results/dedup.json, keeping the rest (the partial re-runs)."""
    out = REPO / "bench" / "results" / "dedup.json"
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(keys)
    out.write_text(json.dumps(result, indent=2, default=str))


CROSS_SHARD_CASES = [(10_000, 100_000), (10_000, 1_000_000), (1_000, 1_000_000), (100_000, 1_000_000)]


def cross_shard_only() -> None:
    cfg = DedupConfig()
    res = cross_shard(cfg, CROSS_SHARD_CASES)
    _update_results({"cross_shard": res, "cross_shard_rerun": {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"load_avg_at_start": list(os.getloadavg())},
        "note": "--cross-shard-only; the other keys are from the last full run"}})
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
