"""Nothing missing from the inventory: every regular file of a source is listed (hidden ones are
excluded and counted), images are recognised by content whatever their name, non-images get
not_an_image, and large valid images up to the pixel limit are analysed."""

from __future__ import annotations

import hashlib
import io
import os

import polars as pl
import pytest
from PIL import Image

from curation import errors
from curation.imaging import HASH_COLUMNS, analyse_image, limits
from curation.inventory import InventoryConfig, iter_inventory, process_file
from curation.schema import MANIFEST_SCHEMA
from curation.sources import IMAGE_EXTENSIONS, ListingRules, ListingSkips, list_source
from tests.hostile_corpus import photo, png_bomb


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def mixed(tmp_path):
    root = tmp_path / "src"
    (root / "cam" / ".thumbnails").mkdir(parents=True)
    (root / "cam" / "IMG_0001").write_bytes(_jpeg(photo("astronaut")))  # extension-less JPEG
    (root / "cam" / "scan").write_bytes(_png(photo("camera")))  # extension-less PNG
    (root / "cam" / "photo.dat").write_bytes(_png(photo("coffee")))  # misnamed PNG
    (root / "cam" / "README").write_text("holiday pictures, 2024\n")  # text without extension
    (root / "cam" / "ok.jpg").write_bytes(_jpeg(photo("chelsea")))
    (root / "cam" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "cam" / ".thumbnails" / "t.png").write_bytes(_png(photo("camera").resize((32, 32))))
    (root / "tmp.partial").write_bytes(b"x" * 10)
    return root


def test_every_regular_file_is_listed_hidden_ones_counted(mixed):
    skipped = ListingSkips()
    files, exhausted = list_source(str(mixed), skipped=skipped)
    rels = [f.rel_path for f in files]
    assert exhausted
    assert rels == ["cam/IMG_0001", "cam/README", "cam/ok.jpg", "cam/photo.dat", "cam/scan", "tmp.partial"]
    assert skipped.counts == {"hidden_file": 1, "hidden_dir": 1}
    assert skipped.examples == {"hidden_file": ["cam/.DS_Store"], "hidden_dir": ["cam/.thumbnails/"]}

    with_hidden, _ = list_source(str(mixed), rules=ListingRules(hidden=True))
    assert {"cam/.DS_Store", "cam/.thumbnails/t.png"} <= {f.rel_path for f in with_hidden}

    skipped = ListingSkips()
    files, _ = list_source(str(mixed), rules=ListingRules(exclude=("*.partial", "README")), skipped=skipped)
    assert [f.rel_path for f in files] == ["cam/IMG_0001", "cam/ok.jpg", "cam/photo.dat", "cam/scan"]
    assert skipped.counts["excluded_pattern"] == 2
    files, _ = list_source(str(mixed), rules=ListingRules(include=("cam/*",)))
    assert "tmp.partial" not in {f.rel_path for f in files} and len(files) == 5

    skipped = ListingSkips()
    files, _ = list_source(str(mixed), extensions=IMAGE_EXTENSIONS, skipped=skipped)
    assert [f.rel_path for f in files] == ["cam/ok.jpg"]
    assert skipped.counts["extension"] == 5
    with pytest.raises(ValueError, match="ListingRules.exclude"):
        ListingRules(exclude="*.tmp")


def test_paging_never_skips_a_folder_that_sorts_before_a_file(tmp_path):
    root = tmp_path / "src"
    for rel in ("z.jpg", "a/x.jpg", "a/b/y.jpg", "m"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_jpeg(photo("camera").resize((16, 16))))
    whole, _ = list_source(str(root))
    paged, after = [], ""
    while True:
        page, exhausted = list_source(str(root), after=after, limit=1)
        paged += [f.rel_path for f in page]
        if exhausted:
            break
        after = page[-1].rel_path
    assert paged == [f.rel_path for f in whole] == ["a/b/y.jpg", "a/x.jpg", "m", "z.jpg"]


def test_content_decides_what_is_an_image(mixed):
    files, _ = list_source(str(mixed))
    m = pl.DataFrame([{"image_id": hashlib.sha1(f.uri.encode()).hexdigest()[:16], "uri": f.uri,
                       "rel_path": f.rel_path, "listed_bytes": f.size, "listed_mtime": f.mtime} for f in files],
                     schema=MANIFEST_SCHEMA)
    inv = pl.concat(list(iter_inventory(m, "s", str(mixed), InventoryConfig(), workers=1)))
    by = {r["rel_path"]: r for r in inv.iter_rows(named=True)}
    assert len(inv) == len(files)
    assert by["cam/IMG_0001"]["format"] == "JPEG" and by["cam/IMG_0001"]["error_code"] is None
    assert by["cam/scan"]["format"] == "PNG" and by["cam/scan"]["phash"] is not None
    assert by["cam/photo.dat"]["format"] == "PNG" and by["cam/photo.dat"]["error_code"] is None
    assert by["cam/README"]["error_code"] == errors.NOT_AN_IMAGE
    assert "text" in by["cam/README"]["error_message"]
    assert by["tmp.partial"]["error_code"] == errors.NOT_AN_IMAGE
    # the same photo under a proper name measures the same
    ok = by["cam/ok.jpg"]
    assert ok["dhash"] is not None and ok["ahash"] is None and ok["whash"] is None  # extras are opt-in
    one = m.filter(pl.col("rel_path") == "cam/ok.jpg")
    extra = pl.concat(list(iter_inventory(one, "s", str(mixed), InventoryConfig(extra_hashes=True), workers=1))).row(0, named=True)
    ref = analyse_image((mixed / "cam" / "ok.jpg").read_bytes())  # all four, like imagehash
    assert {k: extra[k] for k in HASH_COLUMNS} == {k: ref[k] for k in HASH_COLUMNS}
    assert all(extra[k] is not None for k in HASH_COLUMNS)
    assert (ok["dhash"], ok["phash"]) == (ref["dhash"], ref["phash"])  # kept hashes unchanged by the flag


def test_large_valid_image_is_analysed_only_declared_size_beyond_limit_is_a_bomb(tmp_path):
    assert limits.MAX_PIXELS >= 250_000_000
    src = tmp_path / "src"
    src.mkdir()
    # 16,000 x 10,000 = 160 M pixels (above the former 150 M limit) of real photo tiles
    w, h = 16_000, 10_000
    big = Image.new("L", (w, h), 0)
    tile = photo("astronaut").convert("L")
    for y in range(0, h, 2_000):
        for x in range(0, w, 2_000):
            big.paste(tile, (x, y))
    big.save(src / "panorama", "JPEG", quality=70)  # no extension either
    del big
    rec = process_file(str(src / "panorama"), str(src), InventoryConfig())
    assert rec["error_code"] is None, rec["error_message"]
    assert (rec["width"], rec["height"]) == (w, h) and rec["format"] == "JPEG"
    assert rec["contrast"] > 10  # real content was measured, not a blank canvas
    (src / "bomb.png").write_bytes(png_bomb(16_385, 16_384))
    assert process_file(str(src / "bomb.png"), str(src), InventoryConfig())["error_code"] == errors.DECOMPRESSION_BOMB
    assert os.path.getsize(src / "panorama") > 1_000_000
