"""Benchmark of the semantic (embedding) dedup pass (not a test). Writes bench/results/semantic.json.

1. Cosine distributions on the demo corpus's real EfficientNet-Lite0 embeddings: known copies by
   transform kind (every member of data/demo_expected.json's duplicate groups is embedded here, the
   curated set lacks the copies the hash pass removed) vs unrelated pairs (all pairs of the 5,079
   curated embeddings outside known groups).
2. Search recall vs brute force at the threshold: LSH pairs within one set; cross-shard matches of
   the last demo shard against the earlier shards' index, per index vector encoding.
3. Precision / recall on the known duplicate groups by transform kind: the semantic pass alone
   (over every decodable demo file, in shard order) and combined with the hash pass (semantic pass
   over the curated set, i.e. the pipeline: hash cluster, then semantic cluster of its representative).
4. Scale: 1M synthetic clustered 1280-d embeddings (ReLU-like, non-negative, 20% with a near copy):
   keys/encoding throughput, index bytes per image (memory and Parquet), within-shard clustering of a
   10k shard, and the cross-shard query cost of a 10k shard against 100k and 1M earlier rows.
5. Bucketed index (`--buckets 100000,1000000,...`, curation/semantic/buckets.py; `scale.bucket_index`):
   one 10k query shard (fresh rows plus planted copies of earlier rows) against a corpus of 10k-row
   shards read as the store's Fenwick block parts: query time, candidates, bytes read (4 KiB pages),
   recall vs brute force.

6. Quantizer list recall (`--ivf-probe-recall SIZES`, `scale.ivf_index.probe_recall`): why the IVF index loses
   recall at fixed nprobe as it grows, measured on its quantizer alone (no index built).

Run: .venv/bin/python -m bench.semantic [--quick] [--buckets SIZES] [--ivf [--full]] [--ivf-probe-recall SIZES]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import polars as pl

from bench.common import REPO, machine, peak_rss_mb, today
from curation.semantic import (
    SemanticDedupConfig,
    band_keys,
    brute_force_pairs,
    decode,
    encode,
    fit_center,
    hamming_limits,
    lsh_pairs,
    query_pairs,
    query_vectors,
    semantic_dedup_shard,
)

OUT = REPO / "data" / "outputs"
DEFAULT_MODEL_ID = "timm:tf_efficientnet_lite0:efficientnet-lite0-57934424"  # the offline default (EfficientNet-Lite0)
THRESHOLDS = (0.94, 0.95, 0.96, 0.97, 0.98)


def _pct(v, qs=(0, 1, 5, 25, 50)) -> dict:
    v = np.asarray(v)
    return {f"p{q}": round(float(np.percentile(v, q)), 4) for q in qs} if len(v) else {}


def load_demo() -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    from curation.embedding import embeddings_to_numpy  # noqa: F401 (import check)

    emb = pl.read_parquet(OUT / "image_embeddings" / "*.parquet").filter(pl.col("embedding").is_not_null())
    inv = pl.read_parquet(OUT / "raw_inventory" / "*.parquet",
                          columns=["image_id", "rel_path", "uri", "shard", "error_code"])
    expected = json.loads((REPO / "data" / "demo_expected.json").read_text())
    return emb, inv, expected


def embed_missing(inv: pl.DataFrame, have: set[str]) -> pl.DataFrame:
    """Embed (CPU, the packaged EfficientNet-Lite0, float16 precision like stage 4) every decodable
    file the curated embeddings lack: the copies the hash pass removed and the quality rejects."""
    import torch

    from assets.embeddings import image_opener
    from curation.embedding import EfficientNetLite0Embedder

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    todo = inv.filter(pl.col("error_code").is_null() & ~pl.col("image_id").is_in(list(have)))
    model = EfficientNetLite0Embedder(device="cpu", precision="fp32")
    opener = image_opener(None)
    ids, vecs = [], []
    uris = todo["uri"].to_list()
    for s in range(0, len(uris), 64):
        imgs, ok = [], []
        for k, u in enumerate(uris[s:s + 64]):
            try:
                imgs.append(opener(u))
                ok.append(s + k)
            except Exception:  # noqa: BLE001 - undecodable files have no embedding in the pipeline either
                pass
        if imgs:
            vecs.append(model.embed_images(imgs))
            ids.extend(todo["image_id"][i] for i in ok)
    x = np.concatenate(vecs).astype(np.float16).astype(np.float32)
    return pl.DataFrame({"image_id": ids, "embedding": pl.Series(x, dtype=pl.Array(pl.Float32, x.shape[1]))}).with_columns(
        pl.col("embedding").cast(pl.List(pl.Float32)))


def _x(df: pl.DataFrame) -> np.ndarray:
    x = df["embedding"].list.to_array(int(df["embedding"].list.len()[0])).to_numpy().astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def distributions(all_emb: pl.DataFrame, emb: pl.DataFrame, rel: dict, expected: dict) -> dict:
    pos = {rel[i]: k for k, i in enumerate(all_emb["image_id"])}
    xa = _x(all_emb)
    by_kind = collections.defaultdict(list)
    by_kind_src = collections.defaultdict(list)
    for g in expected["duplicate_groups"]:
        if g[0] not in pos:
            continue
        for p in g[1:]:
            if p in pos:
                c = float(xa[pos[g[0]]] @ xa[pos[p]])
                by_kind[p.split("/")[1]].append(c)
                by_kind_src[f"{g[0].split('/')[0]}/{p.split('/')[1]}"].append(c)
    copies = {k: {"pairs": len(v), **_pct(v), "frac_below": {str(t): round(float(np.mean(np.array(v) < t)), 3)
                                                              for t in THRESHOLDS}}
              for k, v in sorted(by_kind.items())}
    copies_by_source = {k: {"pairs": len(v), **_pct(v, (0, 5, 50))} for k, v in sorted(by_kind_src.items())}
    # unrelated: all pairs of the curated embeddings outside known groups
    x = _x(emb)
    paths = [rel[i] for i in emb["image_id"]]
    grp = np.full(len(paths), -1)
    gid = {p: gi for gi, g in enumerate(expected["duplicate_groups"]) for p in g}
    for k, p in enumerate(paths):
        grp[k] = gid.get(p, -1 - k)
    cat = np.array([p.split("/")[0] for p in paths])
    hist = np.zeros(2001, dtype=np.int64)
    above = collections.Counter()
    n_pairs = 0
    for s in range(0, len(x), 1024):
        sims = x[s:s + 1024] @ x.T
        ii, jj = np.indices(sims.shape)
        ii += s
        m = (jj > ii) & (grp[ii] != grp[jj])
        v = sims[m]
        n_pairs += len(v)
        hist += np.bincount(np.clip(((v + 1) * 1000).astype(np.int64), 0, 2000), minlength=2001)
        hi = m & (sims >= min(THRESHOLDS))
        for a, b, sv in zip(ii[hi], jj[hi], sims[hi]):
            pair = "/".join(sorted((cat[a], cat[b])))
            for t in THRESHOLDS:
                if sv >= t:
                    above[(t, pair)] += 1
    cdf = np.cumsum(hist) / n_pairs
    unrelated = {
        "pairs": int(n_pairs),
        "median": round(float(np.searchsorted(cdf, 0.5) / 1000 - 1), 3),
        "p99": round(float(np.searchsorted(cdf, 0.99) / 1000 - 1), 3),
        "frac_at_or_above": {str(t): float(hist[int(round((t + 1) * 1000)):].sum() / n_pairs) for t in (0.9,) + THRESHOLDS},
        "count_at_or_above_by_category": {str(t): {p: c for (tt, p), c in sorted(above.items()) if tt == t}
                                          for t in THRESHOLDS},
    }
    return {"known_copies_vs_original": copies, "known_copies_by_source": copies_by_source, "unrelated": unrelated}


def search_recall(emb: pl.DataFrame) -> dict:
    x = _x(emb)
    shards = sorted(emb["shard"].unique())
    center = fit_center(x[emb["shard"].to_numpy() == shards[0]])
    out: dict = {"within_set": {}, "cross_shard": {}}
    for label, cfg in (("0.97 (default 16x48)", SemanticDedupConfig()),
                       ("0.97 16x32", SemanticDedupConfig(n_bands=32)),
                       ("0.95 16x48", SemanticDedupConfig(threshold=0.95)),
                       ("0.95 14x64", SemanticDedupConfig(threshold=0.95, band_bits=14, n_bands=64)),
                       ("0.97 16x32 uncentred", None)):
        uncentred = cfg is None
        cfg = cfg or SemanticDedupConfig(n_bands=32)
        t = cfg.threshold
        bi, bj, _ = brute_force_pairs(x, t)
        t0 = time.perf_counter()
        i, j, _ = lsh_pairs(band_keys(x, cfg, None if uncentred else center), x, cfg)
        dt = time.perf_counter() - t0
        truth, found = set(zip(bi.tolist(), bj.tolist())), set(zip(i.tolist(), j.tolist()))
        out["within_set"][label] = {"images": len(x), "brute_force_pairs": len(truth), "lsh_pairs": len(found),
                                     "recall": round(len(truth & found) / max(1, len(truth)), 4),
                                     "false_pairs": len(found - truth), "seconds": round(dt, 2)}
    # cross-shard: last shard's images against every earlier image (as if all were representatives)
    q = emb["shard"].to_numpy() == shards[-1]
    xq, xe = x[q], x[~q]
    for t in (0.95, 0.97):
        sims = xq @ xe.T
        truth = set(zip(*[a.tolist() for a in np.nonzero(sims >= t)]))
        res = {}
        for enc in ("float16", "int8", "proj"):
            cfg = SemanticDedupConfig(threshold=t, index_vectors=enc)
            qq, rr, _ = query_pairs(band_keys(xq, cfg, center), query_vectors(xq, cfg), band_keys(xe, cfg, center),
                                    decode(encode(xe, cfg), cfg), cfg)
            found = set(zip(qq.tolist(), rr.tolist()))
            res[enc] = {"recall": round(len(truth & found) / max(1, len(truth)), 4),
                        "precision": round(len(truth & found) / max(1, len(found)), 4),
                        "bytes_per_vector": int(encode(xe[:1], cfg).nbytes)}
        out["cross_shard"][str(t)] = {"query": int(q.sum()), "index": int((~q).sum()),
                                      "brute_force_pairs": len(truth), **res}
    return out


def _run_shards(frames: list[pl.DataFrame], cfg: SemanticDedupConfig) -> pl.DataFrame:
    idx, outs = [], []
    center = fit_center(_x(frames[0]))
    for k, f in enumerate(frames):
        rows, ix = semantic_dedup_shard(f, idx, cfg, shard_seq=k, center=center)
        idx.append(ix)
        outs.append(rows)
    return pl.concat(outs)


def quality(all_emb: pl.DataFrame, emb: pl.DataFrame, inv: pl.DataFrame, expected: dict) -> dict:
    """Precision / recall on the known groups. A copy is caught when it ends in the original's cluster;
    precision = flagged duplicates (non-representatives) whose representative is in their known group."""
    rel = dict(zip(inv["image_id"], inv["rel_path"]))
    gid = {p: gi for gi, g in enumerate(expected["duplicate_groups"]) for p in g}
    kind = {p: p.split("/")[1] for g in expected["duplicate_groups"] for p in g[1:]}
    order = inv.select("image_id", "shard").with_row_index("o")
    hash_cl = pl.read_parquet(OUT / "dedup_clusters" / "*.parquet", columns=["image_id", "cluster_id"])
    hmap = dict(zip(hash_cl["image_id"], hash_cl["cluster_id"]))
    pid = {v: k for k, v in rel.items()}

    def score(final: dict) -> dict:
        flagged = [i for i, c in final.items() if c != i]
        tp = sum(1 for i in flagged if gid.get(rel[i], -1) == gid.get(rel[final[i]], -2))
        caught, total = collections.Counter(), collections.Counter()
        for p, k in kind.items():
            g = expected["duplicate_groups"][gid[p]]
            if p not in pid or g[0] not in pid:
                continue
            total[k] += 1
            caught[k] += final.get(pid[p], pid[p]) == final.get(pid[g[0]], pid[g[0]])
        return {"flagged": len(flagged), "precision": round(tp / max(1, len(flagged)), 3),
                "recall_by_kind": {k: round(caught[k] / total[k], 3) for k in sorted(total)},
                "recall_all": round(sum(caught.values()) / max(1, sum(total.values())), 3)}

    res: dict = {"hash_only": score({i: hmap.get(i, i) for i in inv["image_id"]})}
    allf = all_emb.join(order, on="image_id").sort("o")
    curf = emb.select("image_id", "shard", "embedding").join(order.select("image_id", "o"), on="image_id").sort("o")
    for t in THRESHOLDS:
        cfg = SemanticDedupConfig(threshold=t)
        frames = [allf.filter(pl.col("shard") == s).select("image_id", "shard", "embedding")
                  for s in sorted(allf["shard"].unique())]
        alone = _run_shards(frames, cfg)
        amap = dict(zip(alone["image_id"], alone["cluster_id"]))
        frames = [curf.filter(pl.col("shard") == s).select("image_id", "shard", "embedding")
                  for s in sorted(curf["shard"].unique())]
        comb = _run_shards(frames, cfg)
        smap = dict(zip(comb["image_id"], comb["cluster_id"]))
        final = {}
        for i in inv["image_id"]:
            h = hmap.get(i, i)
            final[i] = smap.get(h, h)
        res[str(t)] = {"semantic_alone": score({i: amap.get(i, i) for i in inv["image_id"]}),
                       "hash_then_semantic": score(final),
                       "largest_semantic_cluster": int(comb.group_by("cluster_id").len()["len"].max())}
    return res


# --------------------------------------------------------------------------------------------------
# Scale on synthetic clustered embeddings
# --------------------------------------------------------------------------------------------------


def synthetic(n: int, dim: int, seed: int, dup_frac: float = 0.2) -> np.ndarray:
    """float16 unit rows: ReLU of a shared offset plus Gaussian noise (non-negative, unrelated pairs
    at cosine ~0.6, like the real features), 200 topics mixed in; `dup_frac` of rows are near copies
    (cosine 0.95-0.99) of an earlier row."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(dim).astype(np.float32) * 0.8
    topics = np.maximum(rng.standard_normal((200, dim)).astype(np.float32), 0)
    out = np.empty((n, dim), dtype=np.float16)
    for s in range(0, n, 65536):
        out[s:s + min(65536, n - s)] = _rows(rng, offset, topics, min(65536, n - s), dup_frac)
    return out


