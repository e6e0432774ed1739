"""The corpus-level export manifest: which exported samples a training job should read.

Each shard's export (`export_shard`) is written once, from that shard's own curated decision, and
is never rewritten. When a later shard brings a larger copy of an earlier shard's picture
(`curation.dedup.supersede`), the later shard exports the larger copy and the earlier shard's tar
still holds the smaller one. The corpus manifest resolves this without touching any shard's
files: it lists, over every exported shard, exactly the corpus-level keepers (`corpus_keep` over
all exported rows and all supersede records: per cluster the best copy that was exported) and
where each lives (`tar`, `key`, `manifest`, relative to the export root). A stale earlier copy
keeps its bytes in its tar, but is not listed.

`corpus_manifest(manifests, records)` is the pure decision; `read_manifest_metadata`
reads a shard manifest's columns without the image bytes (column projection, local or S3).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from curation import storage
from curation.dedup.supersede import corpus_keep

SKIP_COLUMNS = ("image", "embedding")  # the bytes stay in the shard manifests and tars


@dataclass(frozen=True)
class CorpusManifestStats:
    rows: int  # samples listed
    superseded: int  # exported samples left out: a later shard's larger copy takes their place


def read_manifest_metadata(uri: str) -> pl.DataFrame:
    """A shard manifest's rows without the `image` / `embedding` columns (only the others are read)."""
    import pyarrow.parquet as pq

    fs = storage.filesystem(uri)
    path = uri[5:] if storage.is_s3(uri) else uri
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        cols = [n for n in pf.schema_arrow.names if n not in SKIP_COLUMNS]
        frame = pl.from_arrow(pf.read(columns=cols))
    assert isinstance(frame, pl.DataFrame)
    return frame


def corpus_manifest(manifests: pl.DataFrame, records: pl.DataFrame) -> tuple[pl.DataFrame, CorpusManifestStats]:
    """The corpus manifest of the exported shards and its counts.

    `manifests`: every exported shard's manifest rows (image_id, shard, key, tar, ...; in shard
    order), `records`: the supersede records of those shards (SUPERSEDE_SCHEMA). The candidates
    of a cluster with records are its representative and its superseders (`corpus_keep`); here a
    candidate is acceptable when its shard exported it, so the best *exported* copy wins (a
    larger copy rejected by a model head, or that its export could not read, leaves the place to
    the copy before it, never to none). Output: the manifest rows of the corpus-level keepers, in
    the order given, plus `manifest` (the shard manifest's path, relative to the export root) and
    `supersedes` / `superseded_shard` (the copy a row replaces, else null). Deterministic."""
    exported = manifests.select("image_id", pl.lit(True).alias("keep"),
                                pl.lit([], dtype=pl.List(pl.String)).alias("reasons"))
    view = corpus_keep(exported, records, trace=True)
    keep = view["keep"]
    listed = manifests.filter(keep)
    names = records.filter(pl.col("image_id").is_in(listed["image_id"].implode())).select(
        "image_id", "supersedes", "superseded_shard").unique("image_id", keep="last")
    listed = listed.drop("supersedes", "superseded_shard", strict=False).join(
        names, on="image_id", how="left", maintain_order="left").with_columns(
        pl.format("manifests/{}.parquet", pl.col("shard")).alias("manifest"))
    return listed, CorpusManifestStats(rows=listed.height, superseded=int((~keep).sum()))


__all__ = ["SKIP_COLUMNS", "CorpusManifestStats", "corpus_manifest", "read_manifest_metadata"]
