"""The image-open policy: how every stage (inventory, embedding, reports) turns bytes into pixels.

One set of limits (`curation.imaging.limits`: MAX_PIXELS, MAX_BYTES, BACKGROUND) and one way to
open an image:

1. `open_header(data)`: `Image.open` reads the header only; bytes no decoder recognises are
   classified (NOT_AN_IMAGE, UNSUPPORTED_FORMAT for HEIF/AVIF/JPEG XL, CORRUPT/TRUNCATED for a
   known signature with a broken header). `check_size(img, max_pixels)` refuses a declared size
   above the limit (DECOMPRESSION_BOMB) BEFORE any pixel is decoded.
2. `load_first_frame(img)`: the first frame only (animated GIF/WebP/APNG/TIFF), optionally a
   reduced-size JPEG draft; decoder failures are classified by `curation.errors.classify_exception`.
3. Conversion (`curation.imaging.convert`): EXIF orientation applied, any mode to 8 bits,
   transparency composited on BACKGROUND, then RGB (`decode_rgb`) or the analysis image (stage 1);
   `decode_oriented` stops before compositing, for callers that show transparency themselves.
Every failure raises `DecodeError` whose `.code` is a `curation.errors` code.

Pillow's own decompression-bomb guard: `pillow_guard(max_pixels)` wraps every decode. It makes
Pillow's process-wide threshold (`Image.MAX_IMAGE_PIXELS`) at least `max_pixels`, so Pillow never
warns about, nor refuses, an image the policy allows. The threshold is only ever raised (under a
lock, at import to MAX_PIXELS and later for a larger configured limit), never lowered or restored,
so concurrent decodes in threads cannot race on it. Pillow's DecompressionBombError (and its
warning, when warnings are errors) become DECOMPRESSION_BOMB. While any decode is in flight,
warnings raised inside Pillow (a bomb warning for a refused file, corrupt EXIF blocks) are ignored
through one filter entry added by the first decode and removed by the last, under a lock (not
`warnings.catch_warnings`, whose save/restore of the whole filter list races between threads);
nothing is left behind once no decode runs.

`rgb_opener(root)` is the library function that reads a source URI (through
`curation.reader.read_source`: path checks, MAX_BYTES) and applies all of the above -> RGB image.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, cast

from PIL import Image, UnidentifiedImageError

from curation import errors
from curation.imaging.convert import composite_visible, exif_orientation, orient, to_8bit
from curation.imaging.limits import BACKGROUND, MAX_BYTES, MAX_PIXELS
from curation.imaging.sniff import (
    broken_known_format,
    describe_non_image,
    sniff_unsupported,
)


class DecodeError(Exception):
    """A classified open/decode failure; `.code` is a code from `curation.errors`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------------ Pillow's bomb guard

_PILLOW_LOCK = threading.Lock()


def _let_pillow_allow(max_pixels: int) -> None:
    """Raise (never lower) Pillow's process-wide bomb threshold to at least `max_pixels`."""
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= max_pixels:
        return
    with _PILLOW_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


_let_pillow_allow(MAX_PIXELS)


# Pillow's warnings (bombs above the limit, corrupt EXIF blocks, ...) are attributed to PIL's own
# modules; under `-W error` they would become exceptions. Neither may fail (or leak from) a decode.
_PILLOW_MODULES = r"PIL(\..*)?\Z"
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_entry: tuple | None = None


@contextlib.contextmanager
def _pillow_quiet() -> Iterator[None]:
    """Ignore warnings raised inside Pillow while any decode is in flight. Unlike
    `warnings.catch_warnings` (which saves and restores the whole filter list, so overlapping uses
    in threads can restore each other's state), one filter entry is added by the first entrant
    and removed by the last, under a lock; other changes to the filters are left alone."""
    global _quiet_depth, _quiet_entry
    with _quiet_lock:
        if _quiet_depth == 0:
            warnings.filterwarnings("ignore", category=Warning, module=_PILLOW_MODULES)
            _quiet_entry = warnings.filters[0]
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                with contextlib.suppress(ValueError):  # the filter list was replaced meanwhile
                    cast(list, warnings.filters).remove(_quiet_entry)
                    getattr(warnings, "_filters_mutated", lambda: None)()
                _quiet_entry = None


@contextlib.contextmanager
def pillow_guard(max_pixels: int = MAX_PIXELS) -> Iterator[None]:
    """Context of one decode: Pillow allows `max_pixels`, and warnings raised inside Pillow are
    ignored (see `_pillow_quiet`). Thread-safe; nests."""
    _let_pillow_allow(max_pixels)
    with _pillow_quiet():
        yield


