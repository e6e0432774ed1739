from __future__ import annotations

import re

import polars as pl
import pytest

from curation.sources import list_source
from partitions.discovery import SourceCursor, discover_all, discover_page
from partitions.shards import ShardRegistry, parse_shard_key, shard_key
from tests.conftest import write_real_images

UNSAFE = re.compile(r"[,|\[\]\s]|\.\.\.")


def test_shard_keys_are_ui_safe_and_ordered():
    keys = [shard_key("demo", i) for i in (1, 2, 10, 999_999, 1_000_000)]
    assert all(not UNSAFE.search(k) for k in keys)
    assert [parse_shard_key(k)[1] for k in keys] == [1, 2, 10, 999_999, 1_000_000]
    for bad in ("Demo", "de mo", "a,b", "x|y", "a...b", ""):
        with pytest.raises(ValueError):
            shard_key(bad, 1)


def test_listing_is_sorted_paged_and_skips_dirs_and_hidden(tmp_path):
    # every regular file is listed (notes.txt too: the stage records it as not_an_image);
    # hidden files are excluded (and counted: tests/unit/test_sources.py)
    root = tmp_path / "src"
    write_real_images(root / "b", 3)
    write_real_images(root / "a", 2)
    (root / "a" / ".hidden.png").write_bytes(b"x")
    (root / "dir.jpg").mkdir()  # a directory named like an image is not a file
    (root / "notes.txt").write_text("not an image")
    files, exhausted = list_source(str(root))
    rels = [f.rel_path for f in files]
    assert exhausted and rels == sorted(rels, key=lambda r: r.split("/")) and len(rels) == 6
    assert "notes.txt" in rels and "a/.hidden.png" not in rels
    page1, ex1 = list_source(str(root), limit=2)
    page2, ex2 = list_source(str(root), after=page1[-1].rel_path, limit=10)
    assert not ex1 and ex2 and [f.rel_path for f in page1 + page2] == rels


def test_symlink_loop_does_not_hang_listing(tmp_path):
    root = tmp_path / "src"
    write_real_images(root, 2)
    (root / "loop").symlink_to(root)  # a directory symlink is listed as a file entry, never followed
    files, _ = list_source(str(root), extensions=None)
    assert {f.rel_path for f in files} >= {"loop"}


def test_registry_manifests_are_immutable_and_sequence_is_global(tmp_path):
    src = tmp_path / "src"
    write_real_images(src, 25)
    reg = ShardRegistry(str(tmp_path / "out"))
    files, _ = list_source(str(src))
    shards = reg.register("alpha", files[:20], shard_size=8)
    assert [s.n_files for s in shards] == [8, 8, 4]
    more = reg.register("beta", files[20:], shard_size=8)
    assert [s.key for s in shards + more] == ["alpha-000001", "alpha-000002", "alpha-000003", "beta-000004"]
    assert reg.keys() == [s.key for s in shards + more]
    m = reg.manifest("alpha-000002")
    assert m["rel_path"].to_list() == [f.rel_path for f in files[8:16]]
    assert m["image_id"].n_unique() == 8
    assert reg.earlier_keys("beta-000004") == ["alpha-000001", "alpha-000002", "alpha-000003"]
    # create-once: a second writer cannot overwrite an existing manifest
    assert not reg._create_once(reg.manifest_uri("alpha-000001"), m)
    assert reg.manifest("alpha-000001")["rel_path"].to_list() == [f.rel_path for f in files[:8]]


def test_discovery_pages_register_full_shards_then_the_tail(tmp_path):
    src = tmp_path / "src"
    write_real_images(src, 23)
    reg = ShardRegistry(str(tmp_path / "out"))
    res = discover_page(reg, "s", str(src), SourceCursor(), shard_size=5, page_size=12)
    # 12 listed -> two full shards of 5; the other 2 are left for the next tick
    assert [s.n_files for s in res.shards] == [5, 5] and not res.exhausted
    res2 = discover_page(reg, "s", str(src), res.cursor, shard_size=5, page_size=12)
    res3 = discover_page(reg, "s", str(src), res2.cursor, shard_size=5, page_size=12)
    all_shards = res.shards + res2.shards + res3.shards
    assert res3.exhausted and res3.cursor.passes == 1 and res3.cursor.after == ""
    assert sum(s.n_files for s in all_shards) == 23
    ids = pl.concat([reg.manifest(s.key) for s in all_shards])["uri"]
    assert ids.n_unique() == 23  # every file exactly once
    # nothing new: a whole pass registers nothing
    assert discover_all(reg, "s", str(src), shard_size=5, page_size=12) == []


def test_sparse_new_files_never_stall(tmp_path):
    src = tmp_path / "src"
    write_real_images(src, 30)
    reg = ShardRegistry(str(tmp_path / "out"))
    discover_all(reg, "s", str(src), shard_size=100, page_size=1000)
    write_real_images(src, 1, prefix="img", start=1000)  # one new file in the middle of the order
    res = discover_page(reg, "s", str(src), SourceCursor(), shard_size=100, page_size=10)
    cursor, found = res.cursor, res.shards
    for _ in range(10):
        if found:
            break
        res = discover_page(reg, "s", str(src), cursor, shard_size=100, page_size=10)
        cursor, found = res.cursor, res.shards
    assert [s.n_files for s in found] == [1]


def test_excluded_entries_are_counted_and_named_not_dropped_silently(tmp_path):
    from curation.sources import ListingSkips
    from partitions.discovery import TickResult, discover_all
    from tests.conftest import write_real_images

    write_real_images(tmp_path / "src", 3)
    (tmp_path / "src" / ".DS_Store").write_text("x")
    (tmp_path / "src" / "notes").write_text("no extension: listed, the stage sniffs it")
    skipped = ListingSkips()
    shards = discover_all(ShardRegistry(str(tmp_path / "out")), "cam", str(tmp_path / "src"), shard_size=10,
                          skipped=skipped)
    assert len(shards) == 1 and shards[0].n_files == 4
    assert skipped.counts == {"hidden_file": 1}
    assert TickResult(skipped=skipped).skipped_note() == "excluded 1 (hidden_file: 1, e.g. .DS_Store)"