def _rows(rng: np.random.Generator, offset: np.ndarray, topics: np.ndarray, m: int, dup_frac: float) -> np.ndarray:
    """m float32 unit rows of `synthetic` (ReLU of offset + noise, plus a topic), dup_frac of them
    near copies (cosine 0.95-0.99) of another row of the same batch."""
    dim = len(offset)
    z = np.maximum(offset + rng.standard_normal((m, dim)).astype(np.float32), 0)
    z += topics[rng.integers(0, 200, m)] * 1.5
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    nd = int(m * dup_frac)
    src = rng.integers(0, m, nd)
    dst = rng.choice(m, nd, replace=False)
    target = rng.uniform(0.95, 0.99, nd).astype(np.float32)
    noise = np.abs(rng.standard_normal((nd, dim)).astype(np.float32))
    noise -= (noise * z[src]).sum(1, keepdims=True) * z[src]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    z[dst] = target[:, None] * z[src] + np.sqrt(1 - target**2)[:, None] * noise
    z[dst] /= np.linalg.norm(z[dst], axis=1, keepdims=True)
    return z


def synthetic_chunk(n: int, dim: int, seed: int, chunk: int, dup_frac: float = 0.2) -> np.ndarray:
    """Like `synthetic`, but one corpus in chunks: the offset and the 200 topics come from `seed`,
    the rows (and their near copies, within the chunk) from (seed, chunk)."""
    base = np.random.default_rng(seed)
    offset = base.standard_normal(dim).astype(np.float32) * 0.8
    topics = np.maximum(base.standard_normal((200, dim)).astype(np.float32), 0)
    return _rows(np.random.default_rng([seed, chunk]), offset, topics, n, dup_frac)


