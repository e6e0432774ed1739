"""The partitioned (IVF) cross-shard index of the semantic pass (curation/semantic/ivf.py, ivf_store.py).

Vectors come from a seeded generator (the index's math does not need real images): non-negative
"ReLU-like" rows sharing a common direction and topics, like image embeddings, plus planted near
copies."""

import dataclasses
import os

import numpy as np
import polars as pl
import pytest

from curation.semantic import SemanticDedupConfig, band_keys, encode, fit_center, semantic_dedup_shard
from curation.semantic.buckets import brute_force_query
from curation.semantic.ivf import (
    IvfConfig,
    build_generation,
    build_part,
    generation_end,
    generation_ends,
    load_part,
    merge_parts,
    query_ivf,
    save_part,
)
from curation.semantic.ivf_store import IndexSettingsError, IvfStore, index_settings
from curation.semantic.lsh import pack_bits
from tests.unit.test_semantic_buckets import DIM, _copies, _rows  # the same seeded generator

CFG = SemanticDedupConfig(index_vectors="float16", threshold=0.968)  # exact vectors: brute force is the reference
ICFG = IvfConfig(list_rows=64, sample_rows=4096)


def _shard_rows(x, center, offset=0, cfg=CFG):
    return pack_bits(band_keys(x, cfg, center), cfg.band_bits), encode(x, cfg), {"row": np.arange(len(x)) + offset}


@pytest.fixture(scope="module")
def corpus():
    earlier = _rows(8000, 1)
    center = fit_center(earlier[:2000])
    src = np.random.default_rng(2).choice(len(earlier), 300, replace=False)
    cos = np.random.default_rng(3).uniform(0.968, 0.998, len(src)).astype(np.float32)
    queries = np.concatenate([_copies(earlier[src], cos, 4), _rows(300, 5)])
    return earlier, center, src, queries


def test_generation_ends_bound_the_growth_of_lists():
    assert generation_ends(1.5, 100)[:10] == [1, 2, 3, 5, 8, 12, 18, 27, 41, 62]
    assert [generation_end(p, 1.5) for p in (1, 2, 3, 4, 5, 6, 9, 13)] == [0, 1, 2, 3, 3, 5, 8, 12]
    for p in range(2, 2000):  # the generation a shard queries covers at least 1/growth of the earlier shards
        assert (p - 1) / generation_end(p, 1.5) <= 1.5 + 1e-9
    with pytest.raises(ValueError, match="growth"):
        IvfConfig(growth=1.0)
    with pytest.raises(ValueError, match="nprobe"):
        IvfConfig(nprobe=0)


def test_recall_on_planted_near_copies_and_bounded_candidates(corpus, tmp_path):
    earlier, center, src, queries = corpus
    shards = [earlier[s:s + 2000] for s in range(0, len(earlier), 2000)]
    quant, block = build_generation(lambda: (_shard_rows(x, center) for x in shards), str(tmp_path / "g"), CFG, ICFG)
    assert quant.n_lists == round(len(earlier) / ICFG.list_rows)
    qband = pack_bits(band_keys(queries, CFG, center), CFG.band_bits)
    q, p, r, s, st = query_ivf([block], quant, queries, qband, CFG, ICFG)
    bq, _bp, br, _bs = brute_force_query(queries, [block], CFG)
    truth = set(zip(bq.tolist(), block.payload["row"][br].tolist()))
    found = set(zip(q.tolist(), block.payload["row"][r].tolist()))
    assert len(truth) >= 290  # the planted copies (and any chance pairs)
    assert found <= truth  # every result is verified by the exact cosine
    assert len(truth & found) / len(truth) >= 0.99
    assert {(i, int(j)) for i, j in enumerate(src)} & found  # the copies find their sources
    # the query reads nprobe lists, not the corpus
    assert st.candidates / len(queries) < 0.25 * len(earlier)


def test_parts_reopen_merge_and_grouping_change_nothing(corpus, tmp_path):
    earlier, center, _src, queries = corpus
    quant, block = build_generation(lambda: iter([_shard_rows(earlier[:4000], center)]), str(tmp_path / "g"), CFG, ICFG)
    from curation.semantic.ivf import assign_part

    a = assign_part(_shard_rows(earlier[4000:6000], center, 4000), quant, CFG, ICFG)
    b = assign_part(_shard_rows(earlier[6000:], center, 6000), quant, CFG, ICFG)
    save_part(a, str(tmp_path / "a"))
    save_part(b, str(tmp_path / "b"))
    a2, b2 = load_part(str(tmp_path / "a")), load_part(str(tmp_path / "b"))
    assert isinstance(a2.vec, np.memmap) and np.array_equal(a2.vec, a.vec) and np.array_equal(a2.leaf_start, a.leaf_start)
    merge_parts([a2, b2], str(tmp_path / "ab"), chunk_rows=300)  # many chunks of lists
    ab = load_part(str(tmp_path / "ab"))
    assert len(ab) == len(a) + len(b)
    # rows of every list: a's first, then b's
    for lst in range(0, quant.n_lists, 7):
        want = np.concatenate([a.payload["row"][a.leaf_start[lst]:a.leaf_start[lst + 1]],
                               b.payload["row"][b.leaf_start[lst]:b.leaf_start[lst + 1]]])
        assert np.array_equal(ab.payload["row"][ab.leaf_start[lst]:ab.leaf_start[lst + 1]], want)
    qband = pack_bits(band_keys(queries, CFG, center), CFG.band_bits)

    def pairs(parts):
        q, p, r, s, _ = query_ivf(parts, quant, queries, qband, CFG, ICFG)
        return sorted(zip(q.tolist(), [int(parts[pi].payload["row"][ri]) for pi, ri in zip(p, r)],
                          np.round(s, 6).tolist()))

    both = pairs([block, ab])
    assert both == pairs([block, a2, b2])  # grouping rows into parts does not change the pairs
    assert any(r >= 4000 for _q, r, _s in both) and any(r < 4000 for _q, r, _s in both)


