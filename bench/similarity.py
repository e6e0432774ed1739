"""Similarity index benchmark: build time, bytes per vector, query latency p50/p99 and recall@10
against brute force, at 100k and 1M vectors.

Vectors: real embeddings (the packaged EfficientNet-Lite0 over real images that packages ship:
arcade sprites, scikit-image photos, MNIST digits), replicated with Gaussian noise to reach each
size (noise sigma relative to the typical nearest-neighbour distance, so replicas are neighbours
but not copies). The index is built as the stage builds it: one segment per shard of 10,000.

    .venv/bin/python -m bench.similarity [--sizes 100000,1000000] [--queries 200]

Writes bench/results/similarity.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from bench.common import REPO, machine, peak_rss_mb, today

CACHE = REPO / "data" / "bench" / "similarity"
RESULT = REPO / "bench" / "results" / "similarity.json"
SHARD = 10_000


def base_embeddings(n: int = 2000) -> np.ndarray:
    """Real image embeddings (cached): EfficientNet-Lite0 with its packaged ImageNet weights."""
    path = CACHE / f"base_{n}.npy"
    if path.exists():
        return np.load(path)
    from PIL import Image

    from curation.embedding import EmbedderSpec, build_embedder
    from tests.conftest import arcade_sprites, mnist_digits

    images: list[Image.Image] = []
    import skimage.data as skd

    for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "horse", "camera", "page"):
        arr = getattr(skd, name)()
        images.append(Image.fromarray(arr).convert("RGB"))
    for p in arcade_sprites():
        if len(images) >= n // 2:
            break
        with Image.open(p) as im:
            images.append(im.convert("RGBA").convert("RGB"))
    digits, _ = mnist_digits(n - len(images))
    images += [Image.fromarray(d.reshape(28, 28).astype(np.uint8)).convert("RGB") for d in digits]
    emb = build_embedder(EmbedderSpec(device="cpu"))
    vecs = np.concatenate([emb.embed_images(images[i:i + 64]) for i in range(0, len(images), 64)])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs.astype(np.float32))
    return vecs


def replicate(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` unit vectors: the base rows, then noisy replicas of them."""
    from curation.similarity import unit_rows

    rng = np.random.default_rng(seed)
    x = unit_rows(base)
    nn = np.sort(x[:500] @ x.T, axis=1)[:, -2]  # nearest non-self cosine of a sample
    sigma = float(np.sqrt(max(1e-6, 2 * (1 - np.median(nn)))) / np.sqrt(x.shape[1])) * 0.5
    out = np.empty((n, x.shape[1]), np.float32)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        idx = np.arange(start, start + m)
        rows = x[idx % len(x)]
        noise = rng.standard_normal(rows.shape, dtype=np.float32) * sigma
        noise[idx < len(x)] = 0  # the base rows themselves are kept exact; every replica gets noise
        out[start:start + m] = unit_rows(rows + noise)
    return out


def run_size(x: np.ndarray, n_queries: int, cfg) -> dict:
    from curation.similarity import SimilarityIndex, brute_force, recall_at_k, write_segment

    ids = [f"{i:08d}" for i in range(len(x))]
    with tempfile.TemporaryDirectory(dir=CACHE) as root:
        t_cpu, t_wall, nbytes = time.process_time(), time.perf_counter(), 0
        shards = []
        for s in range(0, len(x), SHARD):
            shard = f"bench-{s // SHARD + 1:06d}"
            nbytes += write_segment(root, shard, ids[s:s + SHARD], x[s:s + SHARD], cfg)
            shards.append(shard)
        build_cpu, build_wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
        index = SimilarityIndex.load(root, cfg=cfg)
        rng = np.random.default_rng(1)
        qi = rng.choice(len(x), size=n_queries, replace=False)
        q = x[qi]
        lat = []
        found = []
        for i in range(n_queries):
            t = time.perf_counter()
            hits = index.search(q[i:i + 1], k=10)[0]
            lat.append(time.perf_counter() - t)
            found.append([h.image_id for h in hits])
        t = time.perf_counter()
        truth_idx = brute_force(x, q, 10)
        brute_s = (time.perf_counter() - t) / n_queries
    truth = [[ids[j] for j in row] for row in truth_idx]
    return {
        "vectors": len(x), "dim": int(x.shape[1]), "segments": len(shards),
        "build_cpu_s": round(build_cpu, 1), "build_wall_s": round(build_wall, 1),
        "bytes_per_vector": round(nbytes / len(x), 1),
        "query_p50_ms": round(1000 * float(np.percentile(lat, 50)), 2),
        "query_p99_ms": round(1000 * float(np.percentile(lat, 99)), 2),
        "brute_force_ms_per_query_batched": round(1000 * brute_s, 2),
        "recall_at_10": round(recall_at_k(found, truth, 10), 4),
    }


def main() -> None:
    from curation.similarity import IndexConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    base = base_embeddings()
    cfg = IndexConfig()
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        x = replicate(base, n)
        r = run_size(x, args.queries, cfg)
        print(json.dumps(r), flush=True)
        results.append(r)
        del x
    out = {"date": today(), "machine": machine(), "index": cfg.factory(), "ef_search": cfg.ef_search,
           "shard_size": SHARD, "base_embeddings": len(base), "results": results,
           "peak_rss_mb": round(peak_rss_mb(), 1),
           "notes": "one faiss HNSW segment per 10k-vector shard; queries search every segment and merge; "
                    "recall against exact cosine top-10 over all vectors; latency single query, one thread"}
    RESULT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
