"""Few-shot linear probe: training with a validation split, calibration, open-set prediction, JSON storage.

Training (`train_probe`): a multinomial logistic regression (sklearn) on the examples' embeddings.
On the held-out validation split (given, or a stratified `val_fraction` of the examples) it measures
accuracy, fits a temperature by minimising the NLL (`calibration.fit_temperature`) and records NLL,
ECE and median top-1 probability before and after, plus per-class precision/recall. The final probe
is refitted on all examples when the split was internal. An out-of-distribution reference
(`open_set.fit_ood`) is fitted on the training examples.

Prediction: `apply_probe` is the closed-set arg-max with (by default) temperature-scaled
probabilities; `predict_open_set` adds the open-set rule: an image is ``unknown`` when its OOD score
is above the probe's calibrated threshold (reason ``out_of_distribution``) or its calibrated top-1
probability is below `min_conf` (reason ``low_confidence``).

Storage: JSON without pickle (`save_probe` / `load_probe`); ``linear-probe/v2`` adds the temperature,
the OOD reference and the validation report; ``v1`` files load as uncalibrated closed-set probes
(temperature 1, no OOD reference; `Probe.format` tells them apart).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curation import storage
from curation.classify.calibration import (
    calibration_summary,
    fit_temperature,
    per_class_report,
)
from curation.classify.common import (
    LOW_CONFIDENCE,
    OUT_OF_DISTRIBUTION,
    UNKNOWN,
    softmax,
)
from curation.classify.open_set import OodReference, fit_ood, ood_score

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from curation.embedding import Embedder

log = logging.getLogger(__name__)

PROBE_FORMAT = "linear-probe/v2"
_FORMATS = ("linear-probe/v1", PROBE_FORMAT)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Probe:
    """A linear probe: probs = softmax((emb @ coef.T + intercept) / temperature) over `classes`."""

    classes: list[str]
    coef: np.ndarray  # [n_classes, dim] float32
    intercept: np.ndarray  # [n_classes]
    model: str  # embedder model_id the probe was trained on
    val_accuracy: float | None = None
    n_train: int = 0
    n_val: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0  # fitted on the validation split (1.0: uncalibrated)
    ood: OodReference | None = None  # open-set reference and threshold (None: closed set)
    validation: dict[str, Any] = field(default_factory=dict)  # calibration figures, per-class precision/recall
    format: str = PROBE_FORMAT


def probe_logits(probe: Probe, emb: np.ndarray) -> np.ndarray:
    """[n, n_classes] raw (unscaled) logits."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != probe.coef.shape[1]:
        raise ValueError(f"probe expects {probe.coef.shape[1]}-d embeddings, got shape {emb.shape}")
    return (emb @ probe.coef.T + probe.intercept).astype(np.float64)


def _coef(clf: Any) -> tuple[np.ndarray, np.ndarray]:
    coef = np.asarray(clf.coef_, dtype=np.float32)
    intercept = np.asarray(clf.intercept_, dtype=np.float32)
    if coef.shape[0] == 1:  # binary: sklearn keeps one row for classes_[1]; expand to 2-way softmax
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def _validate(clf: Any, xv: np.ndarray, yv: np.ndarray, classes: list[str], calibrate: bool) -> tuple[float, dict]:
    """Temperature and validation report of `clf` on the held-out (xv, yv)."""
    coef, intercept = _coef(clf)
    logits = (xv @ coef.T + intercept).astype(np.float64)
    target = np.asarray([classes.index(c) for c in yv])
    t = fit_temperature(logits, target) if calibrate else 1.0
    pred = [classes[i] for i in logits.argmax(axis=1)]
    report: dict[str, Any] = {"accuracy": float(np.mean(np.asarray(pred, dtype=object) == yv)),
                              **calibration_summary(logits, target, t),
                              "per_class": per_class_report(yv.tolist(), pred, classes)}
    return t, report


