"""One row per kept image with everything a training job wants to know about it.

`build_samples` joins the stage outputs of one shard (inventory, dedup clusters, the curated
decision, and optionally labels and embeddings) into the export's sample frame, in manifest order;
`sample_json` renders one row as the `<key>.json` member of a WebDataset sample.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

# Columns of the sample frame (labels and the embedding are optional and may be absent).
SAMPLE_COLUMNS = (
    "image_id", "uri", "rel_path", "shard", "format", "width", "height", "bytes", "sha256",
    "cluster_id", "brightness", "contrast", "entropy", "sharpness",
)
LABEL_COLUMNS = ("zs_label", "zs_prob", "zs_topk_labels", "zs_topk_probs", "fs_label", "fs_prob",
                 "in_label", "in_prob", "in_topk_labels", "in_topk_probs")
METRIC_COLUMNS = ("brightness", "contrast", "entropy", "sharpness")

# File extensions for the image member, by PIL format name; anything else uses the lower-case name.
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
               "TIFF": "tiff", "ICO": "ico", "PPM": "ppm", "TGA": "tga", "JPEG2000": "jp2"}


def image_extension(fmt: str | None, uri: str) -> str:
    """The WebDataset member extension for an image of PIL format `fmt` (falls back to the URI's)."""
    if fmt:
        return _EXTENSIONS.get(fmt.upper(), fmt.lower())
    suffix = uri.rsplit("/", 1)[-1].rpartition(".")[2].lower()
    return suffix if suffix and suffix.isalnum() else "bin"


def build_samples(inventory: pl.DataFrame, curated: pl.DataFrame, clusters: pl.DataFrame | None = None,
                  classifications: pl.DataFrame | None = None, embeddings: pl.DataFrame | None = None,
                  scores: pl.DataFrame | None = None) -> pl.DataFrame:
    """The kept images of one shard, in the curated table's (manifest) order, with their metadata.

    `scores` (optional): per-image model-head scores, `image_id` plus one Float column per head."""
    kept = curated.filter(pl.col("keep")).select("image_id")
    inv_cols = [c for c in SAMPLE_COLUMNS if c in inventory.columns and c != "cluster_id"]
    df = kept.join(inventory.select(inv_cols), on="image_id", how="left", maintain_order="left")
    if clusters is not None:
        df = df.join(clusters.select("image_id", "cluster_id"), on="image_id", how="left", maintain_order="left")
    elif "cluster_id" in curated.columns:
        df = df.join(curated.select("image_id", "cluster_id"), on="image_id", how="left", maintain_order="left")
    if classifications is not None and len(classifications):
        cols = ["image_id", *[c for c in LABEL_COLUMNS if c in classifications.columns]]
        df = df.join(classifications.select(cols), on="image_id", how="left", maintain_order="left")
    if scores is not None and len(scores):
        df = df.join(scores, on="image_id", how="left", maintain_order="left")
    if embeddings is not None and len(embeddings):
        df = df.join(embeddings.select("image_id", "embedding"), on="image_id", how="left", maintain_order="left")
    return df


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def sample_json(row: dict[str, Any]) -> dict[str, Any]:
    """The `<key>.json` member: identity, source, size, labels with probabilities, cluster, metrics
    and scores (every column of the sample frame except the embedding and the image bytes)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in ("embedding", "image"):
            continue
        out[k] = _clean(v)
    labels: dict[str, Any] = {}
    for prefix, name in (("zs", "zero_shot"), ("fs", "few_shot"), ("in", "imagenet")):
        if row.get(f"{prefix}_label") is not None:
            entry: dict[str, Any] = {"label": row[f"{prefix}_label"], "prob": _clean(row.get(f"{prefix}_prob"))}
            if row.get(f"{prefix}_topk_labels") is not None:
                entry["topk"] = [{"label": lab, "prob": _clean(p)} for lab, p in
                                 zip(row[f"{prefix}_topk_labels"], row.get(f"{prefix}_topk_probs") or [])]
            labels[name] = entry
    out["labels"] = labels
    out["metrics"] = {m: _clean(row.get(m)) for m in METRIC_COLUMNS if m in row}
    return out
