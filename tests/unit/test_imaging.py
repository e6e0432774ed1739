"""curation.imaging: hashes against imagehash, metrics on known images, modes, orientation, alpha."""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from curation import errors  # noqa: E402
from curation import imaging as im  # noqa: E402
from tests.hostile_corpus import (  # noqa: E402
    _STORE_TRANSPOSE,
    ORIENTED_SIZE,
    png_bomb,
    ycck_jpeg,
)

PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "immunohistochemistry", "page")


def _arcade_images_dir() -> Path:
    import arcade

    return Path(arcade.__file__).parent / "resources" / "assets" / "images"


def arcade_sprites(limit: int = 60) -> list[Path]:
    files = sorted(p for p in _arcade_images_dir().rglob("*.png") if p.stat().st_size < 400_000)
    assert len(files) >= 20, "arcade's packaged sprites are missing"
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def as_int(h: imagehash.ImageHash) -> int:
    return int(str(h), 16)


def reference_hashes(grey: Image.Image) -> dict[str, int]:
    return {
        "ahash": as_int(imagehash.average_hash(grey)),
        "dhash": as_int(imagehash.dhash(grey)),
        "phash": as_int(imagehash.phash(grey)),
        "whash": as_int(imagehash.whash(grey, image_scale=64)),
    }


def reference_hash_image(data: bytes, background=(255, 255, 255), size: int = 128) -> Image.Image:
    """An independent re-implementation of the documented preprocessing (no draft: PNG only):
    orient, box-reduce large images to >= 2 x size, composite, grey, BILINEAR to size x size,
    2x2 box average to the 64 x 64 hash image."""
    img = Image.open(io.BytesIO(data))
    img = img.convert("RGBA") if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else img.convert("RGB")
    kx, ky = img.width // (2 * size), img.height // (2 * size)
    if kx > 1 or ky > 1:
        img = img.reduce((max(kx, 1), max(ky, 1)))
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(bg, img).convert("RGB")
    orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    transpose = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}.get(orientation)
    if transpose is not None:
        img = img.transpose(transpose)
    grey = img.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return grey.reduce(2)  # 128 x 128 -> 64 x 64 box average


# ----------------------------------------------------------------------------- hashes


def test_batched_hashes_equal_imagehash_bit_for_bit():
    greys: list[Image.Image] = []
    for name in PHOTOS:
        flat, _ = im.flatten(Image.fromarray(getattr(skimage.data, name)()))
        greys.append(im.hash_image(im.analysis_image(flat)))
    for path in arcade_sprites():
        img = Image.open(path)
        img.load()
        flat, _ = im.flatten(img)
        greys.append(im.hash_image(im.analysis_image(flat)))
    # hash_inputs of a 64 x 64 hash image reproduces it unchanged (resize to the same size copies)
    batch = im.hash_batch(np.stack([im.hash_inputs(g) for g in greys]))
    mismatches = []
    for i, g in enumerate(greys):
        for k, v in reference_hashes(g).items():
            if int(batch[k][i]) != v:
                mismatches.append((i, k, int(batch[k][i]), v))
    assert len(greys) >= 40
    assert mismatches == []
    assert all(batch[k].dtype == np.uint64 for k in im.HASH_COLUMNS)


def test_256_bit_phash_equals_imagehash_with_hash_size_16():
    greys: list[Image.Image] = []
    for name in PHOTOS:
        flat, _ = im.flatten(Image.fromarray(getattr(skimage.data, name)()))
        greys.append(im.hash_image(im.analysis_image(flat)))
    for path in arcade_sprites()[:20]:
        img = Image.open(path)
        img.load()
        flat, _ = im.flatten(img)
        greys.append(im.hash_image(im.analysis_image(flat)))
    packed = im.phash256_batch(np.stack([np.asarray(g) for g in greys]))
    assert packed.shape == (len(greys), im.DETAIL_BYTES) and packed.dtype == np.uint8
    for g, row in zip(greys, packed):
        ref = imagehash.phash(g, hash_size=16)  # its 64 x 64 LANCZOS input is the hash image itself
        assert row.tobytes().hex() == str(ref)
    assert len({row.tobytes() for row in packed}) == len(greys)
    assert im.phash256_batch(np.zeros((0, 64, 64), np.uint8)).shape == (0, im.DETAIL_BYTES)


