"""The limits and the background of the image-open policy, named once for every stage.

MAX_PIXELS: declared width*height (of the first frame) above which an image is refused as a
    DECOMPRESSION_BOMB before any pixel is decoded: 268,435,456 (16,384 x 16,384, 256 Mi
    pixels), above Pillow's own 89.5 M warning level, which real, legitimate files (large
    openclipart renders, panoramas, scans) exceed. Only a declared size above it is a bomb.
    Memory per worker: JPEGs decode at a reduced DCT scale (1/8 for large ones: ~12 MB at the
    limit); formats without reduced decoding (PNG, TIFF, WebP, ...) decode the first frame at
    full size, then box-reduce: at most ~4 bytes x MAX_PIXELS for the frame plus one converted
    copy for palette / transparency, i.e. a documented bound of ~2 GiB per worker at the limit
    (~1 GiB for an RGB frame). Lower `max_pixels` to bound workers more tightly.
MAX_BYTES: files larger than this are TOO_LARGE_FILE without being read (256 MiB).
BACKGROUND: what transparency is composited on before anything is measured, hashed or embedded
    (white).
"""

from __future__ import annotations

MAX_PIXELS = 16_384 * 16_384
MAX_BYTES = 256 * 1024 * 1024
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
