"""Small helpers shared by the asset modules (progress logging, metadata builders)."""

from __future__ import annotations

import time
import warnings

import dagster as dg
import polars as pl

from curation import storage
from partitions.shards import parse_shard_key

# `backfill_policy` on assets is a beta parameter in dagster 1.13; the behaviour used here (multi-run
# backfills of dynamic partitions) is covered by tests/integration/test_backfill.py.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)


class Progress:
    """Logs 'done/total, rate, ETA' to the Dagster event log at a steady rate (every `every_s`)."""

    def __init__(self, context: dg.AssetExecutionContext, what: str, total: int, every_s: float = 15.0):
        self.context, self.what, self.total, self.every_s = context, what, total, every_s
        self.start = self.last = time.monotonic()
        self.done = self.logged = 0
        context.log.info(f"{what}: starting, {total} images")

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if done != self.logged and (now - self.last >= self.every_s or done >= self.total):  # each count once
            self.last, self.logged = now, done
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


def counts_md(counts: dict[str, int], header: tuple[str, str] = ("reason", "images"),
              bar_width: int = 24) -> dg.MetadataValue:
    """Counts as a Markdown table with a text bar per row (a bar chart that Dagster's Markdown always
    renders). Keep it short: the UI shows Markdown inline only below 1,000 characters."""
    if not counts:
        return dg.MetadataValue.md(f"_no {header[1]}_")
    top = max(max(counts.values()), 1)
    bar = lambda v: "█" * max(1, round(bar_width * v / top)) if v else ""  # noqa: E731
    lines = [f"| {header[0]} | {header[1]} | |", "|---|---:|---|"]
    lines += [f"| {k} | {v} | {bar(v)} |" for k, v in counts.items()]
    return dg.MetadataValue.md("\n".join(lines))


def _mark_partition_failed(context, asset_key: dg.AssetKey, partition: str, description: str) -> None:
    """Record in the instance that `asset_key[partition]` must be recomputed, on storages that cannot
    wipe a single partition (Dagster OSS's SQLite and Postgres event logs raise NotImplementedError).

    The event log gets, in this run, a planned materialisation of that partition (and a failed
    materialisation event, which storages that keep them store; OSS ones drop it). This run then fails
    (the caller raises), and Dagster's partition status derives "failed" from exactly that: the latest
    planned materialisation of the partition has no materialisation after it and its run failed. The
    partition shows as Failed in the UI and is selected by "backfill failed and missing partitions".
    (Uses dagster._core event constructors: there is no public API for this in dagster 1.13.)"""
    from dagster._core.definitions.events import (
        AssetMaterializationFailure,
        AssetMaterializationFailureReason,
        AssetMaterializationFailureType,
    )
    from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

    job_name = context.run.job_name
    step_key = context.op_execution_context.get_step_execution_context().step.key
    planned = DagsterEvent.build_asset_materialization_planned_event(
        job_name, step_key, AssetMaterializationPlannedData(asset_key, partition=partition))
    failed = DagsterEvent.build_asset_failed_to_materialize_event(
        job_name, step_key,
        AssetMaterializationFailure(asset_key=asset_key, partition=partition, description=description,
                                    failure_type=AssetMaterializationFailureType.FAILED,
                                    reason=AssetMaterializationFailureReason.FAILED_TO_MATERIALIZE))
    for event in (planned, failed):
        context.instance.report_dagster_event(event, run_id=context.run_id)


def read_stage(context, corpus, stage: str, shard: str, columns: list[str] | None = None,
               asset: str | None = None) -> pl.DataFrame:
    """Read `<output_root>/<stage>/<shard>.parquet`, written by asset `asset` (default: `stage`).

    A file that exists but cannot be read back (truncated, bad footer: `CorruptOutputError`) is never
    used: it is deleted, the asset's materialisation of that partition is wiped from the instance
    (`wipe_asset_partitions`; where the event log storage cannot wipe one partition, as in Dagster OSS,
    the partition is recorded as failed instead, see `_mark_partition_failed`), so the partition shows
    as missing / failed and the next run of the shard or backfill of failed and missing partitions
    recomputes it. The step then fails with a `dg.Failure` naming the file. Retrying this step cannot
    help (its input is gone until the upstream partition is recomputed), so the failure does not retry."""
    uri = corpus.stage_uri(stage, shard)
    try:
        return storage.read_parquet(uri, columns=columns)
    except storage.CorruptOutputError as exc:
        asset_key = dg.AssetKey(asset or stage)
        name = f"{asset_key.to_user_string()}[{shard}]"
        storage.delete(uri)
        description = (f"corrupt intermediate file {uri} of {name} could not be read back and was deleted; "
                       f"partition {shard} of {asset_key.to_user_string()} will be recomputed by the next run "
                       "of this shard (`curate run`, or a backfill of failed and missing partitions)")
        try:
            context.instance.wipe_asset_partitions(asset_key, [shard])
            how = "wiped"
        except NotImplementedError:
            _mark_partition_failed(context, asset_key, shard, description)
            how = "marked failed"
        context.log.error(f"{description} ({name} {how} in the instance). Cause: {exc}")
        raise dg.Failure(
            description=f"{description} ({name} {how} in the instance)",
            metadata={"corrupt_file": dg.MetadataValue.path(uri), "asset": asset_key.to_user_string(),
                      "partition": shard, "instance": how},
            allow_retries=False,
        ) from exc


