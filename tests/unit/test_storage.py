from __future__ import annotations

import os
import threading

import polars as pl
import pytest

from curation import storage


def test_parquet_roundtrip_is_atomic_and_truncation_is_detected(tmp_path):
    uri = str(tmp_path / "a" / "x.parquet")
    df = pl.DataFrame({"a": list(range(1000)), "b": ["x"] * 1000})
    storage.write_parquet(df, uri)
    assert storage.read_parquet(uri).equals(df)
    assert [n for n in os.listdir(tmp_path / "a")] == ["x.parquet"]  # no temp file left behind
    data = open(uri, "rb").read()
    open(uri, "wb").write(data[: len(data) // 2])
    with pytest.raises(storage.CorruptOutputError, match="recompute"):
        storage.read_parquet(uri)


def test_concurrent_writers_never_leave_a_mixed_file(tmp_path):
    uri = str(tmp_path / "x.parquet")
    frames = [pl.DataFrame({"v": [i] * 50_000}) for i in range(4)]
    threads = [threading.Thread(target=storage.write_parquet, args=(f, uri)) for f in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = storage.read_parquet(uri)
    assert got["v"].n_unique() == 1 and len(got) == 50_000


def test_paths_cannot_escape_the_root(tmp_path):
    with pytest.raises(storage.UnsafePathError):
        storage.join(str(tmp_path), "../etc", "x")
    with pytest.raises(storage.UnsafePathError):
        storage.join("s3://bucket/out", "/abs")
    with pytest.raises(storage.UnsafePathError):
        storage.ensure_under("s3://bucket/out", "s3://other/out/x")
    with pytest.raises(storage.UnsafePathError):
        storage.ensure_under("s3://bucket/out", "s3://bucket/out/../secret")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to("/etc/passwd")
    with pytest.raises(storage.UnsafePathError):
        storage.ensure_under(str(tmp_path / "in"), str(tmp_path / "in" / "link"))
    assert storage.ensure_under("s3://bucket/out", "s3://bucket/out/a/b.parquet")


def test_retries_back_off_then_name_the_object():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("An error occurred (SlowDown) when calling the PutObject operation: 503")
        return "ok"

    assert storage.with_retries(flaky, "s3://b/k", sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2

    def always():
        raise ConnectionError("Connection reset by peer")

    with pytest.raises(OSError, match="s3://b/obj.*giving up after 4 attempts"):
        storage.with_retries(always, "s3://b/obj", attempts=4, sleep=lambda s: None)

    def not_retryable():
        calls.append(1)
        raise ValueError("bad request")

    calls.clear()
    with pytest.raises(ValueError):
        storage.with_retries(not_retryable, "x", sleep=lambda s: None)
    assert len(calls) == 1
