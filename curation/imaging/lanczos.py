"""Pillow's LANCZOS resize of 8-bit images, reproduced exactly and batched.

imagehash reduces the image with `Image.resize(size, LANCZOS)` before each hash. To hash N images
at once we reproduce Pillow's algorithm (src/libImaging/Resample.c, 8 bits per channel) as two
matrix products: coefficients are computed exactly as Pillow does (double precision, same
formula and summation order, via libm's sin through `math.sin`), converted to Pillow's 22-bit
fixed point, and each pass is an integer-valued float64 product (|sum| < 2**40, so exact),
rounded and clipped to uint8 like Pillow's `clip8`, horizontal pass first.
`lanczos_resize_batch((N, H, W) uint8, width, height)` -> (N, height, width) uint8, bit-identical
to `Image.fromarray(img).resize((width, height), LANCZOS)` (tests/unit/test_imaging.py checks it).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

LANCZOS = Image.Resampling.LANCZOS

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
