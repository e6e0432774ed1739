"""Reports people look at: one self-contained HTML page and a JSON summary per shard and per corpus.

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
``embedding-map`` a 2-D PCA projection (numpy SVD of the L2-normalised, centred embeddings, at most
                  `max_map_points` images, a deterministic sample) coloured by class, or by the
                  top-level folder of `rel_path` when there are no labels.
``timings``       seconds per stage and throughput (items per second) from the caller's `timings`.
``decode-errors`` files that could not be analysed, by error code, with file names and messages.

Thumbnail loading never fails the report: any exception from `load_image` (missing file, decode
error, bomb guard) gives a placeholder tile, and the number of tiles is bounded by `max_thumbs`
(30% for rejected samples, 30% for duplicate strips, the rest for class examples; with a semantic
frame 25%, 25% and 20% for the semantic strips; a tile shown in two sections is loaded once). Files that never decoded are not opened again: their tile is a
placeholder naming the error code. `markdown_preview` makes a small Markdown block (counts,
rejects, <= 8 tiny thumbnails) for Dagster metadata.

Corpus counts: `corpus_counts(con, output_root)` runs one DuckDB query over the stage outputs
(`<output_root>/<stage>/<shard>.parquet`) and returns per-shard stage counts (same definitions as
`stage_counts_by_shard`, which computes them with polars). Pass that frame as
`build_corpus_report(..., shard_counts=...)` to take the counts table from DuckDB; without it the
same numbers are computed from the frames. Every other section is computed from the frames, which
may be `pl.LazyFrame`s (e.g. `pl.scan_parquet` over all shards): only the columns a section needs
are collected, and at most `max_map_points` embeddings. For `s3://` roots the caller must have
configured DuckDB's httpfs extension and credentials on `con`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageFont, ImageOps

from curation import storage
from curation.quality import reject_counts

if TYPE_CHECKING:  # only for the annotation of `corpus_counts`; the caller owns the connection
    import duckdb

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
}
# Stage output folders under the output root (`CorpusResource.stage_uri`).
STAGE_DIRS: dict[str, str] = {
    "inventory": "raw_inventory",
    "clusters": "dedup_clusters",
    "curated": "curated_images",
    "embeddings": "image_embeddings",
    "classifications": "image_classifications",
}

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
            "#9c755f", "#17becf", "#bcbd22", "#7f7f7f")


# ------------------------------------------------------------------------------------ thumbnails


@dataclass(frozen=True)
class Thumb:
    """One rendered thumbnail tile.

    `image` is the RGB tile as rendered (transparency already composited), `data_uri` its encoded
    form; `ok` is False for a placeholder (the image could not be loaded or never decoded), in which
    case `note` says why.
    """

    image_id: str
    caption: str
    image: Image.Image
    data_uri: str
    ok: bool
    note: str = ""
    title: str = ""


def open_image(uri: str, *, max_pixels: int = 100_000_000, draft_px: int = 2 * THUMB_PX) -> Image.Image:
    """Default `load_image`: read `uri` through `curation.storage` and decode it for a thumbnail.

    Refuses images above `max_pixels` before decoding them (decompression bombs) and asks JPEG
    decoders for a reduced-size draft, so a 40-megapixel photo costs a fraction of a full decode.
    """
    data = storage.read_bytes(uri)
    img = Image.open(io.BytesIO(data))
    if img.width * img.height > max_pixels:
        raise ValueError(f"{img.width}x{img.height} exceeds the thumbnail pixel limit {max_pixels}")
    if img.format == "JPEG":
        img.draft(img.mode if img.mode in ("L", "CMYK") else "RGB", (draft_px, draft_px))
    img.load()
    try:  # thumbnails show the image as the inventory measured it: EXIF orientation applied
        if img.getexif().get(0x0112, 1) != 1:
            img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        pass
    return img


def _checkerboard(size: tuple[int, int], cell: int = 8) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 255, 214).astype(np.uint8)
    return Image.fromarray(board, "L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparency is composited on a checkerboard, high bit depths
    are stretched to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) * (255.0 / max(hi - lo, 1e-9))
        img = Image.fromarray(np.nan_to_num(arr).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = _checkerboard(rgba.size)
        bg.paste(rgba, (0, 0), rgba)
        return bg
    return img.convert("RGB")


def render_tile(img: Image.Image, size: int = THUMB_PX) -> Image.Image:
    """Fit `img` inside `size` x `size` (aspect ratio kept, never upscaled above 4x) as RGB."""
    if img.mode == "P":  # palette images resize only with NEAREST; RGBA keeps their transparency
        img = img.convert("RGBA")
    w, h = img.size
    scale = min(size / max(w, 1), size / max(h, 1), 4.0)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_rgb(img)
    img = img.resize(new, resample, reducing_gap=3.0 if scale < 0.5 else None)
    return _to_rgb(img)


def placeholder_tile(text: str, size: int = THUMB_PX) -> Image.Image:
    """A grey tile with a cross and a short text (the error code): stands in for an unloadable image."""
    tile = Image.new("RGB", (size, size), (236, 236, 236))
    draw = ImageDraw.Draw(tile)
    m = max(2, size // 8)
    draw.line((m, m, size - m, size - m), fill=(200, 90, 90), width=max(1, size // 40))
    draw.line((m, size - m, size - m, m), fill=(200, 90, 90), width=max(1, size // 40))
    draw.rectangle((0, 0, size - 1, size - 1), outline=(190, 190, 190))
    try:
        font = ImageFont.load_default(size=max(8, size // 9))
    except Exception:  # noqa: BLE001 - old Pillow without FreeType: bitmap font
        font = ImageFont.load_default()
    words, lines, cur = text.replace("_", " ").split(), [], ""
    for word in words:
        trial = f"{cur} {word}".strip()
        if draw.textlength(trial, font=font) <= size - 6 or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    lines = lines[:3]
    line_h = max(9, size // 8)
    y = size // 2 - line_h * len(lines) // 2
    for line in lines:
        tw = draw.textlength(line, font=font)
        draw.rectangle(((size - tw) / 2 - 2, y - 1, (size + tw) / 2 + 2, y + line_h), fill=(236, 236, 236))
        draw.text(((size - tw) / 2, y), line, fill=(90, 90, 90), font=font)
        y += line_h
    return tile


def encode_image(img: Image.Image, *, quality: int = 82) -> str:
    """A data URI of `img`: JPEG or PNG, whichever is smaller (flat sprites are smaller as PNG)."""
    jbuf, pbuf = io.BytesIO(), io.BytesIO()
    img.save(jbuf, "JPEG", quality=quality, optimize=True)
    img.save(pbuf, "PNG", optimize=True)
    if pbuf.tell() <= jbuf.tell():
        return "data:image/png;base64," + base64.b64encode(pbuf.getvalue()).decode("ascii")
    return "data:image/jpeg;base64," + base64.b64encode(jbuf.getvalue()).decode("ascii")


class Thumbnailer:
    """Renders thumbnails for one report: caches by image id, counts tiles against a budget, and
    turns every loading failure into a placeholder tile (so a report never fails on an image)."""

    def __init__(self, load_image: ImageLoader, max_thumbs: int, size: int = THUMB_PX):
        self.load_image, self.max_thumbs, self.size = load_image, max(0, int(max_thumbs)), size
        self._cache: dict[str, tuple[Image.Image, bool, str, str]] = {}  # id -> tile, ok, note, data URI
        self.rendered = 0
        self.placeholders = 0
        self.failures: dict[str, str] = {}  # image_id -> why its thumbnail is a placeholder

    @property
    def remaining(self) -> int:
        return self.max_thumbs - self.rendered - self.placeholders

    def tile(self, image_id: str, uri: str | None, *, caption: str, title: str = "",
             error_code: str | None = None, missing_note: str | None = None) -> Thumb | None:
        """The tile of one image, or None when the budget is spent. `error_code` (a file that never
        decoded) or `missing_note` (no file to load) give a placeholder without opening anything."""
        cached = self._cache.get(image_id)
        if cached is None:
            if self.remaining <= 0:
                return None
            if error_code is not None or missing_note is not None or not uri:
                note = error_code or missing_note or "no uri"
                tile = placeholder_tile(note, self.size)
                cached = (tile, False, note, encode_image(tile))
            else:
                try:
                    src = self.load_image(uri)
                    tile = render_tile(src, self.size)
                    cached = (tile, True, "", encode_image(tile))
                except Exception as exc:  # noqa: BLE001 - any failure becomes a placeholder
                    note = f"{type(exc).__name__}: {exc}"[:200]
                    self.failures[image_id] = note
                    tile = placeholder_tile("unavailable", self.size)
                    cached = (tile, False, note, encode_image(tile))
            self._cache[image_id] = cached
            if cached[1]:
                self.rendered += 1
            else:
                self.placeholders += 1
        img, ok, note, uri_ = cached
        return Thumb(image_id=image_id, caption=caption, image=img, data_uri=uri_, ok=ok,
                     note=note, title=title)


# ------------------------------------------------------------------------------------ frames


def _collect(frame: Frame | None, columns: Sequence[str]) -> pl.DataFrame | None:
    if frame is None:
        return None
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    names = lf.collect_schema().names()
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; has {names}")
    return lf.select(list(columns)).collect()


def _label_source(cls: pl.DataFrame | None) -> str | None:
    if cls is None or cls.height == 0:
        return None
    if cls["fs_label"].is_not_null().any():
        return "fs"
    zs = cls["zs_label"]
    if (zs.is_not_null() & (zs != UNKNOWN_LABEL)).any():
        return "zs"
    return None


def _classified_mask() -> pl.Expr:
    return pl.col("fs_label").is_not_null() | (
        pl.col("zs_label").is_not_null() & (pl.col("zs_label") != UNKNOWN_LABEL)
    )


def stage_counts_by_shard(inventory: Frame, clusters: Frame, curated: Frame, embeddings: Frame | None,
                          classifications: Frame | None) -> pl.DataFrame:
    """Per-shard stage counts (columns: shard + `STAGES`) computed with polars from the frames;
    `embedded`/`classified` are null when that frame is None. Same definitions as `corpus_counts`."""
    inv = _collect(inventory, ["image_id", "shard", "error_code"])
    clu = _collect(clusters, ["image_id", "is_representative"])
    cur = _collect(curated, ["image_id", "shard", "keep"])
    assert inv is not None and clu is not None and cur is not None
    base = (
        inv.join(clu.unique("image_id"), on="image_id", how="left")
        .group_by("shard")
        .agg(
            pl.len().alias("listed"),
            pl.col("error_code").is_null().sum().alias("decoded"),
            (pl.col("error_code").is_null() & pl.col("is_representative").fill_null(True)).sum().alias("unique"),
        )
    )
    kept = cur.group_by("shard").agg(pl.col("keep").fill_null(False).sum().alias("kept"))
    out = base.join(kept, on="shard", how="full", coalesce=True)
    emb = _collect(embeddings, ["image_id", "shard"])
    if emb is not None:
        out = out.join(emb.group_by("shard").agg(pl.col("image_id").n_unique().alias("embedded")),
                       on="shard", how="full", coalesce=True)
    else:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("embedded"))
    cls = _collect(classifications, ["image_id", "shard", "zs_label", "fs_label"])
    if cls is not None:
        out = out.join(
            cls.filter(_classified_mask()).group_by("shard").agg(pl.col("image_id").n_unique().alias("classified")),
            on="shard", how="full", coalesce=True,
        )
        out = out.with_columns(pl.col("classified").fill_null(0))
    else:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("classified"))
    fill = [pl.col(c).fill_null(0) for c in ("listed", "decoded", "unique", "kept")]
    if emb is not None:
        fill.append(pl.col("embedded").fill_null(0))
    return out.with_columns(fill).select("shard", *[pl.col(s).cast(pl.Int64) for s in STAGES]).sort("shard")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _stage_files(output_root: str, stage_dir: str) -> list[str]:
    folder = storage.join(output_root, stage_dir)
    names = [n for n in storage.list_dir(folder) if n.endswith(".parquet") and not n.startswith(".")]
    return [storage.join(folder, n) for n in names]


def corpus_counts(con: duckdb.DuckDBPyConnection, output_root: str, *,
                  stage_dirs: Mapping[str, str] = STAGE_DIRS) -> pl.DataFrame:
    """Per-shard stage counts of every shard under `output_root`, from ONE DuckDB query over the
    stage outputs `<output_root>/<stage_dir>/<shard>.parquet` (`stage_dirs` maps inventory,
    clusters, curated, embeddings, classifications to folder names).

    Returns a polars frame with columns shard + `STAGES` (Int64), one row per inventoried shard,
    sorted by shard; `embedded`/`classified` are null when that stage has no output at all, 0 for
    a shard whose output is missing. Definitions match `stage_counts_by_shard`.
    """
    files = {k: _stage_files(output_root, v) for k, v in stage_dirs.items()}
    if not files["inventory"]:
        return pl.DataFrame(schema={"shard": pl.String, **{s: pl.Int64 for s in STAGES}})

    def src(key: str, cols: str) -> str:
        lst = "[" + ", ".join(_sql_str(f) for f in files[key]) + "]"
        return f"(SELECT {cols} FROM read_parquet({lst}, union_by_name = true))"

    clu = src("clusters", "image_id, is_representative") if files["clusters"] else \
        "(SELECT NULL::VARCHAR AS image_id, NULL::BOOLEAN AS is_representative WHERE false)"
    cur = src("curated", "shard, keep") if files["curated"] else \
        "(SELECT NULL::VARCHAR AS shard, NULL::BOOLEAN AS keep WHERE false)"
    has_emb, has_cls = bool(files["embeddings"]), bool(files["classifications"])
    emb = src("embeddings", "shard, image_id") if has_emb else \
        "(SELECT NULL::VARCHAR AS shard, NULL::VARCHAR AS image_id WHERE false)"
    cls = src("classifications", "shard, image_id, zs_label, fs_label") if has_cls else \
        "(SELECT NULL::VARCHAR AS shard, NULL::VARCHAR AS image_id, NULL::VARCHAR AS zs_label, " \
        "NULL::VARCHAR AS fs_label WHERE false)"
    emb_col = "coalesce(e.embedded, 0)" if has_emb else "NULL"
    cls_col = "coalesce(c.classified, 0)" if has_cls else "NULL"
    sql = f"""
    WITH inv AS {src("inventory", "image_id, shard, error_code")},
         clu AS (SELECT DISTINCT ON (image_id) image_id, is_representative FROM {clu}),
         base AS (
            SELECT inv.shard AS shard,
                   count(*) AS listed,
                   count(*) FILTER (WHERE inv.error_code IS NULL) AS decoded,
                   count(*) FILTER (WHERE inv.error_code IS NULL AND coalesce(clu.is_representative, true)) AS uniq
            FROM inv LEFT JOIN clu ON inv.image_id = clu.image_id
            GROUP BY inv.shard),
         k AS (SELECT shard, count(*) FILTER (WHERE keep) AS kept FROM {cur} GROUP BY shard),
         e AS (SELECT shard, count(DISTINCT image_id) AS embedded FROM {emb} GROUP BY shard),
         c AS (SELECT shard, count(DISTINCT image_id) AS classified FROM {cls}
               WHERE fs_label IS NOT NULL OR (zs_label IS NOT NULL AND zs_label <> {_sql_str(UNKNOWN_LABEL)})
               GROUP BY shard)
    SELECT base.shard, base.listed, base.decoded, base.uniq, coalesce(k.kept, 0), {emb_col}, {cls_col}
    FROM base LEFT JOIN k ON base.shard = k.shard LEFT JOIN e ON base.shard = e.shard
              LEFT JOIN c ON base.shard = c.shard
    ORDER BY base.shard
    """
    rows = con.execute(sql).fetchall()
    return pl.DataFrame(rows, schema={"shard": pl.String, **{s: pl.Int64 for s in STAGES}}, orient="row")


# ------------------------------------------------------------------------------------ analysis


@dataclass
class _Data:
    """Everything a report shows, computed once from the frames."""

    scope: str
    title: str
    summary: dict[str, Any]
    per_shard: pl.DataFrame | None
    inv: pl.DataFrame
    clu: pl.DataFrame
    cur: pl.DataFrame
    cls: pl.DataFrame | None
    label_source: str | None
    map_points: pl.DataFrame | None = None  # x, y, colour label
    map_colour_by: str = ""
    map_note: str = ""
    sem: pl.DataFrame | None = None  # semantic_duplicates rows (None: the optional pass was not run)
    extras: dict[str, Any] = field(default_factory=dict)


def _dup_stats(clu: pl.DataFrame, inv_ids: pl.Series) -> tuple[dict[str, Any], pl.DataFrame]:
    """Summary numbers and a frame of clusters with their display size (rep counted even when it
    lives in an earlier shard), largest first."""
    grouped = clu.filter(pl.col("cluster_id").is_not_null()).group_by("cluster_id").agg(
        pl.len().alias("rows"),
        pl.col("is_representative").fill_null(False).any().alias("rep_here"),
        pl.col("rep_shard").drop_nulls().first().alias("rep_shard"),
    )
    known = inv_ids.cast(pl.String).unique().alias("cluster_id").to_frame()
    known = known.with_columns(pl.lit(True).alias("_rep_listed"))
    grouped = grouped.join(known, on="cluster_id", how="left").with_columns(
        (pl.col("rows") + (~pl.col("rep_here") & pl.col("_rep_listed").is_null()).cast(pl.Int64)).alias("size")
    ).drop("_rep_listed").sort(["size", "cluster_id"], descending=[True, False])
    multi = grouped.filter(pl.col("size") > 1)
    kinds = {str(k): int(v) for k, v in clu.group_by("dup_kind").len().sort("dup_kind").iter_rows() if k is not None}
    stats = {
        "clusters_with_duplicates": int(multi.height),
        "duplicate_images": int((~clu["is_representative"].fill_null(True)).sum()),
        "largest_cluster": int(grouped["size"].max() or 0) if grouped.height else 0,
        "by_kind": kinds,
        "cross_shard": int((clu["rep_shard"] != clu["shard"]).fill_null(False).sum()),
    }
    return stats, multi


SEMANTIC_COLUMNS = ("image_id", "shard", "cluster_id", "is_representative", "rep_shard", "similarity")


def _semantic_stats(sem: pl.DataFrame | None) -> tuple[dict[str, Any], pl.DataFrame | None]:
    """Summary numbers of the semantic pass and its clusters with more than one member (display
    size counts the representative even when it lives in a shard outside the frame), largest first."""
    keys = ("images_compared", "representatives", "clusters_with_duplicates", "linked_images", "cross_shard",
            "largest_cluster", "min_similarity")
    if sem is None:
        return {"available": False, **dict.fromkeys(keys)}, None
    sem = sem.unique("image_id", keep="first")
    linked = sem.filter(~pl.col("is_representative").fill_null(False))
    grouped = sem.filter(pl.col("cluster_id").is_not_null()).group_by("cluster_id").agg(
        pl.len().alias("rows"),
        (pl.col("is_representative").fill_null(False) & (pl.col("image_id") == pl.col("cluster_id")))
        .any().alias("rep_here"),
        pl.col("rep_shard").drop_nulls().first().alias("rep_shard"),
        pl.col("similarity").filter(~pl.col("is_representative").fill_null(False)).min().alias("min_sim"),
        (pl.col("shard") != pl.col("rep_shard")).fill_null(False).any().alias("cross"),
    ).with_columns((pl.col("rows") + (~pl.col("rep_here")).cast(pl.Int64)).alias("size"))
    multi = grouped.filter(pl.col("size") > 1).sort(["size", "min_sim", "cluster_id"],
                                                    descending=[True, False, False], nulls_last=True)
    min_sim = linked["similarity"].min()
    stats = {
        "available": True,
        "images_compared": int(sem.height),
        "representatives": int(sem["is_representative"].fill_null(False).sum()),
        "clusters_with_duplicates": int(multi.height),
        "linked_images": int(linked.height),
        "cross_shard": int((linked["rep_shard"] != linked["shard"]).fill_null(False).sum()),
        "largest_cluster": int(multi["size"].max() or 0) if multi.height else 0,
        "min_similarity": None if min_sim is None else round(float(min_sim), 4),
    }
    return stats, multi


def _timing_rows(timings: Mapping[str, float] | None, counts: Mapping[str, int | None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for stage, seconds in (timings or {}).items():
        seconds = float(seconds)
        items_key = STAGE_ITEMS.get(stage, "listed")
        items = counts.get(items_key)
        rate = (items / seconds) if (items is not None and seconds > 0) else None
        out[stage] = {"seconds": round(seconds, 3), "items": items, "counted_as": items_key,
                      "per_second": round(rate, 2) if rate is not None else None}
    return out


def _analyse(*, scope: str, shard: str | None, inventory: Frame, clusters: Frame, curated: Frame,
             embeddings: Frame | None, classifications: Frame | None, timings: Mapping[str, float] | None,
             shard_counts: pl.DataFrame | None, max_map_points: int, semantic: Frame | None = None) -> _Data:
    inv = _collect(inventory, ["image_id", "uri", "rel_path", "shard", "error_code", "error_message",
                               "width", "height", "format"])
    clu = _collect(clusters, ["image_id", "shard", "cluster_id", "is_representative", "dup_kind", "rep_shard",
                              "distance"])
    cur = _collect(curated, ["image_id", "uri", "rel_path", "shard", "keep", "reasons", "cluster_id"])
    cls = _collect(classifications, ["image_id", "shard", "zs_label", "zs_prob", "fs_label", "fs_prob"])
    sem = _collect(semantic, SEMANTIC_COLUMNS)
    assert inv is not None and clu is not None and cur is not None

    per_shard = stage_counts_by_shard(inv, clu, cur, embeddings, cls)
    if shard_counts is not None:
        per_shard = shard_counts.select("shard", *[pl.col(s).cast(pl.Int64) for s in STAGES]).sort("shard")
    absent = {"embedded": embeddings is None, "classified": classifications is None}
    counts: dict[str, int | None] = {}
    for s in STAGES:
        col = per_shard[s]
        if col.len() == 0:  # no shard at all: null only for a stage whose frame was not given
            counts[s] = None if (shard_counts is None and absent.get(s, False)) else 0
        else:  # null when every shard's count is null (that stage has no output)
            counts[s] = None if col.null_count() == col.len() else int(col.sum())

    rejects = reject_counts(cur.select("keep", "reasons"))
    rejected = int((~cur["keep"].fill_null(False)).sum())
    errs = inv.filter(pl.col("error_code").is_not_null()).group_by("error_code").len().sort(
        ["len", "error_code"], descending=[True, False])
    decode_errors = {str(k): int(v) for k, v in errs.iter_rows()}
    dup, multi = _dup_stats(clu, inv["image_id"])
    sem_stats, sem_multi = _semantic_stats(sem)

    label_source = _label_source(cls)
    class_counts: dict[str, int] = {}
    if label_source is not None and cls is not None:
        lab = f"{label_source}_label"
        labelled = cls.filter(pl.col(lab).is_not_null() & (pl.col(lab) != UNKNOWN_LABEL))
        for k, v in labelled.group_by(lab).len().sort(["len", lab], descending=[True, False]).iter_rows():
            class_counts[str(k)] = int(v)

    data = _Data(scope=scope, title="", summary={}, per_shard=per_shard, inv=inv, clu=clu, cur=cur, cls=cls,
                 label_source=label_source, sem=sem)
    data.extras["multi_clusters"] = multi
    data.extras["semantic_clusters"] = sem_multi
    emb_info = _embedding_map(data, embeddings, max_map_points)

    listed = counts["listed"] or 0
    summary: dict[str, Any] = {
        "scope": scope,
        "shard": shard,
        "n_shards": int(per_shard.height),
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "counts": counts,
        "rejected": rejected,
        "keep_rate": round((counts["kept"] or 0) / listed, 4) if listed else None,
        "rejects_by_reason": rejects,
        "decode_errors": decode_errors,
        "duplicates": dup,
        "semantic": sem_stats,
        "classes": {"source": label_source, "counts": class_counts},
        "embedding": emb_info,
        "timings": _timing_rows(timings, counts),
    }
    if scope == "corpus":
        summary["per_shard"] = per_shard.to_dicts()
    data.summary = summary
    data.title = f"Curation report: shard {shard}" if scope == "shard" else "Curation report: whole corpus"
    return data


def _embedding_map(data: _Data, embeddings: Frame | None, max_points: int) -> dict[str, Any]:
    """Project a deterministic sample of the embeddings to 2-D with PCA; fills data.map_points."""
    info: dict[str, Any] = {"model": None, "dim": None, "mapped_points": 0, "explained_variance": None}
    if embeddings is None:
        data.map_note = "No embeddings were given to the report."
        return info
    lf = embeddings.lazy() if isinstance(embeddings, pl.DataFrame) else embeddings
    models = lf.select("model").group_by("model").len().sort("len", descending=True).collect()
    if models.height == 0:
        data.map_note = "The embeddings table is empty."
        return info
    model = models["model"][0]
    info["model"] = model
    ids = (lf.filter(pl.col("model").eq_missing(model)).select("image_id").unique()
           .with_columns(pl.col("image_id").hash(seed=17).alias("_h")).sort("_h").head(max(0, max_points))
           .select("image_id").collect())
    emb = lf.filter(pl.col("model").eq_missing(model)).join(ids.lazy(), on="image_id", how="semi") \
        .unique("image_id", keep="first").select("image_id", "embedding").sort("image_id").collect()
    if emb.height < 3:
        data.map_note = f"Only {emb.height} embedding(s): too few for a map."
        return info
    if isinstance(emb.schema["embedding"], pl.Array):
        emb = emb.with_columns(pl.col("embedding").arr.to_list())
    lens = emb["embedding"].list.len()
    dim = int(lens.max() or 0)
    if dim < 2:
        data.map_note = f"Embeddings have {dim} dimension(s): nothing to project."
        return info
    emb = emb.filter(lens == dim)
    x = np.asarray(emb["embedding"].list.to_array(dim).to_numpy(), dtype=np.float64)
    ok = np.isfinite(x).all(axis=1)
    emb, x = emb.filter(pl.Series(ok)), x[ok]
    info["dim"] = dim
    if x.shape[0] < 3:
        data.map_note = "Too few finite embeddings for a map."
        return info
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.column_stack([proj, np.zeros(len(proj))])
    var = s**2
    explained = [round(float(v / var.sum()), 4) if var.sum() > 0 else 0.0 for v in var[:2]]
    info["mapped_points"] = int(x.shape[0])
    info["explained_variance"] = explained

    pts = pl.DataFrame({"image_id": emb["image_id"], "x": proj[:, 0], "y": proj[:, 1]})
    if data.label_source is not None and data.cls is not None:
        lab = f"{data.label_source}_label"
        pts = pts.join(data.cls.select("image_id", pl.col(lab).alias("colour")).unique("image_id"),
                       on="image_id", how="left")
        data.map_colour_by = "class (" + ("few-shot" if data.label_source == "fs" else "zero-shot") + ")"
    else:
        folder = data.cur.select("image_id", pl.col("rel_path").str.split("/").list.first().alias("colour"))
        pts = pts.join(folder.unique("image_id"), on="image_id", how="left")
        data.map_colour_by = "top-level folder (no class labels)"
    data.map_points = pts.with_columns(pl.col("colour").fill_null(UNKNOWN_LABEL))
    return info


# ------------------------------------------------------------------------------------ charts


def _png_data_uri(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bar_chart(labels: Sequence[str], values: Sequence[float], *, xlabel: str, colour: str = "#4e79a7",
               fmt: str = "{:,.0f}") -> str:
    from matplotlib.figure import Figure

    n = max(1, len(labels))
    fig = Figure(figsize=(6.4, 0.32 * n + 0.9))
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(len(labels))
    bars = ax.barh(ypos, values, color=colour, height=0.66)
    ax.set_yticks(ypos, labels=[str(label) for label in labels], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    vmax = max([float(v) for v in values] + [1e-9])
    ax.set_xlim(0, vmax * 1.18)
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_width() + vmax * 0.01, bar.get_y() + bar.get_height() / 2, fmt.format(v),
                va="center", fontsize=8, color="#333")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    return _png_data_uri(fig)


def _scatter(points: pl.DataFrame, colour_title: str, explained: Sequence[float] | None) -> str:
    from matplotlib.figure import Figure

    order = points.group_by("colour").len().sort(["len", "colour"], descending=[True, False])["colour"].to_list()
    top = order[: len(_PALETTE) - 1]
    fig = Figure(figsize=(8.0, 5.6))
    ax = fig.add_subplot(1, 1, 1)
    size = 10 if points.height > 1500 else 18
    other = points.filter(~pl.col("colour").is_in(top))
    if other.height:
        ax.scatter(other["x"].to_numpy(), other["y"].to_numpy(), s=size, c="#bbbbbb", alpha=0.6,
                   linewidths=0, label=f"other ({other.height})")
    for i, name in enumerate(top):
        sub = points.filter(pl.col("colour") == name)
        ax.scatter(sub["x"].to_numpy(), sub["y"].to_numpy(), s=size, c=_PALETTE[i], alpha=0.75, linewidths=0,
                   label=f"{name} ({sub.height})")
    ev = explained or [0.0, 0.0]
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)", fontsize=9)
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)", fontsize=9)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(title=colour_title, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, markerscale=1.6)
    return _png_data_uri(fig)


# ------------------------------------------------------------------------------------ HTML

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:22px 32px 18px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .sub{color:#b8c2cc;font-size:13px}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #dde1e6;padding:8px 32px;
 display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13px}
nav a{color:#0b63c5;text-decoration:none}
nav a:hover{text-decoration:underline}
main{max-width:1320px;margin:0 auto;padding:18px 32px 48px}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:4px 0 8px}
.kpi{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 16px;min-width:128px}
.kpi .v{font-size:22px;font-weight:600}
.kpi .l{font-size:12px;color:#57606a}
section{background:#fff;border:1px solid #dde1e6;border-radius:10px;padding:16px 22px 20px;margin:18px 0}
section h2{margin:0 0 10px;font-size:18px;font-weight:600}
section h3{margin:16px 0 6px;font-size:14px;font-weight:600}
p.note{color:#57606a;font-size:13px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 12px 4px 8px;text-align:left;border-bottom:1px solid #eceef1;vertical-align:top}
th{background:#f3f4f6;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.bar{background:#e8eef7;border-radius:3px;height:12px;width:220px}
.bar>div{background:#4e79a7;height:12px;border-radius:3px}
.grid2{display:grid;grid-template-columns:minmax(0,1.25fr) minmax(0,1fr);gap:20px;align-items:start}
@media (max-width:1000px){.grid2{grid-template-columns:1fr}}
img.chart{max-width:100%;height:auto;border:0}
.strip{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0 12px}
figure.t{margin:0;width:106px;padding:4px;border:1px solid #dde1e6;border-radius:6px;background:#fff}
figure.t .box{position:relative;width:96px;height:96px;display:flex;align-items:center;justify-content:center;
 background:#f3f4f6}
figure.t img{max-width:96px;max-height:96px;image-rendering:auto}
figure.t figcaption{font-size:11px;color:#57606a;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;
 margin-top:3px}
figure.rep{border:2px solid #2da44e;background:#f0fff4}
figure.ph{border-style:dashed}
.badge{position:absolute;left:2px;top:2px;font-size:10px;font-weight:700;color:#fff;background:#2da44e;
 border-radius:3px;padding:0 4px;opacity:.92}
.badge.k{background:#6e40c9}
.badge.low{background:#bf3989}
figure.t figcaption.s{margin-top:0;color:#8c959f}
.grp{display:flex;flex-wrap:wrap;gap:8px 22px;align-items:flex-start}
.grp .lbl{font-size:11px;color:#8c959f;text-transform:uppercase;letter-spacing:.04em;margin:2px 0 0}
.grp .strip{margin-top:2px}
table.full{width:100%}
table.full tr:nth-child(even) td{background:none}
.cluster{border-top:1px solid #eceef1;padding-top:6px}
.cluster .meta{font-size:12px;color:#57606a}
code,.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.muted{color:#8c959f}
details summary{cursor:pointer;color:#0b63c5;font-size:13px}
footer{color:#8c959f;font-size:12px;text-align:center;padding:10px}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(n: int | float | None) -> str:
    if n is None:
        return "—"
    if isinstance(n, float):
        return f"{n:,.2f}"
    return f"{n:,}"


def _rate(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}"


def _pct(n: int | None, d: int | None) -> str:
    if n is None or not d:
        return "—"
    return f"{100 * n / d:.1f}%"


def _figure(t: Thumb, *, rep: bool = False, badge: str = "", badge_class: str = "k", sub: str = "") -> str:
    """One thumbnail tile: image (badge overlaid top-left), file name, optional second line."""
    cls = "t" + (" rep" if rep else "") + ("" if t.ok else " ph")
    kind = "image" if t.ok else "placeholder"
    title = t.title or t.caption
    if t.note:
        title += f" ({t.note})"
    b = f'<span class="badge{"" if rep else " " + badge_class}">{_e(badge)}</span>' if badge else ""
    s2 = f'<figcaption class="s">{_e(sub)}</figcaption>' if sub else ""
    return (f'<figure class="{cls}" data-thumb="{kind}" data-image-id="{_e(t.image_id)}" title="{_e(title)}">'
            f'<div class="box"><img src="{t.data_uri}" alt="{_e(t.caption)}" width="{t.image.width}" '
            f'height="{t.image.height}">{b}</div><figcaption>{_e(t.caption)}</figcaption>{s2}</figure>')


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None,
           raw: bool = False) -> str:
    numeric = numeric or [False] * len(header)
    th = "".join(f'<th class="{"n" if n else ""}">{_e(h)}</th>' for h, n in zip(header, numeric, strict=True))
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="{"n" if n else ""}">{v if raw else _e(v)}</td>' for v, n in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _basename(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


def _section_counts(d: _Data) -> str:
    c = d.summary["counts"]
    listed = c["listed"] or 0
    rows = []
    for s in STAGES:
        v = c[s]
        width = 0.0 if (v is None or not listed) else 100.0 * v / listed
        bar = f'<div class="bar"><div style="width:{width:.1f}%"></div></div>'
        rows.append((_e(s), _e(_fmt(v)), _e(_pct(v, listed)), bar, _e(STAGE_DEFINITIONS[s])))
    out = [_table(["stage", "images", "of listed", "", "definition"], rows,
                  [False, True, True, False, False], raw=True)]
    if c["embedded"] is None or c["classified"] is None:
        missing = [s for s in ("embedded", "classified") if c[s] is None]
        out.append(f'<p class="note">{_e(", ".join(missing))}: stage output not available to this report (—).</p>')
    if d.scope == "corpus" and d.per_shard is not None and d.per_shard.height:
        out.append(f"<h3>Per shard ({d.per_shard.height})</h3>")
        prow = [[r["shard"], *[_fmt(r[s]) for s in STAGES]] for r in d.per_shard.iter_rows(named=True)]
        table = _table(["shard", *STAGES], prow, [False] + [True] * len(STAGES))
        if d.per_shard.height > 30:
            table = f"<details><summary>show all {d.per_shard.height} shards</summary>{table}</details>"
        out.append(table)
    return "".join(out)


def _section_rejects(d: _Data) -> str:
    rej = d.summary["rejects_by_reason"]
    rejected = d.summary["rejected"]
    listed = d.summary["counts"]["listed"]
    present = [(r, n) for r, n in rej.items() if n > 0]
    if not present:
        return '<p class="note">No image was rejected.</p>'
    chart = _bar_chart([r for r, _ in present], [n for _, n in present], xlabel="rejected images",
                       colour="#e15759")
    rows = [(r, _fmt(n), _pct(n, rejected), _pct(n, listed)) for r, n in rej.items()]
    table = _table(["reason", "images", "of rejected", "of listed"], rows, [False, True, True, True])
    return (f'<p class="note">{_fmt(rejected)} of {_fmt(listed)} images rejected. An image rejected for several '
            f"reasons counts under each of them.</p>"
            f'<div class="grid2"><div><img class="chart" alt="rejects by reason" src="{chart}"></div>'
            f"<div>{table}</div></div>")


def _section_reject_samples(d: _Data, th: Thumbnailer, budget: int) -> str:
    rej = d.summary["rejects_by_reason"]
    reasons = [r for r, n in rej.items() if n > 0]
    if not reasons:
        return '<p class="note">No image was rejected.</p>'
    per_reason = max(1, min(8, budget // max(1, len(reasons))))
    rejected = d.cur.filter(~pl.col("keep").fill_null(False)).join(
        d.inv.select("image_id", "error_code"), on="image_id", how="left")
    # images with fewer reasons first (they show what THIS check catches), then a stable hash order
    rejected = rejected.with_columns(pl.col("reasons").list.len().alias("_n"),
                                     pl.col("image_id").hash(seed=5).alias("_h")).sort(["_n", "_h"])
    out = [f'<p class="note">Up to {per_reason} images per reason, those failing the fewest other checks first '
           "(a deterministic sample); other reasons are listed under the name. Files that never decoded show a "
           "placeholder with their error code.</p>"]
    used = 0
    for reason in reasons:
        rows = rejected.filter(pl.col("reasons").list.contains(reason)).head(per_reason)
        tiles = []
        for r in rows.iter_rows(named=True):
            if used >= budget:
                break
            others = [x for x in r["reasons"] if x != reason]
            caption = _basename(r["rel_path"])
            title = f'{r["rel_path"]} — reasons: {", ".join(r["reasons"])}'
            t = th.tile(r["image_id"], r["uri"], caption=caption, title=title, error_code=r["error_code"])
            if t is None:
                break
            used += 1
            tiles.append(_figure(t, sub=("also " + ", ".join(others)) if others else ""))
        more = rej[reason] - len(tiles)
        tail = f' <span class="muted">(+{_fmt(more)} more)</span>' if more > 0 else ""
        out.append(f"<h3>{_e(reason)} · {_fmt(rej[reason])}{tail}</h3><div class=\"strip\">{''.join(tiles)}</div>")
    return "".join(out)


def _section_duplicates(d: _Data, th: Thumbnailer, budget: int, max_clusters: int = 8, max_members: int = 10) -> str:
    dup = d.summary["duplicates"]
    left = _table(
        ["", "images"],
        [("clusters with duplicates", _fmt(dup["clusters_with_duplicates"])),
         ("duplicate images (not representatives)", _fmt(dup["duplicate_images"])),
         ("largest cluster", _fmt(dup["largest_cluster"])),
         ("duplicates of an image in another shard", _fmt(dup["cross_shard"]))],
        [False, True],
    )
    right = _table(["dup_kind", "rows"], [(k, _fmt(v)) for k, v in dup["by_kind"].items()], [False, True])
    stats = f'<div class="grp">{left}{right}</div>'
    multi: pl.DataFrame = d.extras["multi_clusters"]
    if multi.height == 0:
        return stats + '<p class="note">No duplicate clusters.</p>'
    inv = d.inv.select("image_id", "uri", "rel_path", "error_code", "width", "height")
    members = d.clu.join(inv, on="image_id", how="left")
    out = [stats, f'<p class="note">The {min(max_clusters, multi.height)} largest clusters. The representative '
                  "(kept if it passes the quality checks) comes first, outlined in green; others show the duplicate "
                  "kind and the pHash distance to it.</p>"]
    used = 0
    for c in multi.head(max_clusters).iter_rows(named=True):
        if used >= budget:
            break
        cid = c["cluster_id"]
        rows = members.filter(pl.col("cluster_id") == cid).sort(
            [pl.col("is_representative").fill_null(False), pl.col("distance").fill_null(0), pl.col("image_id")],
            descending=[True, False, False])
        tiles = []
        rep_row = rows.filter(pl.col("is_representative").fill_null(False))
        if rep_row.height == 0:  # the representative lives elsewhere (an earlier shard)
            rep_inv = d.inv.filter(pl.col("image_id") == cid)
            if rep_inv.height:
                r = rep_inv.row(0, named=True)
                t = th.tile(cid, r["uri"], caption=_basename(r["rel_path"]), title=r["rel_path"] or "",
                            error_code=r["error_code"])
            else:
                where = c["rep_shard"] or "another shard"
                t = th.tile(cid, None, caption=f"in {where}", title=f"representative {cid} in {where}",
                            missing_note=f"in {where}")
            if t is not None:
                tiles.append(_figure(t, rep=True, badge="REP"))
                used += 1
        for r in rows.head(max(0, max_members - len(tiles))).iter_rows(named=True):
            if used >= budget:
                break
            is_rep = bool(r["is_representative"])
            label = "REP" if is_rep else (r["dup_kind"] or "")
            dist = "" if is_rep or r["distance"] is None else f' d={r["distance"]}'
            size = f'{r["width"]}×{r["height"]}' if r["width"] is not None else ""
            t = th.tile(r["image_id"], r["uri"], caption=_basename(r["rel_path"]) or r["image_id"],
                        title=f'{r["rel_path"]} {size} {r["dup_kind"]}{dist}', error_code=r["error_code"])
            if t is None:
                break
            used += 1
            tiles.append(_figure(t, rep=is_rep, badge=label + dist))
        hidden = c["size"] - len(tiles)
        tail = f" · +{hidden} not shown" if hidden > 0 else ""
        out.append(f'<div class="cluster"><div class="meta">cluster <code>{_e(cid)}</code> · {c["size"]} images'
                   f'{_e(tail)}</div><div class="strip">{"".join(tiles)}</div></div>')
    return "".join(out)


def _section_semantic(d: _Data, th: Thumbnailer, budget: int, max_clusters: int = 8, max_members: int = 10,
                      max_cross: int = 4) -> str:
    sem = d.summary["semantic"]
    if not sem["available"] or d.sem is None:
        return ('<p class="note">The optional semantic (embedding) duplicate pass was not run for this report, so '
                "crops and re-framings that perceptual hashes miss are not shown. Run it with "
                "<code>python -m orchestration.cli run --semantic</code> or the <code>semantic_dedup</code> job "
                "(asset <code>semantic_duplicates</code>), then re-materialise the report.</p>")
    min_sim = "—" if sem["min_similarity"] is None else f'{sem["min_similarity"]:.3f}'
    stats = _table(
        ["", "images"],
        [("images compared (kept, embedded)", _fmt(sem["images_compared"])),
         ("clusters with more than one member", _fmt(sem["clusters_with_duplicates"])),
         ("images linked to a representative", _fmt(sem["linked_images"])),
         ("links to a representative in another shard", _fmt(sem["cross_shard"])),
         ("largest cluster", _fmt(sem["largest_cluster"])),
         ("lowest cosine similarity of a link", min_sim)],
        [False, True],
    )
    multi: pl.DataFrame | None = d.extras.get("semantic_clusters")
    note = ('<p class="note">Near duplicates by cosine similarity of the image embeddings (crops, re-framings, '
            "edits that move the perceptual hash); the pass only records clusters, it does not change the curated "
            "set. The similarity threshold is the pass's run config; every link is at least the lowest similarity "
            "above.</p>")
    if multi is None or multi.height == 0:
        return note + stats + '<p class="note">No semantic near-duplicate clusters.</p>'
    assert d.sem is not None
    inv = d.inv.select("image_id", "uri", "rel_path", "error_code")
    members = d.sem.unique("image_id", keep="first").join(inv, on="image_id", how="left")
    largest = multi.head(max_clusters)
    cross = multi.filter(pl.col("cross") & ~pl.col("cluster_id").is_in(largest["cluster_id"].implode())).head(
        max_cross)
    shown = largest.height + cross.height
    extra = (f", then {cross.height} cluster(s) linking images to a representative in another shard"
             if cross.height else "")
    out = [note, stats,
           f'<p class="note">The {largest.height} largest clusters{_e(extra)}. The representative comes first, '
           "outlined in green; each other image shows its cosine similarity to it (<b>cos</b>).</p>"]
    used = 0
    for i, c in enumerate(pl.concat([largest, cross]).iter_rows(named=True)):
        if used >= budget:
            break
        if i == largest.height:
            out.append("<h3>Links across shards</h3>")
        cid = c["cluster_id"]
        rows = members.filter(pl.col("cluster_id") == cid)
        rep_rows = rows.filter(pl.col("is_representative").fill_null(False) & (pl.col("image_id") == cid))
        others = rows.filter(pl.col("image_id") != cid).sort(
            [pl.col("similarity").fill_null(0.0), pl.col("image_id")], descending=[True, False])
        tiles = []
        rep_shard = c["rep_shard"] or "another shard"
        if rep_rows.height:
            r = rep_rows.row(0, named=True)
        else:  # the representative lives in an earlier shard: this frame has no row for it
            found = d.inv.filter(pl.col("image_id") == cid)
            r = found.row(0, named=True) if found.height else None
        sub = f"in {rep_shard}" if d.scope == "corpus" else "representative"
        if r is not None and r.get("uri") is not None:
            t = th.tile(cid, r["uri"], caption=_basename(r["rel_path"]) or cid,
                        title=f'{r["rel_path"]} (representative, {rep_shard})', error_code=r.get("error_code"))
        else:
            t = th.tile(cid, None, caption=f"in {rep_shard}", title=f"representative {cid} in {rep_shard}",
                        missing_note=f"in {rep_shard}")
            sub = "not in this report"
        if t is not None:
            tiles.append(_figure(t, rep=True, badge="REP", sub=sub))
            used += 1
        for r in others.head(max(0, max_members - len(tiles))).iter_rows(named=True):
            if used >= budget:
                break
            cos = "—" if r["similarity"] is None else f'{r["similarity"]:.3f}'
            where = f', {r["shard"]}' if r["shard"] != c["rep_shard"] else ""
            t = th.tile(r["image_id"], r["uri"], caption=_basename(r["rel_path"]) or r["image_id"],
                        title=f'{r["rel_path"] or r["image_id"]}: cos {cos} to the representative{where}',
                        error_code=r["error_code"])
            if t is None:
                break
            used += 1
            tiles.append(_figure(t, sub=f"cos {cos}"))
        hidden = c["size"] - len(tiles)
        tail = f" · +{hidden} not shown" if hidden > 0 else ""
        where = f" · representative in {c['rep_shard']}" if c["cross"] and c["rep_shard"] else ""
        out.append(f'<div class="cluster"><div class="meta">cluster <code>{_e(cid)}</code> · {c["size"]} images'
                   f'{_e(where)}{_e(tail)}</div><div class="strip">{"".join(tiles)}</div></div>')
    if multi.height > shown:
        out.append(f'<p class="note">+{_fmt(multi.height - shown)} smaller clusters not shown.</p>')
    return "".join(out)


def _section_classes(d: _Data, th: Thumbnailer, budget: int, per_side: int = 4) -> str:
    classes = d.summary["classes"]["counts"]
    if d.label_source is None or not classes or d.cls is None:
        why = ("no classification output was given to this report" if d.cls is None else
               "zero-shot labels are unavailable with the offline model and no few-shot probe is configured")
        return f'<p class="note">No class labels: {_e(why)}.</p>'
    src = "few-shot linear probe" if d.label_source == "fs" else "zero-shot"
    names = list(classes)
    chart = _bar_chart(names[:40], [classes[n] for n in names[:40]], xlabel="images", colour="#59a14f")
    total = sum(classes.values())
    table = _table(["class", "images", "share"], [(n, _fmt(v), _pct(v, total)) for n, v in classes.items()],
                   [False, True, True])
    if len(classes) > 15:
        table = f"<details><summary>all {len(classes)} classes</summary>{table}</details>"
    lab, prob = f"{d.label_source}_label", f"{d.label_source}_prob"
    shown = names[:MAX_CLASSES_SHOWN]
    per_class = max(1, min(per_side, budget // max(1, 2 * len(shown))))
    rows = d.cls.select("image_id", pl.col(lab).alias("label"), pl.col(prob).alias("prob")).join(
        d.cur.select("image_id", "uri", "rel_path"), on="image_id", how="left")
    out = [f'<p class="note">Labels from the {src}; {_fmt(total)} labelled images in {len(classes)} classes.'
           + (" Charted: the 40 largest." if len(names) > 40 else "") + "</p>",
           f'<div class="grid2"><div><img class="chart" alt="class distribution" src="{chart}"></div>'
           f"<div>{table}</div></div>",
           f'<p class="note">Per class: the {per_class} highest-scoring images and the {per_class} '
           "lowest-confidence ones, with their probability"
           + (f" (the {len(shown)} largest classes)." if len(names) > len(shown) else ".")
           + "</p>"]
    used = 0
    for name in shown:
        sub = rows.filter(pl.col("label") == name).sort(["prob", "image_id"], descending=[True, False],
                                                         nulls_last=True)
        top = sub.head(per_class)
        low = sub.filter(~pl.col("image_id").is_in(top["image_id"].to_list())).sort(
            ["prob", "image_id"], nulls_last=True).head(per_class)
        groups = []
        for part, frame in (("highest score", top), ("lowest confidence", low)):
            tiles = []
            for r in frame.iter_rows(named=True):
                if used >= budget:
                    break
                p = "—" if r["prob"] is None else f'{r["prob"]:.2f}'
                t = th.tile(r["image_id"], r["uri"], caption=_basename(r["rel_path"]) or r["image_id"],
                            title=f'{r["rel_path"]}: {name} p={p}')
                if t is None:
                    break
                used += 1
                tiles.append(_figure(t, badge=p, badge_class="k" if part == "highest score" else "low"))
            if tiles:
                groups.append(f'<div><div class="lbl">{_e(part)}</div><div class="strip">{"".join(tiles)}</div></div>')
        out.append(f'<h3>{_e(name)} · {_fmt(classes[name])}</h3><div class="grp">{"".join(groups)}</div>')
    return "".join(out)


def _section_map(d: _Data) -> str:
    e = d.summary["embedding"]
    if d.map_points is None or d.map_points.height < 3:
        return f'<p class="note">{_e(d.map_note or "No embedding map.")}</p>'
    img = _scatter(d.map_points, d.map_colour_by.split(" (")[0], e["explained_variance"])
    n_emb = d.summary["counts"]["embedded"]
    sample = (f"a deterministic sample of {_fmt(e['mapped_points'])} of {_fmt(n_emb)} images"
              if n_emb and e["mapped_points"] < n_emb else f"{_fmt(e['mapped_points'])} images")
    return (f'<p class="note">PCA of the L2-normalised embeddings (model <code>{_e(e["model"])}</code>, '
            f"{e['dim']} dimensions), {sample}, coloured by {_e(d.map_colour_by)}. Nearby points look alike to "
            f'the model.</p><img class="chart" alt="embedding map" src="{img}">')


def _section_timings(d: _Data) -> str:
    t = d.summary["timings"]
    if not t:
        return '<p class="note">No stage timings were given to this report.</p>'
    rows = [(stage, f'{v["seconds"]:,.2f}', f'{_fmt(v["items"])} {v["counted_as"]}', _rate(v["per_second"]))
            for stage, v in t.items()]
    total = sum(v["seconds"] for v in t.values())
    listed = d.summary["counts"]["listed"]
    rows.append(("total", f"{total:,.2f}", f"{_fmt(listed)} listed",
                 _rate(listed / total if total > 0 and listed else None)))
    table = _table(["stage", "seconds", "items", "items / s"], rows, [False, True, True, True])
    chart = _bar_chart(list(t), [v["seconds"] for v in t.values()], xlabel="seconds", colour="#f28e2b",
                       fmt="{:,.1f} s")
    return (f'<div class="grid2"><div><img class="chart" alt="time per stage" src="{chart}"></div>'
            f"<div>{table}</div></div>")


def _section_errors(d: _Data) -> str:
    errs = d.summary["decode_errors"]
    if not errs:
        return '<p class="note">Every listed file decoded.</p>'
    total = sum(errs.values())
    listed = d.summary["counts"]["listed"]
    out = [f'<p class="note">{_fmt(total)} of {_fmt(listed)} files could not be analysed; each is in raw_inventory '
           f"with its error code (up to {MAX_ERROR_FILES_PER_CODE} files listed per code).</p>",
           _table(["error code", "files"], [(k, _fmt(v)) for k, v in errs.items()], [False, True])]
    show_shard = d.scope == "corpus"
    bad = d.inv.filter(pl.col("error_code").is_not_null()).sort(["error_code", "shard", "rel_path"])
    head = "<tr><th>error code</th><th>file</th>" + ("<th>shard</th>" if show_shard else "") + "<th>message</th></tr>"
    body = []
    for code, n in errs.items():
        rows = bad.filter(pl.col("error_code") == code).head(MAX_ERROR_FILES_PER_CODE)
        for i, r in enumerate(rows.iter_rows(named=True)):
            span = rows.height + (1 if n > rows.height else 0)
            first = f'<td rowspan="{span}"><b>{_e(code)}</b></td>' if i == 0 else ""
            shard = f'<td>{_e(r["shard"])}</td>' if show_shard else ""
            body.append(f'<tr>{first}<td class="path">{_e(r["rel_path"])}</td>{shard}'
                        f'<td class="muted">{_e((r["error_message"] or "")[:300])}</td></tr>')
        if n > rows.height:
            cols = 3 if show_shard else 2
            body.append(f'<tr><td class="muted" colspan="{cols}">+{_fmt(n - rows.height)} more</td></tr>')
    out.append(f'<h3>Files</h3><table class="full"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>')
    return "".join(out)


def _kpis(d: _Data) -> str:
    s = d.summary
    c = s["counts"]
    items = [
        ("listed", _fmt(c["listed"])),
        ("kept", _fmt(c["kept"])),
        ("keep rate", "—" if s["keep_rate"] is None else f'{100 * s["keep_rate"]:.1f}%'),
        ("duplicates", _fmt(s["duplicates"]["duplicate_images"])),
        ("decode errors", _fmt(sum(s["decode_errors"].values()))),
        ("classes", _fmt(len(s["classes"]["counts"]))),
    ]
    if s["scope"] == "corpus":
        items.insert(0, ("shards", _fmt(s["n_shards"])))
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="v">{_e(v)}</div><div class="l">{_e(k)}</div></div>' for k, v in items
    ) + "</div>"


def _render_html(d: _Data, th: Thumbnailer) -> str:
    with_sem = d.sem is not None
    dup_budget = int(th.max_thumbs * (0.25 if with_sem else 0.3))
    rej_budget = int(th.max_thumbs * (0.25 if with_sem else 0.3))
    sem_budget = int(th.max_thumbs * 0.2) if with_sem else 0
    sections = {
        "counts": _section_counts(d),
        "rejects": _section_rejects(d),
        "reject-samples": _section_reject_samples(d, th, rej_budget),
        "duplicates": _section_duplicates(d, th, dup_budget),
        "semantic-duplicates": _section_semantic(d, th, sem_budget),
        "classes": _section_classes(d, th, max(0, th.remaining)),
        "embedding-map": _section_map(d),
        "timings": _section_timings(d),
        "decode-errors": _section_errors(d),
    }
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS.items())
    body = "".join(f'<section id="{sid}"><h2>{_e(SECTIONS[sid])}</h2>{content}</section>'
                   for sid, content in sections.items())
    s = d.summary
    sub = f'generated {_e(s["generated_at"])}'
    if s["scope"] == "corpus":
        sub += f' · {s["n_shards"]} shards'
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(d.title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_e(d.title)}</h1><div class="sub">{sub}</div></header>'
        f"<nav>{nav}</nav><main>{_kpis(d)}{body}</main>"
        f"<footer>{th.rendered} thumbnails, {th.placeholders} placeholders · self-contained report</footer>"
        "</body></html>"
    )


def _write(d: _Data, out_dir: str, th: Thumbnailer) -> dict[str, Any]:
    page = _render_html(d, th)
    d.summary["thumbnails"] = {"rendered": th.rendered, "placeholders": th.placeholders, "budget": th.max_thumbs}
    html_uri = storage.join(out_dir, "report.html")
    d.summary["report"] = html_uri
    storage.write_bytes_atomic(html_uri, page.encode("utf-8"))
    storage.write_json(d.summary, storage.join(out_dir, "summary.json"))
    return d.summary


# ------------------------------------------------------------------------------------ public API


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
    data = _analyse(scope="shard", shard=shard, inventory=inventory, clusters=clusters, curated=curated,
                    embeddings=embeddings, classifications=classifications, timings=timings,
                    shard_counts=None, max_map_points=max_map_points, semantic=semantic)
    return _write(data, out_dir, Thumbnailer(load_image, max_thumbs))


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
    data = _analyse(scope="corpus", shard=None, inventory=inventory, clusters=clusters, curated=curated,
                    embeddings=embeddings, classifications=classifications, timings=timings,
                    shard_counts=shard_counts, max_map_points=max_map_points, semantic=semantic)
    return _write(data, out_dir, Thumbnailer(load_image, max_thumbs))


def preview_thumbs(curated: pl.DataFrame, *, load_image: ImageLoader = open_image, n: int = 8,
                   size: int = PREVIEW_PX) -> list[Thumb]:
    """Up to `n` small thumbnails of kept images (a deterministic spread over the shard) for
    `markdown_preview`; images that fail to load are skipped, never raised."""
    kept = curated.filter(pl.col("keep").fill_null(False)).select("image_id", "uri", "rel_path")
    kept = kept.with_columns(pl.col("image_id").hash(seed=11).alias("_h")).sort("_h")
    th = Thumbnailer(load_image, max_thumbs=n * 3, size=size)
    out: list[Thumb] = []
    for r in kept.iter_rows(named=True):
        if len(out) >= n or th.remaining <= 0:
            break
        t = th.tile(r["image_id"], r["uri"], caption=_basename(r["rel_path"]), title=r["rel_path"] or "")
        if t is not None and t.ok:
            out.append(t)
    return out


def markdown_preview(summary: dict[str, Any], thumbs: Sequence[Thumb | Image.Image], *, max_thumbs: int = 8,
                     size: int = PREVIEW_PX, max_chars: int = 16_000) -> str:
    """A short Markdown block for Dagster metadata: stage counts, rejects by reason (non-zero) and
    a strip of at most `max_thumbs` inline thumbnails (`size` px JPEG data URIs). Thumbnails are
    dropped from the end until the block is at most `max_chars` characters."""
    c = summary["counts"]
    listed = c.get("listed") or 0
    lines = ["| stage | images | of listed |", "|---|---:|---:|"]
    lines += [f"| {s} | {_fmt(c.get(s))} | {_pct(c.get(s), listed)} |" for s in STAGES]
    rej = {k: v for k, v in summary.get("rejects_by_reason", {}).items() if v}
    text = "\n".join(lines)
    if rej:
        text += "\n\n| reject reason | images |\n|---|---:|\n"
        text += "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rej.items())
    errs = summary.get("decode_errors") or {}
    if errs:
        text += "\n\n| decode error | files |\n|---|---:|\n"
        text += "\n".join(f"| {k} | {_fmt(v)} |" for k, v in errs.items())
    imgs = []
    for t in list(thumbs)[: max(0, max_thumbs)]:
        img = t.image if isinstance(t, Thumb) else _to_rgb(t)
        small = img.copy()
        small.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        _to_rgb(small).save(buf, "JPEG", quality=70, optimize=True)
        imgs.append(f"![](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})")
    while imgs and len(text) + 2 + sum(len(i) + 1 for i in imgs) > max_chars:
        imgs.pop()
    if imgs:
        text += "\n\n" + " ".join(imgs)
    return text


__all__ = [
    "DEFAULT_MAX_MAP_POINTS",
    "DEFAULT_MAX_THUMBS",
    "SECTIONS",
    "SEMANTIC_COLUMNS",
    "STAGES",
    "STAGE_DEFINITIONS",
    "STAGE_DIRS",
    "STAGE_ITEMS",
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
]
