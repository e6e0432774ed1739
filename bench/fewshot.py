"""Benchmark of the calibrated, open-set few-shot probe on the demo corpus (not a test).
Writes bench/results/fewshot.json.

The probe is trained on the demo's few-shot folder (30 held-out MNIST digits per class) with the
default packaged EfficientNet-Lite0 on CPU, and applied to the demo corpus, whose truth comes from
its layout (`bench.fewshot_data`): digits keep a label, photos and sprites (and transformed copies of
each) belong to no class and must come out ``unknown``. Reported:

1. Digits: closed-set accuracy of the uncalibrated probe (before) and open-set accuracy (``unknown``
   counts as wrong), coverage and accuracy among labelled (after); photos and sprites: share labelled
   ``unknown``, by reason; per subset (originals vs transformed copies).
2. Calibration on the corpus digits (held out from training): NLL, ECE, median top-1 probability,
   before and after temperature scaling; the probe's own validation-split figures.
3. Per-class precision/recall on the validation split and on the corpus digits (open set).
4. The OOD rule's alternatives (class means vs nearest examples, quantiles) and confidence bars:
   AUROC digits vs non-digits, digit accuracy and photo/sprite ``unknown`` share for each.

Run: .venv/bin/python -m bench.fewshot  (embeddings are cached under data/fewshot_cache)
"""

from __future__ import annotations

import json
import time

import numpy as np

from bench.common import REPO, machine, today
from bench.fewshot_data import demo_embeddings
from curation.classify import (
    UNKNOWN,
    calibration_summary,
    fit_ood,
    ood_score,
    per_class_report,
    predict_open_set,
    probe_logits,
    train_probe,
)

MODEL = "efficientnet_lite0"


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (positives: out of distribution)."""
    allv = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(allv, kind="stable"), kind="stable").astype(np.float64) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def outcome(labels: list[str], d: dict, masks: dict[str, np.ndarray], reasons: list | None = None) -> dict:
    lab = np.asarray(labels, dtype=object)
    dig = masks["digit"]
    truth = np.asarray(d["digit"], dtype=object)
    out: dict = {"digit_accuracy": round(float((lab[dig] == truth[dig]).mean()), 4),
                 "digit_coverage": round(float((lab[dig] != UNKNOWN).mean()), 4)}
    labelled = dig & (lab != UNKNOWN)
    out["digit_accuracy_labelled"] = (round(float((lab[labelled] == truth[labelled]).mean()), 4)
                                      if labelled.any() else None)
    for name, m in masks.items():
        if name != "digit":
            out[f"{name}_unknown"] = round(float((lab[m] == UNKNOWN).mean()), 4)
    if reasons is not None:
        r = np.asarray([x or "" for x in reasons], dtype=object)
        non = masks["photo"] | masks["sprite"]
        out["non_digit_reasons"] = {k: int((r[non] == k).sum()) for k in sorted(set(r[non].tolist()))}
        out["digit_reasons"] = {k: int((r[dig] == k).sum()) for k in sorted(set(r[dig].tolist()))}
    return out


def main() -> None:
    t0 = time.monotonic()
    d = demo_embeddings(REPO / "data" / "demo_corpus", REPO / "data" / "demo_fewshot")
    group = np.asarray(d["group"], dtype=object)
    transformed = np.asarray([r.startswith("transformed/") for r in d["rel"]])
    masks = {"digit": group == "digit", "photo": group == "photo", "sprite": group == "sprite",
             "photo_original": (group == "photo") & ~transformed,
             "sprite_original": (group == "sprite") & ~transformed,
             "photo_transformed": (group == "photo") & transformed,
             "sprite_transformed": (group == "sprite") & transformed}
    emb, dig = d["emb"], masks["digit"]
    before = train_probe(d["ex_emb"], d["ex_labels"], MODEL, calibrate=False, ood_kind=None)
    after = train_probe(d["ex_emb"], d["ex_labels"], MODEL)

    closed = predict_open_set(before, emb)
    fs = predict_open_set(after, emb)
    truth_idx = np.asarray([after.classes.index(c) for c in np.asarray(d["digit"], dtype=object)[dig]])
    corpus_cal = calibration_summary(probe_logits(after, emb[dig]), truth_idx, after.temperature)

    # alternatives of the open-set rule, fitted on the same examples
    alternatives = {}
    for kind, k in (("centroid", 1), ("knn", 1), ("knn", 5)):
        for q in (0.95, 0.99, 1.0):
            ref = fit_ood(d["ex_emb"], d["ex_labels"], after.classes, kind=kind, quantile=q, k=k)
            s = ood_score(ref, emb)
            lab = [UNKNOWN if x > ref.threshold else c for x, c in zip(s, fs.closed_label)]
            o = outcome(lab, d, masks)
            alternatives[f"{kind}{'' if kind == 'centroid' else k}_q{q}"] = {
                "threshold": round(ref.threshold, 4),
                "auroc_non_digit_vs_digit": round(auroc(s[~dig], s[dig]), 4),
                **{x: o[x] for x in ("digit_accuracy", "digit_coverage", "photo_unknown", "sprite_unknown")}}
    conf_bars = {}
    for m in (0.0, 0.5, 0.7, 0.9):
        r = predict_open_set(after, emb, min_conf=m)
        o = outcome(r.label, d, masks)
        conf_bars[str(m)] = {x: o[x] for x in ("digit_accuracy", "digit_coverage", "digit_accuracy_labelled",
                                                "photo_unknown", "sprite_unknown")}
    conf_only = {}
    for m in (0.5, 0.7, 0.9):
        r = predict_open_set(after, emb, min_conf=m, use_ood=False)
        o = outcome(r.label, d, masks)
        conf_only[str(m)] = {x: o[x] for x in ("digit_accuracy", "digit_coverage", "photo_unknown", "sprite_unknown")}

    result = {
        "date": today(), "machine": machine(), "model": MODEL + " (packaged weights, CPU)",
        "data": {"examples": len(d["ex_labels"]), "digits": int(dig.sum()), "photos": int(masks["photo"].sum()),
                 "sprites": int(masks["sprite"].sum()),
                 "note": "every photo, sprite and transformed copy of the demo corpus; 1,000 of its 4,700 "
                         "untransformed digits (seeded sample)"},
        "before": {"rule": "closed set, uncalibrated (the previous behaviour)", **outcome(closed.label, d, masks)},
        "after": {"rule": f"OOD {after.ood.kind} k{after.ood.k} q{after.ood.quantile} "
                          f"(threshold {after.ood.threshold:.4f}) + temperature {after.temperature:.4f}, min_conf 0",
                  **outcome(fs.label, d, masks, fs.reason)},
        "calibration_validation_split": {k: v for k, v in after.validation.items() if k != "per_class"},
        "calibration_corpus_digits": corpus_cal,
        "per_class_validation_split": after.validation["per_class"],
        "per_class_corpus_digits_open_set": per_class_report(
            np.asarray(d["digit"], dtype=object)[dig].tolist(),
            np.asarray(fs.label, dtype=object)[dig].tolist(), after.classes),
        "ood_alternatives": alternatives,
        "confidence_bar_with_ood": conf_bars,
        "confidence_bar_without_ood": conf_only,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    out = REPO / "bench" / "results" / "fewshot.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("before", "after", "calibration_validation_split",
                                             "calibration_corpus_digits", "ood_alternatives")}, indent=1))


if __name__ == "__main__":
    main()