def bucket_scale(sizes: tuple[int, ...], cfg: SemanticDedupConfig, shard_rows: int = 10_000,
                 sample: int = 500, brute_force_max: int = 2_000_000) -> dict:
    """Cross-shard query cost of the bucketed index (curation/semantic/buckets.py) for one 10k query
    shard against the earlier shards of a corpus of 10k-row shards, read as the index store's
    Fenwick blocks (shard p reads log2(p) block parts, memory-mapped .npy files on local disk).
    Recall against brute force (exact cosine of the query vectors with the decoded index vectors,
    threshold cfg.threshold) on `sample` planted copies of earlier rows plus `sample` fresh rows,
    for corpora up to brute_force_max rows (beyond, brute force takes too long on 2 cores)."""
    from curation.index_store import earlier_blocks
    from curation.semantic.buckets import (
        BucketConfig,
        brute_force_query,
        bucket_keys,
        build_part,
        load_part,
        query_parts,
        save_part,
    )

    dim, bcfg, chunk = 1280, BucketConfig(), 100_000
    n_max = max(sizes)
    res: dict = {"bucket_config": bcfg.__dict__, "shard_rows": shard_rows, "dim": dim}
    t0 = time.perf_counter()
    center = fit_center(synthetic_chunk(shard_rows, dim, 11, 0))
    keys, bands, vecs = [], [], []
    rng = np.random.default_rng(5)
    planted_src = np.sort(np.concatenate([rng.integers(lo, hi, sample // len(sizes))
                                          for lo, hi in zip((0,) + sizes[:-1], sizes)]))
    planted = []
    for c in range(0, n_max, chunk):
        z = synthetic_chunk(min(chunk, n_max - c), dim, 11, 1 + c // chunk)
        keys.append(bucket_keys(z, cfg, center, bcfg))
        bands.append(band_keys(z, cfg, center))
        vecs.append(encode(z, cfg))
        here = planted_src[(planted_src >= c) & (planted_src < c + len(z))] - c
        p = z[here] * 0.98 + 0.2 * np.abs(rng.standard_normal((len(here), dim)).astype(np.float32)) / np.sqrt(dim)
        planted.append(p / np.linalg.norm(p, axis=1, keepdims=True))
    keys_a, bands_a, vecs_a = np.concatenate(keys), np.concatenate(bands), np.concatenate(vecs)
    del keys, bands, vecs
    fresh = synthetic_chunk(shard_rows, dim, 11, 10_000)
    q = np.concatenate([fresh[:shard_rows - len(planted_src)], *planted]).astype(np.float32)
    res["generate_and_encode_s"] = round(time.perf_counter() - t0, 1)
    res["planted_copies"] = len(planted_src)
    qband = band_keys(q, cfg, center)
    bf_rows = np.concatenate([np.arange(sample), np.arange(len(q) - len(planted_src), len(q))])
    with tempfile.TemporaryDirectory(dir=os.environ.get("SEMANTIC_BENCH_TMP")) as tmp:
        for n in sizes:
            position = n // shard_rows + 1
            folders = []
            for a, b in earlier_blocks(position):  # the block parts shard `position` reads
                lo, hi = (a - 1) * shard_rows, b * shard_rows
                folder = os.path.join(tmp, f"{a}_{b}")
                if not os.path.exists(folder):
                    save_part(build_part(keys_a[lo:hi], vecs_a[lo:hi], bands_a[lo:hi], cfg), folder)
                folders.append((folder, lo))
            parts = [load_part(f) for f, _ in folders]
            t0 = time.perf_counter()
            qq, pp, rr, ss, st = query_parts(parts, q, cfg, center, bcfg, qband_keys=qband)
            dt = time.perf_counter() - t0
            offs = np.array([lo for _, lo in folders])
            found = set(zip(qq.tolist(), (rr + offs[pp]).tolist()))
            entry = {
                "earlier_rows": n, "parts_read": len(parts), "part_rows": [len(p) for p in parts],
                "query_s": round(dt, 2), "prefix_bits": st.prefix_bits,
                "candidate_entries_per_query": round(st.rows / len(q), 1),
                "candidate_pairs_per_query": round(st.pairs / len(q), 1),
                "verified_per_query": round(st.verified / len(q), 2),
                "bytes_read": st.bytes_read,
                "index_bytes": sum(os.path.getsize(os.path.join(f, x)) for f, _ in folders for x in os.listdir(f)),
                "matches": len(qq),
            }
            entry["bytes_read_fraction"] = round(st.bytes_read / entry["index_bytes"], 4)
            res[f"shard_{position}_vs_{n}"] = entry
            if n > brute_force_max:
                print(json.dumps(entry), flush=True)
                continue
            t1 = time.perf_counter()
            bq, bp, br, _ = brute_force_query(q[bf_rows], parts, cfg)
            bf_s = time.perf_counter() - t1
            truth = set(zip(bf_rows[bq].tolist(), (br + offs[bp]).tolist()))
            sample_found = {f for f in found if f[0] in set(bf_rows.tolist())}
            entry.update({
                "brute_force_sample_queries": len(bf_rows), "brute_force_pairs": len(truth),
                "recall_vs_brute_force": round(len(truth & sample_found) / max(1, len(truth)), 4),
                "false_pairs": len(sample_found - truth), "brute_force_s": round(bf_s, 1),
            })
            print(json.dumps(entry), flush=True)
            del parts
    res["peak_rss_mb"] = round(peak_rss_mb(), 0)
    return res


def ivf_scale(sizes: tuple[int, ...], cfg: SemanticDedupConfig, shard_rows: int = 10_000, planted: int = 500,
              fresh_sample: int = 500, stream_max: int = 1_000_000, icfg=None, on_entry=None,
              nprobes: tuple[int, ...] = (8, 16)) -> dict:
    """Cross-shard query cost of the partitioned index (curation/semantic/ivf.py) for one 10k query
    shard at position p = n / 10k + 1 of a corpus of 10k-row synthetic shards (`synthetic_chunk`):
    the shard reads generation b = generation_end(p)'s block and the parts of shards b+1..p-1
    (memory-mapped .npy files on local disk), as `semantic_duplicates` does. The query shard holds
    `planted` copies of random earlier rows at cosine U(threshold, 0.995) with their stored vector
    plus fresh rows. Recall against brute force (exact cosine with the decoded index vectors) on the
    planted copies and `fresh_sample` fresh rows. Side by side, up to stream_max earlier rows: the
    streaming search (`query_pairs` with its Hamming pre-filter, all earlier rows in memory)."""
    from dataclasses import asdict, replace

    from curation.semantic.buckets import brute_force_query
    from curation.semantic.ivf import (
        IvfConfig,
        assign_part,
        build_generation,
        generation_end,
        load_part,
        load_quantizer,
        query_ivf,
        save_part,
    )
    from curation.semantic.lsh import pack_bits
    from curation.semantic.vectors import unit_rows

    icfg = icfg or IvfConfig()
    dim = 1280
    n_shards = max(sizes) // shard_rows
    res: dict = {"ivf_config": asdict(icfg), "shard_rows": shard_rows, "dim": dim, "threshold": cfg.threshold,
                 "index_vectors": cfg.index_vectors, "planted_copies": planted}
    with tempfile.TemporaryDirectory(dir=os.environ.get("SEMANTIC_BENCH_TMP")) as tmp:
        center = fit_center(synthetic_chunk(shard_rows, dim, 11, 0))
        made = [0, 0.0]  # shards generated so far, seconds

        def generate(upto: int) -> None:  # the corpus's shards 1..upto (10k synthetic rows each), once
            t0 = time.perf_counter()
            for j in range(made[0] + 1, upto + 1):
                z = synthetic_chunk(shard_rows, dim, 11, j)
                np.save(os.path.join(tmp, f"vec{j}.npy"), encode(z, cfg))
                np.save(os.path.join(tmp, f"keys{j}.npy"), band_keys(z, cfg, center))
            made[0] = max(made[0], upto)
            made[1] += time.perf_counter() - t0
            res["generate_and_encode_s"] = round(made[1], 1)

        def shard(j: int):
            keys = np.load(os.path.join(tmp, f"keys{j}.npy"), mmap_mode="r")
            return (pack_bits(np.asarray(keys), cfg.band_bits), np.load(os.path.join(tmp, f"vec{j}.npy"), mmap_mode="r"),
                    {"row": np.arange(shard_rows, dtype=np.int64) + (j - 1) * shard_rows})

        rng = np.random.default_rng(5)
        for n in sizes:
            p = n // shard_rows + 1
            generate(p - 1)
            b = generation_end(p, icfg.growth)
            gen = os.path.join(tmp, f"gen{b}")
            entry: dict = {"earlier_rows": n, "generation_end": b, "tail_parts": p - 1 - b}
            if not os.path.exists(os.path.join(gen, "block")):
                c0, t0 = time.process_time(), time.perf_counter()
                build_generation(lambda b=b: (shard(j) for j in range(1, b + 1)), gen, cfg, icfg)
                entry["generation_build_s"] = round(time.perf_counter() - t0, 1)
                entry["generation_build_cpu_s"] = round(time.process_time() - c0, 1)
            quant = load_quantizer(os.path.join(gen, "quantizer.npz"))
            tail_s = []
            for j in range(b + 1, p):
                folder = os.path.join(gen, "tail", str(j))
                if not os.path.exists(folder):
                    t0 = time.perf_counter()
                    save_part(assign_part(shard(j), quant, cfg, icfg), folder)
                    tail_s.append(time.perf_counter() - t0)
            if tail_s:
                entry["tail_part_write_s_mean"] = round(float(np.mean(tail_s)), 2)
            parts = [load_part(os.path.join(gen, "block"))] + [load_part(os.path.join(gen, "tail", str(j)))
                                                                for j in range(b + 1, p)]
            # the query shard: fresh rows plus planted copies of earlier rows (their stored vectors)
            src = np.sort(rng.choice(n, planted, replace=False))
            base = np.concatenate([decode(np.asarray(np.load(os.path.join(tmp, f"vec{s // shard_rows + 1}.npy"),
                                                             mmap_mode="r")[s % shard_rows:s % shard_rows + 1]), cfg)
                                   for s in src])
            cos = rng.uniform(cfg.threshold, 0.995, planted).astype(np.float32)
            noise = np.abs(rng.standard_normal(base.shape).astype(np.float32))
            noise -= (noise * base).sum(1, keepdims=True) * base
            noise = unit_rows(noise)
            copies = unit_rows(cos[:, None] * base + np.sqrt(1 - cos ** 2)[:, None] * noise)
            q = np.concatenate([synthetic_chunk(shard_rows - planted, dim, 11, 10 ** 6 + p), copies]).astype(np.float32)
            qkeys = band_keys(q, cfg, center)
            qband = pack_bits(qkeys, cfg.band_bits)
            rows_of = [np.asarray(part.payload["row"]) for part in parts]

            def global_pairs(qs, ps, rs, rows_of=rows_of):
                return set(zip(qs.tolist(), [int(rows_of[a][r]) for a, r in zip(ps.tolist(), rs.tolist())]))

            sample = np.concatenate([np.arange(fresh_sample), np.arange(len(q) - planted, len(q))])
            t0 = time.perf_counter()
            bq, bp, br, _ = brute_force_query(q[sample], parts, cfg)
            truth = global_pairs(sample[bq], bp, br)
            in_sample = set(sample.tolist())
            planted_truth = {(len(q) - planted + i, int(s)) for i, s in enumerate(src)}
            index_bytes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _d, fs in os.walk(gen) for f in fs
                              if f.endswith(".npy") and (f"{os.sep}tail{os.sep}" not in dp
                                                         or int(os.path.basename(dp)) < p))
            entry.update({"parts_read": len(parts), "lists": quant.n_lists, "index_bytes": index_bytes,
                          "brute_force_sample_queries": len(sample), "brute_force_pairs": len(truth),
                          "brute_force_s": round(time.perf_counter() - t0, 1), "by_nprobe": {}})
            for nprobe in sorted({*nprobes, icfg.nprobe}):
                c0, t0 = time.process_time(), time.perf_counter()
                limit = hamming_limits(q, cfg, center)
                qq, pp, rr, ss, st = query_ivf(parts, quant, q, qband, cfg, replace(icfg, nprobe=nprobe),
                                               max_hamming=limit)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                found = global_pairs(qq, pp, rr)
                got = {f for f in found if f[0] in in_sample}
                entry["by_nprobe"][str(nprobe)] = {
                    "query_wall_s": round(wall, 2), "query_cpu_s": round(cpu, 2), "probe_s": round(st.probe_s, 2),
                    "candidates_per_query": round(st.candidates / len(q), 1),
                    "verified_per_query": round(st.verified / len(q), 2), "matches": len(qq),
                    "bytes_read": st.bytes_read, "bytes_read_fraction": round(st.bytes_read / index_bytes, 4),
                    "recall_vs_brute_force": round(len(truth & got) / max(1, len(truth)), 4),
                    "planted_copies_found": len(planted_truth & found), "false_pairs": len(got - truth),
                }
                print(nprobe, json.dumps(entry["by_nprobe"][str(nprobe)]), flush=True)
            entry.update(entry["by_nprobe"][str(icfg.nprobe)])  # the default's figures at the top level
            if n <= stream_max:  # side by side: the streaming search over every earlier row (in memory)
                ikeys = np.concatenate([np.load(os.path.join(tmp, f"keys{j}.npy")) for j in range(1, p)])
                ivec = np.concatenate([np.load(os.path.join(tmp, f"vec{j}.npy")) for j in range(1, p)])
                c0, t0 = time.process_time(), time.perf_counter()
                sq, sr, _ = query_pairs(qkeys, query_vectors(q, cfg), ikeys, ivec, cfg,
                                        max_hamming=hamming_limits(q, cfg, center), raw_index=True)
                entry["stream_query_wall_s"] = round(time.perf_counter() - t0, 2)
                entry["stream_query_cpu_s"] = round(time.process_time() - c0, 2)
                entry["stream_matches"] = len(sq)
                stream_got = {f for f in zip(sq.tolist(), sr.tolist()) if f[0] in in_sample}
                entry["stream_recall_vs_brute_force"] = round(len(truth & stream_got) / max(1, len(truth)), 4)
                del ikeys, ivec
            res[f"shard_{p}_vs_{n}"] = entry
            res["peak_rss_mb"] = round(peak_rss_mb(), 0)
            print(json.dumps(entry), flush=True)
            if on_entry is not None:  # e.g. save partial results
                on_entry(res)
            del parts
        if len(sizes) > 1:
            first = res[f"shard_{sizes[0] // shard_rows + 1}_vs_{sizes[0]}"]
            last = res[f"shard_{n_shards + 1}_vs_{max(sizes)}"]
            res["query_wall_ratio_last_vs_first"] = round(last["query_wall_s"] / first["query_wall_s"], 2)
            res["query_cpu_ratio_last_vs_first"] = round(last["query_cpu_s"] / first["query_cpu_s"], 2)
    res["peak_rss_mb"] = round(peak_rss_mb(), 0)
    return res


def ivf_probe_recall(sizes: tuple[int, ...], cfg: SemanticDedupConfig, overrides: tuple[dict, ...] = ({},),
                     pairs: int = 2000, dim: int = 1280, shard_rows: int = 10_000) -> dict:
    """Why the partitioned index loses recall at fixed nprobe as the corpus grows, without building
    it: for a generation of n rows, train its quantizer exactly as `build_generation` does (n_lists
    = n / list_rows, the same sample size, on `synthetic_chunk` rows) and measure, for `pairs`
    planted near copies made as `ivf_scale` makes them (stored vector v, query q at cosine
    U(threshold, 0.995)), the fraction whose v's list is among q's nprobe probed lists (a proxy
    of the index's recall on planted copies: same quantizer settings, but a fresh sample and
    n_lists from n rather than from the generation end, so the figures differ by a few percent). Also the exact
    triangle-inequality bound: the lists a query would have to read to be exact (angle(q, centroid)
    <= list radius + acos(threshold), the radius measured on the sample: a lower bound), as a
    fraction of all lists. CPU seconds of the probe per 10k queries."""
    from dataclasses import replace

    from curation.semantic.ivf import IvfConfig, n_lists_for, train_quantizer
    from curation.semantic.vectors import unit_rows

    def rows(n: int, first: int) -> np.ndarray:
        out, c = [], first
        while sum(len(o) for o in out) < n:
            out.append(decode(encode(synthetic_chunk(shard_rows, dim, 11, c), cfg), cfg))
            c += 1
        return np.concatenate(out)[:n]

    rng = np.random.default_rng(5)
    v = rows(pairs, 50_000)
    cos = rng.uniform(cfg.threshold, 0.995, pairs).astype(np.float32)
    noise = np.abs(rng.standard_normal(v.shape).astype(np.float32))
    noise = unit_rows(noise - (noise * v).sum(1, keepdims=True) * v)
    q = query_vectors(unit_rows(cos[:, None] * v + np.sqrt(1 - cos ** 2)[:, None] * noise), cfg)
    res: dict = {"pairs": pairs, "threshold": cfg.threshold, "dim": dim}
    for over in overrides:
        icfg = replace(IvfConfig(), **over)
        for n in sizes:
            n_lists = n_lists_for(n, icfg)
            ns = min(icfg.max_sample_rows, max(icfg.sample_rows, 8 * n_lists))
            xs = rows(ns, 1)
            c0 = time.process_time()
            quant = train_quantizer(xs, n_lists, icfg)
            entry: dict = {"rows": n, "lists": quant.n_lists, "sample_rows": ns,
                           "train_cpu_s": round(time.process_time() - c0, 1)}
            home = quant.nearest(v, icfg.assign_probe)
            for nprobe in (8, 16, 32, 64):
                c0 = time.process_time()
                pr = quant.probe(q, nprobe, icfg.top_probe)
                entry[f"probe_cpu_s_per_10k_nprobe_{nprobe}"] = round((time.process_time() - c0) * 10_000 / pairs, 2)
                entry[f"list_recall_nprobe_{nprobe}"] = round(float((pr == home[:, None]).any(1).mean()), 4)
            a = quant.nearest(xs, icfg.assign_probe)
            rad = np.ones(quant.n_lists, np.float32)
            np.minimum.at(rad, a, (xs * quant.leaves[a]).sum(1))
            ang = np.arccos(np.clip(q[:200] @ quant.leaves.T, -1, 1))
            bound = np.arccos(np.clip(rad, -1, 1))[None, :] + np.arccos(cfg.threshold)
            entry["triangle_exact_lists_fraction"] = round(float((ang <= bound).mean()), 3)
            res[f"{n}{'_' + '_'.join(f'{k}_{w}' for k, w in over.items()) if over else ''}"] = entry
            print(json.dumps(entry), flush=True)
            del xs, quant
    return res


def variance_spectrum(max_images: int = 1500, seconds: float = 180.0) -> dict:
    """Is the synthetic generator's structure like real embeddings'? The cumulative share of variance
    in the top k principal components of unit rows: real EfficientNet-Lite0 embeddings (CPU) of
    every 7th Debian openclipart PNG (up to max_images, or what `seconds` allows) against as many
    `synthetic_chunk` rows. A flatter spectrum (less variance in few components) is harder to
    partition: IVF lists then split near-isotropic noise and near copies cross list boundaries."""
    import glob

    from PIL import Image

    from curation.embedding import EfficientNetLite0Embedder

    def spec(x: np.ndarray) -> dict:
        sv = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        c = np.cumsum(sv / sv.sum())
        return {f"top_{k}": round(float(c[min(k, len(c)) - 1]), 3) for k in (10, 50, 200, 500)}

    files = sorted(glob.glob("/usr/share/openclipart/png/**/*.png", recursive=True))[::7][:max_images]
    model = EfficientNetLite0Embedder(device="cpu", precision="fp32")
    vecs, t0 = [], time.perf_counter()
    for s in range(0, len(files), 64):
        vecs.append(model.embed_images([Image.open(f).convert("RGB") for f in files[s:s + 64]]))
        if time.perf_counter() - t0 > seconds:
            break
    x = np.concatenate(vecs).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {"images": len(x), "openclipart_efficientnet_lite0": spec(x),
            "synthetic_chunk": spec(synthetic_chunk(len(x), x.shape[1], 11, 2))}


def scale(n_index: int, cfg: SemanticDedupConfig) -> dict:
    dim = 1280
    t0 = time.perf_counter()
    x = synthetic(n_index + 10_000, dim, 7)
    gen = time.perf_counter() - t0
    shard = x[:10_000]
    earlier = x[10_000:]
    res: dict = {"dim": dim, "synthetic_generate_s": round(gen, 1)}
    # encode the index: keys + vectors (what materialising the earlier shards costs, per image)
    center = fit_center(earlier[:10_000])
    t0 = time.perf_counter()
    keys = band_keys(earlier, cfg, center)
    vec = encode(earlier, cfg)
    enc_s = time.perf_counter() - t0
    res["index_build_us_per_image"] = round(enc_s / len(earlier) * 1e6, 2)
    ids = pl.Series([f"{i:016x}" for i in range(len(earlier))])
    frame = pl.DataFrame({
        "image_id": ids, "shard": "syn-000001", "shard_seq": pl.Series(np.zeros(len(earlier), np.int32)),
        "cluster_id": ids, "rep_shard": "syn-000001", "similarity": pl.Series(np.ones(len(earlier), np.float32)),
        "is_representative": True,
        "keys": pl.Series(keys, dtype=pl.Array(pl.UInt32, cfg.n_bands)),
        "vec": pl.Series(vec, dtype=pl.Array(pl.Int8, dim)),
    })
    res["index_numeric_bytes_per_representative"] = 4 * cfg.n_bands + vec.shape[1]
    keys, vec = keys[:100_000].copy(), vec[:100_000].copy()  # only the 100k search below needs them
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "i.parquet")
        frame.write_parquet(p, compression="zstd")
        res["index_parquet_bytes_per_image"] = round(os.path.getsize(p) / len(earlier), 1)
        res["index_memory_bytes_per_image"] = round(frame.estimated_size() / len(earlier), 1)
        del frame  # bound peak memory: the read below replaces it
        t0 = time.perf_counter()
        frame = pl.read_parquet(p)
        res["index_read_s"] = round(time.perf_counter() - t0, 2)
    # within-shard clustering of a 10k shard (no earlier index)
    cur = pl.DataFrame({"image_id": [f"q{i}" for i in range(len(shard))], "shard": "syn-999999",
                        "embedding": pl.Series(shard.astype(np.float32), dtype=pl.Array(pl.Float32, dim))})
    t0 = time.perf_counter()
    rows, _ = semantic_dedup_shard(cur, None, cfg, center=center)
    res["shard_10k_alone_s"] = round(time.perf_counter() - t0, 2)
    res["shard_10k_alone_duplicates"] = int((~rows["is_representative"]).sum())
    # cross-shard: the 10k shard against 100k and the full index (also planted copies of index rows)
    rng = np.random.default_rng(3)
    src = rng.integers(0, len(earlier), 1000)
    planted = earlier[src].astype(np.float32) * 0.98
    planted += 0.2 * np.abs(rng.standard_normal(planted.shape).astype(np.float32)) / np.sqrt(dim)
    q = np.concatenate([shard[:9000].astype(np.float32), planted])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    cur = pl.DataFrame({"image_id": [f"q{i}" for i in range(len(q))], "shard": "syn-999999",
                        "embedding": pl.Series(q, dtype=pl.Array(pl.Float32, dim))})
    for n in sorted({100_000, len(earlier)}):
        part = frame.head(n)
        t0 = time.perf_counter()
        rows, _ = semantic_dedup_shard(cur, part, cfg, center=center)
        dt = time.perf_counter() - t0
        dq = None
        if n <= 100_000:  # the search alone (what match_earlier runs: Hamming pre-filter, raw int8 rows)
            t0 = time.perf_counter()
            qk = band_keys(q, cfg, center)
            query_pairs(qk, query_vectors(q, cfg), keys[:n], vec[:n], cfg,
                        max_hamming=hamming_limits(q, cfg, center), raw_index=True)
            dq = round(time.perf_counter() - t0, 2)
        best = np.full(1000, -np.inf, dtype=np.float32)  # brute force for the planted copies, in blocks
        for s in range(0, n, 100_000):
            best = np.maximum(best, (q[9000:] @ earlier[s:min(n, s + 100_000)].astype(np.float32).T).max(1))
        truth_rows = set(np.flatnonzero(best >= cfg.threshold) + 9000)
        joined = set(np.flatnonzero(rows["rep_shard"].to_numpy() != "syn-999999"))
        res[f"cross_shard_10k_vs_{n}"] = {
            "total_s": round(dt, 2), "query_pairs_only_s": dq,
            "joined_earlier": len(joined), "planted_copies_joined": len([j for j in joined if j >= 9000]),
            "planted_copies_recall_vs_brute_force": round(len(joined & truth_rows) / max(1, len(truth_rows)), 4),
        }
    res["peak_rss_mb"] = round(peak_rss_mb(), 0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100k instead of 1M synthetic rows")
    ap.add_argument("--scale-only", action="store_true",
                    help="re-run only the synthetic scale part and update it in bench/results/semantic.json")
    ap.add_argument("--buckets", default="",
                    help="comma-separated earlier-row counts (e.g. 100000,1000000,5000000): run only the bucketed "
                         "index's scale part and update scale.bucket_index in bench/results/semantic.json")
    ap.add_argument("--ivf", action="store_true",
                    help="run only the partitioned index's scale part (100k and 1M earlier rows; --full adds 2M and 5M) "
                         "and update scale.ivf_index in bench/results/semantic.json")
    ap.add_argument("--full", action="store_true", help="with --ivf: also 2M and 5M earlier rows")
    ap.add_argument("--ivf-rerun", default="",
                    help="with --ivf: comma-separated earlier-row counts to re-run with --nprobes, stored under "
                         "scale.ivf_index.reruns (the main figures are kept)")
    ap.add_argument("--ivf-probe-recall", default="",
                    help="comma-separated generation row counts: measure only the quantizer's list recall at fixed "
                         "nprobe (`ivf_probe_recall`), stored under scale.ivf_index.probe_recall")
    ap.add_argument("--ivf-spectrum", action="store_true",
                    help="compare the synthetic rows' PCA spectrum with real embeddings (`variance_spectrum`), "
                         "stored under scale.ivf_index.spectrum")
    ap.add_argument("--nprobes", default="8,16", help="with --ivf: the nprobe values measured on each index")
    args = ap.parse_args()
    t_all = time.perf_counter()
    if args.ivf_spectrum:
        out = REPO / "bench" / "results" / "semantic.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        sp = variance_spectrum()
        sp["date"], sp["machine"] = today(), machine()
        result.setdefault("scale", {}).setdefault("ivf_index", {})["spectrum"] = sp
        out.write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(sp))
        return
    if args.ivf_probe_recall:
        out = REPO / "bench" / "results" / "semantic.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        cfg = SemanticDedupConfig(threshold=SemanticDedupConfig().for_model(DEFAULT_MODEL_ID).threshold)
        pr = ivf_probe_recall(tuple(int(v) for v in args.ivf_probe_recall.split(",")), cfg,
                              overrides=({}, {"leaf_iters": 3}))
        pr["date"], pr["machine"], pr["total_s"] = today(), machine(), round(time.perf_counter() - t_all, 1)
        result.setdefault("scale", {}).setdefault("ivf_index", {})["probe_recall"] = pr
        out.write_text(json.dumps(result, indent=2, default=str))
        return
    if args.ivf:
        out = REPO / "bench" / "results" / "semantic.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        sizes = (100_000, 1_000_000, 2_000_000, 5_000_000) if args.full else (100_000, 1_000_000)
        # the default offline model's calibrated (strict) threshold, 0.968
        cfg = SemanticDedupConfig(threshold=SemanticDedupConfig().for_model(DEFAULT_MODEL_ID).threshold)

        def save(iv: dict) -> None:
            iv["date"], iv["machine"], iv["total_s"] = today(), machine(), round(time.perf_counter() - t_all, 1)
            result.setdefault("scale", {})["ivf_index"] = iv
            out.write_text(json.dumps(result, indent=2, default=str))

        nprobes = tuple(int(v) for v in args.nprobes.split(","))
        if args.ivf_rerun:
            main_iv = result.get("scale", {}).get("ivf_index", {})

            def save(iv: dict) -> None:  # noqa: F811 - a re-run is stored beside the main figures
                iv["date"], iv["machine"], iv["total_s"] = today(), machine(), round(time.perf_counter() - t_all, 1)
                main_iv.setdefault("reruns", {})[f"{args.ivf_rerun}_nprobe_{args.nprobes}"] = iv
                result.setdefault("scale", {})["ivf_index"] = main_iv
                out.write_text(json.dumps(result, indent=2, default=str))

            sizes = tuple(int(v) for v in args.ivf_rerun.split(","))
        iv = ivf_scale(sizes, cfg, on_entry=save, nprobes=nprobes)
        save(iv)
        print(json.dumps(iv, indent=1))
        return
    if args.buckets:
        out = REPO / "bench" / "results" / "semantic.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        sizes = tuple(int(v) for v in args.buckets.split(","))
        bi = bucket_scale(sizes, SemanticDedupConfig())
        bi["date"], bi["machine"] = today(), machine()
        result.setdefault("scale", {})["bucket_index"] = bi
        out.write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(bi, indent=1))
        return
    if args.scale_only:
        out = REPO / "bench" / "results" / "semantic.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        result["scale"] = scale(100_000 if args.quick else 1_000_000, SemanticDedupConfig())
        result["scale"]["date"] = today()
        result["scale"]["machine"] = machine()
        out.write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result["scale"], indent=1))
        return
    emb, inv, expected = load_demo()
    rel = dict(zip(inv["image_id"], inv["rel_path"]))
    t0 = time.perf_counter()
    cache = os.environ.get("SEMANTIC_BENCH_CACHE")  # a parquet path to reuse the evaluation embeddings
    if cache and os.path.exists(cache):
        extra = pl.read_parquet(cache)
    else:
        extra = embed_missing(inv, set(emb["image_id"]))
        if cache:
            extra.write_parquet(cache)
    embed_s = time.perf_counter() - t0
    all_emb = pl.concat([emb.select("image_id", "embedding"), extra])
    result = {
        "date": today(), "machine": machine(), "config_defaults": SemanticDedupConfig().__dict__,
        "demo": {"curated_embeddings": emb.height, "embedded_here_for_eval": extra.height,
                 "embed_s": round(embed_s, 1)},
    }
    t0 = time.perf_counter()
    result["distributions"] = distributions(all_emb, emb, rel, expected)
    result["search_recall_vs_brute_force"] = search_recall(emb)
    result["known_groups"] = quality(all_emb, emb, inv, expected)
    result["demo"]["eval_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result["known_groups"], indent=1))
    result["scale"] = scale(100_000 if args.quick else 1_000_000, SemanticDedupConfig())
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    out = REPO / "bench" / "results" / "semantic.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("search_recall_vs_brute_force", "scale")}, indent=1))


if __name__ == "__main__":
    main()
