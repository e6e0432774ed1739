"""One decode per image -> every raw_inventory measurement, plus batched perceptual hashes.

Pipeline for one image (`decode_and_measure`, never raises; failures become an error code):

1. `Image.open` reads the header only. The declared pixel count (width*height of the first frame)
   is compared with `AnalysisConfig.max_pixels` BEFORE any pixel is decoded -> DECOMPRESSION_BOMB.
   Pillow's own bomb guard is aligned with the same limit for the duration of the call (its
   `DecompressionBombWarning` is suppressed, its `DecompressionBombError` becomes
   DECOMPRESSION_BOMB), so neither crashes the caller nor leaks a warning-as-error.
2. Reduced-size decoding: JPEGs (and MPO) are decoded with `Image.draft(None, (S, S))`, i.e. at
   the largest DCT scale (1/1, 1/2, 1/4, 1/8) whose result is still >= S x S (S = analysis
   size). Other formats decode at full size. Only the first frame of animated GIF/WebP/APNG/TIFF
   is decoded; `n_frames` is recorded.
3. To 8 bits (`to_8bit`): `1` -> L; 16-bit (`I;16*`) keeps the high byte (v >> 8); `I` (32-bit
   int) and `F` (float) are mapped to 0..255: values already in 0..255 are kept, 0..65535 are
   shifted by 8 bits, floats in 0..1 are scaled by 255, anything else is min-max stretched
   (NaN/inf -> 0). `P`, `CMYK` (also YCCK JPEGs, which libjpeg returns as CMYK), `YCbCr`, `LAB`,
   `HSV`, `RGBX` -> RGB; anything with alpha or a `transparency` key -> RGBA (or LA). Then
   images that were not drafted and are >= 4S on a side are box-reduced by integer factors
   (`Image.reduce`, alpha-aware) to >= 2S per side (`box_reduce`).
4. Transparency (`RGBA`, `LA`, `PA`, `RGBa`, `La`, or `P`/`L`/`RGB` with a `transparency` key) is
   composited over `AnalysisConfig.background` (default WHITE, (255, 255, 255)) BEFORE anything is
   measured or hashed. Dropping alpha instead turns sprites into flat silhouettes whose hashes
   collide. `has_alpha` records that an alpha channel / transparency key was present.
5. EXIF orientation (tag 0x0112, 1..8; 1 when absent, invalid or the EXIF block is corrupt) is
   applied with the same transposes as `ImageOps.exif_transpose`; `width`/`height` are the
   declared full-resolution size AFTER orientation (swapped for 5..8).
6. THE analysis image: the oriented, composited image converted to `L` (ITU-R 601 luma, Pillow's
   `convert("L")`) and resized with Pillow's antialiased BILINEAR filter to exactly S x S
   (default S = 128; aspect ratio is not kept, like imagehash squashes to a square). Every grey
   metric and every hash comes from this one array:
     brightness = mean grey (0..255); contrast = standard deviation of grey;
     entropy    = Shannon entropy of the 256-bin grey histogram, in bits (0..8);
     sharpness  = variance of the 4-neighbour Laplacian ([[0,1,0],[1,-4,1],[0,1,0]], valid region)
                  of the S x S grey image; comparable across images because S is fixed. At
                  S = 128 it measures detail at thumbnail scale: strong blur is detected, a
                  1-pixel defocus of a 4000-pixel photo is not.
   Colour means are exact means of the composited (not resized) decoded image's R, G, B bands,
   computed from its per-band histograms (grey images: R = G = B).
   Why S = 128 (bench/inventory.py): the stage must cost about a bare JPEG decode. At S = 256 the
   resizes and metrics cost 1.5x the decode itself; at 128 the whole analysis is ~0.5 ms.
7. Hashes (64-bit, bit order = row-major, first bit most significant, i.e. the integer value of
   imagehash's hex string). THE hash image is the analysis image reduced to 64 x 64
   (`hash_image`: a 2x2 box average at the default S = 128, LANCZOS for other sizes). From it, exactly like imagehash does: LANCZOS to 8x8 (aHash), 9x8 (dHash),
   32x32 (pHash); wHash at the fixed `image_scale=64` (haar, with imagehash's default removal of
   the lowest LL band) uses the 64 x 64 hash image itself. Only the hash image leaves the worker
   (`HASH_INPUT_LEN` = 4,096 bytes); `hash_batch` computes the four hashes for N images at once:
   the three LANCZOS reductions as batched matrix products reproducing Pillow's fixed-point
   resampler exactly (`lanczos_resize_batch`), a batched DCT via scipy.fftpack over an
   (N,32,32) array, and the Haar steps of wHash on (N,64,64) with pywt's exact floating-point
   operations (`haar_dwt2`/`haar_idwt2`).
   Results are bit-identical to `imagehash.average_hash / dhash / phash / whash(image_scale=64)`
   applied to the hash image (tests/unit/test_imaging.py checks this on photos and sprites), and
   within a few bits of imagehash applied to the full-resolution image (also tested).

Flat / near-empty images (a blank page, a single colour, a transparent sprite with nothing in it):
hashes are still computed but carry no information (aHash and dHash are 0, pHash keeps only its
DC bit, ...), so every flat image "collides" with every other. The dedup stage must not cluster on
them: use `is_flat(contrast, entropy)` (contrast < FLAT_CONTRAST or entropy < FLAT_ENTROPY).

`decode_ms` is the wall time of steps 1-7 without hashing (reading bytes is not included).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import scipy.fftpack
from PIL import Image, ImageFile, UnidentifiedImageError

from curation import errors

LANCZOS = Image.Resampling.LANCZOS
ANALYSIS_FILTER = Image.Resampling.BILINEAR  # antialiased triangle filter when downscaling
DEFAULT_ANALYSIS_SIZE = 128
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
DEFAULT_MAX_PIXELS = 150_000_000
WHASH_IMAGE_SCALE = 64

# Thresholds below which the hashes of an image carry no information (see module docstring).
FLAT_CONTRAST = 2.0
FLAT_ENTROPY = 1.0

# The per-image hash input is the 64 x 64 hash image, flattened (uint8).
HASH_INPUT_LEN = WHASH_IMAGE_SCALE * WHASH_IMAGE_SCALE

_ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
                          b"mif1", b"msf1", b"avif", b"avis"})

# Measurement columns produced here (everything in INVENTORY_SCHEMA except identity/file columns).
MEASURE_COLUMNS = ("format", "width", "height", "mode", "orientation", "n_frames", "has_alpha",
                   "color_mean_r", "color_mean_g", "color_mean_b", "brightness", "contrast",
                   "entropy", "sharpness", "decode_ms", "error_code", "error_message")
HASH_COLUMNS = ("ahash", "dhash", "phash", "whash")


@dataclass(frozen=True)
class AnalysisConfig:
    """Knobs of the per-image analysis. See the module docstring for what each one changes."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    analysis_size: int = DEFAULT_ANALYSIS_SIZE
    background: tuple[int, int, int] = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        if self.analysis_size < WHASH_IMAGE_SCALE:
            raise ValueError(f"analysis_size must be >= {WHASH_IMAGE_SCALE}, got {self.analysis_size}")
        if self.max_pixels <= 0:
            raise ValueError("max_pixels must be positive")


