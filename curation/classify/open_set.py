"""Out-of-distribution scores for the few-shot probe, so images of none of the example classes are
labelled ``unknown`` instead of being forced into one.

Score (higher = farther from the examples): ``1 - cosine similarity`` of an L2-normalised embedding
to its reference, with two kinds of reference:

* ``centroid`` - the normalised mean embedding of each class; the score is the distance to the
  nearest class mean (small to store: one vector per class).
* ``knn`` (default, k=5) - the training examples themselves; the score is the mean distance to the
  `k` nearest. Stores every example (4 bytes per dimension each, e.g. 1.5 MB for 300 x 1280-d).

The threshold is calibrated on in-distribution data without a separate split: each training
example is scored leave-one-out (its own class mean without it, or its neighbours other than
itself), and the threshold is the `quantile` of those scores, so about ``1 - quantile`` of new
in-distribution images are expected above it. `OodReference` round-trips through plain JSON
(vectors as base64 little-endian float32).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("centroid", "knn")


@dataclass(frozen=True)
class OodReference:
    kind: str  # one of KINDS
    vectors: np.ndarray  # [m, d] float32, L2-normalised (class means, or training examples)
    threshold: float  # scores above this are out of distribution
    quantile: float  # in-distribution quantile the threshold was set at
    k: int = 1  # neighbours averaged (knn only)
    in_dist: dict[str, float] | None = None  # summary of the leave-one-out in-distribution scores

    def to_json(self) -> dict[str, Any]:
        v = np.ascontiguousarray(self.vectors, dtype="<f4")
        return {"kind": self.kind, "shape": list(v.shape), "vectors_b64": base64.b64encode(v.tobytes()).decode(),
                "threshold": self.threshold, "quantile": self.quantile, "k": self.k, "in_dist": self.in_dist}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OodReference:
        if d.get("kind") not in KINDS:
            raise ValueError(f"ood.kind must be one of {KINDS}, got {d.get('kind')!r}")
        v = np.frombuffer(base64.b64decode(d["vectors_b64"]), dtype="<f4").reshape(d["shape"]).astype(np.float32)
        return cls(d["kind"], v, float(d["threshold"]), float(d["quantile"]), int(d.get("k", 1)), d.get("in_dist"))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _centroids(x: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    return _unit(np.stack([x[y == c].sum(axis=0) for c in classes]))


def ood_score(ref: OodReference, emb: np.ndarray) -> np.ndarray:
    """[n] out-of-distribution scores (1 - cosine similarity) of embeddings `emb` [n, d]."""
    x = _unit(emb)
    if x.shape[1] != ref.vectors.shape[1]:
        raise ValueError(f"OOD reference expects {ref.vectors.shape[1]}-d embeddings, got {x.shape[1]}-d")
    sims = x @ ref.vectors.T.astype(np.float64)
    if ref.kind == "centroid":
        return (1.0 - sims.max(axis=1)).astype(np.float32)
    k = min(ref.k, sims.shape[1])
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, sims.shape[1] - k:]  # the k largest, any order
    return (1.0 - top.mean(axis=1)).astype(np.float32)


def leave_one_out_scores(emb: np.ndarray, labels: Sequence[str] | np.ndarray, kind: str = "centroid",
                         k: int = 1) -> np.ndarray:
    """In-distribution scores of the examples themselves, each scored without its own contribution."""
    x = _unit(emb)
    y = np.asarray(list(labels), dtype=object)
    if kind == "centroid":
        classes = sorted(set(y.tolist()))
        sums = np.stack([x[y == c].sum(axis=0) for c in classes])
        sims = x @ _unit(sums).T
        own = np.asarray([classes.index(c) for c in y])
        rest = sums[own] - x  # own class mean without the example itself
        counts = np.asarray([int((y == c).sum()) for c in classes])[own]
        own_sim = np.where(counts > 1, (x * rest).sum(axis=1) / np.maximum(np.linalg.norm(rest, axis=1), 1e-12), -1.0)
        sims[np.arange(len(x)), own] = own_sim
        return (1.0 - sims.max(axis=1)).astype(np.float32)
    if kind == "knn":
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        kk = max(1, min(k, len(x) - 1))
        top = -np.sort(-sims, axis=1)[:, :kk]
        return (1.0 - top.mean(axis=1)).astype(np.float32)
    raise ValueError(f"ood kind must be one of {KINDS}, got {kind!r}")


def fit_ood(emb: np.ndarray, labels: Sequence[str] | np.ndarray, classes: Sequence[str], kind: str = "knn",
            quantile: float = 0.99, k: int = 5) -> OodReference:
    """Reference and threshold from the labelled examples (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"ood kind must be one of {KINDS}, got {kind!r}")
    if not 0.5 <= quantile <= 1.0:
        raise ValueError(f"ood quantile must be in [0.5, 1.0], got {quantile}")
    y = np.asarray(list(labels), dtype=object)
    scores = leave_one_out_scores(emb, y, kind, k)
    vectors = _centroids(_unit(emb), y, classes) if kind == "centroid" else _unit(emb)
    summary = {"n": len(scores), "median": round(float(np.median(scores)), 5),
               "p90": round(float(np.quantile(scores, 0.9)), 5), "max": round(float(scores.max()), 5)}
    return OodReference(kind, vectors.astype(np.float32), float(np.quantile(scores, quantile)), quantile, k, summary)
