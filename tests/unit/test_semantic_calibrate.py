"""Per-model threshold calibration of the semantic pass (`curation.semantic.calibrate`)."""

from __future__ import annotations

import numpy as np
import pytest

from curation.semantic import SemanticDedupConfig
from curation.semantic.calibrate import CALIBRATED_THRESHOLDS, calibrate_threshold


def test_lowest_threshold_with_precision_holding_above_it() -> None:
    sim = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90])
    same = np.array([1, 1, 0, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    c = calibrate_threshold(sim, same, 0.85)
    # precision at 0.92: 7/8 = 0.875, at 0.91: 7/9 = 0.778 (a dip higher up, 0.97: 2/3, does not matter)
    assert c.threshold == pytest.approx(0.92) and c.precision == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="no cosine threshold"):
        calibrate_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.9)
    c = calibrate_threshold(sim, same, 0.7)
    assert c.threshold == pytest.approx(0.90) and c.linked == 10 and c.recall == pytest.approx(1.0)


def test_ties_are_never_split() -> None:
    sim = np.array([0.99, 0.95, 0.95, 0.95])
    same = np.array([True, True, False, False])
    c = calibrate_threshold(sim, same, 0.9)
    assert c.threshold == pytest.approx(0.99) and c.linked == 1


def test_config_takes_the_models_calibrated_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CALIBRATED_THRESHOLDS, "timm:test-model:1", 0.93)
    cfg = SemanticDedupConfig()
    assert cfg.for_model("timm:test-model:1").threshold == 0.93
    assert cfg.for_model("other").threshold == cfg.threshold
    assert SemanticDedupConfig(calibrated=False).for_model("timm:test-model:1").threshold == cfg.threshold
    with pytest.raises(ValueError, match="min_precision"):
        calibrate_threshold(np.array([0.5]), np.array([True]), 0.0)
