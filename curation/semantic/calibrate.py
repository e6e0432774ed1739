"""Per-model calibration of the semantic pass's cosine threshold on labelled pairs.

Cosine similarities are not comparable across embedding models (an ImageNet CNN and a CLIP tower
put unrelated look-alikes at different cosines), so the threshold is chosen per ``model_id`` from
labelled pairs instead of one constant:

* `calibrate_threshold(sim, same, min_precision)`: the lowest threshold t on the given pairs at
  which the pairs with cosine >= t are true duplicates with precision >= `min_precision` (and at
  every higher threshold that still links a pair), with the recall and counts it reaches.
* `CALIBRATED_THRESHOLDS`: the thresholds measured so far (model_id -> cosine; see
  bench/semantic_calibration.py for the labelled pairs and the figures), used by
  `SemanticDedupConfig.for_model` when the config keeps its default threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CALIBRATED_THRESHOLDS", "Calibration", "calibrate_threshold"]

# model_id -> cosine threshold reaching precision >= 0.9 on the accuracy bench's labelled pairs
CALIBRATED_THRESHOLDS: dict[str, float] = {
    # bench/results/semantic_calibration.json: threshold for pair precision 0.9 on half 0 of the
    # labelled subset, 0.968 (half 1 on its own: 0.968; held out at 0.968: precision 0.899)
    "timm:tf_efficientnet_lite0:efficientnet-lite0-57934424": 0.968,
}


@dataclass(frozen=True)
class Calibration:
    threshold: float
    precision: float
    recall: float
    linked: int  # pairs at or above the threshold
    positives: int  # true duplicate pairs given


def calibrate_threshold(sim: np.ndarray, same: np.ndarray, min_precision: float = 0.9) -> Calibration:
    """Lowest threshold whose linked pairs (cosine >= t) reach `min_precision` together (a cut
    never splits equal cosines). sim: cosine per labelled pair; same: True for true duplicate pairs. Raises
    ValueError when no threshold reaches it (a model that cannot tell these pairs apart)."""
    sim = np.asarray(sim, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if sim.shape != same.shape or sim.ndim != 1 or len(sim) == 0:
        raise ValueError("sim and same must be non-empty 1-d arrays of equal length")
    if not 0.0 < min_precision <= 1.0:
        raise ValueError(f"min_precision must be in (0, 1], got {min_precision}")
    o = np.argsort(-sim, kind="stable")
    s, y = sim[o], same[o]
    tp = np.cumsum(y)
    k = np.arange(1, len(s) + 1)
    prec = tp / k
    # only cut between distinct values: position i is a valid cut when s[i] > s[i+1]
    last = np.r_[s[1:] < s[:-1], True]
    cand = np.flatnonzero((prec >= min_precision) & last)
    if len(cand) == 0:
        raise ValueError(f"no cosine threshold reaches precision {min_precision} on these pairs")
    i = cand[-1]
    pos = int(same.sum())
    return Calibration(threshold=float(s[i]), precision=float(prec[i]), recall=float(tp[i] / pos) if pos else 1.0,
                       linked=int(k[i]), positives=pos)
