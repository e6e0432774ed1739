from __future__ import annotations

import pytest

from curation.index_store import closing_blocks, earlier_blocks


def test_earlier_blocks_cover_every_earlier_shard_once_with_few_files():
    written: set[tuple[int, int]] = set()
    for p in range(1, 600):
        blocks = earlier_blocks(p)
        covered = [i for s, e in blocks for i in range(s, e + 1)]
        assert covered == list(range(1, p)), p
        assert len(blocks) <= max(1, (p - 1).bit_length()), p
        # every block read was written before: size 1 by its shard, larger ones by the shard that closed them
        assert set(blocks) <= written, p
        written |= {(p, p)} | {(s, e) for s, _, e in closing_blocks(p)}
    assert len(earlier_blocks(500)) == 7  # 499 = 256 + 128 + 64 + 32 + 16 + 2 + 1: 7 files, not 499


def test_closing_blocks_are_built_from_existing_halves():
    assert closing_blocks(1) == [] and closing_blocks(3) == []
    assert closing_blocks(4) == [(3, 3, 4), (1, 2, 4)]
    assert closing_blocks(8) == [(7, 7, 8), (5, 6, 8), (1, 4, 8)]
    with pytest.raises(ValueError):
        earlier_blocks(0)


def _store(tmp_path):
    import polars as pl

    from curation.index_store import IndexStore

    return pl, IndexStore("demo_index", lambda k: str(tmp_path / "idx" / f"{k}.parquet"), str(tmp_path / "blocks"))


def _write_shard(pl, tmp_path, key: str, n: int) -> None:
    (tmp_path / "idx").mkdir(exist_ok=True)
    pl.DataFrame({"shard": [key] * n, "row": list(range(n))}).write_parquet(tmp_path / "idx" / f"{key}.parquet")


def test_index_store_reads_earlier_rows_through_blocks_identically(tmp_path):
    pl, store = _store(tmp_path)
    keys = [f"s-{i:06d}" for i in range(1, 8)]
    for i, k in enumerate(keys, 1):
        _write_shard(pl, tmp_path, k, i)
        store.write_blocks(keys, k)
    expected = pl.concat([pl.read_parquet(tmp_path / "idx" / f"{k}.parquet") for k in keys[:6]])
    got = store.load_earlier(keys, keys[6])
    assert got.sort(["shard", "row"]).equals(expected.sort(["shard", "row"]))
    # 6 earlier shards = blocks [1,4] + [5,6]: two files read, one frame each when iterating
    assert [f.height for f in store.iter_earlier(keys, keys[6])] == [1 + 2 + 3 + 4, 5 + 6]
    assert sorted(p.name for p in (tmp_path / "blocks").iterdir()) == [
        f"{keys[0]}__{keys[1]}.parquet", f"{keys[0]}__{keys[3]}.parquet", f"{keys[2]}__{keys[3]}.parquet",
        f"{keys[4]}__{keys[5]}.parquet"]
    # a corrupt block is rebuilt from its halves; the rows read do not change
    (tmp_path / "blocks" / f"{keys[0]}__{keys[3]}.parquet").write_bytes(b"PAR1 not really")
    assert store.load_earlier(keys, keys[6]).sort(["shard", "row"]).equals(expected.sort(["shard", "row"]))
    assert pl.read_parquet(tmp_path / "blocks" / f"{keys[0]}__{keys[3]}.parquet").height == 10
    # re-writing shard 2 drops every block holding it and closes its own again
    _write_shard(pl, tmp_path, keys[1], 9)
    assert store.write_blocks(keys, keys[1]) == [str(tmp_path / "blocks" / f"{keys[0]}__{keys[1]}.parquet")]
    assert not (tmp_path / "blocks" / f"{keys[0]}__{keys[3]}.parquet").exists()
    assert store.load_earlier(keys, keys[6]).filter(pl.col("shard") == keys[1]).height == 9


def test_index_store_names_earlier_shards_without_an_index(tmp_path):
    from curation.index_store import MissingEarlierIndexError

    pl, store = _store(tmp_path)
    keys = ["s-000001", "s-000002", "s-000003"]
    _write_shard(pl, tmp_path, keys[0], 2)
    with pytest.raises(MissingEarlierIndexError, match=r"1 earlier shard\(s\) have no demo_index yet: \['s-000002'\]"):
        store.load_earlier(keys, keys[2])
    assert store.load_earlier(keys, keys[0]) is None
    assert store.load_earlier(keys, keys[1]).height == 2
