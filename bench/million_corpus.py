"""The corpus of the million-image run (bench/million.py): `n` real images derived from packaged
images, in labelled duplicate groups spread over the shards, with a manifest of (path, group, variant).

Bases (each one picture, its own group; never the kept-back oxygen-icon-theme, freeciv-data,
tuxpaint-stamps-default, opencv-doc): Debian openclipart-png (one per file name and content, fitted
to a long side drawn from 48..160 px), wesnoth unit sprites (not animation frames, 72 px native),
arcade's Kenney images (fitted to <= 128 px), Fashion-MNIST train + t10k (28 px native, or
LANCZOS-upscaled 2-4x to 56..112 px) and tiles of
scikit-image's sample photos (48..128 px squares at half-tile strides, flat tiles left out).

Each base gives one group of `len(DUP_VARIANTS)` copies that are duplicates (the labels of
bench/accuracy_sets.py: re-encodes, resizes, small crops), and, for colour art, with probability
RECOLOUR_P one hue-shifted copy that is NOT a duplicate (its own group, variant `hue`, as the
accuracy set labels hue shifts). Art too grey for a visible hue shift gets a PNG re-save instead
(variant `png_resave`, a duplicate of its group).

Placement: every image gets a rank; files are `<rank // 1000:04d>/<rank:07d>.<ext>`, so the
pipeline's sorted listing cuts shards in rank order. A group has a home shard; each copy lands in
it with probability HOME_P, else in a uniformly drawn shard: within-shard and cross-shard pairs
are both exercised. Everything is seeded (the plan and each group's own RNG): the same arguments
give the same files. Generation is chunked (CHUNK groups); a chunk whose manifest part exists is
skipped, so an interrupted generation resumes.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import multiprocessing
import random
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from bench.accuracy_sets import encode, fit, hue_shift, render_svg

DUP_VARIANTS = ("orig", "jpeg90", "jpeg60", "webp80", "webp50", "r75", "r50", "up2", "crop2", "crop4", "webp_r60")
RECOLOUR_P = 0.4
HOME_P = 0.5
CHUNK = 400
COLOUR_KINDS = ("clipart", "wesnoth", "arcade")
EXT = {"orig": "png", "jpeg90": "jpg", "jpeg60": "jpg", "webp80": "webp", "webp50": "webp", "r75": "png",
       "r50": "png", "up2": "png", "crop2": "png", "crop4": "jpg", "webp_r60": "webp", "hue": "png"}
MANIFEST_SCHEMA = {"rank": pl.Int64, "path": pl.String, "group": pl.Int64, "base_group": pl.Int64,
                   "variant": pl.String, "duplicate": pl.Boolean, "base_kind": pl.String, "source": pl.String,
                   "width": pl.Int32, "height": pl.Int32, "bytes": pl.Int64, "format": pl.String}
OPENCLIPART = Path("/usr/share/openclipart/png")
HUGE_PX = 20_000_000
WESNOTH_UNITS = Path("/usr/share/games/wesnoth/1.16/data/core/images/units")
FASHION = Path("/usr/share/datasets/fashion-mnist")
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "text", "cell")
TILE_SIDES = (48, 64, 80, 96, 128)
FRAME_WORDS = ("-attack", "-defend", "-melee", "-ranged", "-die", "-dying", "-idle", "-magic", "-moving",
               "-bob", "-fly", "-breath", "-lead", "-flying", "-se", "-ne", "-n-", "-s-", "-sw", "-nw")


@dataclass(frozen=True)
class Base:
    kind: str  # clipart | wesnoth | arcade | fashion | tile
    ref: str  # a path, "train:<i>" / "t10k:<i>", or "<photo>:<side>:<x>:<y>"


# ------------------------------------------------------------------------------ bases


def _arcade_root() -> Path:
    import arcade

    return Path(arcade.__file__).parent / "resources"


def _fashion(split: str) -> np.ndarray:
    with gzip.open(FASHION / f"{split}-images-idx3-ubyte.gz") as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)


_PHOTO_CACHE: dict[str, np.ndarray] = {}


def _photo(name: str) -> np.ndarray:
    if name not in _PHOTO_CACHE:
        import skimage.data as skd

        _PHOTO_CACHE[name] = getattr(skd, name)()
    return _PHOTO_CACHE[name]


def list_bases() -> list[Base]:
    """Every base picture, in a fixed order (shuffled by the plan)."""
    out: list[Base] = []
    seen_names: set[str] = set()
    seen_bytes: set[bytes] = set()
    for p in sorted(OPENCLIPART.rglob("*.png")):
        if p.name in seen_names:
            continue
        digest = hashlib.blake2b(p.read_bytes(), digest_size=16).digest()
        if digest in seen_bytes:
            continue
        seen_names.add(p.name)
        seen_bytes.add(digest)
        out.append(Base("clipart", str(p)))
    for p in sorted(WESNOTH_UNITS.rglob("*.png")):
        if not (any(w in p.stem for w in FRAME_WORDS) or p.stem[-1].isdigit()):
            out.append(Base("wesnoth", str(p)))
    seen_bytes.clear()
    for p in sorted(_arcade_root().rglob("*.png")):
        digest = hashlib.blake2b(p.read_bytes(), digest_size=16).digest()
        if digest not in seen_bytes:
            seen_bytes.add(digest)
            out.append(Base("arcade", str(p)))
    for split in ("train", "t10k"):
        out += [Base("fashion", f"{split}:{i}") for i in range(len(_fashion(split)))]
    for name in PHOTOS:
        a = _photo(name)
        h, w = a.shape[:2]
        for side in TILE_SIDES:
            step = side // 2
            for y in range(0, h - side + 1, step):
                for x in range(0, w - side + 1, step):
                    if a[y:y + side, x:x + side].std() >= 20:  # flat tiles (sky, paper) look alike
                        out.append(Base("tile", f"{name}:{side}:{x}:{y}"))
    return out


# ------------------------------------------------------------------------------ plan


def plan(n: int, seed: int, shard_size: int, bases: list[Base] | None = None) -> pl.DataFrame:
    """Which image goes where: one row per image (rank, path, group, base_group, variant, base_kind,
    source); `variant` `hue` may become `png_resave` at generation (grey art)."""
    bases = list_bases() if bases is None else bases
    rng = random.Random(seed)
    order = list(range(len(bases)))
    rng.shuffle(order)
    shards = max(1, math.ceil(n / shard_size))
    rows: list[tuple] = []
    next_neg = len(bases)  # negative groups get ids after every base group
    for g, bi in enumerate(order):
        if len(rows) >= n:
            break
        base = bases[bi]
        members = list(DUP_VARIANTS)
        if base.kind in COLOUR_KINDS and rng.random() < RECOLOUR_P:
            members.append("hue")
        home = rng.randrange(shards)
        for v in members[: n - len(rows)]:
            shard = home if rng.random() < HOME_P else rng.randrange(shards)
            group = g
            if v == "hue":
                group, next_neg = next_neg, next_neg + 1
            rows.append((shard + rng.random(), group, g, v, base.kind, base.ref))
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} images can be derived from {len(bases)} bases; asked for {n}")
    df = pl.DataFrame(rows, schema={"key": pl.Float64, "group": pl.Int64, "base_group": pl.Int64, "variant": pl.String,
                                    "base_kind": pl.String, "source": pl.String}, orient="row")
    df = df.sort("key").with_row_index("rank").drop("key").with_columns(pl.col("rank").cast(pl.Int64))
    ext = pl.col("variant").replace_strict(EXT, return_dtype=pl.String)
    path = (pl.format("{}/{}.", (pl.col("rank") // 1000).cast(pl.String).str.zfill(4),
                      pl.col("rank").cast(pl.String).str.zfill(7)) + ext)
    return df.with_columns(path.alias("path")).sort("base_group", "rank")


# ------------------------------------------------------------------------------ images


def _resize(img: Image.Image, f: float) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)


def _fit(img: Image.Image, longest: int) -> Image.Image:
    return fit(img, longest) if max(img.size) > longest else img


def _png_size(path: str) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, without decoding (or PIL's decompression-bomb check)."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    return struct.unpack(">II", head[16:24])


def load_base(base: Base, rng: random.Random) -> Image.Image:
    if base.kind == "fashion":
        split, i = base.ref.split(":")
        img = Image.fromarray(_fashion_cached(split)[int(i)])
        k = rng.choice((1, 2, 2, 3, 3, 4))  # native 28 px, or upscaled to 56..112 px
        return img if k == 1 else img.resize((28 * k, 28 * k), Image.LANCZOS)
    if base.kind == "tile":
        name, side, x, y = base.ref.split(":")
        s, x0, y0 = int(side), int(x), int(y)
        return Image.fromarray(_photo(name)[y0:y0 + s, x0:x0 + s])
    longest = rng.choice((48, 64, 64, 80, 96, 96, 112, 128, 128, 160))
    if base.kind == "clipart" and (size := _png_size(base.ref))[0] * size[1] > HUGE_PX:
        # 17 openclipart PNGs are 20-623 MP (PIL refuses the largest as a decompression bomb): draw the
        # same picture from its SVG at the target size instead of decoding gigabytes
        svg = OPENCLIPART.parent / "svg" / Path(base.ref).relative_to(OPENCLIPART).with_suffix(".svg")
        drawn = render_svg(svg, longest, size[0] / size[1]) if svg.exists() else None
        if drawn is None:
            raise RuntimeError(f"{base.ref}: {size[0]}x{size[1]} px and no SVG of it to draw")
        return drawn.convert("RGBA")
    img = Image.open(base.ref)
    img.load()
    img = img.convert("RGBA") if img.mode in ("P", "LA", "PA", "RGBA", "1", "I;16") else img.convert("RGB")
    if base.kind == "clipart":
        return _fit(img, longest)
    if base.kind == "arcade":
        return _fit(img, 128)
    return img  # wesnoth: native 72 px


_FASHION_CACHE: dict[str, np.ndarray] = {}


def _fashion_cached(split: str) -> np.ndarray:
    if split not in _FASHION_CACHE:
        _FASHION_CACHE[split] = _fashion(split)
    return _FASHION_CACHE[split]


def _crop(img: Image.Image, frac: float, rng: random.Random) -> Image.Image:
    w, h = img.size
    dx, dy = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = rng.randint(0, dx), rng.randint(0, dy)
    return img.crop((left, top, w - (dx - left), h - (dy - top)))


def _saturation(img: Image.Image) -> float:
    rgba = np.asarray(img.convert("RGBA"))
    opaque = rgba[..., 3] > 128
    if not opaque.any():
        return 0.0
    hsv = np.asarray(Image.fromarray(rgba[..., :3]).convert("HSV"))
    return float(hsv[..., 1][opaque].mean())


def render(variant: str, img: Image.Image, rng: random.Random) -> tuple[bytes, str, Image.Image]:
    """(file bytes, variant actually made, the picture) of one copy of `img`."""
    long = max(img.size)
    if variant == "orig":
        return encode(img, "PNG"), variant, img
    if variant in ("jpeg90", "jpeg60"):
        return encode(img, "JPEG", quality=int(variant[4:])), variant, img
    if variant in ("webp80", "webp50"):
        return encode(img, "WEBP", quality=int(variant[4:])), variant, img
    if variant == "r75":
        out = _resize(img, 0.75)
    elif variant == "r50":
        out = _resize(img, 0.5 if long >= 56 else 3.0)
    elif variant == "up2":
        out = _resize(img, 2.0 if 2 * long <= 256 else 0.9)
    elif variant in ("crop2", "crop4"):
        out = _crop(img, int(variant[4:]) / 100, rng)
        if variant == "crop4":
            return encode(out, "JPEG", quality=90), variant, out
    elif variant == "webp_r60":
        out = _resize(img, 0.6 if long >= 48 else 2.5)
        return encode(out, "WEBP", quality=75), variant, out
    elif variant == "hue":
        if _saturation(img) > 60:
            out = hue_shift(img, rng.uniform(60, 180))
            return encode(out, "PNG"), variant, out
        return encode(img, "PNG", compress_level=1), "png_resave", img
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return encode(out, "PNG"), variant, out


def _chunk_rows(args: tuple) -> int:
    """Write one chunk's files (skipping existing ones) and its manifest part; returns images written."""
    root, part, seed, groups = args
    root = Path(root)
    rows, wrote = [], 0
    for g, kind, ref, members in groups:
        rng = random.Random(f"{seed}:{g}")
        img = load_base(Base(kind, ref), rng)
        for rank, path, group, variant in members:
            data, made, out = render(variant, img, rng)
            target = root / path
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + ".tmp")
                tmp.write_bytes(data)
                tmp.rename(target)
                wrote += 1
            fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[path.rsplit(".", 1)[1]]
            rows.append((rank, path, group if made == "hue" else g, g, made, made != "hue", kind, ref,
                         out.size[0], out.size[1], len(data), fmt))
    part_path = root / ".manifest" / f"part-{part:05d}.parquet"
    part_path.parent.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame(rows, schema=MANIFEST_SCHEMA, orient="row")
    df.write_parquet(part_path.with_suffix(".tmp"))
    part_path.with_suffix(".tmp").rename(part_path)
    return wrote