def train_probe(emb: np.ndarray, labels: Sequence[str], model: str, val_fraction: float = 0.2,
                val_emb: np.ndarray | None = None, val_labels: Sequence[str] | None = None, c: float = 1.0,
                seed: int = 0, max_iter: int = 2000, calibrate: bool = True, ood_kind: str | None = "knn",
                ood_quantile: float = 0.99, ood_k: int = 5) -> Probe:
    """Train a calibrated, open-set multinomial logistic-regression probe on `emb` [n, d] with `labels`.

    Validation: the given (`val_emb`, `val_labels`), else a stratified `val_fraction` split of the
    examples (skipped, val_accuracy None and temperature 1, when some class has fewer than 2
    examples). `calibrate` fits the temperature there; `ood_kind` (None: closed set),
    `ood_quantile` and `ood_k` set the out-of-distribution rule (see `open_set`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    emb = np.asarray(emb, dtype=np.float32)
    y = np.asarray(list(labels), dtype=object)
    if len(emb) != len(y):
        raise ValueError(f"{len(emb)} embeddings for {len(y)} labels")
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least 2 labels, got {classes}")

    def fit(x: np.ndarray, t: np.ndarray) -> Any:
        return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, t)

    temperature, n_val = 1.0, 0
    report: dict[str, Any] = {}
    if val_emb is not None and val_labels is not None:
        clf = fit(emb, y)
        vy = np.asarray(list(val_labels), dtype=object)
        temperature, report = _validate(clf, np.asarray(val_emb, dtype=np.float32), vy, classes, calibrate)
        n_val, n_train = len(vy), len(y)
    else:
        counts = {cl: int((y == cl).sum()) for cl in classes}
        n_hold = round(len(y) * val_fraction)
        if val_fraction > 0 and min(counts.values()) >= 2 and n_hold >= len(classes):
            xt, xv, yt, yv = train_test_split(emb, y, test_size=n_hold, stratify=y, random_state=seed)
            temperature, report = _validate(fit(xt, yt), xv, yv, classes, calibrate)
            n_val = len(yv)
        else:
            log.warning("too few examples per label for a validation split; val_accuracy not reported, "
                        "probabilities not calibrated")
        clf = fit(emb, y)
        n_train = len(y) - n_val
    coef, intercept = _coef(clf)
    ood = fit_ood(emb, y, classes, kind=ood_kind, quantile=ood_quantile, k=ood_k) if ood_kind else None
    return Probe([str(x) for x in clf.classes_], coef, intercept, model, report.get("accuracy"), n_train, n_val,
                 {"C": c, "seed": seed, "val_fraction": val_fraction, "kind": "logistic_regression",
                  "calibrate": calibrate, "ood_kind": ood_kind, "ood_quantile": ood_quantile, "ood_k": ood_k},
                 temperature, ood, report)


def apply_probe(probe: Probe, emb: np.ndarray, calibrated: bool = True) -> tuple[list[str], np.ndarray]:
    """Closed-set (label, probability of that label) for every row of `emb`; probabilities are
    temperature-scaled unless `calibrated` is False (the raw logistic-regression output)."""
    probs = softmax(probe_logits(probe, emb) / (probe.temperature if calibrated else 1.0))
    idx = probs.argmax(axis=1)
    return [probe.classes[i] for i in idx], probs[np.arange(len(idx)), idx].astype(np.float32)


@dataclass(frozen=True)
class OpenSetResult:
    label: list[str]  # class, or "unknown"
    prob: np.ndarray  # [n] calibrated probability of the closed-set arg-max class (float32)
    closed_label: list[str]  # the arg-max class, also for unknown rows
    reason: list[str | None]  # None, OUT_OF_DISTRIBUTION or LOW_CONFIDENCE
    ood_score: np.ndarray | None  # [n] (None without an OOD reference)


def predict_open_set(probe: Probe, emb: np.ndarray, min_conf: float = 0.0, use_ood: bool = True) -> OpenSetResult:
    """Labels with ``unknown`` for images out of the examples' distribution (when the probe has an OOD
    reference and `use_ood`) or below `min_conf` calibrated confidence; OOD takes precedence as reason."""
    if not 0.0 <= min_conf <= 1.0:
        raise ValueError(f"min_conf must be in [0, 1], got {min_conf}")
    closed, prob = apply_probe(probe, emb)
    score, far = None, np.zeros(len(closed), bool)
    if use_ood and probe.ood is not None:
        score = ood_score(probe.ood, emb)
        far = score > probe.ood.threshold
    reason: list[str | None] = [OUT_OF_DISTRIBUTION if f else LOW_CONFIDENCE if p < min_conf else None
                                for f, p in zip(far, prob)]
    label = [UNKNOWN if r else c for c, r in zip(closed, reason)]
    return OpenSetResult(label, prob, closed, reason, score)


def probe_report(probe: Probe) -> dict[str, Any]:
    """Flat figures of a probe for run metadata: temperature, validation NLL/ECE/median top-1 before
    and after scaling, the OOD rule and threshold, and per-class precision/recall as a Markdown table."""
    v = probe.validation
    out: dict[str, Any] = {"temperature": round(probe.temperature, 5),
                           "ood_rule": (f"{probe.ood.kind} (k={probe.ood.k}), quantile {probe.ood.quantile}"
                                        if probe.ood is not None else "none (closed set)"),
                           "ood_threshold": round(probe.ood.threshold, 5) if probe.ood is not None else None}
    for key in ("nll", "ece", "median_top1"):
        for tag in ("before", "after"):
            out[f"val_{key}_{tag}"] = v.get(f"{key}_{tag}")
    rows = ["| class | precision | recall | support |", "|---|---|---|---|"]
    for c, r in (v.get("per_class") or {}).items():
        rows.append(f"| {c} | {r['precision']} | {r['recall']} | {r['support']} |")
    out["per_class_md"] = "\n".join(rows) if len(rows) > 2 else "no validation split"
    return out


def save_probe(probe: Probe, uri: str) -> None:
    """Write the probe as JSON (no pickle) to a local path or s3:// URI, atomically."""
    storage.write_json({
        "format": PROBE_FORMAT,
        "classes": probe.classes,
        "coef": probe.coef.astype(float).tolist(),
        "intercept": probe.intercept.astype(float).tolist(),
        "model": probe.model,
        "val_accuracy": probe.val_accuracy,
        "n_train": probe.n_train,
        "n_val": probe.n_val,
        "params": probe.params,
        "temperature": probe.temperature,
        "ood": probe.ood.to_json() if probe.ood is not None else None,
        "validation": probe.validation,
    }, uri)


