"""Labelled evaluation sets of the accuracy bench (bench/accuracy.py), built from real images that
packages ship, cached under data/bench/accuracy/v<SET_VERSION>/ (gitignored; built once, ~3 min).

Sources (never the kept-back oxygen-icon-theme, freeciv-data, tuxpaint-stamps-default, opencv-doc):
  Debian openclipart-png + openclipart-svg (the same clip art as PNG, and as SVG that we rasterise
  with librsvg's rsvg-convert, a different renderer: real re-renders), wesnoth-1.16-data (unit
  sprites and their animation frames), dataset-fashion-mnist (28x28 product photos), and from the
  venv scikit-image's sample photos and arcade's Kenney sprites, tiles and cards.

Quality set (quality/labels.parquet, one row per file): `clean` images that must be kept, by
`category` (photo, photo_tiny, graphic_alpha, graphic_opaque, line_art, icon_small, sprite), and
degraded images that must be rejected, by `degradation`, with `expect` (the reasons any of which
counts as the right rejection; the first is the primary reason) and `params` (the parameters used):
  gaussian_blur  sigma = 1.5-3% of the shorter side (a clearly out-of-focus frame)      -> blurry
  motion_blur    line kernel of 3-6% of the shorter side, random angle (camera shake)    -> blurry
  upscaled       a 40-72 px thumbnail upscaled 5-12x back (bicubic)                       -> blurry
  under_exposed  -4.5..-6 stops in linear light, read noise, JPEG q90                    -> too_dark
  over_exposed   +2.5..+4 stops in linear light, clipped, JPEG q90                        -> too_bright
  blank          one paper/ink colour with a +-3 level gradient, noise sigma 1.5, JPEG/PNG -> low_contrast
  near_empty     a small mark (0.3-1.5% of the area) on a plain canvas                    -> low_entropy
  heavy_jpeg     JPEG quality 4-10                                                        -> compressed
(`compressed` is not a reason the filter has today: its recall is 0 until one exists; `blurry` is
also accepted for it and for upscaled thumbnails.)

Dedup set (dedup/labels.parquet): `group` = the labelled duplicate group (all its members are
copies of one picture), `variant` says how the copy was made: openclipart PNG `png` vs `svg<N>`
(rsvg-convert renders with longest side N in 24..256: an 8x+ range), `png_resize48`, `png_jpeg`
(on white, q75), `png_webp` (q80); wesnoth/arcade sprites `orig`, `x2`, `half`, `webp`, `jpeg`;
Fashion-MNIST `orig` 28 px, `jpeg`, `up2/up4/up8`; skimage photo crops `orig` 512, `r256/r128/r64`,
`jpeg`, `webp`. Negatives, each its own group: openclipart hue shifts (`hue`), every playing card
and recoloured sprite (arcade suits, fish/slime/worm/alien colours), and wesnoth animation frames
(`frame`: look-alikes of their unit, not duplicates). Clip art is skipped when librsvg draws nothing
at some size, or when its 32x32 colour thumbnail on white is within 6 levels (mean absolute
difference) of art already chosen: the collection holds series no labeller could tell apart.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageFilter

from bench.common import REPO

SET_VERSION = 2
CACHE = REPO / "data" / "bench" / "accuracy" / f"v{SET_VERSION}"
DEB_PACKAGES = ("openclipart-png", "openclipart-svg", "wesnoth-1.16-data", "dataset-fashion-mnist", "librsvg2-bin")
OPENCLIPART = Path("/usr/share/openclipart")
WESNOTH_UNITS = Path("/usr/share/games/wesnoth/1.16/data/core/images/units")
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "text", "cell")
FRAME_WORDS = ("-attack", "-defend", "-melee", "-ranged", "-die", "-dying", "-idle", "-magic", "-moving",
               "-bob", "-fly", "-breath", "-lead", "-flying", "-se", "-ne", "-n-", "-s-", "-sw", "-nw")
QUALITY_QUOTA = {  # clean categories, then degradations
    "photo": 400, "photo_tiny": 150, "graphic_alpha": 450, "graphic_opaque": 250, "line_art": 150,
    "icon_small": 250, "sprite": 250,
    "gaussian_blur": 200, "motion_blur": 200, "upscaled": 200, "under_exposed": 150, "over_exposed": 150,
    "blank": 150, "near_empty": 150, "heavy_jpeg": 200,
}
EXPECT = {
    "gaussian_blur": ["blurry"], "motion_blur": ["blurry"], "upscaled": ["blurry", "upscaled"],
    "under_exposed": ["too_dark"], "over_exposed": ["too_bright"],
    "blank": ["low_contrast", "low_entropy", "too_bright", "too_dark"],
    "near_empty": ["low_entropy", "low_contrast", "too_bright"], "heavy_jpeg": ["compressed", "blurry"],
}


# ------------------------------------------------------------------------------ sources


def check_packages() -> None:
    missing = []
    for pkg in DEB_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    if missing:
        raise SystemExit("the accuracy bench needs Debian packages that are not installed; run:\n"
                         f"  apt-get update && apt-get install -y {' '.join(missing)}")


def _has_content(img: Image.Image) -> bool:
    """Not blank: some opaque ink that differs from white, and not one colour."""
    a = np.asarray(composite_white(img.copy().resize((64, 64))).convert("L"), dtype=np.float32)
    ink = (a < 235).mean()
    return 0.03 < ink < 0.97 and a.std() > 12


def _is_line_art(img: Image.Image) -> bool:
    small = composite_white(img.copy().resize((96, 96))).convert("RGB")
    rgb = np.asarray(small, dtype=np.int16)
    grey = rgb.mean(axis=2)
    ink = grey < 200
    if ink.mean() < 0.03 or ink.mean() > 0.5:
        return False
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    return bool((sat[ink] < 40).mean() > 0.9 and (grey[ink] < 110).mean() > 0.5)


def openclipart_pairs(rng: random.Random) -> list[tuple[Path, Path]]:
    """(png, svg) of distinct clip art (one per base name and per PNG content), shuffled."""
    seen_names, seen_bytes, out = set(), set(), []
    for png in sorted((OPENCLIPART / "png").rglob("*.png")):
        svg = OPENCLIPART / "svg" / png.relative_to(OPENCLIPART / "png").with_suffix(".svg")
        if png.name in seen_names or not svg.exists() or svg.stat().st_size > 250_000:
            continue
        data = png.read_bytes()
        key = hash(data)
        if key in seen_bytes:
            continue
        seen_names.add(png.name)
        seen_bytes.add(key)
        out.append((png, svg))
    rng.shuffle(out)
    return out


def usable_art(pairs, rng: random.Random):
    """Yield (png, svg, PIL image) of clip art with content, 64..1600 px."""
    for png, svg in pairs:
        try:
            img = Image.open(png)
            if min(img.size) < 64 or max(img.size) > 1600:
                continue
            img.load()
        except Exception:  # noqa: BLE001, S112 - a broken packaged file is simply skipped
            continue
        img = img.convert("RGBA") if img.mode in ("P", "LA", "RGBA", "PA") else img.convert("RGB")
        if _has_content(img):
            yield png, svg, img


def render_svg(svg: Path, longest: int, aspect: float) -> Image.Image | None:
    """Rasterise with librsvg (rsvg-convert), longest side `longest` px; None if it fails."""
    arg = ["-w", str(longest)] if aspect >= 1 else ["-h", str(longest)]
    r = subprocess.run(["rsvg-convert", *arg, "-f", "png", str(svg)], capture_output=True, timeout=60, check=False)
    if r.returncode or not r.stdout:
        return None
    img = Image.open(io.BytesIO(r.stdout))
    img.load()
    return img


def wesnoth_units(rng: random.Random) -> list[tuple[Path, list[Path]]]:
    """(base sprite, its animation frames) for units with at least two frames, shuffled."""
    files = sorted(WESNOTH_UNITS.rglob("*.png"))
    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)
    out = []
    for group in by_dir.values():
        names = {f.stem: f for f in group}
        for stem, f in names.items():
            if any(w in stem for w in FRAME_WORDS) or stem[-1].isdigit():
                continue
            frames = [g for s, g in names.items() if s.startswith(stem + "-") and s[-1].isdigit()]
            if len(frames) >= 2:
                out.append((f, sorted(frames)))
    rng.shuffle(out)
    return out


def arcade_dir() -> Path:
    import arcade

    return Path(arcade.__file__).parent / "resources" / "assets" / "images"


def fashion_images(n: int, offset: int = 0) -> np.ndarray:
    with gzip.open(FASHION) as fh:
        a = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return a[offset:offset + n]


def photo_arrays() -> dict[str, np.ndarray]:
    import skimage.data as skd

    return {name: getattr(skd, name)() for name in PHOTOS}


# ------------------------------------------------------------------------------ image operations


def composite_white(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def fit(img: Image.Image, longest: int) -> Image.Image:
    w, h = img.size
    s = longest / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def photo_crop(a: np.ndarray, rng: random.Random, out_max: int) -> Image.Image:
    img = Image.fromarray(a)
    w, h = img.size
    f = rng.uniform(0.45, 0.9)
    cw, ch = int(w * f), int(h * f * rng.uniform(0.8, 1.2))
    ch = min(ch, h)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch))
    return fit(img, out_max) if max(img.size) > out_max else img


def _to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def expose(img: Image.Image, stops: float, rng: np.random.Generator) -> Image.Image:
    lin = _to_linear(np.asarray(img.convert("RGB"), np.float64) / 255) * 2.0 ** stops
    lin = lin + rng.normal(0, 0.0015, lin.shape)  # sensor read noise
    return Image.fromarray((_to_srgb(lin) * 255 + 0.5).astype(np.uint8))


def motion_blur(img: Image.Image, length: int, angle: float) -> Image.Image:
    from scipy.signal import fftconvolve

    k = np.zeros((length, length))
    c = (length - 1) / 2
    for t in np.linspace(-c, c, 4 * length):
        k[round(c + t * np.sin(angle)), round(c + t * np.cos(angle))] = 1
    k /= k.sum()
    a = np.asarray(img, np.float64)
    a = a[..., None] if a.ndim == 2 else a
    out = np.stack([fftconvolve(a[..., i], k, mode="same") for i in range(a.shape[2])], axis=2)
    # fftconvolve "same" darkens the border: renormalise by the kernel mass that fell inside
    mass = fftconvolve(np.ones(a.shape[:2]), k, mode="same")[..., None]
    out = np.clip(out / np.maximum(mass, 1e-6), 0, 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if out.shape[2] == 1 else out)


def hue_shift(img: Image.Image, degrees: float) -> Image.Image:
    rgba = img.convert("RGBA")
    a = np.asarray(rgba).copy()
    hsv = np.asarray(Image.fromarray(a[..., :3]).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(degrees / 360 * 256)) % 256
    rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return Image.fromarray(np.dstack([rgb, a[..., 3]]))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img = composite_white(img)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------ set writers


class _Writer:
    def __init__(self, root: Path):
        self.root = root
        self.rows: list[dict] = []
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, data: bytes | Path, **label) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, path)
        else:
            path.write_bytes(data)
        self.rows.append({"file": name, **label})

    def finish(self) -> pl.DataFrame:
        df = pl.DataFrame(self.rows, infer_schema_length=None)
        df.write_parquet(self.root / "labels.parquet")
        return df


def _photo_bytes(img: Image.Image, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        return encode(img, "JPEG", quality=92), "jpg"
    return encode(img, "PNG"), "png"


def _degrade(kind: str, img: Image.Image, rng: random.Random, nrng: np.random.Generator) -> tuple[bytes, str, dict]:
    short = min(img.size)
    if kind == "gaussian_blur":
        sigma = max(2.0, rng.uniform(0.015, 0.03) * short)
        return encode(img.filter(ImageFilter.GaussianBlur(sigma)), "PNG"), "png", {"sigma_px": round(sigma, 2)}
    if kind == "motion_blur":
        length = max(5, int(rng.uniform(0.03, 0.06) * short))
        angle = rng.uniform(0, np.pi)
        out = motion_blur(img.convert("RGB"), length, angle)
        return encode(out, "PNG"), "png", {"length_px": length, "angle_deg": round(np.degrees(angle))}
    if kind == "upscaled":
        thumb = rng.randint(40, 72)
        small = fit(img, thumb)
        factor = max(img.size) / thumb
        up = small.resize(img.size, Image.BICUBIC)
        return encode(up, "PNG"), "png", {"thumb_px": thumb, "factor": round(factor, 1)}
    if kind == "under_exposed":
        stops = -rng.uniform(4.5, 6.0)
        return encode(expose(img, stops, nrng), "JPEG", quality=90), "jpg", {"stops": round(stops, 2)}
    if kind == "over_exposed":
        stops = rng.uniform(2.5, 4.0)
        return encode(expose(img, stops, nrng), "JPEG", quality=90), "jpg", {"stops": round(stops, 2)}
    if kind == "heavy_jpeg":
        q = rng.randint(4, 10)
        return encode(img, "JPEG", quality=q), "jpg", {"quality": q}
    raise ValueError(kind)


def _blank(rng: random.Random, nrng: np.random.Generator, photos: dict[str, np.ndarray]) -> tuple[bytes, str, dict]:
    w, h = rng.randint(256, 1024), rng.randint(256, 1024)
    if rng.random() < 0.5:  # paper white / grey card
        base = np.array([rng.uniform(225, 252)] * 3)
    else:  # the mean colour of a real photo (a lens cap, a wall, a sky)
        a = photos[rng.choice(PHOTOS)]
        a = a[..., None].repeat(3, 2) if a.ndim == 2 else a
        base = a.reshape(-1, 3).mean(0) * rng.uniform(0.3, 1.2)
    ramp = np.linspace(-3, 3, w)[None, :, None] * rng.choice([-1, 1])
    arr = np.clip(base[None, None, :] + ramp + nrng.normal(0, 1.5, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if rng.random() < 0.5:
        return encode(img, "JPEG", quality=85), "jpg", {"colour": [round(float(c)) for c in base]}
    return encode(img, "PNG"), "png", {"colour": [round(float(c)) for c in base]}


def _near_empty(mark: Image.Image, rng: random.Random) -> tuple[bytes, str, dict]:
    w, h = rng.randint(384, 1024), rng.randint(384, 1024)
    frac = rng.uniform(0.003, 0.015)
    side = max(6, int((frac * w * h) ** 0.5))
    m = fit(mark.convert("RGBA"), side)
    shade = int(rng.uniform(235, 255))
    canvas = Image.new("RGBA", (w, h), (shade, shade, shade, 255))
    canvas.alpha_composite(m, (rng.randint(0, w - m.size[0]), rng.randint(0, h - m.size[1])))
    return encode(canvas.convert("RGB"), "PNG"), "png", {"mark_area_fraction": round(frac, 4)}


def build_quality(root: Path, art, rng: random.Random) -> pl.DataFrame:
    nrng = np.random.default_rng(1)
    photos = photo_arrays()
    wr = _Writer(root)
    q = QUALITY_QUOTA
    n = {k: 0 for k in q}

    def clean(cat: str, data, ext: str, src: str) -> None:
        wr.add(f"clean/{cat}/{n[cat]:04d}.{ext}", data, clean=True, category=cat, degradation=None,
               expect=[], params="{}", source=src)
        n[cat] += 1

    def bad(kind: str, data: bytes, ext: str, params: dict, src: str, cat: str) -> None:
        wr.add(f"bad/{kind}/{n[kind]:04d}.{ext}", data, clean=False, category=cat, degradation=kind,
               expect=EXPECT[kind], params=json.dumps(params), source=src)
        n[kind] += 1

    # photos: crops of skimage's sample photos, never upscaled
    names = list(PHOTOS)
    while n["photo"] < q["photo"]:
        name = names[n["photo"] % len(names)]
        img = photo_crop(photos[name], rng, rng.choice([256, 384, 512, 768]))
        data, ext = _photo_bytes(img, rng)
        clean("photo", data, ext, f"skimage:{name}")
    for i, a in enumerate(fashion_images(q["photo_tiny"], offset=5000)):
        clean("photo_tiny", encode(Image.fromarray(a), "PNG"), "png", f"fashion-mnist:t10k[{5000 + i}]")
    # degraded photos (other crops); exposure faults only make sense for photos
    photo_kinds = ("gaussian_blur", "motion_blur", "upscaled", "under_exposed", "over_exposed", "heavy_jpeg")
    for kind in photo_kinds:
        share = q[kind] if kind in ("under_exposed", "over_exposed") else q[kind] // 2
        for k in range(share):
            name = names[(k + 7 * len(kind)) % len(names)]
            img = photo_crop(photos[name], rng, rng.choice([384, 512, 768]))
            data, ext, params = _degrade(kind, img, rng, nrng)
            bad(kind, data, ext, params, f"skimage:{name}", "photo")
    for _ in range(q["blank"]):
        data, ext, params = _blank(rng, nrng, photos)
        bad("blank", data, ext, params, "synthetic:canvas", "blank")

    # graphics: openclipart PNGs as shipped (alpha, opaque-on-white, line art), small SVG renders
    marks = []
    for png, svg, img in art:
        alpha = img.mode == "RGBA" and np.asarray(img)[..., 3].min() < 250
        line = _is_line_art(img)
        src = f"openclipart:{png.relative_to(OPENCLIPART / 'png')}"
        if line and n["line_art"] < q["line_art"]:
            clean("line_art", png, "png", src)
        elif alpha and n["graphic_alpha"] < q["graphic_alpha"]:
            clean("graphic_alpha", png, "png", src)
        elif n["graphic_opaque"] < q["graphic_opaque"]:
            if alpha:  # clip art flattened on a white or pale page, as exported for print or the web
                bg = (255, 255, 255) if rng.random() < 0.6 else tuple(rng.randint(200, 250) for _ in range(3))
                page = Image.new("RGBA", img.size, (*bg, 255))
                page.alpha_composite(img)
                clean("graphic_opaque", encode(page.convert("RGB"), "PNG"), "png", src + " flattened")
            else:
                clean("graphic_opaque", png, "png", src)
        elif n["icon_small"] < q["icon_small"]:
            r = render_svg(svg, rng.choice([20, 24, 32, 40, 48]), img.size[0] / img.size[1])
            if r is not None and _has_content(r):
                clean("icon_small", encode(r, "PNG"), "png", src.replace(".png", ".svg") + " rsvg")
        elif len(marks) < q["near_empty"]:
            marks.append((src, img))
        else:
            kinds = [k for k in ("gaussian_blur", "motion_blur", "upscaled", "heavy_jpeg") if n[k] < q[k]]
            if not kinds:
                break
            kind = kinds[0]
            g = fit(img, 512) if max(img.size) > 512 else img
            g = composite_white(g) if kind in ("motion_blur", "heavy_jpeg") else g
            data, ext, params = _degrade(kind, g, rng, nrng)
            bad(kind, data, ext, params, src, "graphic")
    for src, img in marks:
        data, ext, params = _near_empty(img, rng)
        bad("near_empty", data, ext, params, src, "near_empty")
    # sprites: wesnoth units and arcade's Kenney sprites as shipped
    sprites = [f for f, _ in wesnoth_units(rng)][:150]
    ad = arcade_dir()
    sprites += sorted(p for d in ("enemies", "items", "tiles", "alien", "space_shooter") for p in (ad / d).rglob("*.png"))
    for f in sprites:
        if n["sprite"] >= q["sprite"]:
            break
        img = Image.open(f)
        if min(img.size) >= 16 and _has_content(img.convert("RGBA")):
            clean("sprite", f, "png", f"{'wesnoth' if 'wesnoth' in str(f) else 'arcade'}:{f.name}")
    short = {k: (n[k], v) for k, v in q.items() if n[k] < v}
    if short:
        print(f"quality set: fewer than the quota for {short}", flush=True)
    return wr.finish()


def build_dedup(root: Path, art, rng: random.Random, n_art: int = 220) -> pl.DataFrame:
    wr = _Writer(root)
    gid = 0

    def group(items: list[tuple[str, bytes | Path]], kind: str, src: str) -> None:
        nonlocal gid
        for variant, data in items:
            ext = "jpg" if variant.endswith("jpeg") else "webp" if variant.endswith("webp") else "png"
            wr.add(f"{kind}/{gid:05d}_{variant}.{ext}", data, group=gid, variant=variant, kind=kind, source=src)
        gid += 1

    done = 0
    hues = 0
    thumbs: list[np.ndarray] = []
    for png, svg, img in art:
        if done >= n_art:
            break
        thumb = np.asarray(composite_white(img).resize((32, 32), Image.BOX), np.float32)
        if any(np.abs(thumb - t).mean() < 6 for t in thumbs):
            continue  # visually the same picture as art already chosen (series such as 92- vs 96-point stars)
        aspect = img.size[0] / img.size[1]
        items: list[tuple[str, bytes | Path]] = [("png", png)]
        renders = [render_svg(svg, side, aspect) for side in (24, 32, 64, 128, 256)]
        if any(r is None or not _has_content(r) for r in renders):
            continue  # librsvg cannot draw it, or it draws nothing at some size
        items += [(f"svg{side}", encode(r, "PNG")) for side, r in zip((24, 32, 64, 128, 256), renders)]
        thumbs.append(thumb)
        items += [("png_resize48", encode(fit(img, 48), "PNG")), ("png_jpeg", encode(img, "JPEG", quality=75)),
                  ("png_webp", encode(img, "WEBP", quality=80))]
        src = f"openclipart:{png.relative_to(OPENCLIPART / 'png')}"
        group(items, "clipart", src)
        done += 1
        if hues < 80 and np.asarray(img.convert("RGB").convert("HSV"))[..., 1].mean() > 60:
            group([("hue", encode(hue_shift(img, rng.uniform(60, 180)), "PNG"))], "clipart_hue", src)
            hues += 1
    for base, frames in wesnoth_units(rng)[150:230]:
        img = Image.open(base).convert("RGBA")
        w, h = img.size
        group([("orig", base), ("x2", encode(img.resize((2 * w, 2 * h), Image.LANCZOS), "PNG")),
               ("half", encode(img.resize((w // 2, h // 2), Image.LANCZOS), "PNG")),
               ("webp", encode(img, "WEBP", quality=80)), ("jpeg", encode(img, "JPEG", quality=85))],
              "wesnoth", f"wesnoth:{base.name}")
        for fr in rng.sample(frames, 2):
            group([("frame", fr)], "wesnoth_frame", f"wesnoth:{fr.name}")
    ad = arcade_dir()
    for f in sorted((ad / "cards").glob("card[CDHS]*.png")):
        img = Image.open(f).convert("RGBA")
        w, h = img.size
        group([("orig", f), ("half", encode(img.resize((w // 2, h // 2), Image.LANCZOS), "PNG")),
               ("jpeg", encode(img, "JPEG", quality=85))], "card", f"arcade:{f.name}")
    colours = sorted(p for p in (ad / "enemies").glob("*.png") if any(c in p.stem for c in ("Green", "Pink", "Blue", "Purple")))
    colours += sorted((ad / "alien").glob("*_front.png")) + sorted((ad / "items").glob("gem*.png"))
    colours += sorted((ad / "items").glob("flag*1.png")) + sorted((ad / "items").glob("key*.png"))
    for f in colours:
        img = Image.open(f).convert("RGBA")
        w, h = img.size
        group([("orig", f), ("x2", encode(img.resize((2 * w, 2 * h), Image.LANCZOS), "PNG"))], "recolour", f"arcade:{f.name}")
    for i, a in enumerate(fashion_images(120, offset=0)):
        img = Image.fromarray(a)
        group([("orig", encode(img, "PNG")), ("jpeg", encode(img, "JPEG", quality=90))]
              + [(f"up{k}", encode(img.resize((28 * k, 28 * k), Image.LANCZOS), "PNG")) for k in (2, 4, 8)],
              "fashion", f"fashion-mnist:t10k[{i}]")
    for name, a in photo_arrays().items():
        for _ in range(3):
            img = photo_crop(a, rng, 512)
            items = [("orig", encode(img, "PNG"))] + [(f"r{s}", encode(fit(img, s), "PNG")) for s in (256, 128, 64)]
            items += [("jpeg", encode(img, "JPEG", quality=70)), ("webp", encode(img, "WEBP", quality=80))]
            group(items, "photo", f"skimage:{name}")
    return wr.finish()


def build_sets(force: bool = False) -> tuple[Path, Path]:
    """Build (or reuse) both sets; returns their folders (each with labels.parquet)."""
    q_root, d_root = CACHE / "quality", CACHE / "dedup"
    todo = [r for r in (q_root, d_root) if force or not (r / "labels.parquet").exists()]
    if not todo:
        return q_root, d_root
    check_packages()
    pairs = openclipart_pairs(random.Random(11))
    half = len(pairs) // 2  # dedup and quality sets draw from disjoint clip art
    print(f"openclipart: {len(pairs)} distinct PNG+SVG pairs; building {[r.name for r in todo]}", flush=True)
    for r in todo:
        shutil.rmtree(r, ignore_errors=True)
        if r is d_root:
            rng = random.Random(12)
            build_dedup(d_root, usable_art(pairs[:half], rng), rng)
        else:
            rng = random.Random(13)
            build_quality(q_root, usable_art(pairs[half:], rng), rng)
    return q_root, d_root


def describe(labels: pl.DataFrame, by: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in labels[by].value_counts().sort(by).iter_rows()}


if __name__ == "__main__":
    import sys

    if "--force" in sys.argv:
        shutil.rmtree(CACHE, ignore_errors=True)
    q, d = build_sets()
    print(describe(pl.read_parquet(q / "labels.parquet"), "category"))
    print(describe(pl.read_parquet(d / "labels.parquet"), "kind"))