class DecodeError(Exception):
    """A classified decode failure (internal; becomes an error row)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def is_flat(contrast: float | None, entropy: float | None) -> bool:
    """True when an image is (near) uniform, so its perceptual hashes carry no information."""
    if contrast is None or entropy is None:
        return False
    return contrast < FLAT_CONTRAST or entropy < FLAT_ENTROPY


# ------------------------------------------------------------------------------ decode helpers


@contextlib.contextmanager
def _pil_guard(max_pixels: int) -> Iterator[None]:
    """Align Pillow's bomb guard with our limit and silence its warning for this call."""
    old = Image.MAX_IMAGE_PIXELS
    old_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never grey-filled
    try:
        with warnings.catch_warnings():
            # Pillow warns about bombs below its error level and about corrupt EXIF blocks; under
            # `-W error` those would become exceptions. Neither may fail (or leak from) a decode.
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old
        ImageFile.LOAD_TRUNCATED_IMAGES = old_truncated


def sniff_unsupported(data: bytes) -> str | None:
    """Name of a recognised image container that Pillow cannot decode (HEIF/AVIF, JPEG XL)."""
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return f"HEIF/AVIF (ftyp brand {data[8:12].decode('ascii', 'replace')})"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    return None


_MAGIC_PLUGINS = (
    (b"\x89PNG\r\n\x1a\n", "PNG", "PngImagePlugin", "PngImageFile"),
    (b"\xff\xd8\xff", "JPEG", "JpegImagePlugin", "JpegImageFile"),
    (b"GIF87a", "GIF", "GifImagePlugin", "GifImageFile"),
    (b"GIF89a", "GIF", "GifImagePlugin", "GifImageFile"),
    (b"II*\x00", "TIFF", "TiffImagePlugin", "TiffImageFile"),
    (b"MM\x00*", "TIFF", "TiffImagePlugin", "TiffImageFile"),
    (b"BM", "BMP", "BmpImagePlugin", "BmpImageFile"),
)


