"""Images: the open policy every stage uses, and stage 1's per-image analysis and hashes.

Modules (each with one job):
  limits    MAX_PIXELS, MAX_BYTES, BACKGROUND: the one set of limits of every stage
  policy    the image-open policy: Pillow's bomb guard, header + size check, first frame,
            `decode_rgb` / `rgb_opener` (EXIF orientation, transparency composited -> RGB)
  sniff     what unopenable bytes are (HEIF/AVIF/JPEG XL, broken known formats, non-images)
  convert   orientation, any mode -> 8 bits, compositing, box reduction
  metrics   the grey analysis image, its metrics, colour means, the 64 x 64 hash image, is_flat
  hashes    batched aHash/dHash/pHash/wHash (bit-identical to imagehash; dHash+pHash kept,
            aHash+wHash opt-in), Haar steps, hamming
  lanczos   Pillow's LANCZOS resize reproduced exactly, batched
  analyse   decode_and_measure / analyse_image: one decode -> every raw_inventory measurement
Every public name is re-exported here (`from curation.imaging import decode_and_measure`).
"""

from __future__ import annotations

from curation.imaging.analyse import (
    MEASURE_COLUMNS,
    AnalysisConfig,
    analyse_image,
    decode_and_measure,
)
from curation.imaging.convert import (
    box_reduce,
    composite,
    exif_orientation,
    flatten,
    orient,
    to_8bit,
)
from curation.imaging.hashes import (
    DETAIL_BYTES,
    DETAIL_COLUMN,
    EXTRA_HASHES,
    HASH_COLUMNS,
    HASH_INPUT_LEN,
    KEPT_HASHES,
    WHASH_IMAGE_SCALE,
    ahash_batch,
    dhash_batch,
    haar_dwt2,
    haar_idwt2,
    hamming,
    hash_batch,
    pack_bits,
    phash256_batch,
    phash_batch,
    whash_batch,
)
from curation.imaging.lanczos import LANCZOS, lanczos_resize_batch
from curation.imaging.limits import BACKGROUND, MAX_BYTES, MAX_PIXELS
from curation.imaging.metrics import (
    ANALYSIS_FILTER,
    DEFAULT_ANALYSIS_SIZE,
    FLAT_CONTRAST,
    FLAT_ENTROPY,
    analysis_image,
    color_means,
    grey_metrics,
    hash_image,
    hash_inputs,
    is_flat,
)
from curation.imaging.policy import (
    DecodeError,
    check_size,
    decode_oriented,
    decode_rgb,
    load_first_frame,
    open_header,
    pillow_guard,
    rgb_opener,
    source_reader,
)
from curation.imaging.sniff import sniff_unsupported

# Names of the single-module era, kept for callers.
DEFAULT_MAX_PIXELS = MAX_PIXELS
DEFAULT_BACKGROUND = BACKGROUND

__all__ = [
    "ANALYSIS_FILTER",
    "BACKGROUND",
    "DEFAULT_ANALYSIS_SIZE",
    "DEFAULT_BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "DETAIL_BYTES",
    "DETAIL_COLUMN",
    "EXTRA_HASHES",
    "FLAT_CONTRAST",
    "FLAT_ENTROPY",
    "HASH_COLUMNS",
    "HASH_INPUT_LEN",
    "KEPT_HASHES",
    "LANCZOS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MEASURE_COLUMNS",
    "WHASH_IMAGE_SCALE",
    "AnalysisConfig",
    "DecodeError",
    "ahash_batch",
    "analyse_image",
    "analysis_image",
    "box_reduce",
    "check_size",
    "color_means",
    "composite",
    "decode_and_measure",
    "decode_oriented",
    "decode_rgb",
    "dhash_batch",
    "exif_orientation",
    "flatten",
    "grey_metrics",
    "haar_dwt2",
    "haar_idwt2",
    "hamming",
    "hash_batch",
    "hash_image",
    "hash_inputs",
    "is_flat",
    "lanczos_resize_batch",
    "load_first_frame",
    "open_header",
    "orient",
    "pack_bits",
    "phash256_batch",
    "phash_batch",
    "pillow_guard",
    "rgb_opener",
    "sniff_unsupported",
    "source_reader",
    "to_8bit",
    "whash_batch",
]
