"""Reports people look at: one self-contained HTML page and a JSON summary per shard and per corpus.

Modules: `spec` (stages, sections, limits), `counts` (stage counts per shard: polars or one DuckDB
query), `data` (the analysis behind every section), `thumbnails` (tiles and the loader),
`charts` (matplotlib PNGs), `sections` + `render` (the page from Jinja2 templates in
`templates/`, autoescaped), `build` (the two builders), `markdown` (the Dagster metadata preview).
This package re-exports the public names below.

`build_shard_report` (one shard) and `build_corpus_report` (every shard, the `curation_summary`
asset) write two files through `curation.storage` (local folder or `s3://` prefix):

* `<out_dir>/report.html`: ONE file that needs no network to view. Thumbnails are embedded as
  base64 JPEG/PNG data URIs (96 px, transparency composited on a checkerboard), charts as embedded
  PNGs rendered with matplotlib's Agg canvas (no pyplot global state), and the CSS is inline.
* `<out_dir>/summary.json`: the numbers of the page, also returned as a dict.

Sections (both reports, in this order; the HTML ids are in `SECTIONS`):

``counts``        images at each stage: listed -> decoded -> unique after dedup -> kept -> embedded
                  -> classified (definitions in `STAGE_DEFINITIONS`); the corpus report adds a per-shard
                  table.
``rejects``       rejected images per reason (bar chart + table; an image rejected for two reasons
                  counts under both, as in `curation.quality.reject_counts`).
``reject-samples``  a few rejected images per reason as thumbnails (files that never decoded get a
                  placeholder tile naming their error code instead of being opened again).
``duplicates``    duplicate-cluster statistics and the largest clusters as thumbnail strips, the
                  representative first and marked.
``semantic-duplicates``  the optional embedding pass (`semantic_duplicates` asset): images compared,
                  clusters with more than one member, images linked to a representative, cross-shard
                  links, the lowest similarity of a link, and the largest clusters as thumbnail strips
                  (representative first and marked, each member captioned with its cosine similarity);
                  a note when the pass was not run (`semantic=None`).
``classes``       class distribution (bar chart + table) and, per class, the top-scoring and the
                  lowest-confidence examples. Labels come from the few-shot probe (`fs_*`) when any
                  image has one, else from zero-shot (`zs_*`, "unknown" ignored).
``imagenet-classes``  only when images carry ImageNet labels (the offline model's head): the top-1
                  ImageNet-1k class distribution (bar chart of the largest + table with the mean top-1
                  probability), from the classifications' ``in_label`` or the embeddings'
                  ``in_topk_labels``; left out of the page otherwise (`IMAGENET_SECTION`).
``embedding-map`` a 2-D PCA projection (numpy SVD of the L2-normalised, centred embeddings, at most
                  `max_map_points` images, a deterministic sample) coloured by class, or by the
                  top-level folder of `rel_path` when there are no labels.
``timings``       seconds per stage and throughput (items per second) from the caller's `timings`.
``decode-errors`` files that could not be analysed, by error code, with file names and messages.

Thumbnail loading never fails the report: any exception from `load_image` (missing file, decode
error, bomb guard) gives a placeholder tile, and the number of tiles is bounded by `max_thumbs`
(30% for rejected samples, 30% for duplicate strips, the rest for class examples; with a semantic
frame 25%, 25% and 20% for the semantic strips; a tile shown in two sections is loaded once).
Files that never decoded are not opened again: their tile is a placeholder naming the error code.
Every value written into the page (file names, labels, messages, error codes) is escaped by the
templates' autoescaping, so no input can become markup or script. `markdown_preview` makes a
small Markdown block (counts, rejects, <= 8 tiny thumbnails) for Dagster metadata.

Corpus counts: `corpus_counts(con, output_root)` runs one DuckDB query over the stage outputs
(`<output_root>/<stage>/<shard>.parquet`) and returns per-shard stage counts (same definitions as
`stage_counts_by_shard`, which computes them with polars). Pass that frame as
`build_corpus_report(..., shard_counts=...)` to take the counts table from DuckDB; without it the
same numbers are computed from the frames. Every other section is computed from the frames, which
may be `pl.LazyFrame`s (e.g. `pl.scan_parquet` over all shards): only the columns a section needs
are collected, and at most `max_map_points` embeddings. For `s3://` roots the caller must have
configured DuckDB's httpfs extension and credentials on `con`. The corpus report is meant to get
the corpus-level curated view (`curation.dedup.corpus_keep`: an earlier shard's copy superseded by
a larger later one is rejected as `superseded`); `with_kept_counts(shard_counts, curated)` recounts
the DuckDB table's `kept` column from that view.
"""

from curation.report.build import build_corpus_report, build_shard_report
from curation.report.counts import corpus_counts, stage_counts_by_shard, with_kept_counts
from curation.report.markdown import markdown_preview, preview_thumbs
from curation.report.spec import (
    DEFAULT_MAX_MAP_POINTS,
    DEFAULT_MAX_THUMBS,
    IMAGENET_SECTION,
    PREVIEW_PX,
    SECTIONS,
    SEMANTIC_COLUMNS,
    STAGE_DEFINITIONS,
    STAGE_DIRS,
    STAGE_ITEMS,
    STAGES,
    THUMB_PX,
    Frame,
    ImageLoader,
)
from curation.report.thumbnails import Thumb, Thumbnailer, encode_image, open_image, placeholder_tile, render_tile

__all__ = [
    "DEFAULT_MAX_MAP_POINTS",
    "DEFAULT_MAX_THUMBS",
    "IMAGENET_SECTION",
    "PREVIEW_PX",
    "SECTIONS",
    "SEMANTIC_COLUMNS",
    "STAGES",
    "STAGE_DEFINITIONS",
    "STAGE_DIRS",
    "STAGE_ITEMS",
    "THUMB_PX",
    "Frame",
    "ImageLoader",
    "Thumb",
    "Thumbnailer",
    "build_corpus_report",
    "build_shard_report",
    "corpus_counts",
    "encode_image",
    "markdown_preview",
    "open_image",
    "placeholder_tile",
    "preview_thumbs",
    "render_tile",
    "stage_counts_by_shard",
    "with_kept_counts",
]
