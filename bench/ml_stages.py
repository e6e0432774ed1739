"""Time the ML take-away stages (image_scores, curated_export, similarity_index) add to one shard.

A shard of real images (arcade sprites, then MNIST digits upscaled to 112 px, as the demo has) goes
through the upstream stages once; then each new stage is materialised on it and its `elapsed_s`
metadata and the step's wall time are recorded (image_scores without heads, as `make demo` runs it,
and with one head of the embedder's dimension).

    .venv/bin/python -m bench.ml_stages [--images 2000]

Writes bench/results/ml_stages.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

from bench.common import REPO, machine, peak_rss_mb, today

RESULT = REPO / "bench" / "results" / "ml_stages.json"


def build_source(root, n: int) -> None:
    from PIL import Image

    from tests.conftest import arcade_sprites, mnist_digits

    root.mkdir(parents=True)
    sprites = arcade_sprites()[: n // 2]
    for i, p in enumerate(sprites):
        shutil.copyfile(p, root / f"s{i:05d}{p.suffix}")
    digits, _ = mnist_digits(n - len(sprites))
    for i, d in enumerate(digits):
        Image.fromarray(d.reshape(28, 28).astype("uint8")).resize((112, 112)).save(root / f"d{i:05d}.png")


def main() -> None:
    import dagster as dg
    import polars as pl
    import torch
    from safetensors.torch import save_file

    from assets.classifications import image_classifications
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.export import curated_export, image_scores, similarity_index
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from partitions.discovery import discover_all
    from partitions.shards import SHARDS
    from resources.classifier import ClassifierSettings
    from resources.corpus import CorpusResource, StageSettings
    from resources.models import EmbedderResource

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path

        src, out = Path(tmp) / "src", Path(tmp) / "out"
        build_source(src, args.images)
        corpus = CorpusResource(output_root=str(out), sources={"b": str(src)}, shard_size=args.images)
        (key,) = [s.key for s in discover_all(corpus.registry(), "b", str(src), shard_size=args.images)]
        base = {"corpus": corpus, "embedder": EmbedderResource(device="cpu"),
                "classifier": ClassifierSettings(fewshot_uri=""), "settings": StageSettings(inventory_workers=2)}
        timings: dict[str, dict] = {}

        def run(assets, resources, label):
            t = time.perf_counter()
            res = dg.materialize(assets, partition_key=key, instance=instance, resources=resources)
            assert res.success, label
            wall = time.perf_counter() - t
            for a in assets:
                name = a.node_def.name  # the stage (a multi-asset step records elapsed_s on its own table)
                md = [m.metadata for m in res.asset_materializations_for_node(name) if "elapsed_s" in m.metadata]
                if md:
                    timings[f"{label}:{name}"] = {"elapsed_s": float(md[0]["elapsed_s"].value)}
            timings[f"{label}:wall_s:{'+'.join(a.node_def.name for a in assets)}"] = {"wall_s": round(wall, 2)}

        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(SHARDS.name, [key])
            run([raw_inventory, dedup_clusters, curated_images, image_embeddings, image_classifications], base,
                "upstream")
            emb = pl.read_parquet(out / "image_embeddings" / f"{key}.parquet")
            for a in (image_scores, curated_export, similarity_index):
                run([a], base, "new")
            model = torch.nn.Sequential(torch.nn.Linear(len(emb["embedding"][0]), 1))
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(tmp) / "h.safetensors"))
            head = {"name": "h", "uri": str(Path(tmp) / "h.safetensors"), "dim": len(emb["embedding"][0]),
                    "embedding_model": emb["model"][0], "reason": "low_h", "reject_below": -1e9}
            run([image_scores], {**base, "settings": StageSettings(heads=[head])}, "one_head")
        upstream = sum(v["elapsed_s"] for k, v in timings.items() if k.startswith("upstream:") and "elapsed_s" in v)
        added = sum(v["elapsed_s"] for k, v in timings.items() if k.startswith("new:") and "elapsed_s" in v)
        result = {"date": today(), "machine": machine(), "images": args.images, "kept": int(len(emb)),
                  "timings": timings, "upstream_stages_s": round(upstream, 2), "added_stages_s": round(added, 2),
                  "added_fraction": round(added / upstream, 4), "peak_rss_mb": round(peak_rss_mb(), 1),
                  "notes": "elapsed_s from each stage's metadata; wall_s includes Dagster's step overhead; "
                           "no heads in the `new` runs (the default), one linear head in `one_head`"}
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("upstream_stages_s", "added_stages_s", "added_fraction")}))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
