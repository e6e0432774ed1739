"""A supervised pool of worker processes for per-item work that may hang or crash (decoders).

`SupervisedPool(n, task, args, failure, settings).run(todo, may_dispatch)` yields `(idx, result)`
for every `(idx, item)` of a `TodoQueue`, in completion order, where `result = task(item, *args)`
ran in a worker process. It never loses an item and never lets one item sink the run:

  * Start-up: each worker reports "ready"; one that does not within `startup_timeout_s` fails the
    run (RuntimeError), as do `max_startup_failures` workers in a row dying before ready.
  * Per-item deadline: the parent knows which item each worker is on and since when; an item that
    takes longer than `task_timeout_s` gets `failure(TIMEOUT, message)`, its worker is killed
    (SIGKILL) and replaced, and the rest of that worker's queued items are re-queued.
  * Crash detection: a worker that dies (segfault, OOM kill) turns the item it was on into
    `failure(WORKER_CRASHED, message)`; its other queued items are re-queued on a fresh worker.
  * An exception escaping `task` becomes `failure(INTERNAL_ERROR, "<Type>: <text>")`.
  * `finish` (optional, module-level): `finish([(idx, result), ...], *args)` runs in the worker on
    each chunk's results before they are sent, so that per-chunk batch work (stage 1's perceptual
    hashes) runs in the workers rather than in the parent, which would otherwise bound the pool at
    high worker counts. The worker then sends ("at", idx) as it starts each item after a chunk's
    first (the parent's per-item deadline and crash blame stay per item) and the chunk's results in
    one message; items it finished but had not yet sent when it died or timed out go back to the
    queue (their results died with it), the item it was on gets the failure. An exception in
    `finish` fails every item of that chunk with INTERNAL_ERROR.
  * Each worker is fed through its own pipe with chunks of `chunk_size` items, at most
    `queued_chunks` (default two) chunks queued per worker, and only items whose index passes
    `may_dispatch` (the caller's reorder window), so memory stays bounded whatever the number of
    items.
  * Workers start with `start_method` ("forkserver" by default, never plain fork; "spawn" where
    forkserver is unavailable), take the parent's current environment, ignore SIGINT (the parent
    decides when they stop) and preload `preload` modules in the forkserver (each worker imports
    them too before it reports ready: a no-op after the forkserver's, the warm-up under spawn).
`task`, `args` and `failure` must be picklable (module-level functions). `run_inprocess` is the
same contract in the calling process (deadline by SIGALRM on the main thread only; the `preload`
modules imported before the first item).
Like every multiprocessing user, a script using this must guard its entry point with
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.connection as mpc
import os
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation import errors

Failure = Callable[[str, str], Any]  # (error code, message) -> the result recorded for an item


@dataclass(frozen=True)
class PoolSettings:
    """task_timeout_s: wall-clock bound per item; timeout_setting: the user-facing name of that
    setting, quoted in TIMEOUT messages; name: worker process name and error-message prefix;
    item: what an item is, in WORKER_CRASHED messages."""

    task_timeout_s: float
    chunk_size: int = 4
    queued_chunks: int = 2  # chunks a worker may hold: its buffer while the parent builds a batch
    start_method: str = "forkserver"
    timeout_setting: str = "task_timeout_s"
    name: str = "pool"
    item: str = "item"
    preload: tuple[str, ...] = ()
    startup_timeout_s: float = 120.0
    max_startup_failures: int = 3

    def __post_init__(self) -> None:
        if self.task_timeout_s <= 0:
            raise ValueError(f"{self.timeout_setting} must be positive, got {self.task_timeout_s}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.queued_chunks <= 0:
            raise ValueError(f"queued_chunks must be positive, got {self.queued_chunks}")


class TodoQueue:
    """Items still to dispatch: re-queued items first, then `items` from a cursor. Only a slice
    of `_SLICE` items is materialised as Python objects at a time, so a huge series does not
    become millions of Python tuples. A null item is dispatched as ""."""

    _SLICE = 4096

    def __init__(self, items: pl.Series):
        self.uris = items
        self.n = len(items)
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


def import_preload(names: Sequence[str]) -> None:
    """Import the `PoolSettings.preload` modules (ImportError ignored, as the forkserver does)."""
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


# ------------------------------------------------------------------------------ in-process


class _Timeout(BaseException):
    """Raised by SIGALRM in in-process mode; a BaseException so per-item handlers let it pass."""


def _raise_timeout(signum: int, frame: Any) -> None:
    raise _Timeout()


def run_inprocess(todo: TodoQueue, task: Callable[..., Any], args: Sequence[Any], failure: Failure,
                  settings: PoolSettings) -> Iterator[tuple[int, Any]]:
    """Yield (idx, result) for every item of `todo`, in order, in this process. The deadline is
    enforced with `signal.setitimer` on the main thread only (elsewhere there is none)."""
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    timeout = settings.task_timeout_s
    if todo:
        import_preload(settings.preload)  # warm-ups outside the first item's deadline, as a worker's
    while todo:
        idx, item = todo.popleft()
        if not use_alarm:
            yield idx, task(item, *args)
            continue
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                result = task(item, *args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:  # also when the alarm fired just after the task returned
            result = failure(errors.TIMEOUT, f"exceeded {settings.timeout_setting}={timeout:g} s (in-process)")
        finally:
            signal.signal(signal.SIGALRM, previous)
        yield idx, result


# ------------------------------------------------------------------------------ processes


Finish = Callable[..., list[tuple[int, Any]]]  # ([(idx, result)], *args) -> [(idx, result)], same order


def _worker_main(conn: mpc.Connection, task: Callable[..., Any], args: Sequence[Any], failure: Failure,
                 env: dict[str, str] | None = None, preload: Sequence[str] = (),
                 finish: Finish | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    if env is not None:
        # A forkserver keeps the environment it started with; take the parent's current one, so
        # storage settings (AWS_ENDPOINT_URL, credentials) always match the step's.
        os.environ.clear()
        os.environ.update(env)
    import_preload(preload)  # already imported by a forkserver; under spawn, before the first item's deadline
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        done: list[tuple[int, Any]] = []
        for j, (idx, item) in enumerate(msg):
            if finish is not None and j:
                conn.send(("at", idx))  # the parent's deadline and crash blame move to this item
            try:
                result = task(item, *args)
            except Exception as exc:  # noqa: BLE001 - the task should not raise; never lose an item
                result = failure(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            if finish is None:
                conn.send(("done", idx, result))
            else:
                done.append((idx, result))
        if finish is not None:
            try:
                out = finish(done, *args)
                if [i for i, _ in out] != [i for i, _ in done]:
                    raise RuntimeError("finish must return the chunk's rows in order")
            except Exception as exc:  # noqa: BLE001 - never lose an item
                out = [(i, failure(errors.INTERNAL_ERROR, f"finishing the chunk: {type(exc).__name__}: {exc}"))
                       for i, _ in done]
            conn.send(("chunk", out))


@dataclass
class _Worker:
    proc: Any
    conn: mpc.Connection
    spawned_at: float
    ready: bool = False
    pending: deque = field(default_factory=deque)  # (idx, item) in the order the worker runs them
    started_at: float | None = None  # when the worker began pending[held]
    held: int = 0  # items at the front of pending that the worker finished but holds (finish mode)


def exit_description(proc: Any) -> str:
    """'exit status N', 'killed by SIGKILL', ... for a finished multiprocessing process."""
    code = proc.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class SupervisedPool:
    """Worker processes with per-worker queues, per-item deadlines and crash recovery."""

    def __init__(self, n: int, task: Callable[..., Any], args: Sequence[Any], failure: Failure,
                 settings: PoolSettings, finish: Finish | None = None):
        self.task, self.args, self.failure, self.settings = task, tuple(args), failure, settings
        self.finish = finish
        method = settings.start_method
        if method not in multiprocessing.get_all_start_methods():
            method = "spawn"
        self.ctx: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            self.ctx.set_forkserver_preload(list(settings.preload))
        self.workers: list[_Worker] = []
        self._failed: list[tuple[int, Any]] = []
        self.startup_failures = 0
        self.selector = selectors.DefaultSelector()
        for _ in range(n):
            self.workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main,
                                args=(child, self.task, self.args, self.failure, dict(os.environ),
                                      self.settings.preload, self.finish),
                                name=f"{self.settings.name}-worker", daemon=True)
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
            if self.startup_failures >= self.settings.max_startup_failures:
                raise RuntimeError(f"{self.settings.name} worker processes fail to start ({exit_description(w.proc)})")
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

    def run(self, todo: TodoQueue, may_dispatch: Callable[[int], bool]) -> Iterator[tuple[int, Any]]:
        """Yield (idx, result) for every (idx, item) in `todo`, in completion order."""
        cfg = self.settings
        outstanding = len(todo)
        while outstanding:
            now = time.monotonic()
            # 1. dispatch: up to two chunks per ready worker, inside the reorder window
            for w in self.workers:
                if not w.ready:
                    continue
                while (len(w.pending) <= (cfg.queued_chunks - 1) * cfg.chunk_size and todo
                       and may_dispatch(todo.peek_idx())):
                    chunk: list[tuple[int, str]] = []
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
                    timeout = min(timeout, w.started_at + cfg.task_timeout_s - now)
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
                for result in self._handle(w, msg):
                    outstanding -= 1
                    yield result
            for w in dead:
                # drain what it sent before dying: those files were analysed
                with contextlib.suppress(EOFError, OSError):
                    while w.conn.poll():
                        for result in self._handle(w, w.conn.recv()):
                            outstanding -= 1
                            yield result
                outstanding -= self._fail_current(w, todo, errors.WORKER_CRASHED,
                                                  f"worker process died ({{}}) while analysing this {cfg.item}")
                yield from self._drain_failed()
            # 4. deadlines
            now = time.monotonic()
            for w in list(self.workers):
                if w.pending and w.started_at is not None and now - w.started_at > cfg.task_timeout_s:
                    outstanding -= self._fail_current(
                        w, todo, errors.TIMEOUT,
                        f"exceeded {cfg.timeout_setting}={cfg.task_timeout_s:g} s; worker killed ({{}})")
                    yield from self._drain_failed()
                elif not w.ready and now - w.spawned_at > cfg.startup_timeout_s:
                    raise RuntimeError(f"{cfg.name} worker did not start within {cfg.startup_timeout_s:.0f} s")

    def _handle(self, w: _Worker, msg: tuple) -> list[tuple[int, Any]]:
        """Book one worker message; returns the (idx, result) of the items it finished."""
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self.startup_failures = 0
            if w.pending:
                w.started_at = time.monotonic()
            return []
        if kind == "at":  # finish mode: the worker holds one more finished item and starts msg[1]
            w.held += 1
            if w.held >= len(w.pending) or w.pending[w.held][0] != msg[1]:
                raise RuntimeError(f"worker started row {msg[1]} out of order")
            w.started_at = time.monotonic()
            return []
        answered = [(msg[1], msg[2])] if kind == "done" else list(msg[1])
        out = []
        for idx, result in answered:
            expected = w.pending.popleft()
            if expected[0] != idx:  # protocol invariant; never silently mislabel a row
                raise RuntimeError(f"worker answered row {idx}, expected {expected[0]}")
            out.append((idx, result))
        w.held = 0
        w.started_at = time.monotonic() if w.pending else None
        return out

    def _fail_current(self, w: _Worker, todo: TodoQueue, code: str, template: str) -> int:
        """Kill/replace `w`; its current item gets `code`, the rest go back to the queue front."""
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        self._failed = []
        items = list(w.pending)
        held, w.held = (min(w.held, len(items) - 1) if items else 0), 0
        if items and w.ready:
            idx, _uri = items.pop(held)  # the item it was on; those it held finished go back with the rest
            self._failed.append((idx, self.failure(code, template.format(exit_description(w.proc)))))
        todo.requeue(items)
        w.pending.clear()
        self._replace(w)
        return len(self._failed)

    def _drain_failed(self) -> Iterator[tuple[int, Any]]:
        failed, self._failed = self._failed, []
        yield from failed
