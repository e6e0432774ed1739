"""The analysis image and the measurements taken from it.

THE analysis image (`analysis_image`): the oriented, composited image converted to `L` (ITU-R 601
luma, Pillow's `convert("L")`) and resized with Pillow's antialiased BILINEAR filter to exactly
S x S (default S = DEFAULT_ANALYSIS_SIZE = 128; aspect ratio is not kept, like imagehash squashes
to a square). Every grey metric and every hash comes from this one array (`grey_metrics`):
  brightness = mean grey (0..255); contrast = standard deviation of grey;
  entropy    = Shannon entropy of the 256-bin grey histogram, in bits (0..8);
  sharpness  = variance of the 4-neighbour Laplacian ([[0,1,0],[1,-4,1],[0,1,0]], valid region)
               of the S x S grey image; comparable across images because S is fixed. At S = 128 it
               measures detail at thumbnail scale: strong blur is detected, a 1-pixel defocus of a
               4000-pixel photo is not.
Colour means (`color_means`) are exact means of the composited (not resized) image's R, G, B
bands, from integer sums (grey images: R = G = B).
THE hash image (`hash_image`): the analysis image reduced to 64 x 64 (a 2x2 box average at the
default S = 128, LANCZOS for other sizes); `hash_inputs` flattens it for `hashes.hash_batch`.

Flat / near-empty images (a blank page, a single colour, an empty transparent sprite): hashes
carry no information (aHash and dHash are 0, pHash keeps only its DC bit, ...), so every flat
image "collides" with every other; dedup must not cluster on them: `is_flat(contrast, entropy)`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from curation.imaging.content import grey_of, hist_u8
from curation.imaging.hashes import WHASH_IMAGE_SCALE
from curation.imaging.lanczos import LANCZOS

ANALYSIS_FILTER = Image.Resampling.BILINEAR  # antialiased triangle filter when downscaling
DEFAULT_ANALYSIS_SIZE = 128

# Thresholds below which the hashes of an image carry no information (see module docstring).
FLAT_CONTRAST = 2.0
FLAT_ENTROPY = 1.0

_LEVELS = np.arange(256, dtype=np.float64)


def color_means(flat: Image.Image) -> tuple[float, float, float]:
    """Mean R, G, B (0..255) of a flattened (L or RGB) image: exact integer sums (column sums
    first, uint32 per column, then uint64), about half the cost of per-band histograms."""
    arr = np.asarray(flat)
    n = arr.shape[0] * arr.shape[1]
    if n == 0:
        return 0.0, 0.0, 0.0
    cols = arr.reshape(arr.shape[0], -1).sum(axis=0, dtype=np.uint32)
    if arr.ndim == 2:
        mean = int(cols.sum(dtype=np.uint64)) / n
        return mean, mean, mean
    r, g, b = (int(v) for v in cols.reshape(-1, arr.shape[2]).sum(axis=0, dtype=np.uint64)[:3])
    return r / n, g / n, b / n


def grey_metrics(grey: np.ndarray) -> dict[str, float]:
    """brightness, contrast, entropy (bits) and sharpness (Laplacian variance) of a uint8 array."""
    hist = hist_u8(grey).astype(np.float64)
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


def analysis_image(flat_oriented: Image.Image, analysis_size: int = DEFAULT_ANALYSIS_SIZE) -> Image.Image:
    """THE grey analysis image: L, resized (antialiased BILINEAR) to analysis_size x analysis_size
    (an L image, e.g. `grey_of(flat)`, is not converted again)."""
    return grey_of(flat_oriented).resize((analysis_size, analysis_size), ANALYSIS_FILTER)


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


def is_flat(contrast: float | None, entropy: float | None) -> bool:
    """True when an image is (near) uniform, so its perceptual hashes carry no information."""
    if contrast is None or entropy is None:
        return False
    return contrast < FLAT_CONTRAST or entropy < FLAT_ENTROPY