def load_probe(uri: str) -> Probe:
    d = storage.read_json(uri)
    if d.get("format") not in _FORMATS:
        raise ValueError(f"{uri} is not a linear-probe file (format {d.get('format')!r}; expected one of {_FORMATS})")
    coef = np.asarray(d["coef"], dtype=np.float32)
    intercept = np.asarray(d["intercept"], dtype=np.float32)
    if coef.shape[0] != len(d["classes"]) or intercept.shape != (len(d["classes"]),):
        raise ValueError(f"{uri}: coefficient shapes do not match the classes")
    t = float(d.get("temperature") or 1.0)
    if not t > 0:
        raise ValueError(f"{uri}: temperature must be > 0, got {t}")
    ood = OodReference.from_json(d["ood"]) if d.get("ood") else None
    return Probe(list(d["classes"]), coef, intercept, d["model"], d.get("val_accuracy"),
                 int(d.get("n_train", 0)), int(d.get("n_val", 0)), dict(d.get("params", {})), t, ood,
                 dict(d.get("validation") or {}), d["format"])


def list_labelled_examples(root: str) -> pl.DataFrame:
    """(uri, label) for every image file in the sub-folders of `root` (local or s3://); the
    sub-folder name is the label. Files directly under `root` are ignored."""
    rows: list[tuple[str, str]] = []
    for label in storage.list_dir(root):
        if label.startswith("."):
            continue
        folder = storage.join(root, label)
        for name in storage.list_dir(folder):
            if name.lower().endswith(IMAGE_SUFFIXES):
                rows.append((storage.join(folder, name), label))
    if not rows:
        raise ValueError(f"no labelled examples under {root!r}: expected one sub-folder of images per label")
    return pl.DataFrame(rows, schema={"uri": pl.String, "label": pl.String}, orient="row")


def train_probe_from_folder(embedder: Embedder, root: str, read_image: Callable[[str], Image.Image],
                            val_fraction: float = 0.2, c: float = 1.0, seed: int = 0, **kw: Any) -> Probe:
    """Embed the labelled examples under `root` and train a probe (see `train_probe`; `kw` passes
    `calibrate`, `ood_kind`, `ood_quantile`, `ood_k`)."""
    examples = list_labelled_examples(root)
    images = [read_image(u) for u in examples["uri"].to_list()]
    emb = embedder.embed_images(images)
    return train_probe(emb, examples["label"].to_list(), embedder.model_id, val_fraction=val_fraction, c=c,
                       seed=seed, **kw)
