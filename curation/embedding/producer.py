"""The batch producer of the embedding stage: reads and decodes images ahead of the model.

`BatchProducer` walks the pending chunks of a shard in order and hands the consumer `Batch`es of
at most ``embedder.batch_size`` rows (read when each batch is cut, so it follows OOM halving; the
very first batch is 1/8 of a large batch size so that the model starts while the pipeline fills).
Batches never span chunks, and the last batch of a chunk says so (`Batch.last_in_chunk`).

* Images are read in small groups by `num_workers` threads; `ordered_prefetch` keeps a window of
  groups in flight and yields them in input order, so rows come out in input order.
* Each row is decoded on the CPU in the reader thread (`read_image` + `Embedder.pil_to_array`), or,
  with a `decode_pool`, read as bytes (`read_bytes`) in the thread and decoded in the pool's worker
  processes (`curation.embedding.decode_pool`: same arrays, not bound by the GIL). With `nvjpeg`,
  rows are read as bytes and JPEGs fit for the GPU (`jpeg_ok_for_gpu`) are decoded with nvJPEG on a
  side CUDA stream when the batch is assembled; the ones nvJPEG rejects fall back to the CPU.
* A row that cannot be read or decoded becomes an error (`format_image_error`) at its position.
* CPU pixels are stacked into one array per batch (pinned host memory on CUDA).
* At most `prefetch_batches` assembled batches wait for the consumer. An exception in the producer
  thread is re-raised by `get` (CUDA failures as `RetryableDeviceError`); `stop` ends the thread.

Seconds spent are added to `stats`: ``load_wait_s`` (waiting for reads), ``assemble_s`` (assembling
batches) and ``gpu_decode_s`` (nvJPEG decode + GPU resize).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.embedding.base import Embedder
from curation.embedding.chunks import ChunkLayout
from curation.embedding.decode_pool import DecodePool, Loaded
from curation.embedding.errors import RetryableDeviceError, format_image_error, is_cuda_failure
from curation.embedding.gpu_decode import decode_on_gpu, jpeg_ok_for_gpu

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

Group = tuple[int, int, int, bool]  # (chunk, start, end, ends_batch)


@dataclass
class Batch:
    chunk: int
    positions: list[int]  # row positions within the chunk, in order
    host: Any = None  # uint8 [n,S,S,3] (pinned on CUDA): rows decoded on CPU
    host_positions: list[int] = field(default_factory=list)
    dev: Any = None  # float 0..255 [m,3,S,S] on the GPU: rows decoded by nvJPEG
    dev_positions: list[int] = field(default_factory=list)
    event: Any = None  # CUDA event recorded after `dev` was produced on the side stream
    errors: dict[int, str] = field(default_factory=dict)
    last_in_chunk: bool = False


def ordered_prefetch(pool: cf.Executor, fn: Callable[[Any], Any], items: Iterator[Any], window: int,
                     stop: threading.Event) -> Iterator[tuple[Any, Any]]:
    """Yield (item, fn(item)) in input order, keeping at most `window` calls in flight."""
    pending: collections.deque[tuple[Any, cf.Future]] = collections.deque()
    it = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((item, pool.submit(fn, item)))
            if not pending or stop.is_set():
                return
            item, fut = pending.popleft()
            yield item, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()


_END = object()


class BatchProducer:
    """Batches of the `pending` chunks of a shard whose rows are read from `uris` (see the module
    docstring). `read_bytes` is needed when JPEGs go to nvJPEG (`nvjpeg`) or rows are decoded in a
    `decode_pool`."""

    def __init__(self, embedder: Embedder, uris: list[str], layout: ChunkLayout, pending: list[int],
                 read_image: Callable[[str], Image.Image], read_bytes: Callable[[str], bytes] | None,
                 num_workers: int, prefetch_batches: int, stats: dict[str, float], *, nvjpeg: bool = False,
                 decode_pool: DecodePool | None = None):
        if (nvjpeg or decode_pool is not None) and read_bytes is None:
            raise ValueError("BatchProducer: nvjpeg and decode_pool need a read_bytes callable")
        self.embedder = embedder
        self.uris = uris
        self.layout = layout
        self.pending = pending
        self.read_image = read_image
        self.read_bytes = read_bytes
        self.nvjpeg = nvjpeg
        self.decode_pool = decode_pool
        self.num_workers = num_workers
        self.stats = stats
        self.group_size = 64 if nvjpeg else 4
        self._on_cuda = embedder.device.startswith("cuda")
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch_batches))
        self._stop = threading.Event()
        self._side_stream = None
        if nvjpeg:
            import torch

            self._side_stream = torch.cuda.Stream(device=embedder.device)
        self._thread = threading.Thread(target=self._run, name="embed-producer", daemon=True)

    # -- consumer side ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def get(self) -> Batch | None:
        """The next batch in order, None after the last; re-raises what the producer raised."""
        item = self._queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            if not isinstance(item, RetryableDeviceError) and is_cuda_failure(item):
                raise RetryableDeviceError(f"device failure on {self.embedder.device}: {item}") from item
            raise item
        return item

    def stop(self) -> None:
        """Ask the producer thread to finish (it drops what it has not handed over)."""
        self._stop.set()

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout=timeout)

    # -- producer thread --------------------------------------------------------------------------
    def _put(self, obj: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        st = self.stats
        try:
            with cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="embed-load") as pool:
                window = max(4 * self.num_workers, (2 * self.embedder.batch_size) // self.group_size)
                acc: list[tuple[int, str, Any]] = []
                t_wait = time.perf_counter()
                for (c, p0, p1, ends_batch), res in ordered_prefetch(pool, self._load_group, self._groups(),
                                                                     window, self._stop):
                    st["load_wait_s"] += time.perf_counter() - t_wait
                    acc.extend((p, kind, payload) for p, (kind, payload) in zip(range(p0, p1), res))
                    if ends_batch:
                        t_asm = time.perf_counter()
                        batch = self._assemble(c, acc)
                        st["assemble_s"] += time.perf_counter() - t_asm
                        batch.last_in_chunk = p1 == self.layout.length(c)
                        acc = []
                        if not self._put(batch):
                            return
                    t_wait = time.perf_counter()
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def _groups(self) -> Iterator[Group]:
        """(chunk, start, end, ends_batch) in order; batches never span chunks. The very first batch
        is 1/8 of a large batch size so that the model starts while the pipeline is filling."""
        first = True
        for c in self.pending:
            n = self.layout.length(c)
            b0 = 0
            while b0 < n:
                bs = self.embedder.batch_size  # read lazily: follows OOM halving
                if first and bs >= 64:
                    bs //= 8
                first = False
                b1 = min(n, b0 + bs)
                for g0 in range(b0, b1, self.group_size):
                    g1 = min(b1, g0 + self.group_size)
                    yield c, g0, g1, g1 == b1
                b0 = b1

    def _load_group(self, group: Group) -> list[Loaded]:
        c, p0, p1, _ = group
        base = self.layout.start(c)
        uris = [self.uris[base + p] for p in range(p0, p1)]
        if self.decode_pool is None:
            return [self._load_one(uri) for uri in uris]
        return self._load_group_in_pool(self.decode_pool, uris)

    def _load_group_in_pool(self, pool: DecodePool, uris: list[str]) -> list[Loaded]:
        """Read in this thread; JPEGs for nvJPEG stay bytes, the rest is decoded by `pool`."""
        assert self.read_bytes is not None
        out: list[Loaded | None] = [None] * len(uris)
        todo: list[tuple[int, str, bytes]] = []
        for i, uri in enumerate(uris):
            try:
                data = self.read_bytes(uri)
            except Exception as exc:  # noqa: BLE001 - recorded per image
                out[i] = ("err", format_image_error(exc))
                continue
            if self.nvjpeg and jpeg_ok_for_gpu(data):
                out[i] = ("jpeg", data)
            else:
                todo.append((i, uri, data))
        for (i, _, _), res in zip(todo, pool.decode([(uri, data) for _, uri, data in todo]), strict=True):
            out[i] = res
        return [r for r in out if r is not None]

    def _load_one(self, uri: str) -> Loaded:
        if self.nvjpeg and self.read_bytes is not None:
            try:
                data = self.read_bytes(uri)
                if jpeg_ok_for_gpu(data):
                    return "jpeg", data
            except Exception as exc:  # noqa: BLE001 - recorded per image
                return "err", format_image_error(exc)
        return self._load_one_cpu(uri)

    def _load_one_cpu(self, uri: str) -> Loaded:
        try:
            return "hwc", self.embedder.pil_to_array(self.read_image(uri))
        except Exception as exc:  # noqa: BLE001 - recorded per image
            return "err", format_image_error(exc)

    def _assemble(self, c: int, results: list[tuple[int, str, Any]]) -> Batch:
        batch = Batch(chunk=c, positions=[pos for pos, _, _ in results])
        host: list[np.ndarray] = []
        jpegs: list[tuple[int, bytes]] = []
        for pos, kind, payload in results:
            if kind == "hwc":
                batch.host_positions.append(pos)
                host.append(payload)
            elif kind == "jpeg":
                jpegs.append((pos, payload))
            else:
                batch.errors[pos] = payload
        if jpegs:
            self._decode_jpegs(c, batch, jpegs, host)
        if host:
            batch.host = self._stack_host(host)
        return batch

    def _decode_jpegs(self, c: int, batch: Batch, jpegs: list[tuple[int, bytes]], host: list[np.ndarray]) -> None:
        """nvJPEG-decode `jpegs` into `batch.dev`; the ones nvJPEG rejects are decoded on the CPU
        and appended to `host` (or recorded as errors)."""
        t_dec = time.perf_counter()
        dev, good, failed = decode_on_gpu(self.embedder, [d for _, d in jpegs], self._side_stream)
        self.stats["gpu_decode_s"] += time.perf_counter() - t_dec
        if good:
            batch.dev, batch.event = dev
            batch.dev_positions = [jpegs[i][0] for i in good]
        for i in failed:  # nvJPEG rejected it: decode on CPU
            pos = jpegs[i][0]
            kind, payload = self._load_one_cpu(self.uris[self.layout.start(c) + pos])
            if kind == "hwc":
                batch.host_positions.append(pos)
                host.append(payload)
            else:
                batch.errors[pos] = payload

    def _stack_host(self, host: list[np.ndarray]) -> Any:
        """One [n,S,S,3] uint8 array of the CPU-decoded rows (pinned torch memory on CUDA)."""
        if not self._on_cuda:
            return np.stack(host)
        import torch

        buf = torch.empty((len(host), *host[0].shape), dtype=torch.uint8, pin_memory=True)
        np.stack(host, out=buf.numpy())
        return buf
