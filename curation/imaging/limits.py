"""The limits and the background of the image-open policy, named once for every stage.

MAX_PIXELS: declared width*height (of the first frame) above which an image is refused as a
    DECOMPRESSION_BOMB before any pixel is decoded. 150 M pixels (e.g. 12,000 x 12,500): above
    Pillow's own 89.5 M warning level, which real, legitimate files (large openclipart renders,
    panoramas) exceed, while bounding a decode to about 600 MB (RGBA).
MAX_BYTES: files larger than this are TOO_LARGE_FILE without being read (256 MiB).
BACKGROUND: what transparency is composited on before anything is measured, hashed or embedded
    (white).
"""

from __future__ import annotations

MAX_PIXELS = 150_000_000
MAX_BYTES = 256 * 1024 * 1024
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