def make_config(cls, cfg):
    """The library config dataclass `cls` from typed settings (`resources.stages`, via
    `to_library()`) or, for compatibility, a dict of overrides. A bad value or an unknown key fails
    the step at once (never retried) with one line naming the setting."""
    import dataclasses

    if hasattr(cfg, "to_library"):
        lib = cfg.to_library()
        if not isinstance(lib, cls):
            raise TypeError(f"{type(cfg).__name__}.to_library() gives {type(lib).__name__}, not {cls.__name__}")
        return lib
    overrides = dict(cfg or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise dg.Failure(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(known)}", allow_retries=False)
    try:
        return dataclasses.replace(cls(), **overrides)
    except (TypeError, ValueError) as exc:
        raise dg.Failure(f"{cls.__name__}({overrides}): {str(exc).splitlines()[0]}", allow_retries=False) from exc


OWNERS = ["team:data-curation"]


def retry_policy(retry) -> dg.RetryPolicy | None:
    """The Dagster retry policy of a registry `Retry` (curation.stages): exponential backoff, jitter."""
    if retry.max_retries <= 0:
        return None
    return dg.RetryPolicy(max_retries=retry.max_retries, delay=retry.delay_s, backoff=dg.Backoff.EXPONENTIAL,
                          jitter=dg.Jitter.PLUS_MINUS)


def backfill_policy() -> dg.BackfillPolicy:
    """Backfills run several shards per run (Dagster's multi-run backfill policy): a 500-shard backfill
    is 500 / CURATION_BACKFILL_SHARDS_PER_RUN runs instead of 500, each loading code and models once.
    Sensor runs and single-partition launches still run one shard each."""
    from resources.environment import backfill_shards_per_run

    return dg.BackfillPolicy.multi_run(max_partitions_per_run=backfill_shards_per_run())


def __getattr__(name: str):
    if name == "BACKFILL_POLICY":  # the policy the assets were built with (read when asked, not at import)
        return backfill_policy()
    raise AttributeError(name)


def shards_of(context) -> list[str]:
    """The shards this step materialises (one, or a range from a backfill), in registration order."""
    from partitions.shards import shard_seq

    return sorted(context.partition_keys, key=shard_seq)


def per_shard_outputs(context, fn, outputs: tuple[str, ...]) -> list[dg.MaterializeResult]:
    """Run `fn(shard) -> {dataset: metadata}` for every shard of the step, in order, and return one
    `MaterializeResult` per dataset in `outputs` that some shard wrote (a dataset missing from a
    shard's dict was not written for it: skippable outputs).

    Metadata is per partition: one shard's metadata goes on its own result; in a range (a
    multi-shard backfill run) each shard's metadata is recorded for that partition only
    (`add_asset_metadata(partition_key=...)`), since Dagster attaches a result's own metadata to
    every partition of the range."""
    keys = shards_of(context)
    if len(keys) == 1:
        per = fn(keys[0])
        return [dg.MaterializeResult(asset_key=name, metadata=per[name]) for name in outputs if name in per]
    written: set[str] = set()
    for i, shard in enumerate(keys, 1):
        context.log.info(f"shard {shard} ({i}/{len(keys)})")
        per = fn(shard)
        for name, metadata in per.items():
            context.add_asset_metadata(metadata, asset_key=name, partition_key=shard)
            written.add(name)
    run_range = {"backfill_range": f"{keys[0]} .. {keys[-1]} ({len(keys)} shards in this run)"}
    return [dg.MaterializeResult(asset_key=name, metadata=run_range) for name in outputs if name in written]


def per_shard(context, fn) -> dg.MaterializeResult:
    """Run `fn(shard) -> metadata` for every shard of a single-asset step, in order, recording each
    shard's metadata on its own partition (see `per_shard_outputs`)."""
    name = context.assets_def.key.to_user_string()
    (result,) = per_shard_outputs(context, lambda shard: {name: fn(shard)}, (name,))
    return result


def check_per_shard(context, fn) -> dg.AssetCheckResult:
    """Run a check `fn(shard) -> AssetCheckResult` for every shard of the step: a range passes when
    every shard passes, and its metadata names the shards that failed."""
    keys = shards_of(context)
    results = [(k, fn(k)) for k in keys]
    if len(results) == 1:
        return results[0][1]
    failed = [k for k, r in results if not r.passed]
    return dg.AssetCheckResult(passed=not failed, metadata={"shards": len(keys), "failed_shards": ", ".join(failed) or "none"})