def _frame(x, prefix, shard):
    return pl.DataFrame({"image_id": [f"{prefix}{i:05d}" for i in range(len(x))], "shard": shard,
                         "embedding": pl.Series(x, dtype=pl.Array(pl.Float32, x.shape[1]))})


def test_store_matches_the_streaming_path_and_checks_settings(corpus, tmp_path):
    earlier, center, src, queries = corpus
    cfg = SemanticDedupConfig()  # int8 index vectors, the default
    icfg = IvfConfig(list_rows=32, sample_rows=2048)
    keys = [f"s-{k:06d}" for k in range(1, 7)]
    shards = [earlier[k * 1000:(k + 1) * 1000] for k in range(5)] + [queries]
    indexes: dict[str, pl.DataFrame] = {}

    def read(key):
        if key not in indexes:
            raise FileNotFoundError(key)
        return indexes[key]

    store = IvfStore(str(tmp_path / "ivf"), read, cfg, icfg)
    store.check_settings(index_settings(cfg, icfg, DIM))
    streamed = []
    for k, key in enumerate(keys):
        cur = _frame(shards[k], f"{key}-", key)
        earlier_ivf = store.earlier(keys, key)
        stats: dict = {}
        rows_ivf, index = semantic_dedup_shard(cur, None, cfg, shard_seq=k, center=center, ivf_stats=stats,
                                               earlier_ivf=None if earlier_ivf is None else
                                               (earlier_ivf[0], earlier_ivf[1], icfg))
        rows_stream, _ = semantic_dedup_shard(cur, [indexes[kk] for kk in keys[:k]], cfg, shard_seq=k, center=center)
        assert rows_ivf.equals(rows_stream), key
        indexes[key] = index
        store.add_shard(keys, key, index, None if earlier_ivf is None else earlier_ivf[0])
        streamed.append(rows_stream)
        if k:
            assert stats["earlier_rows"] == sum(int(indexes[kk]["is_representative"].sum()) for kk in keys[:k])
    last = streamed[-1]
    assert (last["rep_shard"] != keys[-1]).sum() >= 150  # the planted copies of rows in shards 1-5 joined them
    # shard 6 read generation 5's block only; shard 5 read generation 3's block and shard 4's tail part
    assert store.earlier(keys, keys[5])[2] == 5 and len(store.earlier(keys, keys[5])[1]) == 1
    assert store.earlier(keys, keys[4])[2] == 3 and len(store.earlier(keys, keys[4])[1]) == 2
    assert os.path.isdir(tmp_path / "ivf" / f"gen-000003-{keys[2]}" / "tail" / keys[3])
    assert not os.path.exists(tmp_path / "ivf" / f"gen-000002-{keys[1]}" / "block")  # superseded by generation 3
    # re-writing shard 2's index drops the blocks holding it; they are rebuilt from the indexes
    store.add_shard(keys, keys[1], indexes[keys[1]])
    assert not os.path.exists(tmp_path / "ivf" / f"gen-000005-{keys[4]}" / "block")
    again = store.earlier(keys, keys[5])
    assert len(again[1][0]) == sum(int(indexes[kk]["is_representative"].sum()) for kk in keys[:5])
    # a missing earlier index is reported, not skipped
    del indexes[keys[0]]
    store.invalidate(keys, keys[0])
    with pytest.raises(LookupError, match=keys[0]):
        store.earlier(keys, keys[5])
    # settings are recorded and checked
    with pytest.raises(IndexSettingsError, match="list_rows"):
        store.check_settings(index_settings(cfg, dataclasses.replace(icfg, list_rows=64), DIM))
    with pytest.raises(IndexSettingsError, match="n_bands"):
        store.check_settings(index_settings(dataclasses.replace(cfg, n_bands=32), None, DIM))
    store.check_settings(index_settings(cfg, dataclasses.replace(icfg, nprobe=16), DIM))  # query-only setting


def test_probe_recall_proxy_counts_lists_that_hold_the_copy():
    """bench ivf_probe_recall: the list recall grows with nprobe and reaches 1 when every list is
    probed; the triangle bound is a fraction of the lists."""
    from bench.semantic import ivf_probe_recall

    res = ivf_probe_recall((2_000,), CFG, overrides=({"list_rows": 64, "sample_rows": 2_000, "top_probe": 64},),
                           pairs=100, dim=64, shard_rows=1_000)
    e = res["2000_list_rows_64_sample_rows_2000_top_probe_64"]
    assert e["lists"] == 31
    rec = [e[f"list_recall_nprobe_{k}"] for k in (8, 16, 32, 64)]
    assert rec == sorted(rec) and rec[-1] == 1.0 and rec[0] < 1.0
    assert 0.0 < e["triangle_exact_lists_fraction"] <= 1.0
