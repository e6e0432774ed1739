"""raw_inventory for one shard: read + decode + measure + hash every manifest row, in parallel.

`iter_inventory(manifest, shard, root, cfg)` yields polars DataFrames conforming exactly to
`curation.schema.INVENTORY_SCHEMA`, ONE ROW PER MANIFEST ROW (never fewer), in manifest order,
in batches of `batch_size` rows.

Execution model
  * `workers=1`: everything runs in the calling process (no subprocess). The per-file time bound
    is enforced with `signal.setitimer` when called from the main thread (elsewhere there is no
    bound in this mode; the pixel limit still bounds memory and, roughly, time).
  * `workers>1` (default: the CPUs this process may use): a supervised pool of worker processes
    (`curation.workpool.SupervisedPool`; `cfg.start_method`, default "forkserver" — never plain
    fork), each fed through its own pipe
    with chunks of `cfg.chunk_size` files, at most two chunks queued per worker. Each worker reads
    the file (`curation.reader.read_source`), hashes its bytes (sha256) and decodes/measures it
    (`curation.imaging.decode_and_measure`), then computes the perceptual hashes of its chunk
    together (`hash_chunk`, the pool's `finish` step) with the vectorised `imaging.hash_batch`:
    pHash and dHash (what dedup reads), plus aHash and wHash when `cfg.extra_hashes` (else those
    two columns are null), and the 256-bit pHash (`imaging.phash256_batch`, column ``phash256``:
    dedup's verification of candidate pairs), and sends the chunk's results (measurements and
    hashes; the 64 x 64 hash image stays in the worker). The parent only reorders and builds
    batches (~0.1 CPU ms a file), so it does not bound the pool at 16 workers, as it did when it
    hashed every file itself (~0.25 ms). With `workers=1` the hashes are computed per output batch.
  * Warm-up: `curation.imaging.warm` (numba and the compiled content kernels) and scipy's DCT (the
    workers' hashes; ~0.07 CPU-s a worker otherwise) are imported once by the forkserver (the
    workers it forks inherit them), by each spawn worker before it reports ready, or by the
    calling process with `workers=1`, before any file's time bound starts.
  * Time bound: the parent knows which file each worker is on and since when; a file that takes
    longer than `cfg.decode_timeout_s` gets a TIMEOUT row, its worker is killed (SIGKILL) and
    replaced, and the rest of that worker's queued files are re-queued.
  * Crash isolation: a worker that dies (segfaulting decoder, OOM kill) turns the file it was on
    into a WORKER_CRASHED row; its other queued files are re-queued on a fresh worker.
  * Like every multiprocessing user, a script that calls this with workers > 1 must guard its
    entry point with `if __name__ == "__main__":` (workers re-import the main module).
  * Constant memory: files are dispatched only within a window of
    `2 * batch_size + workers * queued_chunks * chunk_size` rows (queued_chunks: 2) past the last
    emitted row, so the reorder buffer and the in-flight work are bounded whatever the shard size; the decoded pixels never
    leave the worker, and `cfg.max_pixels` bounds a worker's decode memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import polars as pl

from curation import errors
from curation.imaging import (
    BACKGROUND,
    DEFAULT_ANALYSIS_SIZE,
    DETAIL_COLUMN,
    EXTRA_HASHES,
    HASH_COLUMNS,
    KEPT_HASHES,
    MAX_BYTES,
    MAX_PIXELS,
    MEASURE_COLUMNS,
    AnalysisConfig,
    decode_and_measure,
    hash_batch,
    phash256_batch,
)
from curation.reader import InputError, read_source
from curation.schema import INVENTORY_SCHEMA, MANIFEST_SCHEMA, conform
from curation.workpool import PoolSettings, SupervisedPool, TodoQueue, run_inprocess

_TodoQueue = TodoQueue  # the name tests and older callers use

Task = Callable[[str, str, "InventoryConfig"], dict[str, Any]]

_FILE_COLUMNS = ("bytes", "mtime", "sha256")


@dataclass(frozen=True)
class InventoryConfig:
    """Limits and analysis settings of the inventory stage.

    max_pixels: declared width*height above which a file is a DECOMPRESSION_BOMB without being
        decoded (default `curation.imaging.limits.MAX_PIXELS`, 256 Mi pixels, the limit of every
        stage; the memory it allows a worker is documented there).
    max_bytes: files larger than this are TOO_LARGE_FILE without being read (default
        `curation.imaging.limits.MAX_BYTES`, 256 MiB).
    decode_timeout_s: wall-clock bound per file (read + decode + measure) -> TIMEOUT.
    analysis_size / background: see `curation.imaging.analyse` (128 x 128 grey analysis image, white).
    chunk_size: files per message to a worker (two chunks are queued per worker).
    start_method: multiprocessing start method for workers ("forkserver" or "spawn").
    extra_hashes: also compute aHash and wHash (default off: nothing downstream reads them and
        wHash is most of the hashing time; their columns stay in the schema, null when off).
    """

    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    decode_timeout_s: float = 30.0
    analysis_size: int = DEFAULT_ANALYSIS_SIZE
    background: tuple[int, int, int] = BACKGROUND
    chunk_size: int = 4
    start_method: str = "forkserver"
    extra_hashes: bool = False

    def __post_init__(self) -> None:
        if self.decode_timeout_s <= 0:
            raise ValueError("decode_timeout_s must be positive")
        if self.max_bytes <= 0 or self.chunk_size <= 0:
            raise ValueError("max_bytes and chunk_size must be positive")
        self.analysis  # validates analysis_size / max_pixels  # noqa: B018

    @property
    def analysis(self) -> AnalysisConfig:
        return AnalysisConfig(max_pixels=self.max_pixels, analysis_size=self.analysis_size,
                              background=cast("tuple[int, int, int]", tuple(self.background)))

    @property
    def hash_columns(self) -> tuple[str, ...]:
        """The hash columns this configuration computes (the others stay null)."""
        return (*KEPT_HASHES, *EXTRA_HASHES) if self.extra_hashes else KEPT_HASHES

    @property
    def pool(self) -> PoolSettings:
        return PoolSettings(task_timeout_s=self.decode_timeout_s, chunk_size=self.chunk_size,
                            start_method=self.start_method, timeout_setting="decode_timeout_s",
                            name="inventory", item="file",
                            preload=("curation.inventory", "curation.imaging.warm", "scipy.fftpack"))


# ------------------------------------------------------------------------------ per file


def error_result(code: str, message: str) -> dict[str, Any]:
    """A per-file result for a file that produced no measurements."""
    out: dict[str, Any] = {c: None for c in (*_FILE_COLUMNS, *MEASURE_COLUMNS)}
    out["error_code"] = code
    out["error_message"] = message
    out["hash_input"] = None
    return out


def process_file(uri: str, root: str, cfg: InventoryConfig) -> dict[str, Any]:
    """Read, checksum, decode and measure one file. Never raises (for Exception subclasses)."""
    try:
        data, mtime = read_source(uri, root, max_bytes=cfg.max_bytes)
    except InputError as exc:
        return error_result(exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - a bug or an unexpected I/O failure
        return error_result(errors.READ_ERROR, f"{type(exc).__name__}: {exc}")
    out: dict[str, Any] = {"bytes": len(data), "mtime": mtime, "sha256": hashlib.sha256(data).hexdigest()}
    out.update(decode_and_measure(data, cfg.analysis))
    return out


def _hashes_of(inputs: np.ndarray, hash_columns: tuple[str, ...]) -> tuple[dict[str, list[int]], list[bytes]]:
    computed = hash_batch(inputs, hash_columns)
    packed = phash256_batch(inputs)
    return {k: computed[k].tolist() for k in hash_columns}, [row.tobytes() for row in packed]


def hash_chunk(done: list[tuple[int, dict[str, Any]]], root: str, cfg: InventoryConfig) -> list[tuple[int, dict[str, Any]]]:
    """The pool's `finish` step, in the worker: the perceptual hashes of a chunk's decoded files
    in one vectorised pass; each result's `hash_input` is replaced by `hashes` (column -> int)
    and the 256-bit pHash bytes."""
    ok = [r for _, r in done if r.get("hash_input") is not None]
    if ok:
        values, detail = _hashes_of(np.stack([r["hash_input"] for r in ok]), cfg.hash_columns)
        for j, r in enumerate(ok):
            r["hashes"] = {k: v[j] for k, v in values.items()}
            r[DETAIL_COLUMN] = detail[j]
    for _, r in done:
        r.pop("hash_input", None)
    return done


# ------------------------------------------------------------------------------ batches


def _build_batch(manifest: pl.DataFrame, start: int, results: list[dict[str, Any]], shard: str,
                 hash_columns: tuple[str, ...] = KEPT_HASHES) -> pl.DataFrame:
    n = len(results)
    ids = manifest.slice(start, n)
    cols: dict[str, Any] = {
        "image_id": ids["image_id"].to_list(),
        "uri": ids["uri"].to_list(),
        "rel_path": ids["rel_path"].to_list(),
        "shard": [shard] * n,
    }
    for c in (*_FILE_COLUMNS, *MEASURE_COLUMNS):
        cols[c] = [r.get(c) for r in results]
    hashes: dict[str, list[int | None]] = {k: [None] * n for k in HASH_COLUMNS}
    detail: list[bytes | None] = [None] * n
    for i, r in enumerate(results):  # hashed in the worker (`hash_chunk`)
        if "hashes" in r:
            for k, v in r["hashes"].items():
                hashes[k][i] = v
            detail[i] = r[DETAIL_COLUMN]
    ok = [i for i, r in enumerate(results) if r.get("hash_input") is not None]
    if ok:  # in-process rows: one vectorised pass per output batch
        values, packed = _hashes_of(np.stack([results[i]["hash_input"] for i in ok]), hash_columns)
        for k, vals in values.items():
            column = hashes[k]
            for j, i in enumerate(ok):
                column[i] = vals[j]
        for j, i in enumerate(ok):
            detail[i] = packed[j]
    cols.update(hashes)
    cols[DETAIL_COLUMN] = detail
    df = pl.DataFrame(cols, schema=INVENTORY_SCHEMA, strict=False)
    return conform(df, INVENTORY_SCHEMA)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def iter_inventory(
    manifest: pl.DataFrame,
    shard: str,
    root: str,
    cfg: InventoryConfig = InventoryConfig(),
    workers: int | None = None,
    batch_size: int = 512,
    *,
    progress: Callable[[int], None] | None = None,
    task: Task | None = None,
) -> Iterator[pl.DataFrame]:
    """Yield INVENTORY_SCHEMA batches for `manifest` (MANIFEST_SCHEMA columns), one row per
    manifest row, in manifest order.

    workers: processes to use (None: every CPU this process may run on; 1: in-process).
    progress: called with the number of rows done so far after each emitted batch.
    task: the per-file function (default `process_file`); must be a picklable module-level
        function with the same signature. Exists so tests can inject a crashing decoder.
    """
    missing = [c for c in ("image_id", "uri", "rel_path") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; expected {list(MANIFEST_SCHEMA)}")
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    n = manifest.height
    if n == 0:
        return
    task = task or process_file
    workers = default_workers() if workers is None else int(workers)
    workers = max(1, min(workers, n))
    todo = TodoQueue(manifest["uri"])

    window = 2 * batch_size + workers * cfg.pool.queued_chunks * cfg.chunk_size
    done: dict[int, dict[str, Any]] = {}
    emitted = 0

    def may_dispatch(idx: int) -> bool:
        return idx < emitted + window

    pool: SupervisedPool | None = None
    try:
        if workers == 1:
            source: Iterator[tuple[int, dict[str, Any]]] = run_inprocess(todo, task, (root, cfg), error_result, cfg.pool)
        else:
            pool = SupervisedPool(workers, task, (root, cfg), error_result, cfg.pool, finish=hash_chunk)
            source = pool.run(todo, may_dispatch)
        contiguous = 0  # rows [emitted, contiguous) are all done
        for idx, result in source:
            done[idx] = result
            while contiguous in done:
                contiguous += 1
            while contiguous - emitted >= batch_size or (contiguous == n and emitted < n):
                size = min(batch_size, contiguous - emitted)
                batch = [done.pop(i) for i in range(emitted, emitted + size)]
                df = _build_batch(manifest, emitted, batch, shard, cfg.hash_columns)
                emitted += size
                if progress is not None:
                    progress(emitted)
                yield df
        if emitted != n:  # defensive: the pool must have answered every row
            raise RuntimeError(f"inventory produced {emitted} of {n} rows for shard {shard}")
    finally:
        if pool is not None:
            pool.close()
