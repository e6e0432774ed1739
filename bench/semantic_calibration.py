"""Semantic pass on the accuracy bench's labelled dedup set: per-model threshold calibration and
what the pass adds to the hash pass (issue 11 item 4). Writes bench/results/semantic_calibration.json.

    python -m bench.semantic_calibration      # needs data/sem/emb.parquet (data/sem/embed.py)

Images: a CPU-sized subset of bench/accuracy_sets.py's dedup set (100 clip-art groups with their
SVG re-renders and resizes, a third of the photo and sprite groups, every look-alike negative:
hue shifts, cards, recoloured sprites, animation frames) plus, per group original of >= 40 px, a
5-12%-per-side crop and a re-framing (the picture at a random place on a 25% larger white canvas),
embedded with the default embedder (EfficientNet-Lite0, CPU).

* Calibration: every pair of half 0 (split by crc32 of the source, as in bench/accuracy.py) with
  its cosine; `curation.semantic.calibrate.calibrate_threshold` picks the lowest threshold with
  pair precision >= 0.9; scored on half 1 (held out).
* Union with the hash pass (`dedup_shard`, default config, on stage-1 rows of the same images,
  crops and re-framings analysed by `analyse_image`): pairwise P/R/F1 of (a) hash pass alone,
  (b) + semantic pass on the hash pass's representatives only ("kept"), (c) + semantic pass on
  every decoded image ("all"); semantic clusters are leader clusters (largest first) at the
  calibrated threshold; a pair is predicted when the hash pass or the semantic pass co-clusters it.
  Recall is also given per variant kind (crop, reframe, svg re-render, other).
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib

import numpy as np
import polars as pl
from PIL import Image

from bench.common import REPO, machine, today
from curation.dedup import dedup_shard, leader_clusters
from curation.imaging.analyse import analyse_image
from curation.schema import INVENTORY_SCHEMA, conform
from curation.semantic.calibrate import calibrate_threshold

ROOT = REPO / "data" / "bench" / "accuracy" / "v2" / "dedup"
EMB = REPO / "data" / "sem" / "emb.parquet"
OUT = REPO / "bench" / "results" / "semantic_calibration.json"


def _load(path):
    im = Image.open(path)
    im.load()
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, (0, 0), rgba.getchannel("A"))
    return out


def variants(emb: pl.DataFrame) -> dict[str, bytes]:
    """PNG bytes of the crops and re-framings, rebuilt exactly as data/sem/embed.py made them."""
    rng = np.random.default_rng(3)
    out = {}
    lab = pl.read_parquet(ROOT / "labels.parquet")
    files = set(emb["file"].to_list())
    orig = lab.filter(pl.col("variant").is_in(["png", "orig"]) & pl.col("file").is_in(list(files)))
    orig = orig.unique("group", keep="first").sort("group")
    for f in orig["file"].to_list():
        im = _load(ROOT / f)
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
            out[f"{f}#{tag}"] = buf.getvalue()
    return out


def inventory(emb: pl.DataFrame) -> pl.DataFrame:
    extra = variants(emb)
    rows = []
    for f in emb["file"].to_list():
        data = extra[f] if f in extra else (ROOT / f).read_bytes()
        rec = analyse_image(data)
        rec.update(image_id=hashlib.sha1(f.encode()).hexdigest()[:16], uri=f, rel_path=f, shard="s0",
                   bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        rows.append(rec)
    return conform(pl.DataFrame(rows, infer_schema_length=None), INVENTORY_SCHEMA)


def pair_set(labels: np.ndarray) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for lab in np.unique(labels):
        m = np.flatnonzero(labels == lab)
        out.update((int(a), int(b)) for k, a in enumerate(m) for b in m[k + 1:])
    return out


def scores(pred: set, group: np.ndarray, vkind: list[str], mask: np.ndarray) -> dict:
    idx = np.flatnonzero(mask)
    pos = {(int(a), int(b)) for k, a in enumerate(idx) for b in idx[k + 1:] if group[a] == group[b]}
    pred = {(a, b) for a, b in pred if mask[a] and mask[b]}
    tp = pred & pos
    p = len(tp) / len(pred) if pred else 1.0
    r = len(tp) / len(pos) if pos else 1.0
    res = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
           "positive_pairs": len(pos), "predicted_pairs": len(pred)}
    for kind in ("crop", "reframe", "svg", "other"):
        kp = {(a, b) for a, b in pos if kind in (vkind[a], vkind[b])} if kind != "other" else \
             {(a, b) for a, b in pos if vkind[a] == vkind[b] == "other"}
        res[f"recall_{kind}"] = round(len(kp & pred) / len(kp), 4) if kp else None
    return res


def main() -> None:
    emb = pl.read_parquet(EMB)
    lab = pl.read_parquet(ROOT / "labels.parquet").select("file", "source")
    emb = emb.with_columns(pl.col("file").str.split("#").list.first().alias("base")).join(
        lab.rename({"file": "base"}), on="base", how="left", maintain_order="left")
    x = np.stack(emb["embedding"].to_list()).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    group = emb["group"].to_numpy()
    v = emb["variant"].to_list()
    vkind = ["crop" if s == "crop" else "reframe" if s == "reframe" else "svg" if s.startswith("svg") else "other" for s in v]
    half = np.array([zlib.crc32(s.encode()) % 2 for s in emb["source"].to_list()])
    model = emb["model"][0]
    S = x @ x.T
    iu = np.triu_indices(len(x), 1)
    res: dict = {"date": today(), "machine": machine(), "model_id": model, "images": len(x),
                 "by_variant": {k: vkind.count(k) for k in set(vkind)}}
    cal = {}
    for h in (0, 1):
        m = (half[iu[0]] == h) & (half[iu[1]] == h)
        c = calibrate_threshold(S[iu][m], (group[iu[0]] == group[iu[1]])[m], 0.9)
        cal[h] = c
    t = cal[0].threshold
    m1 = (half[iu[0]] == 1) & (half[iu[1]] == 1)
    s1, y1 = S[iu][m1], (group[iu[0]] == group[iu[1]])[m1]
    res["calibration"] = {"min_precision": 0.9, "threshold_half0": round(t, 4),
                          "threshold_half1_own": round(cal[1].threshold, 4),
                          "half0_pairs": {"precision": round(cal[0].precision, 4), "recall": round(cal[0].recall, 4)},
                          "half1_at_half0_threshold": {"precision": round(float(y1[s1 >= t].mean()), 4),
                                                       "recall": round(float(y1[s1 >= t].sum() / y1.sum()), 4)}}
    inv = inventory(emb)
    out, _ = dedup_shard(inv, None)
    cl = out["cluster_id"].to_numpy()
    hash_pairs = pair_set(cl)
    px = (inv["width"].cast(pl.Int64) * inv["height"]).fill_null(0).to_numpy()
    rank = np.argsort(np.argsort(-px, kind="stable"), kind="stable")
    def sem_pairs(members: np.ndarray) -> set:
        sub = np.flatnonzero(members)
        a, b = np.nonzero(np.triu(S[np.ix_(sub, sub)] >= t, 1))
        lead = leader_clusters(len(sub), a, b, rank[sub])
        return {(min(int(sub[p]), int(sub[q])), max(int(sub[p]), int(sub[q]))) for p, q in pair_set(lead)}
    is_rep = out["is_representative"].to_numpy()
    kept = sem_pairs(is_rep)
    # a link between two representatives merges their hash clusters
    pos_of = {}
    for i, c in enumerate(cl):
        pos_of.setdefault(c, []).append(i)
    merged = set(hash_pairs)
    idmap = out["image_id"].to_list()
    for a, b in kept:
        A, B = pos_of[idmap[a]], pos_of[idmap[b]]
        merged.update((min(p, q), max(p, q)) for p in A for q in B)
    all_pairs = hash_pairs | sem_pairs(np.ones(len(x), bool))
    for name, pred in (("hash_only", hash_pairs), ("hash_plus_semantic_kept", merged),
                       ("hash_plus_semantic_all", all_pairs)):
        res[name] = {f"half{h}": scores(pred, group, vkind, half == h) for h in (0, 1)}
    OUT.write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k not in ("machine",)}, indent=1))


if __name__ == "__main__":
    main()
