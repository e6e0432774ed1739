"""The bucketed cross-shard index of the semantic pass (curation/semantic/buckets.py).

Vectors come from a seeded generator (the index's math does not need real images): non-negative
"ReLU-like" rows sharing a common direction, like image embeddings, plus planted near copies."""

import numpy as np
import pytest

from curation.semantic import SemanticDedupConfig, band_keys, encode, fit_center
from curation.semantic.buckets import (
    BucketConfig,
    brute_force_query,
    bucket_keys,
    build_part,
    load_part,
    prefix_bits,
    probe_masks,
    query_parts,
    save_part,
)

DIM = 256


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0)
    offset = base.standard_normal(DIM).astype(np.float32) * 0.8
    topics = np.maximum(base.standard_normal((20, DIM)).astype(np.float32), 0)
    z = np.maximum(offset + rng.standard_normal((n, DIM)).astype(np.float32), 0) + topics[rng.integers(0, 20, n)]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _copies(src: np.ndarray, cos: np.ndarray, seed: int) -> np.ndarray:
    """Rows at exactly cosine `cos` from `src` (noise orthogonal to the source)."""
    rng = np.random.default_rng(seed)
    noise = np.abs(rng.standard_normal(src.shape).astype(np.float32))
    noise -= (noise * src).sum(1, keepdims=True) * src
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = cos[:, None] * src + np.sqrt(1 - cos ** 2)[:, None] * noise
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


CFG = SemanticDedupConfig(index_vectors="float16")  # exact vectors: brute force is the reference


@pytest.fixture(scope="module")
def corpus():
    earlier = _rows(6000, 1)
    center = fit_center(earlier[:2000])
    src = np.random.default_rng(2).choice(len(earlier), 300, replace=False)
    cos = np.random.default_rng(3).uniform(0.975, 0.998, len(src)).astype(np.float32)
    queries = np.concatenate([_copies(earlier[src], cos, 4), _rows(300, 5)])
    return earlier, center, src, queries


def _part(x, center, cfg=CFG, bcfg=None):
    bcfg = bcfg or BucketConfig()
    return build_part(bucket_keys(x, cfg, center, bcfg), encode(x, cfg), band_keys(x, cfg, center), cfg)


def _global(q, p, r, offsets):
    return set(zip(q.tolist(), (r + np.asarray(offsets)[p]).tolist()))


def test_returns_exactly_the_brute_force_matches_with_known_near_duplicates(corpus):
    earlier, center, src, queries = corpus
    parts = [_part(earlier, center)]
    q, p, r, s, stats = query_parts(parts, queries, CFG, center)
    bq, bp, br, bs = brute_force_query(queries, parts, CFG)
    assert len(bq) >= len(src)  # the planted copies (cosine 0.975-0.998) at least
    assert set(zip(q.tolist(), r.tolist())) == set(zip(bq.tolist(), br.tolist()))
    assert {(i, int(j)) for i, j in enumerate(src)} <= set(zip(q.tolist(), r.tolist()))
    np.testing.assert_allclose(s, bs, atol=1e-5)  # same pairs in the same (q, p, r) order
    assert (s >= CFG.threshold).all() and (p == 0).all()
    # the work is bounded by the buckets, not the index: far fewer candidates than all pairs
    assert stats.pairs < 0.05 * len(queries) * len(earlier)
    assert stats.prefix_bits == prefix_bits(len(earlier), BucketConfig().rows_per_bucket)


def test_int8_index_matches_brute_force_on_decoded_vectors(corpus):
    earlier, center, src, queries = corpus
    cfg = SemanticDedupConfig()
    parts = [_part(earlier, center, cfg)]
    q, _, r, _, _ = query_parts(parts, queries, cfg, center)
    bq, _, br, _ = brute_force_query(queries, parts, cfg)
    assert set(zip(q.tolist(), r.tolist())) == set(zip(bq.tolist(), br.tolist()))


def test_grouping_into_parts_does_not_change_the_result(corpus, tmp_path):
    earlier, center, _src, queries = corpus
    whole = query_parts([_part(earlier, center)], queries, CFG, center)
    cuts = [0, 4000, 5000, len(earlier)]
    parts = [_part(earlier[a:b], center) for a, b in zip(cuts[:-1], cuts[1:])]
    for k, part in enumerate(parts):  # memory-mapped from disk, as the store reads them
        save_part(part, str(tmp_path / f"p{k}"))
    loaded = [load_part(str(tmp_path / f"p{k}")) for k in range(len(parts))]
    split = query_parts(loaded, queries, CFG, center)
    assert _global(*split[:3], cuts[:-1]) == _global(*whole[:3], [0])
    assert split[4].parts == 3 and split[4].earlier_rows == len(earlier)
    again = query_parts(loaded, queries, CFG, center)  # deterministic
    for a, b in zip(split[:4], again[:4]):
        np.testing.assert_array_equal(a, b)


def test_unrelated_queries_and_empty_inputs(corpus):
    earlier, center, _src, _queries = corpus
    parts = [_part(earlier, center)]
    q, *_ = query_parts(parts, _rows(200, 9), CFG, center)
    bq, *_ = brute_force_query(_rows(200, 9), parts, CFG)
    assert len(q) == len(bq)
    q, p, r, s, stats = query_parts([], _rows(5, 9), CFG, center)
    assert len(q) == len(p) == len(r) == len(s) == 0 and stats.earlier_rows == 0
    q, *_ = query_parts(parts, np.empty((0, DIM), np.float32), CFG, center)
    assert len(q) == 0


def test_prefix_bits_follow_the_corpus_size():
    assert prefix_bits(1, 1.0) == 1
    assert prefix_bits(100_000, 1.0) == 17
    assert prefix_bits(1_000_000, 1.0) == 20
    assert prefix_bits(5_000_000, 1.0) == 23
    assert prefix_bits(10 ** 12, 1.0) == 32


def test_probe_masks_flip_only_low_margin_prefix_bits():
    rng = np.random.default_rng(7)
    m = rng.standard_normal((50, 32)).astype(np.float32)
    masks = probe_masks(m, 12, 16, 8)
    assert masks.shape == (50, 16) and (masks[:, 0] == 0).all()
    assert (masks & np.uint32((1 << 20) - 1) == 0).all()  # only the top 12 bits
    assert all(len(set(row.tolist())) == 16 for row in masks)
    low = np.argsort(np.abs(m[:, :12]), axis=1, kind="stable")[:, :8]
    allowed = (np.uint32(1) << (31 - low).astype(np.uint32)).sum(axis=1).astype(np.uint32)
    assert (masks & ~allowed[:, None] == 0).all()
    # the single flip of the lowest-margin bit is the cheapest non-empty probe
    assert (masks[:, 1] == (np.uint32(1) << (31 - low[:, 0]).astype(np.uint32))).all()
    assert probe_masks(m, 3, 16, 8).shape == (50, 8)  # 2**3 subsets only


def test_bad_settings_and_mismatched_parts(corpus):
    earlier, center, _src, queries = corpus
    for bad in ({"tables": 0}, {"flip_bits": 0}, {"probes": 0}, {"probes": 300, "flip_bits": 8},
                {"rows_per_bucket": 0}):
        with pytest.raises(ValueError):
            BucketConfig(**bad)
    with pytest.raises(ValueError, match="key tables"):
        query_parts([_part(earlier[:100], center, bcfg=BucketConfig(tables=2))], queries, CFG, center)
    with pytest.raises(ValueError, match="key rows"):
        build_part(np.zeros((3, 6), np.uint32), np.zeros((2, DIM), np.float16), np.zeros((3, 48), np.uint32), CFG)
