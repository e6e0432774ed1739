"""Classification of one shard of `embed_shard` output: zero-shot and open-set few-shot columns.

Output: `CLASSIFICATION_COLUMNS`, one row per embedded image (rows with a null embedding are dropped).
``zs_*`` columns are null when zero-shot is unavailable (e.g. EfficientNet-Lite0 has no text tower)
or not configured; ``fs_*`` columns are null when no probe is configured. ``fs_prob`` is the
calibrated probability of the probe's arg-max class; ``fs_label`` is ``unknown`` when the open-set
rule rejects the image, with ``fs_reason`` saying why (``out_of_distribution`` or
``low_confidence``; null for labelled rows) and ``fs_ood_score`` the distance it was judged on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from curation.classify.probe import Probe, predict_open_set
from curation.classify.zeroshot import zero_shot
from curation.schema import CLASSIFICATION_COLUMNS, Schema

CLASSIFICATION_SCHEMA: Schema = {
    "image_id": pl.String,
    "shard": pl.String,
    "zs_label": pl.String,
    "zs_prob": pl.Float32,
    "zs_topk_labels": pl.List(pl.String),
    "zs_topk_probs": pl.List(pl.Float32),
    "fs_label": pl.String,
    "fs_prob": pl.Float32,
    "fs_reason": pl.String,
    "fs_ood_score": pl.Float32,
}
assert tuple(CLASSIFICATION_SCHEMA) == CLASSIFICATION_COLUMNS


@dataclass(frozen=True)
class ZeroShotConfig:
    labels: tuple[str, ...]
    text_emb: np.ndarray  # [L, d] from text_classifier
    logit_scale: float
    k: int = 3
    min_conf: float = 0.0


def classify_shard(emb_df: pl.DataFrame, zero_shot_cfg: ZeroShotConfig | None = None,
                   probe: Probe | None = None, model: str | None = None, fs_min_conf: float = 0.0,
                   fs_open_set: bool = True) -> pl.DataFrame:
    """Classify one shard of `embed_shard` output (see the module docstring). `model` (the embeddings'
    model id) is checked against the probe's when given; `fs_min_conf` is the calibrated-confidence
    bar of the few-shot label and `fs_open_set` switches the probe's OOD rule."""
    from curation.embedding import embeddings_to_numpy

    df = emb_df.filter(pl.col("embedding").is_not_null())
    if probe is not None:
        models = df["model"].unique().to_list() if "model" in df.columns else []
        expected = model or (models[0] if len(models) == 1 else None)
        if expected is not None and expected != probe.model:
            raise ValueError(f"probe was trained on {probe.model!r} embeddings, shard has {expected!r}")
    n = df.height
    emb = embeddings_to_numpy(df) if n else np.empty((0, 0), dtype=np.float32)
    cols: dict[str, pl.Series] = {"image_id": df["image_id"], "shard": df["shard"]}
    if zero_shot_cfg is not None and n:
        r = zero_shot(emb, zero_shot_cfg.text_emb, zero_shot_cfg.logit_scale, zero_shot_cfg.labels,
                      zero_shot_cfg.k, zero_shot_cfg.min_conf)
        cols["zs_label"] = pl.Series(r.label, dtype=pl.String)
        cols["zs_prob"] = pl.Series(r.prob, dtype=pl.Float32)
        cols["zs_topk_labels"] = pl.Series(r.topk_labels, dtype=pl.List(pl.String))
        cols["zs_topk_probs"] = pl.Series(r.topk_probs.tolist(), dtype=pl.List(pl.Float32))
    if probe is not None and n:
        fs = predict_open_set(probe, emb, min_conf=fs_min_conf, use_ood=fs_open_set)
        cols["fs_label"] = pl.Series(fs.label, dtype=pl.String)
        cols["fs_prob"] = pl.Series(fs.prob, dtype=pl.Float32)
        cols["fs_reason"] = pl.Series(fs.reason, dtype=pl.String)
        if fs.ood_score is not None:
            cols["fs_ood_score"] = pl.Series(fs.ood_score, dtype=pl.Float32)
    out = pl.DataFrame(cols)
    for name, dtype in CLASSIFICATION_SCHEMA.items():
        if name not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return out.select([pl.col(k).cast(v) for k, v in CLASSIFICATION_SCHEMA.items()])
