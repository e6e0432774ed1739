"""Names shared by the classification modules: the `unknown` label, its reasons, a stable softmax."""

from __future__ import annotations

import numpy as np

UNKNOWN = "unknown"
LOW_CONFIDENCE = "low_confidence"  # calibrated top-1 probability below the confidence bar
OUT_OF_DISTRIBUTION = "out_of_distribution"  # embedding far from every class's examples


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
