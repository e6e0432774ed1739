"""The inventory stage against a hostile corpus: every kind gets its code, no row is ever lost."""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curation import errors  # noqa: E402
from curation.imaging import decode_and_measure  # noqa: E402
from curation.inventory import InventoryConfig, iter_inventory, process_file  # noqa: E402
from curation.reader import InputError, read_source  # noqa: E402
from curation.schema import INVENTORY_SCHEMA  # noqa: E402
from tests.hostile_corpus import (  # noqa: E402
    ANIMATED,
    LONG_NAME,
    ORIENTATION_FILES,
    ORIENTED_SIZE,
    PERMISSION_ENFORCED,
    SAME_FILE_PATHS,
    build_hostile_corpus,
    crash_on_marked,
    manifest_for,
    photo,
)

CFG = InventoryConfig(decode_timeout_s=60.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("hostile") / "src"
    expected = build_hostile_corpus(root)
    return root, expected


@pytest.fixture(scope="module")
def slow_png(tmp_path_factory) -> Path:
    """A legitimate 12,000 x 12,000 greyscale PNG (144 M pixels: above Pillow's 89.5 M bomb
    warning, below our 150 M default limit) of real pixels; ~2 MB on disk, ~0.3 s to decode."""
    big = Image.new("L", (12_000, 12_000), 0)
    tile = photo("astronaut").convert("L")
    for x in range(0, 12_000, 1_500):
        big.paste(tile, (x, x))
    path = tmp_path_factory.mktemp("slow") / "src" / "huge.png"
    path.parent.mkdir(parents=True)
    big.save(path, "PNG", compress_level=1)
    return path


def test_corpus_has_at_least_twenty_kinds(corpus):
    _, expected = corpus
    assert len(expected) >= 40
    codes = {c for c in expected.values() if c}
    assert codes <= errors.ALL_CODES
    assert len(codes) >= 11 + int(PERMISSION_ENFORCED)


def test_every_hostile_kind_gets_its_expected_code(corpus):
    root, expected = corpus
    wrong = {}
    for rel, code in expected.items():
        rec = process_file(os.path.join(root, rel), str(root), CFG)
        if rec["error_code"] != code:
            wrong[rel] = (code, rec["error_code"], rec["error_message"])
        if code is None:
            assert rec["sha256"] and rec["bytes"] > 0 and rec["hash_input"] is not None, rel
        else:
            assert rec["error_message"], rel
    assert wrong == {}


def test_permission_assertion_is_only_skipped_for_root(corpus):
    root, expected = corpus
    rel = "fs/no_permission.jpg"
    if not PERMISSION_ENFORCED:
        # running as root: chmod 000 does not stop reads, the file is analysed normally
        assert expected[rel] is None
        pytest.skip("euid 0: permissions do not stop reads; permission_denied cannot be observed")
    with pytest.raises(InputError) as exc:
        read_source(str(root / rel), str(root), max_bytes=10**9)
    assert exc.value.code == errors.PERMISSION_DENIED


def _inventory(root: Path, rels: list[str], workers: int, **kw) -> pl.DataFrame:
    manifest = manifest_for(root, rels)
    done: list[int] = []
    batch_size = kw.pop("batch_size", 7)
    batches = list(iter_inventory(manifest, "shard-0", str(root), kw.pop("cfg", CFG), workers=workers,
                                  batch_size=batch_size, progress=done.append, **kw))
    for b in batches:
        assert dict(b.schema) == INVENTORY_SCHEMA
    assert all(b.height == batch_size for b in batches[:-1]) and 0 < batches[-1].height <= batch_size
    df = pl.concat(batches)
    assert df.height == manifest.height  # one row per manifest row, never fewer
    assert df["uri"].to_list() == manifest["uri"].to_list()  # manifest order
    assert df["image_id"].to_list() == manifest["image_id"].to_list()
    assert done[-1] == manifest.height and done == sorted(done)
    assert (df["shard"] == "shard-0").all()
    return df


@pytest.mark.parametrize("workers", [1, 2])
def test_iter_inventory_over_the_hostile_corpus(corpus, workers):
    root, expected = corpus
    rels = list(expected)
    df = _inventory(root, rels, workers)
    got = dict(zip(df["rel_path"].to_list(), df["error_code"].to_list()))
    assert got == expected
    ok = df.filter(pl.col("error_code").is_null())
    assert ok["phash"].null_count() == 0 and ok["sha256"].null_count() == 0
    assert ok["width"].min() >= 1 and ok["brightness"].null_count() == 0
    failed = df.filter(pl.col("error_code").is_not_null())
    assert failed["phash"].null_count() == failed.height
    assert failed["error_message"].null_count() == 0

    by = {r["rel_path"]: r for r in df.iter_rows(named=True)}
    for o, rel in ORIENTATION_FILES.items():
        assert (by[rel]["width"], by[rel]["height"]) == ORIENTED_SIZE and by[rel]["orientation"] == o
    assert by["orientation/corrupt_exif.jpg"]["orientation"] == 1
    for rel, n in ANIMATED.items():
        assert by[rel]["n_frames"] == n
    assert len({by[rel]["sha256"] for rel in SAME_FILE_PATHS}) == 1
    assert len({by[rel]["phash"] for rel in SAME_FILE_PATHS}) == 1
    assert by["modes/sprite_rgba.png"]["has_alpha"] and by["modes/palette_trns.png"]["has_alpha"]
    assert by["modes/grey_alpha_LA.png"]["mode"] == "LA" and by["modes/grey16.tif"]["mode"] == "I;16"
    assert by["modes/int32.tif"]["mode"] == "I"
    assert by["modes/float32.tif"]["mode"] == "F" and by["modes/ycck.jpg"]["mode"] == "CMYK"
    assert (by["modes/tall_1x10000.png"]["width"], by["modes/tall_1x10000.png"]["height"]) == (1, 10_000)
    assert by["ok/flat_grey.png"]["contrast"] == 0 and by["ok/flat_grey.png"]["entropy"] == 0
    assert by[f"names/{LONG_NAME}"]["sha256"] == by["ok/astronaut.jpg"]["sha256"]
    assert by["names/new\nline.jpg"]["error_code"] is None
    st = os.stat(root / "ok/astronaut.jpg")
    assert by["ok/astronaut.jpg"]["bytes"] == st.st_size
    assert by["ok/astronaut.jpg"]["mtime"] == pytest.approx(st.st_mtime)
    assert by["ok/astronaut.jpg"]["decode_ms"] > 0 and by["ok/astronaut.jpg"]["format"] == "JPEG"


def test_a_crashing_worker_becomes_error_rows_not_a_crashed_shard(corpus, tmp_path):
    root, expected = corpus
    src = tmp_path / "src"
    src.mkdir()
    rels = []
    for i in range(12):
        name = f"img_{i:02d}{'_CRASH' if i in (3, 8) else ''}.jpg"
        shutil.copy(root / "ok/astronaut.jpg", src / name)
        rels.append(name)
    df = _inventory(src, rels, workers=2, task=crash_on_marked, batch_size=5)
    codes = dict(zip(df["rel_path"].to_list(), df["error_code"].to_list()))
    assert codes == {r: (errors.WORKER_CRASHED if "CRASH" in r else None) for r in rels}
    msg = df.filter(pl.col("error_code") == errors.WORKER_CRASHED)["error_message"][0]
    assert "SIGSEGV" in msg


def test_spawn_start_method_works(corpus):
    root, expected = corpus
    rels = ["ok/astronaut.jpg", "broken/truncated.jpg", "modes/sprite_rgba.png"]
    df = _inventory(root, rels, workers=2, cfg=InventoryConfig(start_method="spawn"))
    assert df["error_code"].to_list() == [expected[r] for r in rels]


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_timeout_bounds_one_file(slow_png, workers):
    t0 = time.perf_counter()
    untimed = decode_and_measure(slow_png.read_bytes())
    untimed_s = time.perf_counter() - t0
    assert untimed["error_code"] is None
    timeout = max(0.05, untimed_s / 4)
    src = slow_png.parent
    small = src / "small.jpg"
    photo("chelsea").save(small, "JPEG")
    cfg = InventoryConfig(decode_timeout_s=timeout)
    t0 = time.perf_counter()
    df = _inventory(src, ["small.jpg", "huge.png", "small.jpg"], workers=workers, cfg=cfg)
    elapsed = time.perf_counter() - t0
    assert df["error_code"].to_list() == [None, errors.TIMEOUT, None]
    assert "decode_timeout_s" in df["error_message"][1]
    assert elapsed < untimed_s + 10  # the slow file did not run to completion on the critical path


def test_pillow_bomb_warning_never_leaks_and_our_limit_rules(slow_png):
    data = slow_png.read_bytes()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked DecompressionBombWarning would raise here
        rec = decode_and_measure(data)
        assert rec["error_code"] is None and (rec["width"], rec["height"]) == (12_000, 12_000)
        low = decode_and_measure(data, InventoryConfig(max_pixels=100_000_000).analysis)
    assert low["error_code"] == errors.DECOMPRESSION_BOMB
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # restored, not left at our limit


def test_reader_limits_and_paths(corpus, tmp_path):
    root, _ = corpus
    astronaut = str(root / "ok/astronaut.jpg")
    data, mtime = read_source(astronaut, str(root), max_bytes=10**8)
    assert data[:2] == b"\xff\xd8" and mtime == pytest.approx(os.stat(astronaut).st_mtime)
    cases = {
        (astronaut, 100): errors.TOO_LARGE_FILE,
        (str(tmp_path / "x.jpg"), 10**8): errors.UNSAFE_PATH,  # not under root
        ("relative/x.jpg", 10**8): errors.UNSAFE_PATH,
        (str(root) + "/ok/../ok/astronaut.jpg", 10**8): errors.UNSAFE_PATH,
    }
    for (uri, limit), code in cases.items():
        with pytest.raises(InputError) as exc:
            read_source(uri, str(root), max_bytes=limit)
        assert exc.value.code == code, uri
    rec = process_file(astronaut, str(root), InventoryConfig(max_bytes=100))
    assert rec["error_code"] == errors.TOO_LARGE_FILE and rec["sha256"] is None


def test_empty_manifest_and_bad_arguments(corpus):
    root, _ = corpus
    assert list(iter_inventory(manifest_for(root, []), "s", str(root), CFG, workers=2)) == []
    with pytest.raises(ValueError):
        list(iter_inventory(pl.DataFrame({"uri": ["x"]}), "s", str(root), CFG))


def test_s3_sources_through_moto(tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        from curation import storage

        storage._FS_CACHE.clear()
        fs = storage.filesystem("s3://bucket/")
        fs.mkdir("bucket")
        buf = io.BytesIO()
        photo("coffee").save(buf, "JPEG")
        fs.pipe_file("bucket/src/a.jpg", buf.getvalue())
        fs.pipe_file("bucket/src/empty.jpg", b"")
        fs.pipe_file("bucket/other/b.jpg", buf.getvalue())
        root = "s3://bucket/src"
        data, mtime = read_source("s3://bucket/src/a.jpg", root, max_bytes=10**8)
        assert data == buf.getvalue() and mtime is not None
        for uri, code in {"s3://bucket/src/missing.jpg": errors.NOT_FOUND,
                          "s3://bucket/src/empty.jpg": errors.EMPTY_FILE,
                          "s3://bucket/other/b.jpg": errors.UNSAFE_PATH,
                          "s3://bucket/src/../other/b.jpg": errors.UNSAFE_PATH,
                          "s3://elsewhere/src/a.jpg": errors.UNSAFE_PATH}.items():
            with pytest.raises(InputError) as exc:
                read_source(uri, root, max_bytes=10**8)
            assert exc.value.code == code, uri
        manifest = pl.DataFrame({"image_id": ["a", "m"], "uri": ["s3://bucket/src/a.jpg", "s3://bucket/src/missing.jpg"],
                                 "rel_path": ["a.jpg", "missing.jpg"], "listed_bytes": [1, 1],
                                 "listed_mtime": [None, None]})
        df = pl.concat(list(iter_inventory(manifest, "s", root, CFG, workers=1)))
        assert df["error_code"].to_list() == [None, errors.NOT_FOUND]
        assert df["width"][0] == 600
    finally:
        server.stop()
        from curation import storage

        storage._FS_CACHE.clear()


def test_todo_queue_streams_the_manifest_and_requeues_in_order():
    from curation.inventory import _TodoQueue

    uris = pl.Series("uri", [f"/r/{i}.jpg" for i in range(10_000)] + [None])
    q = _TodoQueue(uris)
    assert len(q) == 10_001 and q.peek_idx() == 0
    first = [q.popleft() for _ in range(5_000)]  # crosses a materialised-slice boundary
    assert first[4_097] == (4_097, "/r/4097.jpg")
    q.requeue([first[10], first[11]])
    assert [q.popleft(), q.popleft(), q.popleft()] == [first[10], first[11], (5_000, "/r/5000.jpg")]
    rest = []
    while q:
        rest.append(q.popleft())
    assert rest[-1] == (10_000, "") and len(rest) == 5_000
    assert len(q._buf) <= _TodoQueue._SLICE


def test_the_pool_hashes_in_its_workers_to_the_same_rows_as_in_process(corpus):
    """Stage 1's perceptual hashes are computed per chunk in the workers (`hash_chunk`) with
    workers > 1 and per output batch in process: every column, hashes and phash256 included, equal."""
    root, expected = corpus
    rels = sorted(expected)
    cfg = InventoryConfig(extra_hashes=True)
    one = _inventory(root, rels, workers=1, cfg=cfg)
    two = _inventory(root, rels, workers=2, cfg=cfg)
    drop = ["decode_ms"]  # wall-clock
    assert one.drop(drop).equals(two.drop(drop), null_equal=True)
    ok = two.filter(pl.col("error_code").is_null())
    assert ok.height > 10 and ok["phash"].null_count() == 0 and ok["whash"].null_count() == 0
    assert ok["phash256"].null_count() == 0
