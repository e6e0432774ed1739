"""Deployment settings read from the environment, read when called (never at import time).

  CURATION_BACKFILL_SHARDS_PER_RUN   shards per backfill run (multi-run backfill policy), >= 1 (default 10)
  CURATION_DEPLOYMENT                'local' (in-process executor, default) or 'k8s' (one pod per step)
"""

from __future__ import annotations

import os


def backfill_shards_per_run() -> int:
    """Shards one backfill run materialises (at least 1)."""
    raw = os.environ.get("CURATION_BACKFILL_SHARDS_PER_RUN", "10")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"CURATION_BACKFILL_SHARDS_PER_RUN={raw!r}: expected a whole number >= 1") from None


def deployment() -> str:
    """Where steps run: 'local' or 'k8s' (validated by orchestration.definitions.executor_for)."""
    return os.environ.get("CURATION_DEPLOYMENT", "local")
