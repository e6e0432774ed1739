"""The two report builders: one shard (`build_shard_report`) and the whole corpus
(`build_corpus_report`, the `curation_summary` asset). Each analyses the stage frames
(`curation.report.data`), renders the page (`curation.report.render`) and writes
`<out_dir>/report.html` and `<out_dir>/summary.json`, returning the summary dict.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from curation.report.data import analyse
from curation.report.render import write_report
from curation.report.spec import DEFAULT_MAX_MAP_POINTS, DEFAULT_MAX_THUMBS, Frame, ImageLoader
from curation.report.thumbnails import Thumbnailer, open_image


def build_shard_report(
    shard: str,
    inventory: pl.DataFrame,
    clusters: pl.DataFrame,
    curated: pl.DataFrame,
    embeddings: pl.DataFrame | None,
    classifications: pl.DataFrame | None,
    out_dir: str,
    *,
    load_image: ImageLoader = open_image,
    timings: dict[str, float] | None = None,
    max_thumbs: int = DEFAULT_MAX_THUMBS,
    max_map_points: int = DEFAULT_MAX_MAP_POINTS,
    semantic: Frame | None = None,
) -> dict[str, Any]:
    """Write `<out_dir>/report.html` and `<out_dir>/summary.json` for one shard; return the summary.

    Frames follow `curation.schema` (INVENTORY_SCHEMA, DEDUP_SCHEMA, CURATED_SCHEMA,
    EMBEDDING_COLUMNS, CLASSIFICATION_COLUMNS); `embeddings`/`classifications` may be None when those
    stages have not run (their counts are then null). `load_image(uri)` opens a source image for a
    thumbnail (default `open_image`); it may raise, which gives a placeholder tile. `timings` maps a
    stage name to seconds (see `STAGE_ITEMS` for which count its throughput is computed from).
    `out_dir` is a local folder or an `s3://` prefix. `semantic` is the shard's `semantic_duplicates`
    output (`SEMANTIC_COLUMNS`), or None when that optional pass has not run (the section says so).
    """
    data = analyse(scope="shard", shard=shard, inventory=inventory, clusters=clusters, curated=curated,
                   embeddings=embeddings, classifications=classifications, timings=timings,
                   shard_counts=None, max_map_points=max_map_points, semantic=semantic)
    return write_report(data, out_dir, Thumbnailer(load_image, max_thumbs))


def build_corpus_report(
    inventory: Frame,
    clusters: Frame,
    curated: Frame,
    embeddings: Frame | None,
    classifications: Frame | None,
    out_dir: str,
    *,
    load_image: ImageLoader = open_image,
    timings: dict[str, float] | None = None,
    shard_counts: pl.DataFrame | None = None,
    max_thumbs: int = DEFAULT_MAX_THUMBS,
    max_map_points: int = DEFAULT_MAX_MAP_POINTS,
    semantic: Frame | None = None,
) -> dict[str, Any]:
    """The whole-corpus report (the `curation_summary` asset): the same sections as the shard
    report over every shard, plus a per-shard counts table; writes `<out_dir>/report.html` and
    `<out_dir>/summary.json` and returns the summary (with `per_shard`).

    Each frame holds every shard's rows (concatenate them, or pass `pl.scan_parquet(...)` lazy
    frames: only the columns a section needs are collected, and the embedding map collects at most
    `max_map_points` embeddings). `shard_counts` (e.g. from `corpus_counts`) replaces the
    per-shard stage counts computed from the frames. `timings` maps a stage name to its total
    seconds across shards. `semantic` holds every shard's `semantic_duplicates` rows (or None when
    that optional pass has not run).
    """
    data = analyse(scope="corpus", shard=None, inventory=inventory, clusters=clusters, curated=curated,
                   embeddings=embeddings, classifications=classifications, timings=timings,
                   shard_counts=shard_counts, max_map_points=max_map_points, semantic=semantic)
    return write_report(data, out_dir, Thumbnailer(load_image, max_thumbs))