def test_batched_hash_functions_on_raw_arrays_match_imagehash():
    photo = Image.fromarray(skimage.data.coffee()).convert("L")
    crops = [photo.crop((x, y, x + 200, y + 150)) for x in (0, 100, 300) for y in (0, 120, 240)]
    a = np.stack([np.asarray(c.resize((8, 8), im.LANCZOS)) for c in crops])
    d = np.stack([np.asarray(c.resize((9, 8), im.LANCZOS)) for c in crops])
    p = np.stack([np.asarray(c.resize((32, 32), im.LANCZOS)) for c in crops])
    w = np.stack([np.asarray(c.resize((64, 64), im.LANCZOS)) for c in crops])
    assert im.ahash_batch(a).tolist() == [as_int(imagehash.average_hash(c)) for c in crops]
    assert im.dhash_batch(d).tolist() == [as_int(imagehash.dhash(c)) for c in crops]
    assert im.phash_batch(p).tolist() == [as_int(imagehash.phash(c)) for c in crops]
    assert im.whash_batch(w).tolist() == [as_int(imagehash.whash(c, image_scale=64)) for c in crops]
    assert len(set(im.phash_batch(p).tolist())) == len(crops)


def test_batched_haar_reproduces_pywt_exactly():
    pywt = pytest.importorskip("pywt")
    greys = [np.asarray(Image.fromarray(getattr(skimage.data, n)()).convert("L").resize((64, 64))) / 255.0
             for n in PHOTOS]
    greys.append(np.full((64, 64), 1.0))
    x = np.stack(greys)
    ref = pywt.dwt2(x, "haar", axes=(-2, -1))
    ours = im.haar_dwt2(x)
    assert np.array_equal(ours[0], ref[0])
    assert all(np.array_equal(a, b) for a, b in zip(ours[1], ref[1]))
    assert np.array_equal(im.haar_idwt2(*ref), pywt.idwt2(ref, "haar", axes=(-2, -1)))


def test_batched_lanczos_reproduces_pillow_exactly():
    grey = Image.fromarray(skimage.data.astronaut()).convert("L")
    for (w, h) in [(64, 64), (128, 128), (100, 70), (5, 40)]:
        crops = [grey.crop((x, y, x + w, y + h)) for x in (0, 97, 300) for y in (0, 211, 400)]
        crops.append(Image.new("L", (w, h), 0))
        crops.append(Image.new("L", (w, h), 255))
        batch = np.stack([np.asarray(c) for c in crops])
        for size in [(8, 8), (9, 8), (32, 32), (64, 64), (13, 150)]:
            ours = im.lanczos_resize_batch(batch, *size)
            ref = np.stack([np.asarray(c.resize(size, Image.Resampling.LANCZOS)) for c in crops])
            assert ours.dtype == np.uint8 and ours.shape == ref.shape
            assert np.array_equal(ours, ref), ((w, h), size, int(np.abs(ours.astype(int) - ref).max()))


@pytest.mark.parametrize("kind", ["photo_png", "sprite_rgba", "oriented_png", "palette_trns"])
def test_end_to_end_hashes_equal_imagehash_on_reference_preprocessing(kind):
    if kind == "photo_png":
        data = png_bytes(Image.fromarray(skimage.data.astronaut()))
    elif kind == "sprite_rgba":
        data = arcade_sprites()[3].read_bytes()
    elif kind == "oriented_png":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = png_bytes(Image.fromarray(skimage.data.chelsea()), exif=exif.tobytes())
    else:
        data = png_bytes(Image.fromarray(skimage.data.chelsea()).quantize(32), transparency=3)
    rec = im.analyse_image(data)
    assert rec["error_code"] is None, rec["error_message"]
    expected = reference_hashes(reference_hash_image(data))
    assert {k: rec[k] for k in im.HASH_COLUMNS} == expected


