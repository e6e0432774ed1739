"""The resumable chunk store of the embedding stage.

A shard's rows are cut into chunks of `chunk_size` consecutive rows (`ChunkLayout`); chunk ``c``
lives at ``chunk_dir/chunk-NNNNN.parquet`` (`chunk_uri`; local or s3://) and holds the output rows
(`curation.embedding.output`) of rows ``c*chunk_size ...`` in order. ``chunk_dir/_meta.json``
records the embedder's `info()`, the shard, the chunk size and the row count.

Guarantees:
* a chunk is reused only when it exists, reads back (`storage.read_parquet` detects truncation), has
  exactly the output columns, holds exactly the expected ids in order, was embedded by the same
  model id, and - for a model with an ImageNet head - holds `topk` labels for every embedded row
  (`valid_chunk`); anything else is recomputed, so a killed run resumes after its last completed
  chunk and a changed manifest, model or top-k never reuses stale rows. Chunks written before the
  ImageNet columns existed lack them: for a model without a head (open_clip) they are reused with
  those columns null (nothing to recompute), for a model with a head they are recomputed;
* chunks are written atomically (`storage.write_parquet`) on one background thread (`ChunkWriter`);
  a write that fails raises in the caller; writes already handed over complete even when the run
  fails.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from curation import storage
from curation.embedding.imagenet import IMAGENET_OUTPUT_SCHEMA, TOPK_LABELS
from curation.embedding.output import EMBED_OUTPUT_SCHEMA

log = logging.getLogger(__name__)


def chunk_uri(chunk_dir: str, index: int) -> str:
    """Where chunk `index` of `chunk_dir` is stored."""
    return storage.join(chunk_dir, f"chunk-{index:05d}.parquet")


def valid_chunk(uri: str, ids: list[str], model_id: str, topk: int = 0) -> pl.DataFrame | None:
    """The chunk at `uri` when it exists, reads back, and holds exactly `ids` (in order) embedded by
    `model_id` with `topk` ImageNet labels per embedded row (0: a model without a head); else None
    (it is then recomputed). See the module docstring for chunks without the ImageNet columns."""
    if not storage.exists(uri):
        return None
    try:
        df = storage.read_parquet(uri)
    except storage.CorruptOutputError as exc:
        log.warning("recomputing corrupt chunk: %s", exc)
        return None
    legacy = [c for c in EMBED_OUTPUT_SCHEMA if c not in IMAGENET_OUTPUT_SCHEMA]
    if topk == 0 and list(df.columns) == legacy:  # written before the ImageNet columns: null for this model
        df = df.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in IMAGENET_OUTPUT_SCHEMA.items()])
    if list(df.columns) != list(EMBED_OUTPUT_SCHEMA) or df["image_id"].to_list() != ids:
        log.warning("recomputing chunk %s: its ids or columns differ from this shard's", uri)
        return None
    if df.height and (df["model"].unique().to_list() != [model_id]):
        log.warning("recomputing chunk %s: embedded by another model", uri)
        return None
    embedded = df.filter(pl.col("error").is_null())
    lens = embedded[TOPK_LABELS].list.len()
    if (topk == 0 and embedded[TOPK_LABELS].null_count() != embedded.height) or (
            topk > 0 and (lens.null_count() or bool((lens != topk).any()))):
        log.warning("recomputing chunk %s: its ImageNet labels do not match top-%d", uri, topk)
        return None
    return df


@dataclass(frozen=True)
class ChunkLayout:
    """`total` rows cut into chunks of `chunk_size` (the last one may be shorter)."""

    total: int
    chunk_size: int

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.total / self.chunk_size)

    def start(self, c: int) -> int:
        """Row index of the first row of chunk `c`."""
        return c * self.chunk_size

    def length(self, c: int) -> int:
        """Rows in chunk `c`."""
        return min(self.chunk_size, self.total - c * self.chunk_size)

    def rows(self, c: int) -> slice:
        """The rows of chunk `c`, as a slice of the shard's rows."""
        return slice(self.start(c), self.start(c) + self.length(c))


class ChunkStore:
    """The chunks of one shard in `chunk_dir`, laid out by `layout`."""

    def __init__(self, chunk_dir: str, layout: ChunkLayout):
        self.chunk_dir = chunk_dir
        self.layout = layout

    def uri(self, c: int) -> str:
        return chunk_uri(self.chunk_dir, c)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Create the chunk directory and (re)write ``_meta.json``."""
        storage.makedirs(self.chunk_dir)
        storage.write_json(meta, storage.join(self.chunk_dir, "_meta.json"))

    def plan(self, ids: list[str], model_id: str, topk: int = 0) -> tuple[dict[int, pl.DataFrame], list[int]]:
        """({chunk: its rows} for every valid chunk on storage, the other chunks in order); `topk`
        as in `valid_chunk`."""
        frames: dict[int, pl.DataFrame] = {}
        pending: list[int] = []
        for c in range(self.layout.n_chunks):
            df = valid_chunk(self.uri(c), ids[self.layout.rows(c)], model_id, topk)
            if df is None:
                pending.append(c)
            else:
                frames[c] = df
        return frames, pending


class ChunkWriter:
    """Writes chunks of a `ChunkStore` in order on one background thread."""

    def __init__(self, store: ChunkStore):
        self.store = store
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="embed-write")
        self._writes: dict[int, cf.Future] = {}

    def submit(self, c: int, df: pl.DataFrame) -> None:
        """Hand chunk `c` over for writing."""
        self._writes[c] = self._pool.submit(storage.write_parquet, df, self.store.uri(c))

    def collect(self, block: bool, on_written: Callable[[int], None]) -> None:
        """Call `on_written(c)` for each finished write, in chunk order (waiting for all when
        `block`); raises the error of a failed write."""
        for c in sorted(self._writes):
            fut = self._writes[c]
            if block or fut.done():
                fut.result()  # raises a failed write
                del self._writes[c]
                on_written(c)

    def close(self) -> None:
        """Wait for the writes already handed over (they complete, atomically, even on failure)."""
        self._pool.shutdown(wait=True)
