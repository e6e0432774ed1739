"""Per-model calibration of the semantic pass's cosine threshold on labelled pairs.

Cosine similarities are not comparable across embedding models (an ImageNet CNN and a CLIP tower
put unrelated look-alikes at different cosines), so the threshold is chosen per ``model_id`` from
labelled pairs instead of one constant:

* `calibrate_threshold(sim, same, min_precision)`: the lowest threshold t on the given pairs at
  which the pairs with cosine >= t are true duplicates with precision >= `min_precision` (and at
  every higher threshold that still links a pair), with the recall and counts it reaches.
* `calibrate_two_stage(sim, diff, same, threshold, min_precision)`: the wide threshold and the
  largest crop-aware thumbnail difference (`curation.semantic.verify`) that add the most true pairs
  to the strict threshold while the linked pairs keep precision >= `min_precision`.
* `CALIBRATED_THRESHOLDS` / `CALIBRATED_VERIFY`: the rules measured so far (model_id -> cosine;
  model_id -> (wide_threshold, max_align_diff); see bench/semantic_calibration.py for the labelled
  pairs and the figures), used by `SemanticDedupConfig.for_model` when `calibrated` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CALIBRATED_THRESHOLDS", "CALIBRATED_VERIFY", "Calibration", "TwoStage", "calibrate_threshold", "calibrate_two_stage"]

# model_id -> cosine threshold reaching precision >= 0.9 on the accuracy bench's labelled pairs
CALIBRATED_THRESHOLDS: dict[str, float] = {
    # threshold for pair precision 0.9 on half 0 of the first labelled subset, 0.968 (held out:
    # precision 0.899). On bench/semantic_set.py's subset (more crops and re-framings) half 0 alone
    # would allow 0.942; 0.968 is kept: with the two-stage rule below it gives the higher held-out
    # precision of the union with the hash pass (0.945 vs 0.917, bench/results/semantic_calibration.json)
    "timm:tf_efficientnet_lite0:efficientnet-lite0-57934424": 0.968,
}

# model_id -> (wide_threshold, max_align_diff) of the two-stage rule (`curation.semantic.verify`),
# chosen on half 0 of bench/semantic_set.py's labelled pairs for the most true pairs at pair precision
# >= 0.9 (`calibrate_two_stage`, strict threshold 0.968); held out (half 1): pair precision 0.950,
# recall 0.382 (strict alone: 0.168); union with the hash pass on the kept images 0.945 / 0.621
# (hash pass alone 0.970 / 0.514), bench/results/semantic_calibration.json
CALIBRATED_VERIFY: dict[str, tuple[float | None, float]] = {
    "timm:tf_efficientnet_lite0:efficientnet-lite0-57934424": (0.85, 6.0),
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


@dataclass(frozen=True)
class TwoStage:
    """A calibrated two-stage rule (`curation.semantic.verify.verified`) and what it reaches."""

    threshold: float  # strict cosine: links on its own
    wide_threshold: float  # cosine from which a pair links when its alignment difference is small
    max_align_diff: float  # largest `align_diff` (levels) of a verified pair
    precision: float
    recall: float
    linked: int
    positives: int


def calibrate_two_stage(sim: np.ndarray, diff: np.ndarray, same: np.ndarray, threshold: float,
                        min_precision: float = 0.9, wide_grid: np.ndarray | None = None,
                        diff_grid: np.ndarray | None = None) -> TwoStage:
    """The (wide_threshold, max_align_diff) that links the most true pairs while the pairs the rule
    links (cos >= threshold, or cos >= wide_threshold and diff <= max_align_diff) keep precision >=
    `min_precision`; ties go to the higher wide threshold, then the smaller difference (the stricter
    rule). sim / diff / same: per labelled pair (diff NaN where it was not computed: strict only).
    `threshold` is the strict threshold (`calibrate_threshold`). Grids: wide thresholds 0.80..threshold
    in steps of 0.005, differences 1..40 levels in steps of 0.5."""
    from curation.semantic.verify import verified

    sim = np.asarray(sim, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    diff = np.asarray(diff, dtype=np.float64)
    if not (sim.shape == same.shape == diff.shape) or sim.ndim != 1 or len(sim) == 0:
        raise ValueError("sim, diff and same must be non-empty 1-d arrays of equal length")
    if not 0.0 < min_precision <= 1.0:
        raise ValueError(f"min_precision must be in (0, 1], got {min_precision}")
    wide_grid = np.round(np.arange(0.80, threshold, 0.005), 3) if wide_grid is None else np.asarray(wide_grid)
    diff_grid = np.arange(1.0, 40.01, 0.5) if diff_grid is None else np.asarray(diff_grid)
    pos = int(same.sum())
    near = sim >= min(float(np.min(wide_grid)), threshold) if len(wide_grid) else sim >= threshold
    sim, diff, same = sim[near], diff[near], same[near]  # pairs below every wide threshold never link
    base = sim >= threshold
    best = (int((base & same).sum()), threshold, 0.0, int(base.sum()))
    for w in sorted(wide_grid, reverse=True):
        for d in diff_grid:
            link = verified(sim, diff, threshold, float(w), float(d))
            k, tp = int(link.sum()), int((link & same).sum())
            if k and tp / k >= min_precision and tp > best[0]:
                best = (tp, float(w), float(d), k)
    tp, w, d, k = best
    return TwoStage(threshold=threshold, wide_threshold=w, max_align_diff=d, precision=tp / k if k else 1.0,
                    recall=tp / pos if pos else 1.0, linked=k, positives=pos)
