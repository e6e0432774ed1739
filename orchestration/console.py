"""What `curate run` prints: a console a person reads.

- Dagster's own event stream goes through `short_console_logger` (given to every CLI run as the
  job's `console` logger): one short line per record, `HH:MM:SS LEVEL step: message`, at INFO
  (the assets' progress and warnings, failures with their error), DEBUG (every Dagster event) only
  with `--verbose`. It writes through `tqdm.write`, so an interactive progress bar stays below it.
- `stage_lines(result)`: after each run, one line per materialised stage of each shard, from the
  run's materialisation events (asset key, partition, metadata `dagster/row_count`, `elapsed_s`
  and the stage's counts such as `kept`, `duplicates`): rows, time, rate, counts.
- `Heartbeat`: while a run that logs nothing is in flight (semantic pass, corpus summary), a line
  every `every_s` seconds saying what runs and for how long, so no phase is silent.
- `summary_line`: the final totals.

Every line is printed once, to stdout, flushed (the console is piped in `make demo`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable

import dagster as dg

#: integer metadata shown after rows/time/rate on a stage line, in this order, when the stage has it
COUNT_KEYS = ("decoded", "errors", "embedded", "failed", "kept", "rejected", "clusters", "duplicates",
              "cross_shard_duplicates", "unknown", "shards", "listed")


def emit(line: str) -> None:
    """Print one line without breaking an active tqdm bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class ShortFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL step: message` (+ the error of a failure event) from a Dagster log record."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        msg = meta.get("orig_message") or record.getMessage()
        event = meta.get("dagster_event")
        if event is not None:
            error = getattr(getattr(event, "event_specific_data", None), "error", None)
            if error is not None:
                msg = f"{event.event_type_value}: {msg}\n{error.to_string().rstrip()}"
        where = meta.get("step_key") or meta.get("job_name") or "dagster"
        return f"{when} {record.levelname:<7} {where}: {msg}"


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            emit(self.format(record))
        except Exception:  # a console write must never fail a run
            self.handleError(record)


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO",
                                         description="INFO, or DEBUG for every Dagster event")},
    description="Short one-line console records for `curate run` (DEBUG with --verbose).",
)
def short_console_logger(init_context) -> logging.Logger:
    level = logging.getLevelName(str(init_context.logger_config["log_level"]).upper())
    logger = logging.Logger("curate", level=level)  # no parent: nothing propagates to the root logger
    handler = _TqdmHandler(level)
    handler.setFormatter(ShortFormatter())
    logger.addHandler(handler)
    return logger


def with_short_console(job: dg.JobDefinition) -> dg.JobDefinition:
    """`job` logging through `short_console_logger` (its only logger) instead of Dagster's default."""
    return job.with_logger_defs({"console": short_console_logger})


def logger_config(verbose: bool) -> dict:
    """The run-config section that sets the console logger's level."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}


def _value(v):
    return getattr(v, "value", v)


def stage_line(stage: str, partition: str | None, metadata: dict) -> str:
    """One line for one materialised stage: `<shard> <stage> <rows> rows <time> s <rate> img/s counts`."""
    rows = _value(metadata.get("dagster/row_count"))
    elapsed = _value(metadata.get("elapsed_s"))
    parts = [f"{partition or 'corpus':<14} {stage:<24}"]
    parts.append(f"{rows:>7} rows" if isinstance(rows, int) else " " * 12)
    if isinstance(elapsed, (int, float)):
        parts.append(f"{elapsed:7.1f} s")
        if isinstance(rows, int) and rows and elapsed >= 0.5:  # a rate over a blink means nothing
            parts.append(f"{rows / elapsed:7.1f} img/s")
    counts = [f"{k}={_value(metadata[k])}" for k in COUNT_KEYS
              if k in metadata and isinstance(_value(metadata[k]), int)]
    if counts:
        parts.append(" ".join(counts))
    return "  ".join(parts).rstrip()


def stage_lines(result) -> list[str]:
    """One `stage_line` per asset materialisation of an `execute_in_process` result, in event order."""
    lines = []
    for ev in result.get_asset_materialization_events():
        mat = ev.event_specific_data.materialization
        lines.append(stage_line(mat.asset_key.to_user_string(), mat.partition, dict(mat.metadata)))
    return lines


def print_stage_lines(result) -> None:
    for line in stage_lines(result):
        emit(line)


class Heartbeat:
    """Context manager: prints `<label>: running, N s` every `every_s` seconds until it exits."""

    def __init__(self, label: str, every_s: float = 15.0):
        self.label, self.every_s = label, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every_s):
            emit(f"{self.label}: running, {time.monotonic() - t0:.0f} s")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def summary_line(shards: int, ran: int, failed: Iterable[str], seconds: float) -> str:
    failed = list(failed)
    return (f"curate: {ran} of {shards} shard(s) materialised in {seconds:.0f} s; "
            f"failed: {', '.join(failed) if failed else 'none'}")
