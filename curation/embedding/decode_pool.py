"""CPU decoding for the embedding stage in worker processes instead of threads.

On a GPU host the model is fast and the CPU decodes the rows nvJPEG does not take (PNG graphics,
WebP, GIF, EXIF-rotated JPEGs). In threads that decoding does not scale with cores: PIL releases the
GIL inside the codec, but the mode conversions, compositing and the bicubic resize of
`to_model_array` hold it for much of each image (about 1,100 images/s on the H100 machine's 16
cores, whatever the thread count; `bench/results/embeddings-nvidia-h100.json`). `DecodePool` runs
`decode_rows` in processes instead: the reader threads read the bytes (local files or s3://, as
before) and hand groups of rows to the pool; each worker decodes, composites and resizes to the
model's input and sends back the uint8 [S, S, 3] arrays.

* Results are the same arrays as the thread path (`Embedder.pil_to_array` is `to_model_array`).
* A row that fails to decode becomes an ``err`` row with its `curation.errors` code, as in threads.
* A worker that dies (segfault, OOM kill) breaks the pool: the pool is rebuilt once per breakage,
  and the rows of the broken group are decoded again one per task, up to `ATTEMPTS` times each (a
  row can break only because another thread's poison row took the pool down with it), so a poison
  image fails only itself (``worker_crashed: ...``) and its neighbours are embedded.
* Workers start with forkserver (never plain fork: the parent may hold a CUDA context) and import
  only PIL, numpy and `curation.imaging` (no torch).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curation import errors
from curation.embedding.errors import format_image_error

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

Loaded = tuple[str, Any]  # ('hwc', uint8 array) | ('jpeg', bytes) | ('err', message)
ATTEMPTS = 3  # single-row tries before a row that keeps breaking the pool is recorded as worker_crashed

__all__ = ["DecodePool", "DecodeSpec", "decode_rows", "to_model_array"]


def to_model_array(img: Image.Image, resize_size: int, image_size: int) -> np.ndarray:
    """RGB (alpha composited on white, or on black for a cut-out that white swallows:
    `convert.composite_visible`), shortest side -> resize_size (bicubic), centre crop image_size ->
    uint8 array [S, S, 3]. Pure PIL/numpy (no torch ops): safe to call from threads and worker
    processes."""
    from PIL import Image

    from curation.imaging.convert import composite_visible, to_8bit

    if img.mode != "RGB":
        img, _ = composite_visible(to_8bit(img))
        if img.mode != "RGB":
            img = img.convert("RGB")
    w, h = img.size
    scale = resize_size / min(w, h)
    nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True)
class DecodeSpec:
    """What a worker needs: `decode` (bytes -> PIL image; a module-level function, picklable, e.g.
    `curation.imaging.policy.decode_rgb`) and the model's input geometry."""

    decode: Callable[[bytes], Image.Image]
    resize_size: int
    image_size: int


def decode_rows(spec: DecodeSpec, rows: Sequence[tuple[str, bytes]]) -> list[Loaded]:
    """(uri, bytes) rows -> ('hwc', array) or ('err', message) per row, in order. Never raises for a
    bad image (the message starts with the image's error code, and names the uri)."""
    from curation.imaging.policy import DecodeError

    out: list[Loaded] = []
    for uri, data in rows:
        try:
            out.append(("hwc", to_model_array(spec.decode(data), spec.resize_size, spec.image_size)))
        except DecodeError as exc:
            out.append(("err", format_image_error(DecodeError(exc.code, f"{uri}: {exc.message}"))))
        except Exception as exc:  # noqa: BLE001 - recorded per image
            out.append(("err", format_image_error(exc)))
    return out


def _crashed(uri: str, why: str) -> Loaded:
    return "err", f"{errors.WORKER_CRASHED}: the decoding process died on {uri} ({why})"


class DecodePool:
    """`processes` forkserver workers running `decode_rows(spec, rows)`; `decode(rows)` is called
    from many reader threads at once (see the module docstring)."""

    def __init__(self, spec: DecodeSpec, processes: int, start_method: str = "forkserver"):
        if processes < 1:
            raise ValueError(f"decode processes must be >= 1, got {processes}")
        methods = multiprocessing.get_all_start_methods()
        self._ctx = multiprocessing.get_context(start_method if start_method in methods else "spawn")
        self.spec, self.processes = spec, processes
        self._lock = threading.Lock()
        self._generation = 0
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.processes, mp_context=self._ctx)

    def _restart(self, generation: int) -> None:
        """Rebuild the pool once per breakage, however many threads saw it break."""
        with self._lock:
            if self._generation == generation:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                self._generation += 1

    def _submit(self, rows: Sequence[tuple[str, bytes]]) -> tuple[int, cf.Future]:
        for _ in range(10):
            with self._lock:
                generation, pool = self._generation, self._pool
            try:
                return generation, pool.submit(decode_rows, self.spec, list(rows))
            except (BrokenProcessPool, RuntimeError):  # broken, or shut down by another thread's restart
                self._restart(generation)
        raise RuntimeError(f"the embedding stage's {self.processes} decode processes could not be started")

    def decode(self, rows: Sequence[tuple[str, bytes]]) -> list[Loaded]:
        """The decoded rows, in order; a worker's death costs only the row it died on."""
        if not rows:
            return []
        generation, fut = self._submit(rows)
        try:
            return fut.result()
        except BrokenProcessPool:
            self._restart(generation)
        out: list[Loaded] = []
        for row in rows:  # isolate the poison row: one row per task
            out.append(self._decode_alone(row))
        return out

    def _decode_alone(self, row: tuple[str, bytes]) -> Loaded:
        why = ""
        for _ in range(ATTEMPTS):
            generation, fut = self._submit([row])
            try:
                return fut.result()[0]
            except BrokenProcessPool as exc:
                self._restart(generation)
                why = str(exc) or "worker process ended abruptly"
        return _crashed(row[0], why)

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)
