"""Images at each stage, per shard: from polars frames or from ONE DuckDB query over the outputs.

`stage_counts_by_shard` computes the counts table (columns shard + `STAGES`) from the stage
frames; `corpus_counts` computes the same numbers with one DuckDB query over the stage outputs
`<output_root>/<stage_dir>/<shard>.parquet`, for corpus reports that should not load every shard.
Definitions (both functions): listed = inventory rows; decoded = rows without an error code;
unique = decoded rows that represent their duplicate cluster (or have no cluster row); kept =
curated rows with `keep`; embedded = distinct image ids with an embedding; classified = distinct
image ids with a few-shot label or a zero-shot label other than "unknown".

`collect_columns` is the one way the report reads a frame: it collects only the named columns of
a DataFrame or LazyFrame and raises a ValueError naming the missing ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import polars as pl

from curation import storage
from curation.report.spec import STAGE_DIRS, STAGES, UNKNOWN_LABEL, Frame

if TYPE_CHECKING:  # only for the annotation of `corpus_counts`; the caller owns the connection
    import duckdb


def collect_columns(frame: Frame | None, columns: Sequence[str]) -> pl.DataFrame | None:
    if frame is None:
        return None
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    names = lf.collect_schema().names()
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; has {names}")
    return lf.select(list(columns)).collect()


def optional_columns(frame: Frame | None, columns: Sequence[str]) -> list[str]:
    """The names of `columns` that `frame` has (for columns that older outputs lack)."""
    if frame is None:
        return []
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    names = set(lf.collect_schema().names())
    return [c for c in columns if c in names]


def classified_mask() -> pl.Expr:
    return pl.col("fs_label").is_not_null() | (
        pl.col("zs_label").is_not_null() & (pl.col("zs_label") != UNKNOWN_LABEL)
    )


def stage_counts_by_shard(inventory: Frame, clusters: Frame, curated: Frame, embeddings: Frame | None,
                          classifications: Frame | None) -> pl.DataFrame:
    """Per-shard stage counts (columns: shard + `STAGES`) computed with polars from the frames;
    `embedded`/`classified` are null when that frame is None. Same definitions as `corpus_counts`."""
    inv = collect_columns(inventory, ["image_id", "shard", "error_code"])
    clu = collect_columns(clusters, ["image_id", "is_representative"])
    cur = collect_columns(curated, ["image_id", "shard", "keep"])
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
    emb = collect_columns(embeddings, ["image_id", "shard"])
    if emb is not None:
        out = out.join(emb.group_by("shard").agg(pl.col("image_id").n_unique().alias("embedded")),
                       on="shard", how="full", coalesce=True)
    else:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("embedded"))
    cls = collect_columns(classifications, ["image_id", "shard", "zs_label", "fs_label"])
    if cls is not None:
        out = out.join(
            cls.filter(classified_mask()).group_by("shard").agg(pl.col("image_id").n_unique().alias("classified")),
            on="shard", how="full", coalesce=True,
        )
        out = out.with_columns(pl.col("classified").fill_null(0))
    else:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("classified"))
    fill = [pl.col(c).fill_null(0) for c in ("listed", "decoded", "unique", "kept")]
    if emb is not None:
        fill.append(pl.col("embedded").fill_null(0))
    return out.with_columns(fill).select("shard", *[pl.col(s).cast(pl.Int64) for s in STAGES]).sort("shard")


def with_kept_counts(shard_counts: pl.DataFrame, curated: Frame) -> pl.DataFrame:
    """`shard_counts` with its `kept` column recounted from `curated` (e.g. the corpus-level view,
    where an earlier shard's superseded copy is no longer kept); shards without curated rows: 0."""
    cur = collect_columns(curated, ["shard", "keep"])
    assert cur is not None
    kept = cur.group_by("shard").agg(pl.col("keep").fill_null(False).sum().cast(pl.Int64).alias("_kept"))
    out = shard_counts.join(kept, on="shard", how="left", maintain_order="left")
    return out.with_columns(pl.col("_kept").fill_null(0).alias("kept")).select(shard_counts.columns)


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