def test_jpeg_draft_hashes_stay_close_to_full_resolution_imagehash():
    """JPEGs are decoded at a reduced DCT scale; the documented tolerance vs imagehash on the
    full-resolution image is <= 4 differing bits per hash (observed: 0-2)."""
    for name in ("astronaut", "coffee", "rocket", "hubble_deep_field"):
        data = jpeg_bytes(Image.fromarray(getattr(skimage.data, name)()))
        rec = im.analyse_image(data)
        full = Image.open(io.BytesIO(data))
        for k, v in reference_hashes(full).items():
            assert im.hamming(rec[k], v) <= 4, (name, k)


# ----------------------------------------------------------------------------- metrics


def test_black_and_white_images_metrics():
    black = im.analyse_image(png_bytes(Image.new("RGB", (300, 200), (0, 0, 0))))
    assert black["error_code"] is None
    assert black["brightness"] == 0 and black["contrast"] == 0 and black["entropy"] == 0
    assert black["sharpness"] == 0
    assert (black["color_mean_r"], black["color_mean_g"], black["color_mean_b"]) == (0, 0, 0)
    assert black["ahash"] == 0 and black["dhash"] == 0
    assert im.is_flat(black["contrast"], black["entropy"])
    white = im.analyse_image(png_bytes(Image.new("L", (50, 70), 255)))
    assert white["brightness"] == pytest.approx(255) and white["entropy"] == 0


def test_half_black_half_white_has_one_bit_of_entropy():
    arr = np.zeros((128, 128), dtype=np.uint8)  # the analysis size: resizing is the identity
    arr[:, 64:] = 255
    rec = im.analyse_image(png_bytes(Image.fromarray(arr)))
    assert rec["entropy"] == pytest.approx(1.0)
    assert rec["brightness"] == pytest.approx(127.5)
    assert rec["contrast"] == pytest.approx(127.5)
    assert not im.is_flat(rec["contrast"], rec["entropy"])


def test_colour_means_follow_the_channels():
    rec = im.analyse_image(png_bytes(Image.new("RGB", (64, 48), (200, 40, 10))))
    assert (rec["color_mean_r"], rec["color_mean_g"], rec["color_mean_b"]) == pytest.approx((200, 40, 10))
    coffee = im.analyse_image(png_bytes(Image.fromarray(skimage.data.coffee())))
    assert coffee["color_mean_r"] > coffee["color_mean_b"]  # a brown scene


def test_blurred_photo_is_less_sharp_and_photos_are_not_flat():
    astronaut = Image.fromarray(skimage.data.astronaut())
    sharp = im.analyse_image(png_bytes(astronaut))
    blurred = im.analyse_image(png_bytes(astronaut.filter(ImageFilter.GaussianBlur(3))))
    assert blurred["sharpness"] < 0.5 * sharp["sharpness"]
    assert sharp["entropy"] > 6 and sharp["contrast"] > 30
    assert not im.is_flat(sharp["contrast"], sharp["entropy"])
    # the blurred copy stays a near-duplicate by pHash
    assert im.hamming(sharp["phash"], blurred["phash"]) <= 8


# ----------------------------------------------------------------------------- orientation


def test_all_eight_exif_orientations_give_the_same_upright_image():
    base = Image.fromarray(skimage.data.coffee()).resize(ORIENTED_SIZE)
    recs = {}
    for o in range(1, 9):
        stored = base.transpose(_STORE_TRANSPOSE[o]) if o in _STORE_TRANSPOSE else base
        exif = Image.Exif()
        exif[0x0112] = o
        recs[o] = im.analyse_image(jpeg_bytes(stored, exif=exif.tobytes()))
        assert recs[o]["error_code"] is None
        assert recs[o]["orientation"] == o
        assert (recs[o]["width"], recs[o]["height"]) == ORIENTED_SIZE, o
        if o >= 5:
            assert stored.size == (ORIENTED_SIZE[1], ORIENTED_SIZE[0])  # really stored rotated
    for o in range(2, 9):
        assert im.hamming(recs[o]["phash"], recs[1]["phash"]) <= 4, o
    # ignoring the tag would have produced a very different hash for a rotated file
    unrotated = im.analyse_image(jpeg_bytes(base.transpose(_STORE_TRANSPOSE[6])))
    assert unrotated["orientation"] == 1
    assert im.hamming(unrotated["phash"], recs[1]["phash"]) > 16


