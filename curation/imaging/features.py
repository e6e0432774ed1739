"""Verification features of stage 1: a small spatial colour thumbnail of every analysed image.

`image_features(flat)` takes the image the other measurements see (mode L or RGB, transparency
already composited on the analysis background, EXIF orientation applied) and returns
FEATURE_COLUMNS:

* ``thumb_rgb``: ``THUMB_SIDE`` x ``THUMB_SIDE`` RGB, box-filtered (each cell is the mean of its
  pixels; the aspect ratio is not kept, like the hashes), row-major, 3 bytes per cell
  (``THUMB_BYTES`` bytes, grey images repeat the grey level in R, G and B).

The hash dedup stage compares thumbnails of candidate pairs (`curation.dedup.verify`): two copies
of one picture at different sizes, encodings or renderings have near-equal thumbnails, while a
recolour, a different suit on the same card layout or another animation frame differs in some
cells, where global colour means cannot tell them apart. Cost: one box resize of the (already
reduced) image, ~20 us.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["FEATURE_COLUMNS", "THUMB_BYTES", "THUMB_SIDE", "bytes_array", "image_features", "thumb_array"]

THUMB_SIDE = 8
THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
FEATURE_COLUMNS = ("thumb_rgb",)
# Binary Series at least this long are read from their Arrow buffers even where pyarrow is not yet
# imported (its first use costs ~0.4 s; the list path ~1.2 us a row)
ARROW_MIN_ROWS = 300_000


def image_features(flat: Image.Image) -> dict[str, Any]:
    """FEATURE_COLUMNS of one composited, oriented L or RGB image (see the module docstring)."""
    rgb = flat if flat.mode == "RGB" else flat.convert("RGB")
    # two box steps: an integer reduce to >= 4x the side, then BOX; equals one BOX resize within
    # rounding and avoids resampling a huge image in one call
    k = max(1, min(rgb.width, rgb.height) // (4 * THUMB_SIDE))
    if k > 1:
        rgb = rgb.reduce(k)
    thumb = rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return {"thumb_rgb": np.asarray(thumb, dtype=np.uint8).tobytes()}


def bytes_array(values: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) uint8 array of fixed-width binary values and a bool mask of the rows that have
    one (null or wrong-length values are zero rows with mask False). `values`: a list of bytes /
    None, or a polars Binary Series, read from its Arrow buffers without a Python object per row
    (a 1M-row index column: ~0.05 s instead of ~0.6 s for the list) once pyarrow is imported or
    when the column is long enough to repay importing it (~0.4 s, `ARROW_MIN_ROWS`); a shorter
    Series takes the list path."""
    if hasattr(values, "to_arrow"):
        if "pyarrow" in sys.modules or len(values) >= ARROW_MIN_ROWS:
            return _series_bytes(values, width)
        values = values.to_list()
    n = len(values)
    out = np.zeros((n, width), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    for i, v in enumerate(values):
        if v is not None and len(v) == width:
            out[i] = np.frombuffer(v, dtype=np.uint8)
            ok[i] = True
    return out, ok


def _series_bytes(series: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """`bytes_array` of a polars Binary Series: its large_binary Arrow chunks' offsets and data."""
    import polars as pl  # here: stage 1's workers import this module and never need polars

    n = len(series)
    out = np.zeros((n, width), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    arr = series.cast(pl.Binary).to_arrow(compat_level=pl.CompatLevel.oldest())
    chunks = arr.chunks if hasattr(arr, "chunks") else [arr]
    start = 0
    for chunk in chunks:
        m = len(chunk)
        if m and chunk.null_count < m:
            _validity, offs_buf, data_buf = chunk.buffers()
            offs = np.frombuffer(offs_buf, dtype=np.int64, count=chunk.offset + m + 1)[chunk.offset:]
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            lengths = np.diff(offs)
            is_good = valid & (lengths == width)
            good = np.flatnonzero(is_good)
            if len(good) and data_buf is not None:
                data = np.frombuffer(data_buf, dtype=np.uint8)[offs[0]:offs[-1]]
                if len(good) * width != len(data):  # other lengths present: keep the good rows' bytes
                    data = data[np.repeat(is_good, lengths)]
                out[start + good] = data.reshape(len(good), width)
                ok[start + good] = True
        start += m
    return out, ok


def thumb_array(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, THUMB_BYTES) uint8 array of ``thumb_rgb`` values and a bool mask of the rows that have
    one (null or wrong-length values are zero rows with mask False)."""
    return bytes_array(values, THUMB_BYTES)
