"""raw_inventory for one shard: read + decode + measure + hash every manifest row, in parallel.

`iter_inventory(manifest, shard, root, cfg)` yields polars DataFrames conforming exactly to
`curation.schema.INVENTORY_SCHEMA`, ONE ROW PER MANIFEST ROW (never fewer), in manifest order,
in batches of `batch_size` rows.

Execution model
  * `workers=1`: everything runs in the calling process (no subprocess). The per-file time bound
    is enforced with `signal.setitimer` when called from the main thread (elsewhere there is no
    bound in this mode; the pixel limit still bounds memory and, roughly, time).
  * `workers>1` (default: the CPUs this process may use): a small pool of worker processes
    (`cfg.start_method`, default "forkserver" — never plain fork), each fed through its own pipe
    with chunks of `cfg.chunk_size` files, at most two chunks queued per worker. Each worker reads
    the file (`curation.reader.read_source`), hashes its bytes (sha256) and decodes/measures it
    (`curation.imaging.decode_and_measure`), sending one small result per file (measurements plus
    the 4 KiB 64 x 64 hash image). The parent computes the four perceptual hashes per output batch
    with the vectorised `imaging.hash_batch`.
  * Time bound: the parent knows which file each worker is on and since when; a file that takes
    longer than `cfg.decode_timeout_s` gets a TIMEOUT row, its worker is killed (SIGKILL) and
    replaced, and the rest of that worker's queued files are re-queued.
  * Crash isolation: a worker that dies (segfaulting decoder, OOM kill) turns the file it was on
    into a WORKER_CRASHED row; its other queued files are re-queued on a fresh worker.
  * Like every multiprocessing user, a script that calls this with workers > 1 must guard its
    entry point with `if __name__ == "__main__":` (workers re-import the main module).
  * Constant memory: files are dispatched only within a window of
    `2 * batch_size + workers * 2 * chunk_size` rows past the last emitted row, so the reorder
    buffer and the in-flight work are bounded whatever the shard size; the decoded pixels never
    leave the worker, and `cfg.max_pixels` bounds a worker's decode memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import multiprocessing.connection as mpc
import os
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curation import errors
from curation.imaging import (
    DEFAULT_ANALYSIS_SIZE,
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    HASH_COLUMNS,
    MEASURE_COLUMNS,
    AnalysisConfig,
    decode_and_measure,
    hash_batch,
)
from curation.reader import InputError, read_source
from curation.schema import INVENTORY_SCHEMA, MANIFEST_SCHEMA, conform

Task = Callable[[str, str, "InventoryConfig"], dict[str, Any]]

_FILE_COLUMNS = ("bytes", "mtime", "sha256")
_STARTUP_TIMEOUT_S = 120.0
_MAX_STARTUP_FAILURES = 3


@dataclass(frozen=True)
class InventoryConfig:
    """Limits and analysis settings of the inventory stage.

    max_pixels: declared width*height above which a file is a DECOMPRESSION_BOMB without being
        decoded. 150 M pixels (e.g. 12,000 x 12,500): above Pillow's own 89.5 M warning level,
        which real, legitimate files (large openclipart renders, panoramas) exceed, while bounding
        a worker's decode memory to about 600 MB (RGBA) per worker.
    max_bytes: files larger than this are TOO_LARGE_FILE without being read (default 256 MiB).
    decode_timeout_s: wall-clock bound per file (read + decode + measure) -> TIMEOUT.
    analysis_size / background: see `curation.imaging` (256 x 256 grey analysis image, white).
    chunk_size: files per message to a worker (two chunks are queued per worker).
    start_method: multiprocessing start method for workers ("forkserver" or "spawn").
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 256 * 1024 * 1024
    decode_timeout_s: float = 30.0
    analysis_size: int = DEFAULT_ANALYSIS_SIZE
    background: tuple[int, int, int] = DEFAULT_BACKGROUND
    chunk_size: int = 4
    start_method: str = "forkserver"

    def __post_init__(self) -> None:
        if self.decode_timeout_s <= 0:
            raise ValueError("decode_timeout_s must be positive")
        if self.max_bytes <= 0 or self.chunk_size <= 0:
            raise ValueError("max_bytes and chunk_size must be positive")
        self.analysis  # validates analysis_size / max_pixels  # noqa: B018

    @property
    def analysis(self) -> AnalysisConfig:
        return AnalysisConfig(max_pixels=self.max_pixels, analysis_size=self.analysis_size,
                              background=tuple(self.background))


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


# ------------------------------------------------------------------------------ in-process


class _Timeout(BaseException):
    """Raised by SIGALRM in in-process mode; a BaseException so per-image handlers let it pass."""


def _iter_inprocess(todo: _TodoQueue, root: str, cfg: InventoryConfig,
                    task: Task) -> Iterator[tuple[int, dict[str, Any]]]:
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    while todo:
        idx, uri = todo.popleft()
        if not use_alarm:
            yield idx, task(uri, root, cfg)
            continue
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, cfg.decode_timeout_s)
                result = task(uri, root, cfg)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:  # also when the alarm fired just after the task returned
            result = error_result(errors.TIMEOUT, f"exceeded decode_timeout_s={cfg.decode_timeout_s:g} s (in-process)")
        finally:
            signal.signal(signal.SIGALRM, previous)
        yield idx, result