# ----------------------------------------------------------------------------- alpha


def test_compositing_puts_transparent_pixels_on_the_background():
    rgba = Image.new("RGBA", (40, 40), (10, 200, 30, 0))  # fully transparent, green underneath
    flat, had_alpha = im.flatten(rgba, (255, 255, 255))
    assert had_alpha and flat.mode == "RGB"
    assert flat.getpixel((5, 5)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert im.flatten(half, (255, 255, 255))[0].getpixel((0, 0))[0] in (127, 128)


def test_alpha_compositing_separates_sprites_that_alpha_dropping_collapses():
    """Icon-style sprites: black RGB everywhere, the shape lives only in the alpha channel.
    Dropping alpha makes every such sprite a black square (all hashes collide); compositing on the
    documented background keeps them apart."""
    base = _arcade_images_dir() / "space_shooter"
    shapes = [Image.open(base / name).convert("RGBA").getchannel("A")
              for name in ("playerShip1_orange.png", "meteorGrey_big1.png")]
    icons = []
    for alpha in shapes:
        icon = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
        icon.putalpha(alpha)
        icons.append(png_bytes(icon))
    ours = [im.analyse_image(b) for b in icons]
    dropped = [reference_hashes(Image.open(io.BytesIO(b)).convert("RGB").convert("L")) for b in icons]
    assert dropped[0] == dropped[1]  # the silhouettes collapsed: identical hashes
    assert all(r["has_alpha"] for r in ours)
    assert im.hamming(ours[0]["phash"], ours[1]["phash"]) > 10
    assert im.hamming(ours[0]["dhash"], ours[1]["dhash"]) > 6
    assert ours[0]["ahash"] != ours[1]["ahash"]


def test_real_sprites_hash_apart():
    recs = [im.analyse_image(p.read_bytes()) for p in arcade_sprites(30)]
    assert all(r["error_code"] is None for r in recs)
    phashes = [r["phash"] for r in recs]
    assert len(set(phashes)) >= 0.8 * len(phashes)


# ----------------------------------------------------------------------------- modes


def test_unusual_modes_decode_and_agree():
    astronaut = Image.fromarray(skimage.data.astronaut())
    grey8 = astronaut.convert("L")
    g = np.asarray(grey8, dtype=np.uint16)
    ref = im.analyse_image(png_bytes(grey8))
    i16 = im.analyse_image(png_bytes(Image.fromarray(g * 257)))
    assert i16["mode"] == "I;16" and i16["error_code"] is None
    assert {k: i16[k] for k in im.HASH_COLUMNS} == {k: ref[k] for k in im.HASH_COLUMNS}
    buf = io.BytesIO()
    Image.fromarray(g.astype(np.float32) / 255.0).save(buf, "TIFF")
    f32 = im.analyse_image(buf.getvalue())
    assert f32["mode"] == "F" and f32["error_code"] is None
    assert im.hamming(f32["phash"], ref["phash"]) <= 2
    buf = io.BytesIO()
    Image.fromarray(g.astype(np.int32) * 1000).save(buf, "TIFF")  # 32-bit ints, 0..255,000
    i32 = im.analyse_image(buf.getvalue())
    assert i32["mode"] == "I" and i32["error_code"] is None
    assert im.hamming(i32["phash"], ref["phash"]) <= 4  # min-max stretched back to 0..255
    one = im.analyse_image(png_bytes(grey8.convert("1")))
    assert one["mode"] == "1" and one["error_code"] is None and one["entropy"] > 0
    la = grey8.copy()
    la.putalpha(255)
    la_rec = im.analyse_image(png_bytes(la))
    assert la_rec["mode"] == "LA" and la_rec["has_alpha"]
    assert la_rec["phash"] == ref["phash"]  # opaque alpha: compositing changes nothing


def test_cmyk_and_ycck_jpegs_decode_to_the_same_colours():
    coffee = Image.fromarray(skimage.data.coffee())
    rgb = im.analyse_image(jpeg_bytes(coffee))
    cmyk = im.analyse_image(jpeg_bytes(coffee.convert("CMYK")))
    ycck_data = ycck_jpeg(coffee)
    assert Image.open(io.BytesIO(ycck_data)).info.get("adobe_transform") == 2  # really YCCK
    ycck = im.analyse_image(ycck_data)
    for rec in (cmyk, ycck):
        assert rec["error_code"] is None and rec["mode"] == "CMYK"
        for c in ("color_mean_r", "color_mean_g", "color_mean_b"):
            assert abs(rec[c] - rgb[c]) < 6, c
        assert im.hamming(rec["phash"], rgb["phash"]) <= 6


# ----------------------------------------------------------------------------- failures


def test_bomb_is_refused_from_the_header_without_warnings():
    data = png_bomb(50_000, 50_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t0 = time.perf_counter()
        rec = im.analyse_image(data)
        assert time.perf_counter() - t0 < 1.0
    assert rec["error_code"] == errors.DECOMPRESSION_BOMB
    assert "50000" in rec["error_message"] or "2500000000" in rec["error_message"]
    # our own limit, below Pillow's: a 2,000 x 2,000 image with max_pixels=1,000,000
    big = png_bytes(Image.fromarray(skimage.data.astronaut()).resize((2000, 2000)))
    small_limit = im.analyse_image(big, im.AnalysisConfig(max_pixels=1_000_000))
    assert small_limit["error_code"] == errors.DECOMPRESSION_BOMB
    assert "max_pixels=1000000" in small_limit["error_message"]
    assert im.analyse_image(big)["error_code"] is None


def test_garbage_gets_a_code_and_bugs_become_internal_error(monkeypatch):
    astronaut_png = png_bytes(Image.fromarray(skimage.data.astronaut()))
    assert im.analyse_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)["error_code"] in (errors.CORRUPT, errors.TRUNCATED)
    assert im.analyse_image(b"GIF89a\x01")["error_code"] in (errors.CORRUPT, errors.TRUNCATED)
    assert im.analyse_image(b"")["error_code"] == errors.EMPTY_FILE

    def broken(_grey):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(im.analyse, "grey_metrics", broken)  # where decode_and_measure looks it up
    rec = im.analyse_image(astronaut_png)
    assert rec["error_code"] == errors.INTERNAL_ERROR
    assert "simulated bug" in rec["error_message"]
    assert rec["ahash"] is None


def test_uint8_histogram_and_shared_grey_equal_the_numpy_and_per_call_versions():
    from curation.imaging.content import HIST_MIN, hist_u8
    from curation.imaging.metrics import grey_of

    rng = np.random.default_rng(3)
    grey = np.asarray(Image.fromarray(skimage.data.camera()).resize((300, 200)))
    for a in (np.zeros(0, np.uint8), rng.integers(0, 256, HIST_MIN - 1, dtype=np.uint8),
              rng.integers(0, 256, HIST_MIN, dtype=np.uint8), grey, grey[::2, 1:], np.full((90, 90), 255, np.uint8)):
        h = hist_u8(a)
        assert h.dtype == np.int64 and h.shape == (256,)
        assert np.array_equal(h, np.bincount(a.reshape(-1), minlength=256))
    rgb = Image.fromarray(skimage.data.astronaut()).resize((310, 170))
    for o in range(1, 9):  # the grey conversion commutes with the EXIF transposes
        shared = im.analysis_image(im.orient(grey_of(rgb), o))
        assert np.array_equal(np.asarray(shared), np.asarray(im.analysis_image(im.orient(rgb, o))))
