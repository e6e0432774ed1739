"""The pool's `finish` mode (per-chunk work in the workers, as stage 1's hashes): every item answered
once, the item a worker died on blamed alone, the items it had finished but not sent re-run."""

from __future__ import annotations

import polars as pl

from curation import errors
from curation.workpool import PoolSettings, SupervisedPool, TodoQueue
from tests.hostile_corpus import failed_row, finish_marks, square


def _run(items: list[str], chunk_size: int = 4, workers: int = 2) -> dict[int, dict]:
    settings = PoolSettings(task_timeout_s=30, chunk_size=chunk_size, name="test", item="item")
    pool = SupervisedPool(workers, square, (), failed_row, settings, finish=finish_marks)
    try:
        out: dict[int, dict] = {}
        for idx, result in pool.run(TodoQueue(pl.Series(items)), lambda _i: True):
            assert idx not in out, f"item {idx} answered twice"
            out[idx] = result
    finally:
        pool.close()
    assert sorted(out) == list(range(len(items)))
    return out


def test_finish_runs_in_the_workers_on_every_item():
    out = _run([f"i{k}" for k in range(23)])
    assert all(r["finished"] and r["item"] == f"i{k}" for k, r in out.items())


def test_a_crash_mid_chunk_fails_only_that_item_and_reruns_the_finished_ones():
    items = [f"i{k}" for k in range(16)]
    items[2] = "i2-CRASH"  # third of its chunk: the worker holds two finished items when it dies
    items[11] = "i11-CRASH"
    out = _run(items)
    for k, r in out.items():
        if "CRASH" in items[k]:
            assert r["error_code"] == errors.WORKER_CRASHED, (k, r)
        else:
            assert r.get("finished") and r["item"] == items[k], (k, r)


def test_an_exception_in_finish_fails_that_chunk_with_internal_error():
    items = [f"i{k}" for k in range(12)]
    items[5] = "i5-BADCHUNK"  # chunk 1 (items 4..7) with chunk_size 4
    out = _run(items, workers=1 + 1)
    bad = {k for k, r in out.items() if r.get("error_code") == errors.INTERNAL_ERROR}
    assert bad == {4, 5, 6, 7}
    assert "finish failed" in out[5]["error_message"]
    assert all(out[k].get("finished") for k in range(12) if k not in bad)
