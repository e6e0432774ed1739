"""`embed_shard`: the chunked, resumable embedding of one shard.

It runs these steps: check the arguments and choose the decode path (`_decode_plan`); find the
chunks already done in valid chunk files (`ChunkStore.plan`); produce batches of the other chunks
(`BatchProducer`); run the model on each batch (`_run_model`) into the chunk's accumulator; when a
chunk is complete build its rows and hand them to the background writer (`_finish_chunk`); and
assemble the result in input order (`_assemble`).

Guarantees: one output row per input row, in input order (`curation.embedding.output`); a rerun
reuses every valid chunk and recomputes the others (`curation.embedding.chunks`), so a killed step
resumes after its last completed chunk; an image that cannot be read or decoded gets an error row;
CUDA OOM halves the batch and goes on, other CUDA failures raise `RetryableDeviceError`
(`curation.embedding.base`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from curation import storage
from curation.embedding.base import Embedded, Embedder
from curation.embedding.chunks import ChunkLayout, ChunkStore, ChunkWriter
from curation.embedding.decode_pool import DecodePool, DecodeSpec
from curation.embedding.output import EMBED_OUTPUT_SCHEMA, TopK, chunk_frame
from curation.embedding.producer import Batch, BatchProducer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

_PHASES = ("wait_s", "model_s", "gpu_decode_s", "assemble_s", "load_wait_s", "frame_s")


def embed_shard(
    items: pl.DataFrame,
    read_image: Callable[[str], Image.Image],
    embedder: Embedder,
    chunk_dir: str,
    shard: str,
    chunk_size: int = 2048,
    num_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    read_bytes: Callable[[str], bytes] | None = None,
    gpu_decode: str = "auto",
    prefetch_batches: int = 2,
    stats: dict[str, float] | None = None,
    decode_bytes: Callable[[bytes], Image.Image] | None = None,
    decode_processes: int | None = None,
) -> pl.DataFrame:
    """Embed every row of `items` (columns image_id, uri) and return one row per input row, in input
    order, with columns image_id, shard, model, embedding, error, in_topk_labels, in_topk_probs
    (`EMBED_OUTPUT_SCHEMA`; the ImageNet columns are null for models without an ImageNet head).

    Work is written in chunks of `chunk_size` rows to ``chunk_dir/chunk-NNNNN.parquet`` (local or
    s3://, atomic writes, on a background writer thread). A rerun reuses every chunk that reads back
    and holds the same ids embedded by the same model, and recomputes missing, corrupt or stale ones,
    so a killed step resumes after its last completed chunk. ``chunk_dir/_meta.json`` records the
    embedder's `info()`.

    Decoding overlaps with the model: `num_workers` threads (default: 32 for s3:// inputs, 2 when
    feeding nvJPEG from local files, else min(8, cpus)) read and
    preprocess images in small groups while a producer thread assembles batches (pinned host memory
    on CUDA) `prefetch_batches` ahead of the model. With ``gpu_decode="auto"`` on CUDA and a
    `read_bytes` callable, JPEGs are decoded on the GPU with nvJPEG (torchvision.io.decode_jpeg) and
    resized there, on a side CUDA stream so that decoding batch k+1 overlaps the model on batch k;
    other formats, EXIF-rotated or truncated JPEGs and anything nvJPEG rejects go through
    `read_image` on the CPU. ``gpu_decode="off"`` forces CPU decoding. `progress(done_rows,
    total_rows)` is called after every batch and every written chunk. When `stats` is given it receives seconds
    spent per phase: consumer waiting for batches (wait_s) and in the model (model_s), producer in
    nvJPEG decode + GPU resize (gpu_decode_s), assembling batches (assemble_s), waiting for reads
    (load_wait_s), and building chunk frames (frame_s).

    CPU decoding runs in the reader threads, or in `decode_processes` worker processes
    (`curation.embedding.decode_pool`) when `decode_bytes` (bytes -> image, picklable, the same
    decode as `read_image`, e.g. `curation.imaging.policy.decode_rgb`) and `read_bytes` are given:
    threads read, processes decode and resize, so decoding is not bound by the GIL (in threads it
    stalls near 1,100 images/s on a 16-core host, whatever the thread count). Default (None): on
    CUDA, cpus - 2 processes (at least 1); on the CPU, 0 (threads: the model needs the cores).
    JPEG corpora on a GPU go through nvJPEG (~7-9k images/s on an H100 with ViT-B-32, see
    bench/results).
    """
    st: dict[str, float] = stats if stats is not None else {}
    for k in _PHASES:
        st.setdefault(k, 0.0)
    use_nvjpeg, num_workers, processes = _decode_plan(items, embedder, chunk_size, read_bytes, gpu_decode,
                                                      num_workers, decode_bytes, decode_processes)

    ids: list[str] = items["image_id"].to_list()
    uris: list[str] = items["uri"].to_list()
    store = ChunkStore(chunk_dir, ChunkLayout(total=len(ids), chunk_size=chunk_size))
    store.write_meta({**embedder.info(), "shard": shard, "chunk_size": chunk_size, "rows": len(ids)})
    frames, pending = store.plan(ids, embedder.model_id, embedder.topk if embedder.has_head else 0)
    tracker = _Progress(progress, total=len(ids), reused=sum(f.height for f in frames.values()))
    if frames:
        tracker.report(tracker.written)
    if pending:
        pool = None
        if processes:
            assert decode_bytes is not None
            pool = DecodePool(DecodeSpec(decode_bytes, embedder.resize_size, embedder.image_size), processes)
        try:
            producer = BatchProducer(embedder, uris, store.layout, pending, read_image,
                                     read_bytes if use_nvjpeg or pool is not None else None, num_workers,
                                     prefetch_batches, st, nvjpeg=use_nvjpeg, decode_pool=pool)
            _embed_pending(producer, embedder, ids, shard, store, tracker, frames, st)
        finally:
            if pool is not None:
                pool.close()
    return _assemble(frames, store.layout.n_chunks)


def _decode_plan(items: pl.DataFrame, embedder: Embedder, chunk_size: int, read_bytes: Callable | None,
                 gpu_decode: str, num_workers: int | None, decode_bytes: Callable | None = None,
                 decode_processes: int | None = None) -> tuple[bool, int, int]:
    """Validate the arguments; (whether JPEGs go to nvJPEG, number of reader threads, number of
    decode processes, 0 for decoding in the reader threads)."""
    if not {"image_id", "uri"} <= set(items.columns):
        raise ValueError(f"items needs columns image_id, uri; got {items.columns}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if gpu_decode not in ("auto", "on", "off"):
        raise ValueError("gpu_decode must be 'auto', 'on' or 'off'")
    use_nvjpeg = embedder.device.startswith("cuda") and read_bytes is not None and gpu_decode in ("auto", "on")
    if gpu_decode == "on" and not use_nvjpeg:
        raise ValueError("gpu_decode='on' needs a CUDA embedder and a read_bytes callable")
    on_cuda = embedder.device.startswith("cuda")
    if decode_processes is None:
        decode_processes = max(1, (os.cpu_count() or 1) - 2) if on_cuda and decode_bytes and read_bytes else 0
    if decode_processes < 0:
        raise ValueError(f"decode_processes must be >= 0, got {decode_processes}")
    if decode_processes and (decode_bytes is None or read_bytes is None):
        raise ValueError("decode_processes > 0 needs decode_bytes and read_bytes callables")
    if num_workers is None:
        remote = items.height > 0 and storage.is_s3(str(items["uri"][0]))
        # Local reads feeding nvJPEG are cheap and Python-bound (more threads only fight over the
        # GIL); PIL decoding scales a little with threads; S3 reads are latency-bound; with decode
        # processes, one reader thread per process (each waits on its group) keeps them all busy.
        local = decode_processes + 2 if decode_processes else (2 if use_nvjpeg else min(8, os.cpu_count() or 1))
        num_workers = max(32, local) if remote else local
    return use_nvjpeg, num_workers, decode_processes


class _Progress:
    """Calls `callback(rows, total)`: `seen` counts rows embedded or failed so far (after every
    batch), `written` rows in chunks on storage (after every written chunk); both start at the rows
    of the chunks reused from an earlier run."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int, reused: int):
        self.callback = callback
        self.total = total
        self.written = reused
        self.seen = reused

    def report(self, rows: int) -> None:
        if self.callback is not None:
            self.callback(rows, self.total)

    def batch_done(self, rows: int) -> None:
        self.seen += rows
        self.report(min(self.seen, self.total))

    def chunk_written(self, rows: int) -> None:
        self.written += rows
        self.report(self.written)


@dataclass
class _ChunkRows:
    """What the model produced so far for the rows of one chunk."""

    rows: np.ndarray  # float32 [n, dim]
    ok: np.ndarray  # bool [n]: embedded
    errors: dict[int, str]  # position -> error of an image that could not be read or decoded
    topk: TopK | None = None  # ImageNet top-k of the embedded rows (models with a head)

    @staticmethod
    def empty(n: int, embedder: Embedder) -> _ChunkRows:
        out = _ChunkRows(np.zeros((n, embedder.dim), dtype=np.float32), np.zeros(n, dtype=bool), {})
        if embedder.has_head and embedder.class_names is not None:
            out.topk = TopK(np.zeros((n, embedder.topk), dtype=np.int64),
                            np.zeros((n, embedder.topk), dtype=np.float32), embedder.class_names)
        return out

    def put(self, positions: list[int], res: Embedded) -> None:
        """Record the embedder's output for the rows at `positions`."""
        self.rows[positions] = res.embeddings
        self.ok[positions] = True
        if self.topk is not None and res.topk_idx is not None and res.topk_prob is not None:
            self.topk.idx[positions] = res.topk_idx
            self.topk.prob[positions] = res.topk_prob


def _embed_pending(producer: BatchProducer, embedder: Embedder, ids: list[str], shard: str, store: ChunkStore,
                   tracker: _Progress, frames: dict[int, pl.DataFrame], st: dict[str, float]) -> None:
    """Run the model on every batch of `producer`, adding each completed chunk to `frames` and to
    the store; returns once every chunk is written."""
    layout = store.layout
    writer = ChunkWriter(store)

    def written(c: int) -> None:
        tracker.chunk_written(layout.length(c))

    producer.start()
    try:
        acc: dict[int, _ChunkRows] = {}
        while True:
            t_wait = time.perf_counter()
            b = producer.get()
            st["wait_s"] += time.perf_counter() - t_wait
            if b is None:
                break
            if b.chunk not in acc:
                acc[b.chunk] = _ChunkRows.empty(layout.length(b.chunk), embedder)
            t_model = time.perf_counter()
            _run_model(embedder, b, acc[b.chunk])
            st["model_s"] += time.perf_counter() - t_model
            # after every batch, so long chunks still report steadily
            tracker.batch_done(len(b.host_positions or ()) + len(b.dev_positions or ()) + len(b.errors))
            c, last = b.chunk, b.last_in_chunk
            del b  # release the batch's pixels before building the chunk
            if last:
                t_frame = time.perf_counter()
                frames[c] = _finish_chunk(c, acc.pop(c), ids, shard, embedder.model_id, store, writer)
                st["frame_s"] += time.perf_counter() - t_frame
            writer.collect(block=False, on_written=written)
        writer.collect(block=True, on_written=written)
    finally:
        producer.stop()
        writer.close()  # chunks already handed over are completed (atomic) even on failure
        producer.join(timeout=60)


def _run_model(embedder: Embedder, b: Batch, out: _ChunkRows) -> None:
    """Embed the rows of batch `b` into `out` (CPU-decoded rows, then GPU-decoded ones once their
    decode event has fired) and record its errors."""
    out.errors.update(b.errors)
    if b.host_positions:
        out.put(b.host_positions, embedder.embed_pixels_topk(b.host, channels_last=True))
    if b.dev_positions:
        import torch

        current = torch.cuda.current_stream(torch.device(embedder.device))
        current.wait_event(b.event)
        b.dev.record_stream(current)
        out.put(b.dev_positions, embedder.embed_pixels_topk(b.dev))


def _finish_chunk(c: int, rows: _ChunkRows, ids: list[str], shard: str, model_id: str, store: ChunkStore,
                  writer: ChunkWriter) -> pl.DataFrame:
    """The output rows of chunk `c`, handed to `writer`."""
    df = chunk_frame(ids[store.layout.rows(c)], shard, model_id, rows.rows, rows.ok, rows.errors, rows.topk)
    writer.submit(c, df)
    return df


def _assemble(frames: dict[int, pl.DataFrame], n_chunks: int) -> pl.DataFrame:
    """All chunks in order; an empty frame of the output schema when there are none (e.g. no image
    of the shard passed the quality filter)."""
    if not frames:
        return pl.DataFrame(schema=EMBED_OUTPUT_SCHEMA)
    return pl.concat([frames[c] for c in range(n_chunks)], how="vertical")
