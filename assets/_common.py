"""Small helpers shared by the asset modules (progress logging, metadata builders)."""

from __future__ import annotations

import time

import dagster as dg
import polars as pl

from partitions.shards import parse_shard_key


class Progress:
    """Logs 'done/total, rate, ETA' to the Dagster event log at a steady rate (every `every_s`)."""

    def __init__(self, context: dg.AssetExecutionContext, what: str, total: int, every_s: float = 15.0):
        self.context, self.what, self.total, self.every_s = context, what, total, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if now - self.last >= self.every_s or done >= self.total:
            self.last = now
            rate = done / max(1e-9, now - self.start)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.context.log.info(f"{self.what}: {done}/{self.total} images, {rate:.1f} img/s, ETA {eta:.0f} s")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def shard_source(shard: str) -> str:
    return parse_shard_key(shard)[0]


def frame_md(df: pl.DataFrame, n: int = 50) -> dg.MetadataValue:
    """A polars frame as a Markdown table (first `n` rows) for the Dagster UI."""
    if not len(df):
        return dg.MetadataValue.md("_empty_")
    head = df.head(n)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in head.iter_rows()]
    if len(df) > n:
        lines.append(f"\n_{len(df) - n} more rows_")
    return dg.MetadataValue.md("\n".join(lines))


def counts_md(counts: dict[str, int], header: tuple[str, str] = ("reason", "images")) -> dg.MetadataValue:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    return dg.MetadataValue.md("\n".join(lines))


def make_config(cls, overrides: dict | None):
    """Instantiate a library config dataclass with overrides, failing clearly on unknown keys."""
    import dataclasses

    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise dg.Failure(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(known)}", allow_retries=False)
    return dataclasses.replace(cls(), **overrides)


RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
OWNERS = ["team:data-curation"]