def _broken_known_format(data: bytes) -> tuple[str, str] | None:
    """For bytes that carry a known image signature but that no plugin accepted: the code
    (CORRUPT or TRUNCATED) and the format plugin's own complaint (e.g. a bad CRC)."""
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    for magic, name, module, cls in _MAGIC_PLUGINS:
        if data.startswith(magic):
            break
    else:
        if not is_webp:
            return None
        name, module, cls = "WEBP", "WebPImagePlugin", "WebPImageFile"
    import importlib

    try:
        plugin = getattr(importlib.import_module(f"PIL.{module}"), cls)
        plugin(BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - we want the plugin's reason, whatever its type
        code, msg = _classify_decode_exception(exc)
        return code, f"{name} signature but unreadable header: {msg}"
    return errors.CORRUPT, f"{name} signature but no decoder accepted the header"


def _describe_non_image(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG (vector) document; no raster decoder"
    if head.startswith(b"<!doctype html") or head.startswith(b"<html") or b"<html" in head:
        return "HTML document (an error page saved as an image?)"
    if head.startswith(b"{") or head.startswith(b"["):
        return "JSON/text document"
    try:
        data[:512].decode("utf-8")
        return "text document"
    except UnicodeDecodeError:
        return "unrecognised binary data"


def _classify_decode_exception(exc: BaseException) -> tuple[str, str]:
    msg = f"{type(exc).__name__}: {exc}"
    low = str(exc).lower()
    if isinstance(exc, Image.DecompressionBombError):
        return errors.DECOMPRESSION_BOMB, msg
    if isinstance(exc, EOFError) or "truncated" in low or "premature end" in low:
        return errors.TRUNCATED, msg
    if "decoder" in low and "not available" in low:
        return errors.UNSUPPORTED_FORMAT, msg
    return errors.CORRUPT, msg


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block only loses the orientation
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(out)
    a = arr.astype(np.float64)
    a[~np.isfinite(a)] = 0.0
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        a = np.floor(a / 256.0)
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_8bit(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to L, LA, RGB or RGBA (alpha / transparency kept as RGBA or LA)."""
    mode = img.mode
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(img)
    if mode == "1":
        return img.convert("L")
    transparent = "transparency" in img.info
    if mode in ("L", "RGB", "P") and transparent or mode in ("PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "La":
        return img.convert("LA")
    if mode in ("L", "RGB", "LA", "RGBA"):
        return img
    return img.convert("RGB")  # P, CMYK (and YCCK JPEGs), YCbCr, LAB, HSV, RGBX


def composite(img: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> tuple[Image.Image, bool]:
    """(L/RGB image, had_alpha) from an L/LA/RGB/RGBA image: alpha composited on `background`."""
    if img.mode in ("LA", "RGBA"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, tuple(background))
        out.paste(rgba, (0, 0), rgba.getchannel("A"))
        return out, True
    return img, False


def flatten(img: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> tuple[Image.Image, bool]:
    """Return `(image in mode L or RGB, had_alpha)`; transparency is composited on `background`."""
    return composite(to_8bit(img), background)


def box_reduce(img: Image.Image, analysis_size: int) -> Image.Image:
    """Integer box reduction (`Image.reduce`) of a large L/LA/RGB/RGBA image to >= 2 x
    analysis_size per side (identity for images smaller than 4 x analysis_size)."""
    kx, ky = max(1, img.width // (2 * analysis_size)), max(1, img.height // (2 * analysis_size))
    return img.reduce((kx, ky)) if kx > 1 or ky > 1 else img


def orient(img: Image.Image, orientation: int) -> Image.Image:
    """Apply EXIF orientation 1..8 (same transposes as `ImageOps.exif_transpose`)."""
    method = _ORIENT_TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


def analysis_image(flat_oriented: Image.Image, analysis_size: int = DEFAULT_ANALYSIS_SIZE) -> Image.Image:
    """THE grey analysis image: L, resized (antialiased BILINEAR) to analysis_size x analysis_size."""
    grey = flat_oriented if flat_oriented.mode == "L" else flat_oriented.convert("L")
    return grey.resize((analysis_size, analysis_size), ANALYSIS_FILTER)


def hash_image(grey: Image.Image) -> Image.Image:
    """THE preprocessed image all four hashes are computed from: the grey analysis image
    reduced to WHASH_IMAGE_SCALE x WHASH_IMAGE_SCALE (64 x 64): by an exact 2x2 box average
    (`Image.reduce`) when it is 128 x 128 (the default), else LANCZOS."""
    size = (WHASH_IMAGE_SCALE, WHASH_IMAGE_SCALE)
    if grey.size == (2 * WHASH_IMAGE_SCALE, 2 * WHASH_IMAGE_SCALE):
        return grey.reduce(2)
    return grey.resize(size, LANCZOS)


def hash_inputs(grey: Image.Image) -> np.ndarray:
    """The per-image input of `hash_batch`: the 64 x 64 hash image of a grey analysis image,
    flattened to HASH_INPUT_LEN uint8 values."""
    return np.asarray(hash_image(grey), dtype=np.uint8).reshape(-1)


def color_means(flat: Image.Image) -> tuple[float, float, float]:
    """Mean R, G, B (0..255) of a flattened (L or RGB) image, from its per-band histograms."""
    hist = np.asarray(flat.histogram(), dtype=np.float64).reshape(-1, 256)
    means = (hist @ _LEVELS) / hist.sum(axis=1)
    if len(means) == 1:
        return float(means[0]), float(means[0]), float(means[0])
    return float(means[0]), float(means[1]), float(means[2])


_LEVELS = np.arange(256, dtype=np.float64)


def grey_metrics(grey: np.ndarray) -> dict[str, float]:
    """brightness, contrast, entropy (bits) and sharpness (Laplacian variance) of a uint8 array."""
    hist = np.bincount(grey.reshape(-1), minlength=256).astype(np.float64)
    n = float(grey.size)
    mean = float(hist @ _LEVELS) / n
    variance = max(0.0, float(hist @ (_LEVELS * _LEVELS)) / n - mean * mean)
    p = hist[hist > 0] / n
    entropy = float(-(p * np.log2(p)).sum()) if p.size else 0.0
    if grey.shape[0] >= 3 and grey.shape[1] >= 3:
        g = grey.astype(np.int16)  # the Laplacian of 8-bit data lies in -1020..1020
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
        lv = lap.astype(np.float64).reshape(-1)
        lm = float(lv.sum()) / lv.size
        sharpness = max(0.0, float(np.einsum("i,i->", lv, lv)) / lv.size - lm * lm)  # no BLAS threads
    else:
        sharpness = 0.0
    return {"brightness": mean, "contrast": math.sqrt(variance), "entropy": abs(entropy), "sharpness": sharpness}


# ------------------------------------------------------------------------------- per image


def _error(code: str, message: str, t0: float, **known: Any) -> dict[str, Any]:
    out: dict[str, Any] = {c: None for c in MEASURE_COLUMNS}
    out.update(known)
    out["error_code"] = code
    out["error_message"] = message[:2000]
    out["decode_ms"] = (time.perf_counter() - t0) * 1000.0
    out["hash_input"] = None
    return out


def decode_and_measure(data: bytes, cfg: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Decode `data` once and measure it. Returns a dict with MEASURE_COLUMNS plus `hash_input`
    (uint8 vector of HASH_INPUT_LEN for `hash_batch`, None on error). Never raises (except for
    BaseExceptions such as KeyboardInterrupt or a timeout signal raised by the caller)."""
    t0 = time.perf_counter()
    known: dict[str, Any] = {}
    try:
        return _decode_and_measure(data, cfg, t0, known)
    except DecodeError as exc:
        return _error(exc.code, exc.message, t0, **known)
    except MemoryError as exc:
        return _error(errors.INTERNAL_ERROR,
                      f"MemoryError while decoding ({exc}); lower max_pixels or give workers more memory", t0, **known)
    except Exception as exc:  # noqa: BLE001 - never raise out of the per-image function
        return _error(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", t0, **known)


def _decode_and_measure(data: bytes, cfg: AnalysisConfig, t0: float, known: dict[str, Any]) -> dict[str, Any]:
    if not data:
        raise DecodeError(errors.EMPTY_FILE, "0 bytes")
    with _pil_guard(cfg.max_pixels):
        # ---- header
        try:
            img = Image.open(BytesIO(data))
        except UnidentifiedImageError:
            broken = _broken_known_format(data)
            if broken:
                raise DecodeError(*broken) from None
            what = sniff_unsupported(data)
            if what:
                raise DecodeError(errors.UNSUPPORTED_FORMAT, f"{what}: recognised container, no decoder installed") from None
            raise DecodeError(errors.NOT_AN_IMAGE, f"no image decoder recognises the bytes: {_describe_non_image(data)}") from None
        except Image.DecompressionBombError as exc:
            raise DecodeError(errors.DECOMPRESSION_BOMB,
                              f"declared size far above max_pixels={cfg.max_pixels} (Pillow: {exc})") from None
        except Exception as exc:  # noqa: BLE001 - a plugin choking on a malformed header
            code, msg = _classify_decode_exception(exc)
            raise DecodeError(code, f"header: {msg}") from None
        with img:
            fmt = img.format
            width, height = img.size
            mode = img.mode
            known.update(format=fmt, mode=mode)
            if width <= 0 or height <= 0:
                raise DecodeError(errors.CORRUPT, f"declared size {width}x{height}")
            if width * height > cfg.max_pixels:
                raise DecodeError(errors.DECOMPRESSION_BOMB,
                                  f"declared {width}x{height} = {width * height} pixels exceeds max_pixels={cfg.max_pixels}")
            # ---- pixels (first frame)
            try:
                n_frames = int(getattr(img, "n_frames", 1) or 1)
                if n_frames > 1:
                    img.seek(0)
                known["n_frames"] = n_frames
                S = cfg.analysis_size
                drafted = fmt in ("JPEG", "MPO")
                if drafted:
                    img.draft(None, (S, S))
                img.load()
                orientation = _orientation(img)
            except DecodeError:
                raise
            except Image.DecompressionBombError as exc:
                raise DecodeError(errors.DECOMPRESSION_BOMB, str(exc)) from None
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - decoder errors on broken data
                code, msg = _classify_decode_exception(exc)
                raise DecodeError(code, msg) from None
            # ---- analysis (our code: any failure here is an INTERNAL_ERROR)
            frame = to_8bit(img)
            if not drafted:
                frame = box_reduce(frame, S)
            flat, has_alpha = composite(frame, cfg.background)
            flat = orient(flat, orientation)
            if orientation >= 5:
                width, height = height, width
            grey_img = analysis_image(flat, S)
            grey = np.asarray(grey_img)
            metrics = grey_metrics(grey)
            means = color_means(flat)
            hin = hash_inputs(grey_img)
    return {
        "format": fmt,
        "width": width,
        "height": height,
        "mode": mode,
        "orientation": orientation,
        "n_frames": n_frames,
        "has_alpha": has_alpha,
        "color_mean_r": means[0],
        "color_mean_g": means[1],
        "color_mean_b": means[2],
        **metrics,
        "decode_ms": (time.perf_counter() - t0) * 1000.0,
        "error_code": None,
        "error_message": None,
        "hash_input": hin,
    }


# ---------------------------------------------------------------------------- batched hashes

_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans, row-major, first bit most significant -> (N,) uint64."""
    b = np.asarray(bits, dtype=bool).reshape(len(bits), 64)
    return (b.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def ahash_batch(pixels: np.ndarray) -> np.ndarray:
    """aHash of (N, 8, 8) uint8 arrays: pixel > mean (== imagehash.average_hash)."""
    p = np.asarray(pixels)
    mean = p.reshape(len(p), -1).astype(np.float64).mean(axis=1)
    return pack_bits(p > mean[:, None, None])


def dhash_batch(pixels: np.ndarray) -> np.ndarray:
    """dHash of (N, 8, 9) uint8 arrays (rows x cols): right neighbour brighter (== imagehash.dhash)."""
    p = np.asarray(pixels)
    return pack_bits(p[:, :, 1:] > p[:, :, :-1])


def phash_batch(pixels: np.ndarray) -> np.ndarray:
    """pHash of (N, 32, 32) uint8 arrays: batched 2-D DCT-II, 8x8 low band > its median
    (== imagehash.phash)."""
    p = np.asarray(pixels, dtype=np.float64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=1), axis=2)
    low = dct[:, :8, :8].reshape(len(p), 64)
    med = np.median(low, axis=1)
    return pack_bits(low > med[:, None])


# ---- Haar wavelet steps of imagehash.whash, batched, with pywt's exact floating-point operations ----
#
# pywt computes each Haar output as a two-term sum of products with the tap 0.7071067811865476
# (dwt: a = c*x[2k+1] + c*x[2k], d = -c*x[2k+1] + c*x[2k]; idwt: x[2k] = c*a + c*d,
# x[2k+1] = c*a - c*d; axis -2 first on decomposition, axis -1 first on reconstruction). A sum of
# two terms does not depend on evaluation order, so these numpy expressions give bit-identical
# coefficients (tests compare them with pywt), several times faster on a batch than pywt's
# generic n-d code.

_HAAR = 0.7071067811865476


def _haar_split(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    if axis == -2:
        even, odd = x[..., 0::2, :], x[..., 1::2, :]
    else:
        even, odd = x[..., 0::2], x[..., 1::2]
    return _HAAR * odd + _HAAR * even, (-_HAAR) * odd + _HAAR * even


def _haar_merge(a: np.ndarray, d: np.ndarray, axis: int) -> np.ndarray:
    shape = list(a.shape)
    shape[axis] *= 2
    out = np.empty(shape, dtype=np.float64)
    if axis == -2:
        out[..., 0::2, :] = _HAAR * a + _HAAR * d
        out[..., 1::2, :] = _HAAR * a + (-_HAAR) * d
    else:
        out[..., 0::2] = _HAAR * a + _HAAR * d
        out[..., 1::2] = _HAAR * a + (-_HAAR) * d
    return out


def haar_dwt2(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """== pywt.dwt2(x, "haar", axes=(-2, -1)) for even sizes: (cA, (cH, cV, cD))."""
    a, d = _haar_split(x, -2)
    aa, ad = _haar_split(a, -1)
    da, dd = _haar_split(d, -1)
    return aa, (da, ad, dd)


def haar_idwt2(aa: np.ndarray, details: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """== pywt.idwt2((cA, (cH, cV, cD)), "haar", axes=(-2, -1))."""
    da, ad, dd = details
    return _haar_merge(_haar_merge(aa, ad, -1), _haar_merge(da, dd, -1), -2)


def whash_batch(pixels: np.ndarray) -> np.ndarray:
    """wHash of (N, 64, 64) uint8 arrays (haar, lowest LL removed; == imagehash.whash(image_scale=64))."""
    a = np.asarray(pixels, dtype=np.float64) / 255.0
    levels = int(np.log2(WHASH_IMAGE_SCALE))
    details = []
    for _ in range(levels):  # wavedec2(level=6)
        a, det = haar_dwt2(a)
        details.append(det)
    a = a * 0  # imagehash: coeffs[0] *= 0 (remove the lowest LL band)
    for det in reversed(details):  # waverec2
        a = haar_idwt2(a, det)
    for _ in range(levels - 3):  # wavedec2(level=3)[0]: the 8 x 8 LL band
        a, _det = haar_dwt2(a)
    low = a.reshape(len(a), 64)
    med = np.median(low, axis=1)
    return pack_bits(low > med[:, None])


# ---- Pillow's LANCZOS resize of 8-bit images, reproduced exactly and batched --------------------
#
# imagehash reduces the image with `Image.resize(size, LANCZOS)` before each hash. To hash N images
# at once we reproduce Pillow's algorithm (src/libImaging/Resample.c, 8 bits per channel) as two
# matrix products: coefficients are computed exactly as Pillow does (double precision, same
# formula and summation order, via libm's sin through `math.sin`), converted to Pillow's 22-bit
# fixed point, and each pass is an integer-valued float64 product (|sum| < 2**40, so exact),
# rounded and clipped to uint8 like Pillow's `clip8`, horizontal pass first.

_PRECISION_BITS = 32 - 8 - 2
_LANCZOS_SUPPORT = 3.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@functools.lru_cache(maxsize=32)
def _lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(in_size, out_size) float64 matrix of Pillow's fixed-point LANCZOS weights."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    m = np.zeros((in_size, out_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = []
        ww = 0.0
        for x in range(xmax):
            w = _lanczos((x + xmin - center + 0.5) * ss)
            weights.append(w)
            ww += w
        for x in range(xmax):
            k = weights[x] / ww if ww != 0.0 else weights[x]
            fixed = int(-0.5 + k * (1 << _PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << _PRECISION_BITS))
            m[x + xmin, xx] = fixed
    m.setflags(write=False)
    return m


def _clip8(acc: np.ndarray) -> np.ndarray:
    acc = acc + float(1 << (_PRECISION_BITS - 1))
    out = np.floor(acc / float(1 << _PRECISION_BITS))
    return np.clip(out, 0.0, 255.0)


def lanczos_resize_batch(images: np.ndarray, width: int, height: int) -> np.ndarray:
    """`Image.fromarray(img).resize((width, height), LANCZOS)` for a (N, H, W) uint8 batch,
    bit-identical to Pillow (tests check it); returns (N, height, width) uint8."""
    x = np.asarray(images, dtype=np.float64)
    n, h, w = x.shape
    if (w, h) == (width, height):
        return np.asarray(images, dtype=np.uint8).copy()
    if w != width:
        x = _clip8(x @ _lanczos_matrix(w, width))
    if h != height:
        x = _clip8(np.matmul(_lanczos_matrix(h, height).T, x))
    return x.astype(np.uint8)


def hash_batch(inputs: np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The four hashes of N hash images ((N, 64, 64) or (N, HASH_INPUT_LEN) uint8), computed
    like imagehash: LANCZOS to 8x8 / 9x8 / 32x32 for aHash / dHash / pHash (batched, exact),
    the 64 x 64 image itself for wHash(image_scale=64)."""
    x = np.asarray(inputs, dtype=np.uint8).reshape(-1, WHASH_IMAGE_SCALE, WHASH_IMAGE_SCALE)
    if len(x) == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return {k: empty for k in HASH_COLUMNS}
    return {
        "ahash": ahash_batch(lanczos_resize_batch(x, 8, 8)),
        "dhash": dhash_batch(lanczos_resize_batch(x, 9, 8)),
        "phash": phash_batch(lanczos_resize_batch(x, 32, 32)),
        "whash": whash_batch(x),
    }


def analyse_image(data: bytes, cfg: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Convenience for one image: measurements plus the four hashes (python ints or None)."""
    rec = decode_and_measure(data, cfg)
    hin = rec.pop("hash_input")
    if hin is None:
        rec.update({k: None for k in HASH_COLUMNS})
    else:
        hashes = hash_batch(hin[None, :])
        rec.update({k: int(v[0]) for k, v in hashes.items()})
    return rec


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return int(bin((int(a) ^ int(b)) & 0xFFFFFFFFFFFFFFFF).count("1"))


__all__ = [
    "AnalysisConfig", "DecodeError", "FLAT_CONTRAST", "FLAT_ENTROPY", "HASH_COLUMNS", "HASH_INPUT_LEN",
    "MEASURE_COLUMNS", "WHASH_IMAGE_SCALE", "ahash_batch", "analyse_image", "analysis_image",
    "color_means", "decode_and_measure", "dhash_batch", "flatten", "grey_metrics", "hamming",
    "hash_batch", "hash_image", "hash_inputs", "is_flat", "lanczos_resize_batch", "orient",
    "pack_bits", "phash_batch", "sniff_unsupported", "whash_batch",
]
