"""Builder of a hostile source corpus for the inventory stage's tests.

`build_hostile_corpus(dst)` writes files under `dst` and returns `{rel_path: expected error_code}`
(None when the file must be analysed successfully). Every image is made from REAL pixels
(`skimage.data` photographs, arcade's CC0 sprites); no pure-noise images. A few entries are not
files that exist under `dst`:
  * "missing.jpg": listed but absent (deleted between listing and reading) -> not_found
  * "../escape.jpg": a manifest entry that climbs out of the root -> unsafe_path
  * "outside.jpg" is a symlink to a file in the sibling folder `<dst>_outside/` (created here).
The decompression bombs are tiny files whose headers DECLARE 50,000 x 50,000 pixels; nothing of
that size is ever allocated.

`chmod 000` does not stop root from reading: when the builder runs with euid 0 the entry
"no_permission.jpg" is expected to succeed (None) instead of permission_denied; see
`PERMISSION_ENFORCED`.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from curation import errors

PERMISSION_ENFORCED = hasattr(os, "geteuid") and os.geteuid() != 0

# EXIF orientation files: each stores the pixels so that, once oriented, the image is 300 x 200.
ORIENTED_SIZE = (300, 200)
ORIENTATION_FILES = {o: f"orientation/orient_{o}.jpg" for o in range(1, 9)}
# inverse of the display transform for each orientation (what the camera stored)
_STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}

LONG_NAME = "long_" + "x" * 200 + ".jpg"
SAME_FILE_PATHS = ("dup/same_a.jpg", "dup/same_b_hardlink.jpg", "dup/same_c_symlink.jpg")
ANIMATED = {"animated/anim.gif": 3, "animated/anim.webp": 3}


def _arcade_sprite(name: str) -> Path:
    import arcade

    base = Path(arcade.__file__).parent / "resources"
    hits = sorted(base.rglob(name))
    if not hits:
        raise FileNotFoundError(f"arcade sprite {name} not found under {base}")
    return hits[0]


def photo(name: str = "astronaut") -> Image.Image:
    """A real photograph from skimage.data as an RGB (or L) PIL image."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid-looking PNG header declaring width x height with one tiny IDAT (never decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A GIF whose logical screen and only frame declare width x height (tiny LZW payload)."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def ycck_jpeg(rgb: Image.Image) -> bytes:
    """A 4-component Adobe JPEG with transform 2 (YCCK), as written by Photoshop for CMYK.

    Pillow cannot write YCCK, so the YCbCrK planes are computed here, written as "CMYK" data
    (Pillow stores CMYK inverted, Adobe style) and the APP14 transform byte is patched 0 -> 2.
    """
    cmyk = np.asarray(rgb.convert("CMYK"), dtype=np.float64)
    stored = 255.0 - cmyk  # what Pillow would write for this CMYK image (inverted)
    r, g, b = 255.0 - stored[..., 0], 255.0 - stored[..., 1], 255.0 - stored[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    planes = np.stack([y, cb, cr, stored[..., 3]], axis=-1)
    as_pillow_cmyk = np.clip(np.rint(255.0 - planes), 0, 255).astype(np.uint8)
    data = _jpeg(Image.frombytes("CMYK", rgb.size, as_pillow_cmyk.tobytes()))
    marker = data.find(b"\xff\xee")
    if marker < 0 or data[marker + 4:marker + 9] != b"Adobe":
        raise RuntimeError("Pillow wrote no Adobe APP14 marker for CMYK")
    transform_at = marker + 4 + 5 + 2 + 2 + 2  # marker+length, "Adobe", version, flags0, flags1
    out = bytearray(data)
    out[transform_at] = 2
    return bytes(out)


def build_hostile_corpus(dst: Path) -> dict[str, str | None]:
    """Write the hostile corpus under `dst`; return {rel_path: expected error code or None}."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def put(rel: str, data: bytes, code: str | None) -> Path:
        p = dst / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expected[rel] = code
        return p

    astronaut, chelsea, coffee = photo("astronaut"), photo("chelsea"), photo("coffee")
    astro_jpeg = _jpeg(astronaut)
    chelsea_png = _png(chelsea)

    # --- plain successes (controls)
    put("ok/astronaut.jpg", astro_jpeg, None)
    put("ok/chelsea.png", chelsea_png, None)
    put("ok/flat_grey.png", _png(Image.new("L", (320, 240), 128)), None)
    put("ok/one_bit.png", _png(photo("camera").point(lambda v: 255 if v > 110 else 0).convert("1")), None)

    # --- broken bytes
    put("broken/zero.jpg", b"", errors.EMPTY_FILE)
    put("broken/truncated.jpg", astro_jpeg[: len(astro_jpeg) // 2], errors.TRUNCATED)
    put("broken/truncated.png", chelsea_png[: len(chelsea_png) // 2], errors.TRUNCATED)
    bad_crc = bytearray(chelsea_png)
    bad_crc[29] ^= 0xFF  # last byte of the IHDR CRC (8 signature + 4 len + 4 type + 13 data)
    put("broken/bad_crc.png", bytes(bad_crc), errors.CORRUPT)
    idat = chelsea_png.find(b"IDAT")
    bad_data = bytearray(chelsea_png)
    for i in range(idat + 40, idat + 400, 7):
        bad_data[i] ^= 0x5A  # corrupt the deflate stream itself
    put("broken/bad_idat.png", bytes(bad_data), errors.CORRUPT)
    put("broken/text.jpg", b"This is not a JPEG, it is a plain text note.\n" * 20, errors.NOT_AN_IMAGE)
    put("broken/error_page.png",
        b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
        b"<body><h1>Service Unavailable</h1></body></html>\n", errors.NOT_AN_IMAGE)
    put("broken/vector.svg",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="200" '
        b'height="200"><circle cx="100" cy="100" r="80" fill="orange"/></svg>\n', errors.NOT_AN_IMAGE)
    put("broken/fake.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + astro_jpeg[:4096],
        errors.UNSUPPORTED_FORMAT)

    # --- decompression bombs (declared 50,000 x 50,000; a few hundred bytes on disk)
    put("bomb/bomb.png", png_bomb(), errors.DECOMPRESSION_BOMB)
    put("bomb/bomb.gif", gif_bomb(), errors.DECOMPRESSION_BOMB)

    # --- unusual pixel formats that must all decode
    grey = np.asarray(astronaut.convert("L"), dtype=np.uint16)
    put("modes/grey16.tif", _save(Image.fromarray(grey * 257), "TIFF"), None)
    put("modes/grey16.png", _png(Image.fromarray(grey * 257)), None)
    put("modes/float32.tif", _save(Image.fromarray(grey.astype(np.float32) / 255.0), "TIFF"), None)
    put("modes/int32.tif", _save(Image.fromarray(grey.astype(np.int32) * 1000), "TIFF"), None)
    put("modes/cmyk.jpg", _jpeg(coffee.convert("CMYK")), None)
    put("modes/ycck.jpg", ycck_jpeg(coffee), None)
    pal = chelsea.quantize(64)
    put("modes/palette_trns.png", _png(pal, transparency=0), None)
    alpha = Image.new("L", astronaut.size, 0)
    alpha.paste(255, (96, 32, 416, 480))
    la = astronaut.convert("L")
    la.putalpha(alpha)
    put("modes/grey_alpha_LA.png", _png(la), None)
    put("modes/sprite_rgba.png", _arcade_sprite("playerShip1_orange.png").read_bytes(), None)
    put("modes/tall_1x10000.png", _png(astronaut.convert("L").resize((1, 10_000))), None)

    # --- animations (first frame analysed, frames counted)
    frames = [chelsea.crop((x, 0, x + 200, 200)) for x in (0, 50, 100)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated/anim.gif", buf.getvalue(), None)
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated/anim.webp", buf.getvalue(), None)

    # --- EXIF orientation 1..8: stored pixels differ, the oriented image is always 300 x 200
    base = coffee.resize(ORIENTED_SIZE)
    for o, rel in ORIENTATION_FILES.items():
        stored = base.transpose(_STORE_TRANSPOSE[o]) if o in _STORE_TRANSPOSE else base
        exif = Image.Exif()
        exif[0x0112] = o
        put(rel, _jpeg(stored, exif=exif.tobytes()), None)
    # a garbage EXIF block: the image still decodes, orientation falls back to 1
    soi_app1 = b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", 2 + 6 + 40) + b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0" + b"\x13" * 32
    put("orientation/corrupt_exif.jpg", soi_app1 + astro_jpeg[2:], None)

    # --- names
    put("names/with space.jpg", astro_jpeg, None)
    put("names/unicodé_猫.jpg", _jpeg(chelsea), None)
    put("names/new\nline.jpg", _jpeg(coffee), None)
    put(f"names/{LONG_NAME}", astro_jpeg, None)

    # --- filesystem oddities
    (dst / "fs").mkdir(exist_ok=True)
    (dst / "fs/dir.jpg").mkdir(exist_ok=True)
    expected["fs/dir.jpg"] = errors.NOT_A_REGULAR_FILE
    fifo = dst / "fs/fifo.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
    expected["fs/fifo.jpg"] = errors.NOT_A_REGULAR_FILE
    p = put("fs/no_permission.jpg", astro_jpeg, None if not PERMISSION_ENFORCED else errors.PERMISSION_DENIED)
    os.chmod(p, 0)
    for a, b in (("fs/loop_a.jpg", "loop_b.jpg"), ("fs/loop_b.jpg", "loop_a.jpg")):
        if not os.path.lexists(dst / a):
            os.symlink(b, dst / a)
        expected[a] = errors.SYMLINK_LOOP
    outside_dir = dst.parent / (dst.name + "_outside")
    outside_dir.mkdir(exist_ok=True)
    (outside_dir / "secret.jpg").write_bytes(astro_jpeg)
    if not os.path.lexists(dst / "fs/outside.jpg"):
        os.symlink(outside_dir / "secret.jpg", dst / "fs/outside.jpg")
    expected["fs/outside.jpg"] = errors.SYMLINK_OUTSIDE_ROOT
    expected["fs/missing.jpg"] = errors.NOT_FOUND
    expected["../escape.jpg"] = errors.UNSAFE_PATH

    # --- the same file reached by three paths: all rows present, same sha256
    first = put(SAME_FILE_PATHS[0], _jpeg(chelsea.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), None)
    if not os.path.lexists(dst / SAME_FILE_PATHS[1]):
        os.link(first, dst / SAME_FILE_PATHS[1])
    if not os.path.lexists(dst / SAME_FILE_PATHS[2]):
        os.symlink("same_a.jpg", dst / SAME_FILE_PATHS[2])
    expected[SAME_FILE_PATHS[1]] = None
    expected[SAME_FILE_PATHS[2]] = None
    return expected


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def manifest_for(root: Path, rel_paths: list[str]):
    """A MANIFEST_SCHEMA polars frame for `rel_paths` under `root` (sizes/mtimes where present)."""
    import polars as pl

    from curation.schema import MANIFEST_SCHEMA

    rows = []
    for rel in rel_paths:
        uri = os.path.join(str(root), rel)
        try:
            st = os.lstat(uri)
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = None, None
        rows.append({"image_id": hashlib.sha1(uri.encode()).hexdigest()[:16], "uri": uri, "rel_path": rel,
                     "listed_bytes": size, "listed_mtime": mtime})
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def crash_on_marked(uri: str, root: str, cfg) -> dict:
    """A per-file task for tests: the worker SEGFAULTS on files whose name contains 'CRASH'
    (simulating a crashing native decoder); others go through the real `process_file`."""
    import signal

    from curation.inventory import process_file

    if "CRASH" in os.path.basename(uri):
        os.kill(os.getpid(), signal.SIGSEGV)
    return process_file(uri, root, cfg)


def square(item: str, *args) -> dict:
    """A per-item task for pool tests: segfaults on items containing 'CRASH', else returns a row."""
    import signal

    if "CRASH" in item:
        os.kill(os.getpid(), signal.SIGSEGV)
    return {"item": item, "pid": os.getpid()}


def failed_row(code: str, message: str) -> dict:
    return {"error_code": code, "error_message": message}


def finish_marks(done: list, *args) -> list:
    """A pool `finish` step for tests: marks each row; raises when a chunk holds an item with 'BADCHUNK'."""
    if any("BADCHUNK" in r.get("item", "") for _, r in done):
        raise ValueError("finish failed")
    for _, r in done:
        r["finished"] = True
    return done