# ------------------------------------------------------------------------------- the steps


def open_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`Image.open` of `data` (header only, call inside `pillow_guard`); raises DecodeError."""
    if not data:
        raise DecodeError(errors.EMPTY_FILE, "0 bytes")
    try:
        return Image.open(BytesIO(data))
    except UnidentifiedImageError:
        broken = broken_known_format(data)
        if broken:
            raise DecodeError(*broken) from None
        what = sniff_unsupported(data)
        if what:
            raise DecodeError(errors.UNSUPPORTED_FORMAT, f"{what}: recognised container, no decoder installed") from None
        raise DecodeError(errors.NOT_AN_IMAGE, f"no image decoder recognises the bytes: {describe_non_image(data)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(errors.DECOMPRESSION_BOMB,
                          f"declared size far above max_pixels={max_pixels} (Pillow: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - a plugin choking on a malformed header
        code, msg = errors.classify_exception(exc, "decode")
        raise DecodeError(code, f"header: {msg}") from None


def check_size(img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a non-positive or too large declared size (first frame) before decoding pixels."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DecodeError(errors.CORRUPT, f"declared size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(errors.DECOMPRESSION_BOMB,
                          f"declared {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}")


def load_first_frame(img: Image.Image, draft_size: int | None = None, known: dict[str, Any] | None = None) -> int:
    """Decode the first frame of `img` (JPEG/MPO at the smallest DCT scale >= draft_size when
    given); returns the frame count, also stored in `known["n_frames"]` as soon as it is known."""
    try:
        n_frames = int(getattr(img, "n_frames", 1) or 1)
        if n_frames > 1:
            img.seek(0)
        if known is not None:
            known["n_frames"] = n_frames
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            img.draft(None, (draft_size, draft_size))
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(errors.DECOMPRESSION_BOMB, str(exc)) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder errors on broken data
        code, msg = errors.classify_exception(exc, "decode")
        raise DecodeError(code, msg) from None
    return n_frames


def decode_oriented(data: bytes, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Bytes -> the decoded first frame, EXIF orientation applied, mode untouched (for callers that
    composite transparency themselves, e.g. report thumbnails on a checkerboard). `draft_size`:
    JPEGs decode at the smallest DCT scale >= draft_size x draft_size. Raises DecodeError."""
    with pillow_guard(max_pixels):
        img = open_header(data, max_pixels)
        check_size(img, max_pixels)
        load_first_frame(img, draft_size)
        return orient(img, exif_orientation(img))


def decode_rgb(data: bytes, *, max_pixels: int = MAX_PIXELS,
               background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The policy in one call: bytes -> RGB image of the first frame, EXIF orientation applied,
    transparency composited on `background` (on the contrasting one for a cut-out that `background`
    swallows: `convert.composite_visible`). Raises DecodeError."""
    with pillow_guard(max_pixels):
        img = decode_oriented(data, max_pixels=max_pixels)
        try:
            flat, _ = composite_visible(to_8bit(img), background)
            return flat if flat.mode == "RGB" else flat.convert("RGB")
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a decoder error surfacing on convert
            code, msg = errors.classify_exception(exc, "decode")
            raise DecodeError(code, msg) from None


def source_reader(root: str | None, max_bytes: int = MAX_BYTES) -> Callable[[str], bytes]:
    """uri -> bytes. With `root`, through `curation.reader.read_source` (no symlink escapes, no
    '..', MAX_BYTES); without, `curation.storage.read_bytes` bounded by `max_bytes`."""
    from curation import storage
    from curation.reader import InputError, read_source

    def read(uri: str) -> bytes:
        if root:
            return read_source(uri, root, max_bytes=max_bytes)[0]
        data = storage.read_bytes(uri)
        if len(data) > max_bytes:
            raise InputError(errors.TOO_LARGE_FILE, f"{uri!r} has {len(data)} bytes, above the limit of {max_bytes}")
        return data

    return read


def rgb_opener(root: str | None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               background: tuple[int, int, int] = BACKGROUND) -> Callable[[str], Image.Image]:
    """A function uri -> RGB PIL image under the policy (see `decode_rgb`, `source_reader`).
    Raises `curation.reader.InputError` or `DecodeError`, both with a `curation.errors` `.code`."""
    read = source_reader(root, max_bytes)

    def open_rgb(uri: str) -> Image.Image:
        try:
            return decode_rgb(read(uri), max_pixels=max_pixels, background=background)
        except DecodeError as exc:
            raise DecodeError(exc.code, f"{uri}: {exc.message}") from None

    return open_rgb