def _raise_timeout(signum: int, frame: Any) -> None:
    raise _Timeout()


# ------------------------------------------------------------------------------ process pool


def _worker_main(conn: mpc.Connection, root: str, cfg: InventoryConfig, task: Task,
                 env: dict[str, str] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    if env is not None:
        # A forkserver keeps the environment it started with; take the parent's current one, so
        # storage settings (AWS_ENDPOINT_URL, credentials) always match the step's.
        os.environ.clear()
        os.environ.update(env)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        for idx, uri in msg:
            try:
                result = task(uri, root, cfg)
            except Exception as exc:  # noqa: BLE001 - the task should not raise; never lose a row
                result = error_result(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            conn.send(("done", idx, result))


@dataclass
class _Worker:
    proc: Any
    conn: mpc.Connection
    spawned_at: float
    ready: bool = False
    pending: deque = field(default_factory=deque)  # (idx, uri) in the order the worker runs them
    started_at: float | None = None  # when the worker began pending[0]


def _exit_description(proc: Any) -> str:
    code = proc.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _TodoQueue:
    """Rows still to dispatch: re-queued rows first, then the manifest from a cursor. Only a
    slice of `_SLICE` uris is materialised as Python objects at a time, so a huge manifest does
    not become millions of Python tuples."""

    _SLICE = 4096

    def __init__(self, uris: pl.Series):
        self.uris = uris
        self.n = len(uris)
        self.cursor = 0
        self.front: deque[tuple[int, str]] = deque()
        self._buf: list[str | None] = []
        self._buf_start = 0

    def __len__(self) -> int:
        return len(self.front) + self.n - self.cursor

    def __bool__(self) -> bool:
        return bool(self.front) or self.cursor < self.n

    def peek_idx(self) -> int:
        return self.front[0][0] if self.front else self.cursor

    def popleft(self) -> tuple[int, str]:
        if self.front:
            return self.front.popleft()
        i = self.cursor
        if not self._buf_start <= i < self._buf_start + len(self._buf):
            self._buf = self.uris.slice(i, self._SLICE).to_list()
            self._buf_start = i
        self.cursor += 1
        uri = self._buf[i - self._buf_start]
        return i, uri if uri is not None else ""

    def requeue(self, items: list[tuple[int, str]]) -> None:
        """Put `items` back at the front, in their order."""
        self.front.extendleft(reversed(items))


class _Pool:
    """Worker processes with per-worker queues, per-file deadlines and crash recovery."""

    def __init__(self, n: int, root: str, cfg: InventoryConfig, task: Task):
        self.root, self.cfg, self.task = root, cfg, task
        method = cfg.start_method
        if method not in multiprocessing.get_all_start_methods():
            method = "spawn"
        self.ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            self.ctx.set_forkserver_preload(["curation.inventory"])
        self.workers: list[_Worker] = []
        self._failed: list[tuple[int, dict[str, Any]]] = []
        self.startup_failures = 0
        self.selector = selectors.DefaultSelector()
        for _ in range(n):
            self.workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(child, self.root, self.cfg, self.task, dict(os.environ)),
                                name="inventory-worker", daemon=True)
        proc.start()
        child.close()
        w = _Worker(proc=proc, conn=parent, spawned_at=time.monotonic())
        self.selector.register(parent, selectors.EVENT_READ, (w, "conn"))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, (w, "sentinel"))
        return w

    def _unregister(self, w: _Worker) -> None:
        for obj in (w.conn, w.proc.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):  # OSError: handle already closed
                self.selector.unregister(obj)

    def _replace(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        self._unregister(w)
        w.conn.close()
        if not w.ready:
            self.startup_failures += 1
            if self.startup_failures >= _MAX_STARTUP_FAILURES:
                raise RuntimeError(f"inventory worker processes fail to start ({_exit_description(w.proc)})")
        self.workers[self.workers.index(w)] = self._spawn()

    def close(self) -> None:
        for w in self.workers:
            if w.pending:  # stopped early (consumer closed the generator, or an error): no waiting
                w.proc.kill()
                continue
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            self._unregister(w)
            w.conn.close()
        self.selector.close()

    def run(self, todo: _TodoQueue, may_dispatch: Callable[[int], bool]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (idx, result) for every (idx, uri) in `todo`, in completion order."""
        cfg = self.cfg
        outstanding = len(todo)
        while outstanding:
            now = time.monotonic()
            # 1. dispatch: up to two chunks per ready worker, inside the reorder window
            for w in self.workers:
                if not w.ready:
                    continue
                while len(w.pending) <= cfg.chunk_size and todo and may_dispatch(todo.peek_idx()):
                    chunk = []
                    while todo and len(chunk) < cfg.chunk_size and may_dispatch(todo.peek_idx()):
                        chunk.append(todo.popleft())
                    if not w.pending:
                        w.started_at = now
                    w.pending.extend(chunk)
                    try:
                        w.conn.send(chunk)
                    except (OSError, ValueError):
                        break  # dead worker: detected below through its sentinel
            # 2. wait for results, deaths or the nearest deadline (one persistent selector: a
            #    fresh one per wake-up, as multiprocessing.connection.wait builds, costs more than
            #    the bookkeeping of a result)
            timeout = 1.0
            for w in self.workers:
                if w.pending and w.started_at is not None:
                    timeout = min(timeout, w.started_at + cfg.decode_timeout_s - now)
            events = self.selector.select(max(0.0, timeout))
            # 3. collect: one message per readable worker per pass (the selector is level-triggered)
            dead: list[_Worker] = []
            for key, _mask in events:
                w, kind = key.data
                if w not in self.workers or w in dead:
                    continue  # replaced during this pass
                if kind == "sentinel":
                    dead.append(w)
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    dead.append(w)
                    continue
                result = self._handle(w, msg)
                if result is not None:
                    outstanding -= 1
                    yield result
            for w in dead:
                # drain what it sent before dying: those files were analysed
                with contextlib.suppress(EOFError, OSError):
                    while w.conn.poll():
                        result = self._handle(w, w.conn.recv())
                        if result is not None:
                            outstanding -= 1
                            yield result
                outstanding -= self._fail_current(w, todo, errors.WORKER_CRASHED,
                                                  "worker process died ({}) while analysing this file")
                yield from self._drain_failed()
            # 4. deadlines
            now = time.monotonic()
            for w in list(self.workers):
                if w.pending and w.started_at is not None and now - w.started_at > cfg.decode_timeout_s:
                    outstanding -= self._fail_current(
                        w, todo, errors.TIMEOUT,
                        f"exceeded decode_timeout_s={cfg.decode_timeout_s:g} s; worker killed ({{}})")
                    yield from self._drain_failed()
                elif not w.ready and now - w.spawned_at > _STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"inventory worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    def _handle(self, w: _Worker, msg: tuple) -> tuple[int, dict[str, Any]] | None:
        """Book one worker message; returns (idx, result) for a finished file."""
        if msg[0] == "ready":
            w.ready = True
            self.startup_failures = 0
            if w.pending:
                w.started_at = time.monotonic()
            return None
        _, idx, result = msg
        expected = w.pending.popleft()
        if expected[0] != idx:  # protocol invariant; never silently mislabel a row
            raise RuntimeError(f"worker answered row {idx}, expected {expected[0]}")
        w.started_at = time.monotonic() if w.pending else None
        return idx, result

    def _fail_current(self, w: _Worker, todo: _TodoQueue, code: str, template: str) -> int:
        """Kill/replace `w`; its current file gets `code`, the rest go back to the queue front."""
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        self._failed = []
        if w.pending and w.ready:
            idx, _uri = w.pending.popleft()
            self._failed.append((idx, error_result(code, template.format(_exit_description(w.proc)))))
        todo.requeue(list(w.pending))
        w.pending.clear()
        self._replace(w)
        return len(self._failed)

    def _drain_failed(self) -> Iterator[tuple[int, dict[str, Any]]]:
        failed, self._failed = self._failed, []
        yield from failed


# ------------------------------------------------------------------------------ batches


def _build_batch(manifest: pl.DataFrame, start: int, results: list[dict[str, Any]], shard: str) -> pl.DataFrame:
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
    ok = [i for i, r in enumerate(results) if r.get("hash_input") is not None]
    hashes: dict[str, list[int | None]] = {k: [None] * n for k in HASH_COLUMNS}
    if ok:
        computed = hash_batch(np.stack([results[i]["hash_input"] for i in ok]))
        for k in HASH_COLUMNS:
            values = computed[k].tolist()
            column = hashes[k]
            for j, i in enumerate(ok):
                column[i] = values[j]
    cols.update(hashes)
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
    todo = _TodoQueue(manifest["uri"])

    window = 2 * batch_size + workers * 2 * cfg.chunk_size
    done: dict[int, dict[str, Any]] = {}
    emitted = 0

    def may_dispatch(idx: int) -> bool:
        return idx < emitted + window

    pool: _Pool | None = None
    try:
        if workers == 1:
            source: Iterator[tuple[int, dict[str, Any]]] = _iter_inprocess(todo, root, cfg, task)
        else:
            pool = _Pool(workers, root, cfg, task)
            source = pool.run(todo, may_dispatch)
        contiguous = 0  # rows [emitted, contiguous) are all done
        for idx, result in source:
            done[idx] = result
            while contiguous in done:
                contiguous += 1
            while contiguous - emitted >= batch_size or (contiguous == n and emitted < n):
                size = min(batch_size, contiguous - emitted)
                batch = [done.pop(i) for i in range(emitted, emitted + size)]
                df = _build_batch(manifest, emitted, batch, shard)
                emitted += size
                if progress is not None:
                    progress(emitted)
                yield df
        if emitted != n:  # defensive: the pool must have answered every row
            raise RuntimeError(f"inventory produced {emitted} of {n} rows for shard {shard}")
    finally:
        if pool is not None:
            pool.close()
