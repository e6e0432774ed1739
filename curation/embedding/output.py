"""The embedding stage's output rows and the helpers that read them.

One row per input row, in input order, columns ``image_id, shard, model, embedding, error,
in_topk_labels, in_topk_probs`` (`EMBED_OUTPUT_SCHEMA`):

* ``embedding``: ``List(Float32)``. Values are L2-normalised in float32 and then rounded to float16
  precision (stored as Float32 so that every Parquet reader - polars, duckdb, pyarrow - reads them;
  the ``.float16()`` rounding halves what the values carry without an exotic dtype). Null when the
  image failed.
* ``model``: the embedder's ``model_id`` (architecture, weights and their version / checksum).
* ``error``: null when the image was embedded, else ``"<code>: <message>"`` with a code from
  `curation.errors` (the image could not be read or decoded here).
* ``in_topk_labels`` (``List(String)``) / ``in_topk_probs`` (``List(Float32)``): the model's top-k
  ImageNet-1k class names (`curation.embedding.imagenet`), best first, and their softmax
  probabilities, for models with an ImageNet head (EfficientNet-Lite0); null for models without
  one (open_clip) and for images that failed.

`chunk_frame` builds such rows; `split_errors` separates embedded from failed rows,
`embeddings_to_numpy` turns the column into a float32 matrix, `embedding_metadata` describes the
model for the asset materialisation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curation import errors as error_codes
from curation.embedding.imagenet import IMAGENET_OUTPUT_SCHEMA, TOPK_LABELS, TOPK_PROBS
from curation.schema import EMBEDDING_COLUMNS, Schema

if TYPE_CHECKING:  # pragma: no cover - typing only
    from curation.embedding.base import Embedder
    from curation.embedding.spec import EmbedderSpec

EMBEDDING_DTYPE = pl.List(pl.Float32)
EMBED_OUTPUT_SCHEMA: Schema = {
    "image_id": pl.String,
    "shard": pl.String,
    "model": pl.String,
    "embedding": EMBEDDING_DTYPE,
    "error": pl.String,
    **IMAGENET_OUTPUT_SCHEMA,
}


def chunk_frame(ids: list[str], shard: str, model_id: str, rows: np.ndarray, ok: np.ndarray,
                errs: dict[int, str], topk: TopK | None = None) -> pl.DataFrame:
    """Output rows for `ids`: ``rows[i]`` (rounded to float16 precision) where ``ok[i]``, else a null
    embedding with ``errs[i]`` (an internal error when the image was neither embedded nor failed).
    With `topk` the ImageNet columns hold its labels and probabilities where ``ok[i]``, else null."""
    n = len(ids)
    rounded = rows.astype(np.float16).astype(np.float32)
    emb = pl.Series("embedding", rounded).cast(EMBEDDING_DTYPE)
    emb = pl.select(pl.when(pl.Series(ok)).then(emb).otherwise(None).alias("embedding")).to_series()
    err = [errs.get(i) if not ok[i] else None for i in range(n)]
    for i in range(n):
        if not ok[i] and err[i] is None:
            err[i] = f"{error_codes.INTERNAL_ERROR}: image was not embedded"
    return pl.DataFrame({
        "image_id": pl.Series(ids, dtype=pl.String),
        "shard": pl.Series([shard] * n, dtype=pl.String),
        "model": pl.Series([model_id] * n, dtype=pl.String),
        "embedding": emb,
        "error": pl.Series(err, dtype=pl.String),
        **_topk_columns(n, ok, topk),
    }, schema=EMBED_OUTPUT_SCHEMA)


@dataclass
class TopK:
    """ImageNet top-k of n rows: class indices [n, k], probabilities [n, k], the class names."""

    idx: np.ndarray
    prob: np.ndarray
    names: tuple[str, ...]


def _topk_columns(n: int, ok: np.ndarray, topk: TopK | None) -> dict[str, pl.Series]:
    """The ImageNet columns of `n` rows: null everywhere without `topk`, else where not ``ok``."""
    if topk is None:
        return {c: pl.Series(c, [None] * n, dtype=t) for c, t in IMAGENET_OUTPUT_SCHEMA.items()}
    names = np.asarray(topk.names, dtype=object)
    labels = [names[topk.idx[i]].tolist() if ok[i] else None for i in range(n)]
    probs = [topk.prob[i].tolist() if ok[i] else None for i in range(n)]
    return {TOPK_LABELS: pl.Series(TOPK_LABELS, labels, dtype=IMAGENET_OUTPUT_SCHEMA[TOPK_LABELS]),
            TOPK_PROBS: pl.Series(TOPK_PROBS, probs, dtype=IMAGENET_OUTPUT_SCHEMA[TOPK_PROBS])}


def split_errors(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(embedded rows with EMBEDDING_COLUMNS, failed rows with image_id, shard, error). The
    ImageNet columns are not part of EMBEDDING_COLUMNS: read them with `imagenet_columns`."""
    ok = df.filter(pl.col("error").is_null()).select(list(EMBEDDING_COLUMNS))
    bad = df.filter(pl.col("error").is_not_null()).select("image_id", "shard", "error")
    return ok, bad


def embeddings_to_numpy(df: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    """float32 [n, dim] from a List(Float32) column without nulls."""
    s = df[column]
    if s.null_count():
        raise ValueError(f"{s.null_count()} null embeddings; drop failed rows first (split_errors)")
    if len(s) == 0:
        return np.empty((0, 0), dtype=np.float32)
    dim = int(s.list.len()[0])
    return s.list.to_array(dim).to_numpy().astype(np.float32, copy=False)


def embedding_metadata(embedder: Embedder, spec: EmbedderSpec | None = None) -> dict[str, Any]:
    """Metadata to attach to the asset materialisation: the embedder's info and the spec."""
    meta = dict(embedder.info())
    if spec is not None:
        meta["spec"] = asdict(spec)
    meta["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return meta
