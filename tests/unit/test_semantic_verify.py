"""Two-stage rule of the semantic pass (`curation.semantic.verify`): crop-aware alignment of stage 1's
8x8 thumbnails of real photos (skimage), the rule inside a shard and across shards, its settings and
its calibration (`calibrate_two_stage`)."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation.imaging.analyse import analyse_image
from curation.semantic import SemanticDedupConfig, semantic_dedup_shard
from curation.semantic.calibrate import CALIBRATED_THRESHOLDS, CALIBRATED_VERIFY, calibrate_two_stage
from curation.semantic.verify import align_diff, verify_links

skd = pytest.importorskip("skimage.data")

PHOTOS = ("chelsea", "coffee", "rocket")  # (astronaut, all fine detail, scores its crop 7.0: the 8x8 grid blurs)
MAX_DIFF = 6.0  # the calibrated max_align_diff of EfficientNet-Lite0 (CALIBRATED_VERIFY)


def _thumb(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return analyse_image(buf.getvalue())["thumb_rgb"]


def _hue(im: Image.Image, shift: int = 80) -> Image.Image:
    hsv = np.asarray(im.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _variants(name: str) -> dict[str, bytes]:
    im = Image.fromarray(getattr(skd, name)()).convert("RGB")
    w, h = im.size
    crop = im.crop((int(w * 0.08), int(h * 0.08), w - int(w * 0.08), h - int(h * 0.08)))
    pad = Image.new("RGB", (int(w * 1.25), int(h * 1.25)), (255, 255, 255))
    pad.paste(im, (int(w * 0.1), int(h * 0.05)))
    return {"orig": _thumb(im), "crop": _thumb(crop), "reframe": _thumb(pad), "hue": _thumb(_hue(im))}


@pytest.fixture(scope="module")
def thumbs() -> dict[str, dict[str, bytes]]:
    return {name: _variants(name) for name in PHOTOS}


def _arr(values: list[bytes]) -> np.ndarray:
    return np.stack([np.frombuffer(v, np.uint8) for v in values])


def test_a_crop_aligns_with_its_original_and_a_colour_variant_does_not(thumbs) -> None:
    for name, t in thumbs.items():
        d = align_diff(_arr([t["orig"]] * 4), _arr([t["orig"], t["crop"], t["reframe"], t["hue"]]))
        assert d[0] == pytest.approx(0.0, abs=1e-3), name
        assert d[1] <= MAX_DIFF, (name, d)  # an 8%-per-side crop
        assert d[3] > 2 * MAX_DIFF, (name, d)  # hue shifted by 80/256: the colours differ
        assert d[2] < d[3], (name, d)  # a re-framing on a 25% larger white canvas aligns better than the colour variant
    # the score does not depend on which side of the pair is which
    t = thumbs["coffee"]
    assert align_diff(_arr([t["crop"]]), _arr([t["orig"]]))[0] == pytest.approx(
        align_diff(_arr([t["orig"]]), _arr([t["crop"]]))[0], abs=1e-4)
    with pytest.raises(ValueError, match="paired rows"):
        align_diff(_arr([t["crop"]]), _arr([t["orig"], t["hue"]]))


def test_verify_links_is_the_two_stage_rule(thumbs) -> None:
    t = thumbs["chelsea"]
    a = _arr([t["orig"]] * 4)
    b = _arr([t["crop"], t["hue"], t["hue"], t["crop"]])
    sim = np.array([0.90, 0.90, 0.99, 0.80], dtype=np.float32)
    # crop in the wide band: verified; colour variant in the band: not; >= threshold: the cosine
    # alone; below the wide threshold: never
    assert verify_links(sim, a, b, 0.968, 0.85, MAX_DIFF).tolist() == [True, False, True, False]
    assert verify_links(sim, None, None, 0.968, 0.85, MAX_DIFF).tolist() == [False, False, True, False]
    assert verify_links(sim, a, b, 0.968, None, MAX_DIFF).tolist() == [False, False, True, False]
    missing = b.copy()
    missing[0] = 0  # no thumbnail for that image: the strict threshold only
    assert verify_links(sim, a, missing, 0.968, 0.85, MAX_DIFF).tolist() == [False, False, True, False]


def _vectors(dim: int = 64) -> np.ndarray:
    """orig, crop, hue: crop and hue at cosine 0.9 with orig (the wide band), 0.81 with each other."""
    e = np.eye(dim, dtype=np.float32)
    r = np.sqrt(1 - 0.81)
    return np.stack([e[0], 0.9 * e[0] + r * e[1], 0.9 * e[0] + r * e[2]])


def _frame(ids: list[str], x: np.ndarray, th: list[bytes] | None, shard: str) -> pl.DataFrame:
    df = pl.DataFrame({"image_id": ids, "shard": [shard] * len(ids),
                       "embedding": pl.Series(list(x), dtype=pl.List(pl.Float32))})
    return df.with_columns(pl.Series("thumb_rgb", th, dtype=pl.Binary)) if th is not None else df


CFG = SemanticDedupConfig(calibrated=False, threshold=0.968, wide_threshold=0.85, max_align_diff=MAX_DIFF,
                          band_bits=2, n_bands=48)  # coarse bands: every pair of 3 rows is a candidate


def test_in_a_shard_the_crop_joins_and_the_colour_variant_stays_apart(thumbs) -> None:
    t = thumbs["coffee"]
    x = _vectors()
    rows, index = semantic_dedup_shard(_frame(["orig", "crop", "hue"], x, [t["orig"], t["crop"], t["hue"]], "s1"),
                                       None, CFG)
    assert rows["cluster_id"].to_list() == ["orig", "orig", "hue"]
    assert rows["similarity"][1] == pytest.approx(0.9, abs=1e-5)
    assert index["thumb"].to_list() == [t["orig"], None, t["hue"]]  # representatives only
    # without thumbnails, or with the rule off, only the strict threshold applies
    no_thumbs, _ = semantic_dedup_shard(_frame(["orig", "crop", "hue"], x, None, "s1"), None, CFG)
    strict, _ = semantic_dedup_shard(_frame(["orig", "crop", "hue"], x, [t["orig"], t["crop"], t["hue"]], "s1"),
                                     None, SemanticDedupConfig(calibrated=False, threshold=0.968, band_bits=2))
    assert no_thumbs["cluster_id"].to_list() == strict["cluster_id"].to_list() == ["orig", "crop", "hue"]


def test_across_shards_the_crop_joins_the_earlier_original(thumbs) -> None:
    t = thumbs["rocket"]
    x = _vectors()
    _, index = semantic_dedup_shard(_frame(["orig"], x[:1], [t["orig"]], "s1"), None, CFG, shard_seq=0)
    later = _frame(["crop", "hue"], x[1:], [t["crop"], t["hue"]], "s2")
    rows, _ = semantic_dedup_shard(later, index, CFG, shard_seq=1)
    assert rows["cluster_id"].to_list() == ["orig", "hue"] and rows["rep_shard"].to_list() == ["s1", "s2"]
    # an index written before thumbnails existed: the strict threshold only
    rows, _ = semantic_dedup_shard(later, index.drop("thumb"), CFG, shard_seq=1)
    assert rows["cluster_id"].to_list() == ["crop", "hue"]


def test_settings_are_validated_and_the_model_rule_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"^wide_threshold must be None or a cosine in \[-1, threshold=0.9\]"):
        SemanticDedupConfig(threshold=0.9, wide_threshold=0.95)
    with pytest.raises(ValueError, match=r"^max_align_diff must be in \[0, 255\]"):
        SemanticDedupConfig(max_align_diff=300)
    monkeypatch.setitem(CALIBRATED_THRESHOLDS, "timm:test-model:1", 0.95)
    monkeypatch.setitem(CALIBRATED_VERIFY, "timm:test-model:1", (0.88, 4.0))
    cfg = SemanticDedupConfig().for_model("timm:test-model:1")
    assert (cfg.threshold, cfg.wide_threshold, cfg.max_align_diff, cfg.search_threshold) == (0.95, 0.88, 4.0, 0.88)
    assert SemanticDedupConfig(calibrated=False).for_model("timm:test-model:1").wide_threshold is None
    assert SemanticDedupConfig().search_threshold == 0.97


def test_calibrate_two_stage_adds_verified_pairs_while_precision_holds() -> None:
    sim = np.array([0.99, 0.98, 0.93, 0.92, 0.91, 0.90, 0.89, 0.88])
    diff = np.array([1.0, 2.0, 3.0, 2.0, 20.0, 4.0, 9.0, np.nan])
    same = np.array([True, True, True, True, False, True, False, True])
    c = calibrate_two_stage(sim, diff, same, 0.95, 0.9, wide_grid=np.array([0.85, 0.9]),
                            diff_grid=np.array([2.0, 4.0, 10.0, 25.0]))
    # 0.9 / 4: links the two strict pairs and the verified 0.93, 0.92, 0.90 (diff <= 4); 0.91 (20)
    # stays out; 0.85 links no more true pairs (0.89 is false, 0.88 has no difference: strict
    # only), and ties go to the stricter rule
    assert (c.wide_threshold, c.max_align_diff, c.linked, c.precision) == (0.9, 4.0, 5, 1.0)
    assert c.recall == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="non-empty"):
        calibrate_two_stage(np.array([]), np.array([]), np.array([], bool), 0.9)
