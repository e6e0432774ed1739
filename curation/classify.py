"""Zero-shot and few-shot classification of embedded images.

Zero-shot (open_clip models only): labels and prompt templates come from config; each label's text
embedding is the renormalised mean of its templates' embeddings (CLIP prompt ensembling), computed
once per process and model (`text_classifier` caches in memory, and optionally as a Parquet file
under `cache_dir`). Probabilities are ``softmax(logit_scale * image_emb @ text_emb.T)``; the top-k
labels are reported and the top label is replaced by ``"unknown"`` when its probability is below
`min_conf`.

Few-shot: a folder or URI of labelled examples, one sub-folder per label. A multinomial logistic
regression (linear probe, sklearn) is trained on their embeddings with a stratified held-out
validation split whose accuracy is reported. The probe is stored without pickle, as JSON holding
the classes, coefficients and intercepts (`save_probe` / `load_probe`), and applied to every shard
with plain numpy (`apply_probe`).

Output of `classify_shard`: `CLASSIFICATION_COLUMNS`, one row per embedded image. ``zs_*`` columns are
null when zero-shot is unavailable (e.g. EfficientNet-Lite0 has no text tower) or not configured;
``fs_*`` columns are null when no probe is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curation import storage
from curation.schema import CLASSIFICATION_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from curation.embedding import Embedder

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.",
                                      "a drawing of a {}.", "a photo of the {}.")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

CLASSIFICATION_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String,
    "shard": pl.String,
    "zs_label": pl.String,
    "zs_prob": pl.Float32,
    "zs_topk_labels": pl.List(pl.String),
    "zs_topk_probs": pl.List(pl.Float32),
    "fs_label": pl.String,
    "fs_prob": pl.Float32,
}
assert tuple(CLASSIFICATION_SCHEMA) == CLASSIFICATION_COLUMNS


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# Zero-shot
# --------------------------------------------------------------------------------------------------

_TEXT_CACHE: dict[tuple[str, tuple[str, ...], tuple[str, ...]], np.ndarray] = {}


def text_classifier(embedder: "Embedder", labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                    cache_dir: str | None = None) -> np.ndarray:
    """[len(labels), dim] L2-normalised label embeddings (mean over templates, renormalised).

    Computed once per (model, labels, templates) per process; with `cache_dir` (local or s3://) also
    stored there as Parquet and reused by later runs. Raises `ZeroShotUnavailableError` for models
    without a text tower."""
    if not labels:
        raise ValueError("zero-shot needs at least one label")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every prompt template needs a '{}' placeholder")
    key = (embedder.model_id, tuple(labels), tuple(templates))
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    if not embedder.supports_text:
        embedder.embed_texts([])  # raises ZeroShotUnavailableError with the explanation
    uri = None
    if cache_dir is not None:
        import hashlib

        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:20]
        uri = storage.join(cache_dir, f"text-{digest}.parquet")
        if storage.exists(uri):
            try:
                df = storage.read_parquet(uri)
                if df["label"].to_list() == list(labels) and df["model"][0] == embedder.model_id:
                    arr = np.asarray(df["embedding"].to_list(), dtype=np.float32)
                    _TEXT_CACHE[key] = arr
                    return arr
            except storage.CorruptOutputError:
                log.warning("recomputing corrupt text-embedding cache %s", uri)
    prompts = [t.format(label) for label in labels for t in templates]
    emb = embedder.embed_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb.astype(np.float32)
    if uri is not None:
        storage.write_parquet(pl.DataFrame({
            "label": list(labels),
            "model": [embedder.model_id] * len(labels),
            "embedding": pl.Series(emb).cast(pl.List(pl.Float32)),
        }), uri)
    _TEXT_CACHE[key] = emb
    return emb


@dataclass(frozen=True)
class ZeroShotResult:
    label: list[str]  # top label, or "unknown" below min_conf
    prob: np.ndarray  # [n] probability of the top label (float32)
    topk_labels: list[list[str]]
    topk_probs: np.ndarray  # [n, k]
    probs: np.ndarray  # [n, n_labels] full distribution


def zero_shot(emb: np.ndarray, text_emb: np.ndarray, logit_scale: float, labels: Sequence[str], k: int = 3,
              min_conf: float = 0.0) -> ZeroShotResult:
    """Zero-shot labels for L2-normalised image embeddings `emb` [n, d] against label embeddings
    `text_emb` [L, d]: softmax(logit_scale * emb @ text_emb.T), top-k (k clipped to L), and the top
    label replaced by "unknown" when its probability < `min_conf`."""
    emb = np.asarray(emb, dtype=np.float32)
    text_emb = np.asarray(text_emb, dtype=np.float32)
    if text_emb.shape[0] != len(labels):
        raise ValueError(f"{text_emb.shape[0]} label embeddings for {len(labels)} labels")
    if emb.ndim != 2 or emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding dims differ: {emb.shape} vs {text_emb.shape}")
    k = max(1, min(k, len(labels)))
    probs = _softmax(float(logit_scale) * (emb @ text_emb.T).astype(np.float64))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    topk_probs = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    lab = np.asarray(labels, dtype=object)
    topk_labels = [list(lab[row]) for row in order]
    top = topk_probs[:, 0] if len(emb) else np.empty(0, dtype=np.float32)
    label = [str(tl[0]) if p >= min_conf else UNKNOWN for tl, p in zip(topk_labels, top)]
    return ZeroShotResult(label, top.astype(np.float32), topk_labels, topk_probs, probs.astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Few-shot linear probe
# --------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """A linear probe: probs = softmax(emb @ coef.T + intercept) over `classes`."""

    classes: list[str]
    coef: np.ndarray  # [n_classes, dim] float32
    intercept: np.ndarray  # [n_classes]
    model: str  # embedder model_id the probe was trained on
    val_accuracy: float | None = None
    n_train: int = 0
    n_val: int = 0
    params: dict[str, Any] = field(default_factory=dict)


def train_probe(emb: np.ndarray, labels: Sequence[str], model: str, val_fraction: float = 0.2,
                val_emb: np.ndarray | None = None, val_labels: Sequence[str] | None = None, c: float = 1.0,
                seed: int = 0, max_iter: int = 2000) -> Probe:
    """Train a multinomial logistic-regression probe on `emb` [n, d] with string `labels`.

    Validation: the given (`val_emb`, `val_labels`), else a stratified `val_fraction` split of the
    examples (skipped, val_accuracy None, when some class has fewer than 2 examples). The final probe
    is refitted on train+validation examples when the split was internal."""
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
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        return clf.fit(x, t)

    val_acc: float | None = None
    n_val = 0
    if val_emb is not None and val_labels is not None:
        clf = fit(emb, y)
        vy = np.asarray(list(val_labels), dtype=object)
        val_acc = float((clf.predict(np.asarray(val_emb, dtype=np.float32)) == vy).mean())
        n_val, n_train = len(vy), len(y)
    else:
        counts = {cl: int((y == cl).sum()) for cl in classes}
        n_hold = int(round(len(y) * val_fraction))
        if val_fraction > 0 and min(counts.values()) >= 2 and n_hold >= len(classes):
            xt, xv, yt, yv = train_test_split(emb, y, test_size=n_hold, stratify=y, random_state=seed)
            val_acc = float((fit(xt, yt).predict(xv) == yv).mean())
            n_val = len(yv)
        else:
            log.warning("too few examples per label for a validation split; val_accuracy not reported")
        clf = fit(emb, y)
        n_train = len(y) - n_val
    coef = np.asarray(clf.coef_, dtype=np.float32)
    intercept = np.asarray(clf.intercept_, dtype=np.float32)
    if coef.shape[0] == 1:  # binary: sklearn keeps one row for classes_[1]; expand to 2-way softmax
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return Probe([str(x) for x in clf.classes_], coef, intercept, model, val_acc, n_train, n_val,
                 {"C": c, "seed": seed, "val_fraction": val_fraction, "kind": "logistic_regression"})


def apply_probe(probe: Probe, emb: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(label, probability of that label) for every row of `emb`."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape[1] != probe.coef.shape[1]:
        raise ValueError(f"probe expects {probe.coef.shape[1]}-d embeddings, got {emb.shape[1]}-d")
    probs = _softmax((emb @ probe.coef.T + probe.intercept).astype(np.float64))
    idx = probs.argmax(axis=1)
    return [probe.classes[i] for i in idx], probs[np.arange(len(idx)), idx].astype(np.float32)


def save_probe(probe: Probe, uri: str) -> None:
    """Write the probe as JSON (no pickle) to a local path or s3:// URI, atomically."""
    storage.write_json({
        "format": "linear-probe/v1",
        "classes": probe.classes,
        "coef": probe.coef.astype(float).tolist(),
        "intercept": probe.intercept.astype(float).tolist(),
        "model": probe.model,
        "val_accuracy": probe.val_accuracy,
        "n_train": probe.n_train,
        "n_val": probe.n_val,
        "params": probe.params,
    }, uri)


def load_probe(uri: str) -> Probe:
    d = storage.read_json(uri)
    if d.get("format") != "linear-probe/v1":
        raise ValueError(f"{uri} is not a linear-probe/v1 file")
    coef = np.asarray(d["coef"], dtype=np.float32)
    intercept = np.asarray(d["intercept"], dtype=np.float32)
    if coef.shape[0] != len(d["classes"]) or intercept.shape != (len(d["classes"]),):
        raise ValueError(f"{uri}: coefficient shapes do not match the classes")
    return Probe(list(d["classes"]), coef, intercept, d["model"], d.get("val_accuracy"),
                 int(d.get("n_train", 0)), int(d.get("n_val", 0)), dict(d.get("params", {})))


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


def train_probe_from_folder(embedder: "Embedder", root: str, read_image: Callable[[str], "Image.Image"],
                            val_fraction: float = 0.2, c: float = 1.0, seed: int = 0) -> Probe:
    """Embed the labelled examples under `root` and train a probe (see `train_probe`)."""
    examples = list_labelled_examples(root)
    images = [read_image(u) for u in examples["uri"].to_list()]
    emb = embedder.embed_images(images)
    return train_probe(emb, examples["label"].to_list(), embedder.model_id, val_fraction=val_fraction, c=c,
                       seed=seed)


# --------------------------------------------------------------------------------------------------
# Per shard
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroShotConfig:
    labels: tuple[str, ...]
    text_emb: np.ndarray  # [L, d] from text_classifier
    logit_scale: float
    k: int = 3
    min_conf: float = 0.0


def classify_shard(emb_df: pl.DataFrame, zero_shot_cfg: ZeroShotConfig | None = None,
                   probe: Probe | None = None, model: str | None = None) -> pl.DataFrame:
    """Classify one shard of `embed_shard` output (rows with a null embedding are dropped). Returns
    CLASSIFICATION_COLUMNS with zs_* null without `zero_shot_cfg` and fs_* null without `probe`.
    `model` (the embeddings' model id) is checked against the probe's when given."""
    from curation.embedding import embeddings_to_numpy

    df = emb_df.filter(pl.col("embedding").is_not_null())
    if probe is not None:
        models = df["model"].unique().to_list() if "model" in df.columns else []
        expected = model or (models[0] if len(models) == 1 else None)
        if expected is not None and expected != probe.model:
            raise ValueError(f"probe was trained on {probe.model!r} embeddings, shard has {expected!r}")
    n = df.height
    emb = embeddings_to_numpy(df) if n else None
    cols: dict[str, pl.Series] = {
        "image_id": df["image_id"],
        "shard": df["shard"],
    }
    if zero_shot_cfg is not None and n:
        r = zero_shot(emb, zero_shot_cfg.text_emb, zero_shot_cfg.logit_scale, zero_shot_cfg.labels,
                      zero_shot_cfg.k, zero_shot_cfg.min_conf)
        cols["zs_label"] = pl.Series(r.label, dtype=pl.String)
        cols["zs_prob"] = pl.Series(r.prob, dtype=pl.Float32)
        cols["zs_topk_labels"] = pl.Series(r.topk_labels, dtype=pl.List(pl.String))
        cols["zs_topk_probs"] = pl.Series(r.topk_probs.tolist(), dtype=pl.List(pl.Float32))
    if probe is not None and n:
        lab, p = apply_probe(probe, emb)
        cols["fs_label"] = pl.Series(lab, dtype=pl.String)
        cols["fs_prob"] = pl.Series(p, dtype=pl.Float32)
    out = pl.DataFrame(cols)
    for name, dtype in CLASSIFICATION_SCHEMA.items():
        if name not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return out.select([pl.col(k).cast(v) for k, v in CLASSIFICATION_SCHEMA.items()])
