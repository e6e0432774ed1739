"""Stage 1's per-image analysis: one decode per image -> every raw_inventory measurement.

`decode_and_measure(data, cfg)` never raises (failures become an error code) and returns
MEASURE_COLUMNS plus `hash_input` (the 64 x 64 hash image, flattened, for `hashes.hash_batch`).
`analyse_image` adds the four hashes for one image. The work is one function per measured group
(`decode_first_frame`, `flatten_oriented`, `measure_colour`, `measure_grey`; a new group of
measurements is one more function called from `_decode_and_measure`). For one image:

1. Header (`policy.open_header` / `check_size`): the declared pixel count (width*height of the
   first frame) is compared with `AnalysisConfig.max_pixels` BEFORE any pixel is decoded ->
   DECOMPRESSION_BOMB; Pillow's own guard never fires below that limit (`policy.pillow_guard`).
2. Pixels (`policy.load_first_frame`): JPEGs (and MPO) are decoded with `Image.draft(None, (S, S))`,
   i.e. at the largest DCT scale (1/1, 1/2, 1/4, 1/8) whose result is still >= S x S (S = analysis
   size); other formats at full size. Only the first frame of animated GIF/WebP/APNG/TIFF is
   decoded; `n_frames` is recorded.
3. To 8 bits (`convert.to_8bit`), then images that were not drafted and are >= 4S on a side are
   box-reduced by integer factors to >= 2S per side (`convert.box_reduce`).
4. Transparency is composited over `AnalysisConfig.background` (default white) BEFORE anything is
   measured or hashed (`convert.composite`); dropping alpha instead turns sprites into flat
   silhouettes whose hashes collide. `has_alpha` records that alpha / a transparency key was present.
   The content signals (`curation.imaging.content`, what the quality checks judge) always see that
   composite. A cut-out the background swallows (`convert.swallowed`: opaque_fraction in
   [0.001, 0.98) and the grey analysis image's standard deviation, the `contrast` column, under 5;
   a white icon on transparency is one flat colour on white) is composited on the contrasting
   background (black) for everything else: the grey metrics, colour means, thumbnail and hashes then
   show its shape, so dedup can match it (on white it would be flat, hence ineligible:
   `DedupConfig.min_contrast`). Free for every other image: both inputs are computed anyway.
5. EXIF orientation is applied (`convert.orient`); `width`/`height` are the declared
   full-resolution size AFTER orientation (swapped for 5..8).
6. The S x S grey analysis image and its metrics, colour means of the composited image, and the
   64 x 64 hash image (`curation.imaging.metrics`). Why S = 128 (bench/inventory.py): the stage
   must cost about a bare JPEG decode. At S = 256 the resizes and metrics cost 1.5x the decode
   itself; at 128 the whole analysis is ~0.5 ms.
7. Hashes are computed later, batched, in the parent (`curation.imaging.hashes.hash_batch`;
   stage 1 computes dHash + pHash, aHash + wHash only with `InventoryConfig.extra_hashes`):
   bit-identical to imagehash applied to the hash image, within a few bits of imagehash applied
   to the full-resolution image (tests/unit/test_imaging.py checks both).

`decode_ms` is the wall time of steps 1-6 (reading bytes is not included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from curation import errors
from curation.imaging.content import CONTENT_COLUMNS, content_signals
from curation.imaging.convert import (
    box_reduce,
    composite,
    composite_visible,
    contrasting,
    exif_orientation,
    orient,
    swallowed,
    to_8bit,
)
from curation.imaging.features import FEATURE_COLUMNS, image_features
from curation.imaging.hashes import DETAIL_COLUMN, HASH_COLUMNS, WHASH_IMAGE_SCALE, hash_batch, phash256_batch
from curation.imaging.limits import BACKGROUND, MAX_PIXELS
from curation.imaging.metrics import (
    DEFAULT_ANALYSIS_SIZE,
    analysis_image,
    color_means,
    grey_metrics,
    grey_of,
    hash_inputs,
)
from curation.imaging.policy import (
    DecodeError,
    check_size,
    load_first_frame,
    open_header,
    pillow_guard,
)

# Measurement columns produced here (everything in INVENTORY_SCHEMA except identity/file columns).
MEASURE_COLUMNS = ("format", "width", "height", "mode", "orientation", "n_frames", "has_alpha",
                   "color_mean_r", "color_mean_g", "color_mean_b", "brightness", "contrast",
                   "entropy", "sharpness", "decode_ms", "error_code", "error_message", *CONTENT_COLUMNS,
                   *FEATURE_COLUMNS)


_DRAFTED = ("JPEG", "MPO")  # formats decoded at a reduced DCT scale


@dataclass(frozen=True)
class AnalysisConfig:
    """Knobs of the per-image analysis. See the module docstring for what each one changes."""

    max_pixels: int = MAX_PIXELS
    analysis_size: int = DEFAULT_ANALYSIS_SIZE
    background: tuple[int, int, int] = BACKGROUND

    def __post_init__(self) -> None:
        if self.analysis_size < WHASH_IMAGE_SCALE:
            raise ValueError(f"analysis_size must be >= {WHASH_IMAGE_SCALE}, got {self.analysis_size}")
        if self.max_pixels <= 0:
            raise ValueError("max_pixels must be positive")


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


def decode_first_frame(data: bytes, cfg: AnalysisConfig, known: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """Group "decode": header, size check, first frame (JPEG draft), EXIF orientation.
    Call inside `pillow_guard`. Returns the decoded image and the header columns."""
    img = open_header(data, cfg.max_pixels)
    known.update(format=img.format, mode=img.mode)
    check_size(img, cfg.max_pixels)
    width, height = img.size  # declared, full resolution (a JPEG draft shrinks img.size)
    n_frames = load_first_frame(img, cfg.analysis_size, known)
    orientation = exif_orientation(img)
    if orientation >= 5:
        width, height = height, width
    return img, {"format": img.format, "width": width, "height": height, "mode": known["mode"],
                 "orientation": orientation, "n_frames": n_frames}


def prepare_frame(img: Image.Image, cfg: AnalysisConfig) -> Image.Image:
    """Group "prepare": 8 bits, box reduction of large non-drafted images (not yet composited)."""
    frame = to_8bit(img)
    if img.format not in _DRAFTED:
        frame = box_reduce(frame, cfg.analysis_size)
    return frame


def flatten_oriented(img: Image.Image, cfg: AnalysisConfig, orientation: int) -> tuple[Image.Image, bool]:
    """Group "prepare" + compositing: transparency composited on the background, EXIF orientation
    applied -> (L or RGB image, had_alpha)."""
    flat, has_alpha = composite_visible(prepare_frame(img, cfg), cfg.background)
    return orient(flat, orientation), has_alpha


def measure_colour(flat: Image.Image) -> dict[str, float]:
    """Group "colour": mean R, G, B of the composited image."""
    r, g, b = color_means(flat)
    return {"color_mean_r": r, "color_mean_g": g, "color_mean_b": b}


def measure_grey(grey_img: Image.Image) -> dict[str, float]:
    """Group "grey": brightness, contrast, entropy, sharpness of the S x S analysis image."""
    return grey_metrics(np.asarray(grey_img))


def _decode_and_measure(data: bytes, cfg: AnalysisConfig, t0: float, known: dict[str, Any]) -> dict[str, Any]:
    with pillow_guard(cfg.max_pixels):
        img, header = decode_first_frame(data, cfg, known)
        with img:
            # ---- analysis (our code: any failure here is an INTERNAL_ERROR)
            frame = prepare_frame(img, cfg)
            flat, has_alpha = composite(frame, cfg.background)
            grey = grey_of(flat)  # one grey conversion for the content signals and the analysis image
            content = content_signals(img, frame, grey, cfg.analysis_size)  # kind-of-picture signals (opaque pixels)
            o = header["orientation"]
            grey_img = analysis_image(orient(grey, o), cfg.analysis_size)  # L: no conversion
            grey_m = measure_grey(grey_img)
            if has_alpha and swallowed(content["opaque_fraction"], grey_m["contrast"]):  # a white icon on white
                flat, _ = composite(frame, contrasting(cfg.background))
                grey_img = analysis_image(orient(grey_of(flat), o), cfg.analysis_size)
                grey_m = measure_grey(grey_img)
            flat = orient(flat, o)
            out = {**header, "has_alpha": has_alpha, **measure_colour(flat), **grey_m, **content,
                   **image_features(flat)}
            hin = hash_inputs(grey_img)
    out.update(decode_ms=(time.perf_counter() - t0) * 1000.0, error_code=None, error_message=None, hash_input=hin)
    return out


def analyse_image(data: bytes, cfg: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Convenience for one image: measurements plus the four hashes (python ints or None) and the
    256-bit pHash (``phash256``, 32 bytes or None)."""
    rec = decode_and_measure(data, cfg)
    hin = rec.pop("hash_input")
    if hin is None:
        rec.update({k: None for k in HASH_COLUMNS})
        rec[DETAIL_COLUMN] = None
    else:
        hashes = hash_batch(hin[None, :])
        rec.update({k: int(v[0]) for k, v in hashes.items()})
        rec[DETAIL_COLUMN] = phash256_batch(hin[None, :])[0].tobytes()
    return rec
