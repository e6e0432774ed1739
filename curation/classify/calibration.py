"""Calibration of classifier probabilities and its measurement.

* `fit_temperature` - the temperature T minimising the negative log-likelihood of held-out labels
  under ``softmax(logits / T)`` (temperature scaling: one scalar, so the arg-max never changes).
* `nll`, `expected_calibration_error` - how well probabilities match outcomes (ECE: top-1
  confidence vs accuracy in equal-width bins, weighted by bin size).
* `per_class_report` - precision, recall and support per class; a prediction ``unknown`` counts as a
  miss for recall and as no prediction for precision.

Inputs are numpy arrays of logits [n, k] and integer targets [n] (indices into the classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curation.classify.common import softmax

T_BOUNDS = (0.01, 100.0)


def nll(logits: np.ndarray, target: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `target` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(target)), np.asarray(target)].mean())


def fit_temperature(logits: np.ndarray, target: np.ndarray) -> float:
    """Temperature in T_BOUNDS minimising `nll` on (logits, target); 1.0 for an empty set."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target)
    if len(target) == 0:
        return 1.0
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(lambda log_t: nll(logits, target, float(np.exp(log_t))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """Top-1 ECE: sum over equal-width confidence bins of |accuracy - mean confidence| * bin share."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(target)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        m = bins == b
        ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def calibration_summary(logits: np.ndarray, target: np.ndarray, temperature: float) -> dict[str, float]:
    """NLL, ECE and median top-1 probability before (T=1) and after scaling by `temperature`."""
    out: dict[str, float] = {"temperature": round(float(temperature), 5)}
    for tag, t in (("before", 1.0), ("after", temperature)):
        p = softmax(np.asarray(logits, dtype=np.float64) / t)
        out[f"nll_{tag}"] = round(nll(logits, target, t), 5)
        out[f"ece_{tag}"] = round(expected_calibration_error(p, target), 5)
        out[f"median_top1_{tag}"] = round(float(np.median(p.max(axis=1))) if len(p) else 0.0, 5)
    return out


def per_class_report(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, dict]:
    """{class: {precision, recall, support}}; precision is None for a class never predicted."""
    t = np.asarray(list(truth), dtype=object)
    p = np.asarray(list(predicted), dtype=object)
    out: dict[str, dict] = {}
    for c in classes:
        tp = int(((p == c) & (t == c)).sum())
        n_pred, n_true = int((p == c).sum()), int((t == c).sum())
        out[str(c)] = {"precision": round(tp / n_pred, 4) if n_pred else None,
                       "recall": round(tp / n_true, 4) if n_true else None, "support": n_true}
    return out
