"""Errors that retrying cannot fix, turned into Dagster failures that are not retried.

A model that cannot load (`curation.embedding.EmbedderLoadError`), a bad setting
(`resources.environment.SettingError`) and an unsafe path (`curation.storage.UnsafePathError`)
fail the step at once: `fail_fast()` re-raises them as `dagster.Failure(allow_retries=False)`
carrying the whole message (never truncated), so the asset's RetryPolicy keeps its retries for
transient faults (I/O hiccups, a lost GPU: `RetryableDeviceError`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg


def non_retryable() -> tuple[type[BaseException], ...]:
    """The exception types no retry can fix (imported lazily: curation.embedding is heavy to load)."""
    from curation.embedding import EmbedderLoadError
    from curation.storage import UnsafePathError

    return (EmbedderLoadError, UnsafePathError)


@contextlib.contextmanager
def fail_fast(what: str = "") -> Iterator[None]:
    """Run the block; a non-retryable error leaves it as a `dg.Failure` that is never retried.
    `dg.Failure`s (SettingError included) pass through unchanged."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        if not isinstance(exc, non_retryable()):
            raise
        message = str(exc) if not what else f"{what}: {exc}"
        raise dg.Failure(description=message, metadata={"error": type(exc).__name__, "retried": False},
                         allow_retries=False) from exc
