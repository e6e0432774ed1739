"""What a report contains: its stages, sections, size limits and the stage output folders.

Constants only (no I/O), shared by the modules of `curation.report`: `STAGES` and
`STAGE_DEFINITIONS` (the counts table), `SECTIONS` (HTML ids and titles, in page order, of the
sections every report has), `IMAGENET_SECTION` (the optional one, when ImageNet labels exist),
`STAGE_ITEMS` (which count a timing entry's throughput is computed from), `STAGE_DIRS` (stage
output folders under the output root, as `CorpusResource.stage_uri` writes them), thumbnail sizes
and budgets, and the `Frame` / `ImageLoader` types of the public functions.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
from PIL import Image

Frame = pl.DataFrame | pl.LazyFrame
ImageLoader = Callable[[str], Image.Image]

THUMB_PX = 96  # thumbnails in the HTML report
PREVIEW_PX = 48  # thumbnails in the Markdown preview
DEFAULT_MAX_THUMBS = 240  # all thumbnail tiles of one report (placeholders included)
DEFAULT_MAX_MAP_POINTS = 4000  # images projected on the embedding map
MAX_ERROR_FILES_PER_CODE = 25  # file names listed per decode-error code
MAX_CLASSES_SHOWN = 12  # classes with example strips; the chart and table show every class
UNKNOWN_LABEL = "unknown"

STAGES = ("listed", "decoded", "unique", "kept", "embedded", "classified")
STAGE_DEFINITIONS: dict[str, str] = {
    "listed": "files in the shard manifests (rows of raw_inventory)",
    "decoded": "files analysed without an error code",
    "unique": "decoded images that represent their duplicate cluster",
    "kept": "images that passed every quality check (curated set)",
    "embedded": "images with an embedding",
    "classified": "images with a class label (few-shot, or zero-shot other than 'unknown')",
}
SECTIONS: dict[str, str] = {
    "counts": "Counts per stage",
    "rejects": "Rejects by reason",
    "reject-samples": "Rejected samples",
    "duplicates": "Duplicate clusters",
    "semantic-duplicates": "Semantic duplicates",
    "classes": "Classes",
    "embedding-map": "Embedding map",
    "timings": "Time per stage",
    "decode-errors": "Decode errors",
}
# A section shown only when its data is present (inserted after `after` in the page order).
IMAGENET_SECTION = {"id": "imagenet-classes", "title": "ImageNet classes", "after": "classes"}
MAX_IMAGENET_CHARTED = 30  # bars of the ImageNet chart; its table lists every class
# Which stage count a timing entry processed (for throughput); unknown stage names use "listed".
STAGE_ITEMS: dict[str, str] = {
    "raw_inventory": "listed",
    "inventory": "listed",
    "dedup_clusters": "decoded",
    "dedup": "decoded",
    "curated_images": "listed",
    "quality": "listed",
    "image_embeddings": "kept",
    "embeddings": "kept",
    "embed": "kept",
    "image_classifications": "embedded",
    "classifications": "embedded",
    "classify": "embedded",
    "image_scores": "embedded",
    "similarity_index": "embedded",
    "curated_export": "kept",
}
# Stage output folders under the output root (`CorpusResource.stage_uri`).
STAGE_DIRS: dict[str, str] = {
    "inventory": "raw_inventory",
    "clusters": "dedup_clusters",
    "curated": "curated_images",
    "embeddings": "image_embeddings",
    "classifications": "image_classifications",
}

# Columns of the `semantic_duplicates` output the report reads.
SEMANTIC_COLUMNS = ("image_id", "shard", "cluster_id", "is_representative", "rep_shard", "similarity")