def generate(root: Path, n: int, seed: int, shard_size: int, workers: int = 2) -> pl.DataFrame:
    """Build (or finish) the corpus under `root`; returns the manifest (also root/../manifest.parquet)."""
    p = plan(n, seed, shard_size)
    chunks = []
    groups = p.group_by("base_group", maintain_order=True).agg(
        pl.col("base_kind").first(), pl.col("source").first(), pl.col("rank"), pl.col("path"), pl.col("group"),
        pl.col("variant"))
    batch = []
    for row in groups.iter_rows():
        g, kind, ref, ranks, paths, grp, variants = row
        batch.append((g, kind, ref, list(zip(ranks, paths, grp, variants))))
        if len(batch) == CHUNK:
            chunks.append(batch)
            batch = []
    if batch:
        chunks.append(batch)
    todo = [(str(root), i, seed, c) for i, c in enumerate(chunks)
            if not (root / ".manifest" / f"part-{i:05d}.parquet").exists()]
    if todo:
        # spawn, not fork: polars' thread pool in this process would deadlock a forked child
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done, _ in enumerate(pool.map(_chunk_rows, todo, chunksize=1), 1):
                if done % 25 == 0 or done == len(todo):
                    print(f"generate: {done}/{len(todo)} chunks", flush=True)
    manifest = pl.concat([pl.read_parquet(root / ".manifest" / f"part-{i:05d}.parquet") for i in range(len(chunks))])
    return manifest.sort("rank")


def size_distribution(manifest: pl.DataFrame) -> dict:
    long = manifest.select(pl.max_horizontal("width", "height").alias("l"))["l"]
    edges = [0, 24, 32, 48, 64, 96, 128, 192, 256, 10_000]
    hist = {f"{a + 1}-{b}" if b < 10_000 else f">{a}": int(((long > a) & (long <= b)).sum())
            for a, b in zip(edges[:-1], edges[1:])}
    return {"long_side_px": {"min": int(long.min()), "p50": float(long.median()), "mean": round(float(long.mean()), 1),
                             "max": int(long.max()), "histogram": hist},
            "bytes_mean": round(float(manifest["bytes"].mean()), 1), "bytes_total": int(manifest["bytes"].sum()),
            "by_format": dict(manifest.group_by("format").len().sort("format").iter_rows()),
            "by_base_kind": dict(manifest.group_by("base_kind").len().sort("base_kind").iter_rows()),
            "by_variant": dict(manifest.group_by("variant").len().sort("variant").iter_rows())}
