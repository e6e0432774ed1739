"""The one image-open policy (curation.imaging.policy) and the one exception -> code classifier."""

from __future__ import annotations

import errno
import io
import struct
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from assets.embeddings import image_opener  # noqa: E402
from curation import errors  # noqa: E402
from curation.imaging import AnalysisConfig, decode_and_measure, limits  # noqa: E402
from curation.imaging.policy import DecodeError, decode_rgb, pillow_guard, rgb_opener  # noqa: E402
from curation.inventory import InventoryConfig, process_file  # noqa: E402
from curation.reader import InputError  # noqa: E402
from tests.hostile_corpus import photo, png_bomb  # noqa: E402

# Above Pillow's default bomb-warning level (89,478,485 pixels), below the policy's MAX_PIXELS.
LARGE_SIDE = 9_500


@pytest.fixture(scope="module")
def large_png(tmp_path_factory) -> Path:
    """A legitimate 9,500 x 9,500 greyscale PNG (90.25 M pixels) of real photo tiles."""
    big = Image.new("L", (LARGE_SIDE, LARGE_SIDE), 0)
    tile = photo("astronaut").convert("L")
    for x in range(0, LARGE_SIDE - 512, 1_500):
        big.paste(tile, (x, x))
    path = tmp_path_factory.mktemp("large") / "src" / "large.png"
    path.parent.mkdir(parents=True)
    big.save(path, "PNG", compress_level=1)
    return path


def _bomb_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_embedding_opener_opens_a_large_allowed_image_without_a_bomb_warning(large_png):
    assert Image.open(large_png).width * Image.open(large_png).height > 89_478_485
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = image_opener(str(large_png.parent))(str(large_png))
    assert _bomb_warnings(caught) == []
    assert img.mode == "RGB" and img.size == (LARGE_SIDE, LARGE_SIDE)
    # the pixels are the image's: the pasted astronaut tile survives the RGB conversion
    tile = np.asarray(photo("astronaut").convert("L"))
    assert np.array_equal(np.asarray(img)[:512, :512, 1], tile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked DecompressionBombWarning would raise here
        assert decode_and_measure(large_png.read_bytes())["error_code"] is None


def test_one_pixel_limit_and_one_byte_limit_for_every_stage(tmp_path):
    assert AnalysisConfig().max_pixels == InventoryConfig().max_pixels == limits.MAX_PIXELS
    assert InventoryConfig().max_bytes == limits.MAX_BYTES
    src = tmp_path / "src"
    src.mkdir()
    # just above the pixel limit, from the header alone (never decoded): refused by every path
    (src / "bomb.png").write_bytes(png_bomb(16_385, 16_384))
    assert 16_385 * 16_384 > limits.MAX_PIXELS
    rec = process_file(str(src / "bomb.png"), str(src), InventoryConfig())
    assert rec["error_code"] == errors.DECOMPRESSION_BOMB
    with pytest.raises(DecodeError) as refused:
        image_opener(str(src))(str(src / "bomb.png"))
    assert refused.value.code == errors.DECOMPRESSION_BOMB
    assert f"max_pixels={limits.MAX_PIXELS}" in refused.value.message
    # just above the byte limit (a sparse file: its size is checked before any byte is read)
    with open(src / "big.jpg", "wb") as f:
        f.truncate(limits.MAX_BYTES + 1)
    assert process_file(str(src / "big.jpg"), str(src), InventoryConfig())["error_code"] == errors.TOO_LARGE_FILE
    with pytest.raises(InputError) as too_big:
        image_opener(str(src))(str(src / "big.jpg"))
    assert too_big.value.code == errors.TOO_LARGE_FILE


def _corrupt_exif_jpeg() -> bytes:
    buf = io.BytesIO()
    photo("astronaut").save(buf, "JPEG", quality=90)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + 40) + b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0" + b"\x13" * 32
    return b"\xff\xd8" + app1 + buf.getvalue()[2:]


def test_decodes_in_threads_leave_no_warning_and_no_global_state_behind():
    data = _corrupt_exif_jpeg()
    rgba = photo("astronaut").convert("RGBA")
    rgba.putalpha(128)
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    sprite = buf.getvalue()
    filters_before = list(warnings.filters)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    results: list[tuple[str, tuple[int, int]]] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                for blob in (data, sprite):
                    img = decode_rgb(blob)
                    results.append((img.mode, img.size))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        filters_inside = list(warnings.filters)
    assert failures == []
    assert [str(w.message) for w in caught if "PIL" in (w.filename or "")] == []
    assert set(results) == {("RGB", (512, 512))} and len(results) == 60
    assert filters_inside[1:] == filters_before or filters_inside == [filters_inside[0], *filters_before]
    assert list(warnings.filters) == filters_before  # nothing left behind
    assert Image.MAX_IMAGE_PIXELS == pillow_limit
    # transparency composited on the documented background: half-transparent pixels move to white
    out = np.asarray(decode_rgb(sprite), dtype=np.int32)
    expected = (np.asarray(photo("astronaut"), dtype=np.int32) * 128 + 255 * 127 + 127) // 255
    assert np.abs(out - expected).max() <= 1


