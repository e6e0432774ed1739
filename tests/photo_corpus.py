"""A small corpus of real photos (scikit-image's bundled `skimage.data` images) for the integration
tests: distinct photos, an exact byte copy, a downscaled near-duplicate and a broken file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "moon")


def photo(name: str) -> Image.Image:
    import skimage.data as data

    arr = getattr(data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr)


def build_photo_corpus(dst: Path, names: tuple[str, ...] = PHOTOS) -> dict[str, bytes]:
    """Write the corpus under `dst`; return {relative path: bytes} of everything written."""
    files: dict[str, bytes] = {}
    for i, name in enumerate(names):
        img = photo(name)
        buf = io.BytesIO()
        if i % 2:
            img.save(buf, format="PNG")
            files[f"photos/{name}.png"] = buf.getvalue()
        else:
            img.convert("RGB").save(buf, format="JPEG", quality=90)
            files[f"photos/{name}.jpg"] = buf.getvalue()
    first = next(iter(files))
    files["copies/exact_copy" + Path(first).suffix] = files[first]  # byte-identical duplicate
    small = photo(names[0]).convert("RGB")
    small = small.resize((small.width // 2, small.height // 2))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    files["copies/downscaled.jpg"] = buf.getvalue()  # near-duplicate
    files["broken/truncated.jpg"] = files[first][: len(files[first]) // 3]  # undecodable tail
    for rel, data in files.items():
        p = dst / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files
