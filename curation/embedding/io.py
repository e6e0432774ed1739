"""Reading the images to embed: bytes and decoded PIL images of local paths or ``s3://`` URIs.

* `read_bytes_uri` - a plain read for local files (no fsspec overhead on the hot path); s3:// through
  `curation.storage.read_bytes`, with its retries.
* `read_image_uri` - the decoded image (first frame, EXIF orientation applied, pixels loaded), through
  the one image-open policy of every stage (`curation.imaging.policy`: the same pixel limit, no
  leaked DecompressionBombWarning).

Errors propagate (FileNotFoundError, `curation.imaging.DecodeError` with its code, OSError, ...); the
embedding stage records them per image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation import storage

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image


def read_bytes_uri(uri: str) -> bytes:
    """Bytes of a local file (plain read: no fsspec overhead on the hot path) or an s3:// object
    (through `curation.storage.read_bytes`, with its retries)."""
    if storage.is_s3(uri):
        return storage.read_bytes(uri)
    with open(uri, "rb") as f:
        return f.read()


def read_image_uri(uri: str) -> Image.Image:
    """Decode the image at a local path or s3:// URI (first frame, EXIF orientation applied)."""
    from curation.imaging.policy import decode_oriented

    return decode_oriented(read_bytes_uri(uri))