def test_pillow_guard_nests_and_turns_warnings_as_errors_into_codes():
    before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inner_before = list(warnings.filters)
        with pillow_guard(), pillow_guard():
            Image.open(io.BytesIO(_corrupt_exif_jpeg())).getexif()  # would raise without the guard
        assert list(warnings.filters) == inner_before
        # a refused bomb in Pillow's warning band is a code, not an exception, under -W error
        rec = decode_and_measure(png_bomb(20_000, 14_000))
        assert rec["error_code"] == errors.DECOMPRESSION_BOMB
    assert list(warnings.filters) == before


def test_rgb_opener_without_root_applies_the_byte_limit(tmp_path):
    path = tmp_path / "a.png"
    photo("camera").save(path)
    assert rgb_opener(None)(str(path)).mode == "RGB"
    with pytest.raises(InputError) as exc:
        rgb_opener(None, max_bytes=100)(str(path))
    assert exc.value.code == errors.TOO_LARGE_FILE


class _Coded(Exception):
    code = errors.SYMLINK_OUTSIDE_ROOT


@pytest.mark.parametrize(("exc", "stage", "code"), [
    (_Coded("escapes"), "open", errors.SYMLINK_OUTSIDE_ROOT),
    (InputError(errors.UNSAFE_PATH, ".."), "read", errors.UNSAFE_PATH),
    (FileNotFoundError("gone"), "open", errors.NOT_FOUND),
    (OSError(errno.ENOENT, "No such file"), "read", errors.NOT_FOUND),
    (OSError(errno.ELOOP, "Too many levels of symbolic links"), "read", errors.SYMLINK_LOOP),
    (OSError(errno.EISDIR, "Is a directory"), "read", errors.NOT_A_REGULAR_FILE),
    (PermissionError("denied"), "read", errors.PERMISSION_DENIED),
    (OSError(errno.EIO, "Input/output error: '/data/404.jpg'"), "read", errors.READ_ERROR),
    (RuntimeError("NoSuchKey: the key does not exist"), "read", errors.NOT_FOUND),
    (RuntimeError("An error occurred (403) Forbidden"), "read", errors.PERMISSION_DENIED),
    (ConnectionError("reset by peer"), "read", errors.READ_ERROR),
    (Image.DecompressionBombError("too big"), "open", errors.DECOMPRESSION_BOMB),
    (Image.UnidentifiedImageError("cannot identify image file"), "open", errors.NOT_AN_IMAGE),
    (OSError("image file is truncated (3 bytes not processed)"), "open", errors.TRUNCATED),
    (EOFError(), "decode", errors.TRUNCATED),
    (OSError("decoder jpeg2k not available"), "decode", errors.UNSUPPORTED_FORMAT),
    (SyntaxError("broken PNG file"), "decode", errors.CORRUPT),
    (OSError("broken data stream"), "open", errors.CORRUPT),
    (ZeroDivisionError("a bug"), "open", errors.INTERNAL_ERROR),
])
def test_one_classifier_maps_exceptions_to_codes(exc, stage, code):
    got, message = errors.classify_exception(exc, stage)
    assert got == code
    assert message.startswith(type(exc).__name__ + ":")


def test_classifier_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="stage must be one of"):
        errors.classify_exception(OSError(), "write")


def test_decode_oriented_applies_orientation_keeps_alpha_and_drafts():
    from curation.imaging.policy import decode_oriented

    stored = photo("coffee")  # 600 x 400
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes())
    img = decode_oriented(buf.getvalue())
    assert img.size == (400, 600)
    assert decode_rgb(buf.getvalue()).size == (400, 600)
    assert decode_oriented(buf.getvalue(), draft_size=100).size == (100, 150)  # 1/4 DCT scale
    rgba = photo("astronaut").convert("RGBA")
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert decode_oriented(buf.getvalue()).mode == "RGBA"
    with pytest.raises(DecodeError) as exc:
        decode_oriented(b"<html>not found</html>")
    assert exc.value.code == errors.NOT_AN_IMAGE
