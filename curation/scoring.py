"""Model-head scores of a shard's embedded images, and the reasons they add to the curation decision.

`score_shard(embeddings, heads)` gives one row per row of `image_embeddings` (same order): `image_id`,
one Float32 column `score_<name>` per head (null where the image has no embedding), `reasons` (the
head reasons the image fails, e.g. `low_aesthetic`, `nsfw`; empty when it passes every head) and
`reject_details` (`"<reason>: score_<name>=<value> <rule>"`, one per reason). With no heads the frame
has only `image_id`, `reasons` and `reject_details`, with empty lists.

`apply_head_reasons(curated, scores)` returns the curated table with those reasons applied: a kept
image that fails a head is no longer kept and carries the head's reasons; every other row is
unchanged. The export and the report use it, so a head reason is "like any other check".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from curation.heads import Head


def _rule(head: Head) -> str:
    s = head.spec
    parts = ([f"< {s.reject_below:g}"] if s.reject_below is not None else []) + \
            ([f"> {s.reject_above:g}"] if s.reject_above is not None else [])
    return " or ".join(parts)


def score_shard(embeddings: pl.DataFrame, heads: Sequence[Head]) -> pl.DataFrame:
    """Scores and head reasons of every row of a shard's `image_embeddings` (see the module doc)."""
    ids = embeddings["image_id"].to_list()
    n = len(ids)
    reasons: list[list[str]] = [[] for _ in range(n)]
    details: list[list[str]] = [[] for _ in range(n)]
    columns: dict[str, pl.Series] = {"image_id": pl.Series(ids, dtype=pl.String)}
    present = embeddings["embedding"].is_not_null().to_numpy() if n else np.zeros(0, bool)
    rows = np.flatnonzero(present)
    mat = (np.asarray(embeddings["embedding"].filter(pl.Series(present)).to_list(), dtype=np.float32)
           if len(rows) else None)
    for head in heads:
        col = np.full(n, np.nan, dtype=np.float32)
        if mat is not None:
            scores = head.score(mat)
            col[rows] = scores
            if head.spec.reason:
                for r, s, bad in zip(rows, scores, head.reasons(scores)):
                    if bad:
                        reasons[r].append(head.spec.reason)
                        details[r].append(f"{head.spec.reason}: {head.spec.column}={float(s):.4g} {_rule(head)}")
        columns[head.spec.column] = pl.Series(col, dtype=pl.Float32).fill_nan(None)
    columns["reasons"] = pl.Series(reasons, dtype=pl.List(pl.String))
    columns["reject_details"] = pl.Series(details, dtype=pl.List(pl.String))
    return pl.DataFrame(columns)


def score_columns(scores: pl.DataFrame) -> list[str]:
    return [c for c in scores.columns if c.startswith("score_")]


def apply_head_reasons(curated: pl.DataFrame, scores: pl.DataFrame | None) -> pl.DataFrame:
    """`curated` with the head reasons of `scores` applied (kept images failing a head are rejected)."""
    if scores is None or not len(scores):
        return curated
    failing = scores.filter(pl.col("reasons").list.len() > 0).select("image_id", pl.col("reasons").alias("_head"))
    if not len(failing):
        return curated
    df = curated.join(failing, on="image_id", how="left", maintain_order="left")
    hit = pl.col("keep") & pl.col("_head").is_not_null()
    return df.with_columns(
        pl.when(hit).then(pl.col("reasons").list.concat(pl.col("_head"))).otherwise(pl.col("reasons")).alias("reasons"),
        pl.when(hit).then(False).otherwise(pl.col("keep")).alias("keep"),
    ).drop("_head")
