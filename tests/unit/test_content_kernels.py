"""curation.imaging.kernels: the compiled content-signal passes give every value of the numpy
reference bit for bit, on real images of every mode and size; the backend falls back to numpy
without numba; loading the definitions does not import numba; no writable cache is no failure."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.imaging import analyse, content
from curation.imaging.convert import composite
from tests.conftest import arcade_sprites, mnist_digits, skimage_photo

kernels = pytest.importorskip("curation.imaging.kernels")
ROOT = Path(__file__).resolve().parents[2]


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _differences(a: dict, b: dict) -> list[str]:
    """Keys whose values differ in value or type (None == None, NaN == NaN; decode_ms ignored)."""
    assert a.keys() == b.keys()
    bad = []
    for k in a:
        x, y = a[k], b[k]
        if k == "decode_ms":
            continue
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            same = isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and np.array_equal(x, y)
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x):
            same = math.isnan(y)
        else:
            same = type(x) is type(y) and x == y
        if not same:
            bad.append(f"{k}: {x!r} != {y!r}")
    return bad


def _measure(data: bytes, impl: str, monkeypatch) -> dict:
    monkeypatch.setattr(content, "_backend", impl)
    return analyse.decode_and_measure(data)


def _photo(name: str) -> Image.Image:
    img = skimage_photo(name)
    return img.convert("RGB") if img.mode not in ("L", "RGB") else img


def _alpha_of(img: Image.Image, mask: Image.Image) -> Image.Image:
    """`img` with the grey of another real image as its alpha channel."""
    out = img.convert("RGBA")
    out.putalpha(mask.convert("L").resize(img.size))
    return out


def real_corpus() -> dict[str, bytes]:
    """Encoded real images of every mode the stage meets, at the sizes where the statistics change
    branch (below 3 / 5 px a side, one subsample, box-reduced), blank and transparent ones."""
    astronaut, camera, coffee, chelsea = (_photo(n) for n in ("astronaut", "camera", "coffee", "chelsea"))
    sprites = [Image.open(p) for p in arcade_sprites()[::25][:12]]
    sprite = next(s.convert("RGBA") for s in sprites if s.mode == "RGBA")
    out: dict[str, bytes] = {}
    for name, img in (("astronaut", astronaut), ("camera", camera), ("coffee", coffee), ("chelsea", chelsea)):
        out[f"{name}.png"] = _png(img)
        for q in (20, 75, 95):
            out[f"{name}_q{q}.jpg"] = _jpeg(img, q)
        out[f"{name}_la.png"] = _png(_alpha_of(img, chelsea).convert("LA"))
        out[f"{name}_rgba.png"] = _png(_alpha_of(img, coffee))
        out[f"{name}_big.png"] = _png(img.resize((img.width * 4 + 7, img.height * 4 + 3)))  # box-reduced
        out[f"{name}_bright.png"] = _png(img.point(lambda v: min(255, v * 3)))  # clipped areas
        out[f"{name}_grey16.png"] = _png(Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257))
        for side in (1, 2, 3, 4, 5, 6, 9, 127, 128, 129, 257):
            small = img.resize((side, max(1, side * img.height // img.width)), Image.Resampling.BILINEAR)
            out[f"{name}_{side}.png"] = _png(small)
            out[f"{name}_{side}_l.png"] = _png(small.convert("L"))
            out[f"{name}_{side}_rgba.png"] = _png(_alpha_of(small, chelsea))
            out[f"{name}_{side}.jpg"] = _jpeg(small.convert("RGB"))
        out[f"{name}_thin.png"] = _png(img.resize((2, 40)))
        out[f"{name}_row.png"] = _png(img.resize((300, 3)))
    for i, s in enumerate(sprites):
        out[f"sprite_{i}.png"] = _png(s)
        rgba = s.convert("RGBA")
        out[f"sprite_{i}_p.png"] = _png(rgba.quantize(32), transparency=0)  # palette with a transparent index
        out[f"sprite_{i}_la.png"] = _png(rgba.convert("LA"))
        out[f"sprite_{i}_1.png"] = _png(rgba.convert("1"))
        out[f"sprite_{i}_on_photo.jpg"] = _jpeg(Image.alpha_composite(astronaut.convert("RGBA").resize(rgba.size), rgba).convert("RGB"))
    digits, _ = mnist_digits(6)
    for i, d in enumerate(digits):
        out[f"digit_{i}.png"] = _png(Image.fromarray(d))  # 28 x 28 grey
    clear = np.asarray(sprite).copy()
    clear[..., 3] = 0
    out["transparent.png"] = _png(Image.fromarray(clear))  # fully transparent, real colours below
    out["transparent_1x1.png"] = _png(Image.fromarray(clear[:1, :1]))
    for v in (0, 128, 255):
        out[f"blank_{v}.png"] = _png(Image.new("L", (64, 48), v))
        out[f"blank_rgb_{v}.jpg"] = _jpeg(Image.new("RGB", (300, 200), (v, v, v)))
    out["white_page.png"] = _png(Image.fromarray(np.where(np.asarray(camera) < 40, 0, 255).astype(np.uint8)))
    return out


def test_kernels_give_every_value_of_the_numpy_reference(monkeypatch):
    corpus = real_corpus()
    assert len(corpus) > 250
    seen = set()
    for name, data in corpus.items():
        ref, fast = _measure(data, "numpy", monkeypatch), _measure(data, "numba", monkeypatch)
        assert ref["error_code"] is None, (name, ref["error_message"])
        assert not _differences(ref, fast), (name, _differences(ref, fast))
        seen.add((ref["mode"], ref["edge_ratio_min"] is None, ref["clip_rolloff"] is None, ref["opaque_brightness"] is None))
    modes = {m for m, *_ in seen}
    assert {"L", "LA", "RGB", "RGBA", "P", "1", "I;16"} <= modes, modes
    assert {s[1:] for s in seen} >= {(False, False, False), (True, True, False), (False, True, False), (True, True, True)}
    # every kernel compiled once, for one set of argument types: nothing is compiled per image
    for k in (kernels.edge_pass, kernels.colour_pass):
        assert len(k.signatures) == 1, (k, k.signatures)


def test_kernels_on_frames_content_signals_is_given(monkeypatch):
    """content_signals(impl=...) on frames as analyse hands them over, including sizes 1..7 on
    either side (the edge statistics' 3 x 3 and 5 x 5 thresholds) and non-square crops."""
    photo = _photo("astronaut")
    sprite = next(Image.open(p).convert("RGBA") for p in arcade_sprites() if Image.open(p).mode == "RGBA")
    for src in (photo, photo.convert("L"), sprite, sprite.convert("LA")):
        for w in range(1, 8):
            for h in (1, 2, 3, 4, 5, 6, 7, 11):
                frame = src.resize((w, h), Image.Resampling.BILINEAR)
                flat, _ = composite(frame)
                grey = content.grey_of(flat)
                ref = content.content_signals(frame, frame, grey, 128, impl="numpy")
                fast = content.content_signals(frame, frame, grey, 128, impl="numba")
                assert not _differences(ref, fast), (src.mode, w, h, _differences(ref, fast))
        for size in (16, 64, 128):  # the edge statistics' box reduction depends on the analysis size
            flat, _ = composite(src)
            grey = content.grey_of(flat)
            ref = content.content_signals(src, src, grey, size, impl="numpy")
            assert not _differences(ref, content.content_signals(src, src, grey, size, impl="numba"))


def test_kernel_grey_is_pillows_for_every_colour():
    """colour_pass converts RGB to grey itself (kernels._luma): equal to Pillow's L conversion for
    all 2**24 colours, and for RGBA whatever the alpha."""
    numba = pytest.importorskip("numba")

    @numba.njit
    def luma(a):
        out = np.empty(a.shape[:2], np.uint8)
        for r in range(a.shape[0]):
            for c in range(a.shape[1]):
                out[r, c] = kernels._luma(a[r, c, 0], a[r, c, 1], a[r, c, 2])
        return out

    v = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    assert np.array_equal(luma(rgb), np.asarray(Image.fromarray(rgb).convert("L")))
    rgba = np.concatenate([rgb[:1024], np.asarray(skimage_photo("camera").resize((4096, 1024)))[..., None]], -1)
    assert np.array_equal(luma(rgba), np.asarray(Image.fromarray(rgba).convert("L")))


def test_backend_choice_and_fallback(monkeypatch, caplog):
    monkeypatch.setattr(content, "_backend", None)
    monkeypatch.setenv(content.BACKEND_ENV, "numpy")
    assert content.backend() == "numpy"
    monkeypatch.setattr(content, "_backend", None)
    monkeypatch.delenv(content.BACKEND_ENV)
    assert content.backend() == "numba"
    # numba missing: the reference path, said once in the log
    monkeypatch.setattr(content, "_backend", None)
    monkeypatch.setattr(content, "_kernels", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    monkeypatch.delitem(sys.modules, "curation.imaging.kernels")
    monkeypatch.delattr(sys.modules["curation.imaging"], "kernels", raising=False)
    with caplog.at_level("WARNING", logger="curation.imaging.content"):
        assert content.backend() == "numpy"
        rec = analyse.decode_and_measure(_jpeg(_photo("coffee")))
    assert rec["error_code"] is None and rec["edge_ratio_min"] is not None
    assert [r.getMessage() for r in caplog.records if "content kernels unavailable" in r.getMessage()] != []


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


def test_definitions_do_not_import_numba():
    done = _run("import sys, orchestration.definitions, curation.inventory, curation.imaging; "
                "print(sorted(m for m in ('numba', 'llvmlite', 'curation.imaging.kernels') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_kernels_work_without_a_writable_cache():
    """Where numba finds no writable cache directory (a read-only package and home), the kernels
    are compiled in the process instead: slower to start, the same values."""
    code = (
        "import numba.core.caching as c\n"
        "def refuse(self): raise PermissionError('read-only')\n"
        "c._CacheLocator.ensure_cache_path = refuse\n"
        "from curation.imaging import content, kernels\n"
        "assert not kernels.CACHED\n"
        "import io, skimage.data\n"
        "from PIL import Image\n"
        "from curation.imaging import decode_and_measure\n"
        "buf = io.BytesIO(); Image.fromarray(skimage.data.coffee()).save(buf, 'PNG')\n"
        "assert content.backend() == 'numba'\n"
        "fast = decode_and_measure(buf.getvalue()); content._backend = 'numpy'\n"
        "ref = decode_and_measure(buf.getvalue())\n"
        "assert all(fast[k] == ref[k] for k in content.CONTENT_COLUMNS if k != 'jpeg_quality'), (fast, ref)\n"
        "print('ok')\n"
    )
    done = _run(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "numba cache unavailable" in done.stderr
