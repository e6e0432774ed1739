"""Zero-shot labels from text prompts (open_clip models only).

Each label's text embedding is the renormalised mean of its templates' embeddings (CLIP prompt
ensembling), computed once per process and model (`text_classifier` caches in memory, and optionally
as a Parquet file under `cache_dir`). Probabilities are ``softmax(logit_scale * image_emb @ text_emb.T)``;
the top-k labels are reported and the top label is replaced by ``"unknown"`` when its probability is
below `min_conf`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from curation import storage
from curation.classify.common import UNKNOWN, softmax

if TYPE_CHECKING:  # pragma: no cover
    from curation.embedding import Embedder

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.",
                                      "a drawing of a {}.", "a photo of the {}.")


_TEXT_CACHE: dict[tuple[str, tuple[str, ...], tuple[str, ...]], np.ndarray] = {}


def text_classifier(embedder: Embedder, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                    cache_dir: str | None = None) -> np.ndarray:
    """[len(labels), dim] L2-normalised label embeddings (mean over templates, renormalised).

    Computed once per (model, labels, templates) per process; with `cache_dir` (local or s3://) also
    stored there as Parquet and reused by later runs. Raises `ZeroShotUnavailableError` for models
    without a text tower."""
    if not labels:
        raise ValueError("zero-shot needs at least one label")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every prompt template needs a '{}' placeholder")
    key = (embedder.model_id, tuple(labels), tuple(templates))
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    if not embedder.supports_text:
        embedder.embed_texts([])  # raises ZeroShotUnavailableError with the explanation
    uri = None
    if cache_dir is not None:
        import hashlib

        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:20]
        uri = storage.join(cache_dir, f"text-{digest}.parquet")
        if storage.exists(uri):
            try:
                df = storage.read_parquet(uri)
                if df["label"].to_list() == list(labels) and df["model"][0] == embedder.model_id:
                    arr = np.asarray(df["embedding"].to_list(), dtype=np.float32)
                    _TEXT_CACHE[key] = arr
                    return arr
            except storage.CorruptOutputError:
                log.warning("recomputing corrupt text-embedding cache %s", uri)
    prompts = [t.format(label) for label in labels for t in templates]
    emb = embedder.embed_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb.astype(np.float32)
    if uri is not None:
        storage.write_parquet(pl.DataFrame({
            "label": list(labels),
            "model": [embedder.model_id] * len(labels),
            "embedding": pl.Series(emb).cast(pl.List(pl.Float32)),
        }), uri)
    _TEXT_CACHE[key] = emb
    return emb


@dataclass(frozen=True)
class ZeroShotResult:
    label: list[str]  # top label, or "unknown" below min_conf
    prob: np.ndarray  # [n] probability of the top label (float32)
    topk_labels: list[list[str]]
    topk_probs: np.ndarray  # [n, k]
    probs: np.ndarray  # [n, n_labels] full distribution


def zero_shot(emb: np.ndarray, text_emb: np.ndarray, logit_scale: float, labels: Sequence[str], k: int = 3,
              min_conf: float = 0.0) -> ZeroShotResult:
    """Zero-shot labels for L2-normalised image embeddings `emb` [n, d] against label embeddings
    `text_emb` [L, d]: softmax(logit_scale * emb @ text_emb.T), top-k (k clipped to L), and the top
    label replaced by "unknown" when its probability < `min_conf`."""
    emb = np.asarray(emb, dtype=np.float32)
    text_emb = np.asarray(text_emb, dtype=np.float32)
    if text_emb.shape[0] != len(labels):
        raise ValueError(f"{text_emb.shape[0]} label embeddings for {len(labels)} labels")
    if emb.ndim != 2 or emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding dims differ: {emb.shape} vs {text_emb.shape}")
    k = max(1, min(k, len(labels)))
    probs = softmax(float(logit_scale) * (emb @ text_emb.T).astype(np.float64))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    topk_probs = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    lab = np.asarray(labels, dtype=object)
    topk_labels = [list(lab[row]) for row in order]
    top = topk_probs[:, 0] if len(emb) else np.empty(0, dtype=np.float32)
    label = [str(tl[0]) if p >= min_conf else UNKNOWN for tl, p in zip(topk_labels, top)]
    return ZeroShotResult(label, top.astype(np.float32), topk_labels, topk_probs, probs.astype(np.float32))
