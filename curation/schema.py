"""Column contracts of every table the pipeline writes.

Each stage writes one Parquet file per shard with exactly these columns (polars dtypes). The
contracts live here so that the stage code, the asset checks and the tests agree on one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import polars as pl

# A polars dtype as a schema holds it: a class (`pl.Float32`) or an instance (`pl.List(pl.String)`).
DType: TypeAlias = pl.DataType | type[pl.DataType]
# A table contract: column name -> dtype, in column order.
Schema: TypeAlias = dict[str, DType]

# A shard manifest: the fixed membership of one shard, written once when the shard is registered.
MANIFEST_SCHEMA: Schema = {
    "image_id": pl.String,  # 16 hex chars of sha1(uri): stable, unique within a corpus
    "uri": pl.String,  # absolute local path or s3://bucket/key
    "rel_path": pl.String,  # path relative to the source root (what reports show)
    "listed_bytes": pl.Int64,  # size seen when listing
    "listed_mtime": pl.Float64,  # mtime seen when listing (unix seconds), null on S3 when unknown
}

# raw_inventory: one row per manifest row, never fewer.
INVENTORY_SCHEMA: Schema = {
    "image_id": pl.String,
    "uri": pl.String,
    "rel_path": pl.String,
    "shard": pl.String,
    "bytes": pl.Int64,  # bytes actually read (null when the file could not be read)
    "mtime": pl.Float64,
    "sha256": pl.String,  # hex digest of the file's bytes (null when unreadable)
    "format": pl.String,  # PIL format name, e.g. JPEG, PNG; null when not recognised
    "width": pl.Int32,  # after EXIF orientation is applied
    "height": pl.Int32,
    "mode": pl.String,  # PIL mode of the decoded frame, e.g. RGB, RGBA, LA, P, I;16
    "orientation": pl.Int8,  # EXIF orientation tag 1..8 (1 when absent)
    "n_frames": pl.Int32,  # frames in animated files (first frame is analysed)
    "has_alpha": pl.Boolean,  # composited on the documented background before hashing
    "ahash": pl.UInt64,
    "dhash": pl.UInt64,
    "phash": pl.UInt64,
    "whash": pl.UInt64,
    "color_mean_r": pl.Float32,  # mean of each channel after compositing (0..255): colour check
    "color_mean_g": pl.Float32,
    "color_mean_b": pl.Float32,
    "brightness": pl.Float32,  # mean grey level 0..255
    "contrast": pl.Float32,  # standard deviation of grey levels
    "entropy": pl.Float32,  # Shannon entropy of the grey histogram, bits (0..8)
    "sharpness": pl.Float32,  # variance of the Laplacian of the analysis-size grey image
    "thumb_rgb": pl.Binary,  # 8x8 RGB thumbnail of the composited image (192 bytes): dedup verification
    "phash256": pl.Binary,  # 256-bit pHash of the hash image (32 bytes): dedup verification
    "decode_ms": pl.Float32,
    "error_code": pl.String,  # null when the image was analysed; else a code from curation.errors
    "error_message": pl.String,
    # content signals (curation.imaging.content): what kind of picture, over its opaque pixels
    "opaque_fraction": pl.Float32,  # share of pixels with alpha >= 128 (1.0 without alpha)
    "opaque_brightness": pl.Float32,  # mean grey of the opaque pixels (null when none)
    "opaque_contrast": pl.Float32,  # std of grey of the opaque pixels
    "opaque_entropy": pl.Float32,  # grey entropy of the opaque pixels, bits
    "opaque_p05": pl.Float32,  # 5th percentile of the opaque pixels' grey
    "opaque_p95": pl.Float32,  # 95th percentile of the opaque pixels' grey
    "n_colors": pl.Int32,  # distinct 5-bit-per-channel colours among the opaque pixels
    "top_color_share": pl.Float32,  # share of the opaque pixels in the most common colour
    "ink_fraction": pl.Float32,  # share of all pixels drawn (opaque, > 24 levels from the dominant colour)
    "edge_sharpness": pl.Float32,  # top-1% neighbour step / grey range at native scale (0..1)
    "native_sharpness": pl.Float32,  # Laplacian variance at native scale (never upscaled)
    "edge_ratio_min": pl.Float32,  # blurriest direction: top-1% 1-px step / top-1% 2-px step (0.5 wide .. 1 crisp)
    "edge_ratio_max": pl.Float32,  # sharpest direction, the same ratio
    "mid_ratio": pl.Float32,  # mean 2-px step / mean 4-px step (0.5 isolated edges or blur .. 1 fine texture)
    "clip_share": pl.Float32,  # share of pixels at grey >= 250 (composited, where native_sharpness is)
    "clip_rolloff": pl.Float32,  # median grey of the unclipped pixels next to a clipped one (null: none)
    "clip_boundary": pl.Float32,  # clipped/unclipped 4-neighbour pairs per pixel
    "flat_share": pl.Float32,  # share of unclipped 4-neighbour pairs of equal grey (flat colour ~1, photos ~0)
    "jpeg_quality": pl.Int16,  # libjpeg quality estimated from the quantisation table; null if not JPEG
}

# dedup_clusters: one row per inventory row.
DEDUP_SCHEMA: Schema = {
    "image_id": pl.String,
    "shard": pl.String,
    "cluster_id": pl.String,  # image_id of the cluster's representative
    "is_representative": pl.Boolean,
    "dup_kind": pl.String,  # "unique" | "representative" | "exact" | "near" | "not_hashed"
    "rep_shard": pl.String,  # shard of the representative (an earlier shard for cross-shard dups)
    "distance": pl.Int16,  # Hamming distance (pHash) to the representative; 0 for exact; null if none
}

# curated_images: one row per inventory row, with the decision and every reason.
CURATED_SCHEMA: Schema = {
    "image_id": pl.String,
    "uri": pl.String,
    "rel_path": pl.String,
    "shard": pl.String,
    "keep": pl.Boolean,
    "reasons": pl.List(pl.String),  # empty when kept
    # one entry per failed condition: the measured value and the threshold it failed
    # (curation.quality.checks; corrupt and duplicate have no threshold)
    "reject_details": pl.List(pl.Struct({"reason": pl.String, "metric": pl.String, "op": pl.String,
                                         "value": pl.Float64, "threshold": pl.Float64})),
    "content_kind": pl.String,  # photo | graphic | cutout (null when the image did not decode)
    "width": pl.Int32,
    "height": pl.Int32,
    "cluster_id": pl.String,
    # a row that takes the place of an earlier shard's copy of its cluster (curation.dedup.supersede):
    # the image_id and shard of the copy it supersedes; null otherwise
    "supersedes": pl.String,
    "superseded_shard": pl.String,
}

# image_embeddings: one row per kept image.
EMBEDDING_COLUMNS = ("image_id", "shard", "model", "embedding")  # embedding: List(Float16->Float32 stored)

# image_classifications: one row per embedded image.
CLASSIFICATION_COLUMNS = (
    "image_id",
    "shard",
    "zs_label",  # zero-shot label or "unknown"
    "zs_prob",
    "zs_topk_labels",
    "zs_topk_probs",
    "fs_label",  # few-shot (linear probe) label or "unknown", null when no probe is configured
    "fs_prob",  # calibrated probability of the probe's arg-max class
    "fs_reason",  # why fs_label is "unknown": "out_of_distribution" | "low_confidence"; null otherwise
    "fs_ood_score",  # distance to the few-shot examples (1 - mean cosine to the 5 nearest); null without OOD rule
)


def empty_frame(schema: Mapping[str, DType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: Mapping[str, DType]) -> pl.DataFrame:
    """Select and cast `df` to `schema`, adding missing columns as nulls; raises on unknown dtypes."""
    cols = []
    for name, dtype in schema.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(cols)
