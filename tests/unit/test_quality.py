from __future__ import annotations

import polars as pl
import pytest

from curation.quality import QualityConfig, evaluate, reject_counts
from curation.schema import CURATED_SCHEMA, DEDUP_SCHEMA, INVENTORY_SCHEMA, conform

GOOD = dict(width=640, height=480, brightness=120.0, contrast=50.0, entropy=7.0, sharpness=300.0, error_code=None)


def frames(rows: list[dict]):
    inv = conform(pl.DataFrame([{"image_id": f"i{i}", "shard": "s-000001", **GOOD, **r} for i, r in enumerate(rows)]), INVENTORY_SCHEMA)
    reps = [r.get("_rep", True) for r in rows]
    clusters = conform(
        pl.DataFrame({"image_id": inv["image_id"], "cluster_id": [f"i{i}" if rep else "i0" for i, rep in enumerate(reps)],
                      "is_representative": reps}),
        DEDUP_SCHEMA,
    )
    return inv, clusters


def test_every_reason_is_recorded_and_complete():
    inv, cl = frames([
        {},  # kept
        {"error_code": "truncated", "width": None, "height": None, "brightness": None},
        {"width": 20, "height": 400},  # too small AND extreme aspect ratio
        {"brightness": 3.0, "contrast": 2.0, "entropy": 0.5},  # dark, low contrast, low entropy
        {"brightness": 250.0},
        {"sharpness": 1.0},
        {"_rep": False},  # duplicate of i0
    ])
    out = evaluate(inv, cl, QualityConfig())
    assert out.columns == list(CURATED_SCHEMA)
    reasons = dict(zip(out["image_id"], out["reasons"].to_list()))
    assert reasons["i0"] == [] and out["keep"].to_list() == [True] + [False] * 6
    assert reasons["i1"] == ["corrupt"]
    assert reasons["i2"] == ["too_small", "extreme_aspect_ratio"]
    assert reasons["i3"] == ["too_dark", "low_contrast", "low_entropy"]
    assert reasons["i4"] == ["too_bright"]
    assert reasons["i5"] == ["blurry"]
    assert reasons["i6"] == ["duplicate"]
    counts = reject_counts(out)
    assert counts["too_small"] == 1 and counts["duplicate"] == 1 and counts["corrupt"] == 1


def test_thresholds_are_configurable_and_unknown_keys_fail():
    inv, cl = frames([{"width": 20, "height": 20}, {"_rep": False}])
    cfg = QualityConfig.from_overrides({"min_side": 16, "reject_duplicates": False})
    assert evaluate(inv, cl, cfg)["keep"].to_list() == [True, True]
    with pytest.raises(ValueError, match="min_sidee"):
        QualityConfig.from_overrides({"min_sidee": 3})
