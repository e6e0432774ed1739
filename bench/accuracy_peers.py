"""The peers of the accuracy bench, run on the same files in the same run as the pipeline:

* plain `imagehash.phash` of the image composited on white (what a user of imagehash would do),
  grouped as connected components of all pairs within radius r, for r = 0..12 (best r reported);
* imagededup's defaults: `PHash().encode_images` + `find_duplicates` with its default
  `max_distance_threshold`, in its own venv under data/bench/venvs/imagededup (created here with
  `python -m venv` and pip; imagededup pins torch, so the venv is large, ~3 GB, built once).
  Its output is a duplicate list per file: scored as those pairs (its native answer).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import REPO

IMAGEDEDUP_VERSION = "0.3.3.post2"
VENV = REPO / "data" / "bench" / "venvs" / "imagededup"

_RUNNER = textwrap.dedent("""
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    from imagededup.methods import PHash
    import imagededup, inspect
    root, out = sys.argv[1], sys.argv[2]
    ph = PHash(verbose=False)
    enc = ph.encode_images(image_dir=root, recursive=True, num_enc_workers=0)
    dups = ph.find_duplicates(encoding_map=enc)  # default max_distance_threshold
    default = inspect.signature(ph.find_duplicates).parameters["max_distance_threshold"].default
    json.dump({"version": imagededup.__version__, "max_distance_threshold": default,
               "encoded": len(enc), "duplicates": dups}, open(out, "w"))
""")


def phash_white(path: Path) -> int:
    import imagehash

    img = Image.open(path)
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return int(str(imagehash.phash(img.convert("RGB"))), 16)


def distance_matrix(h: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of 64-bit hashes (uint8, n x n)."""
    h = h.astype(np.uint64)
    return np.bitwise_count(h[:, None] ^ h[None, :]).astype(np.uint8)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def ensure_imagededup() -> tuple[Path | None, str | None]:
    """The venv's python, or (None, why it could not be installed)."""
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import imagededup.methods"]
    if py.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return py, None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, text=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"imagededup=={IMAGEDEDUP_VERSION}"],
                           capture_output=True, text=True, timeout=1800, check=False)
        if r.returncode:
            return None, f"pip install imagededup=={IMAGEDEDUP_VERSION} failed: {r.stderr.strip()[-600:]}"
        r = subprocess.run(probe, capture_output=True, text=True, check=False)
        if r.returncode:
            return None, f"imagededup installed but does not import: {r.stderr.strip()[-600:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create {VENV}: {exc}"
    return py, None


def run_imagededup(root: Path, out: Path, reuse: bool = False) -> dict:
    """imagededup's defaults on every image under root: {"pairs": set of (name, name), ...} or an
    error. reuse: read `out` from the last run when it exists (the files have not changed)."""
    if not (reuse and out.exists()):
        py, why = ensure_imagededup()
        if py is None:
            return {"error": why}
        r = subprocess.run(["nice", "-n", "10", str(py), "-c", _RUNNER, str(root), str(out)],
                           capture_output=True, text=True, timeout=1800, check=False)
        if r.returncode:
            return {"error": f"imagededup run failed: {r.stderr.strip()[-600:]}"}
    res = json.loads(out.read_text())
    pairs = set()
    for a, dups in res.pop("duplicates").items():
        for b in dups:
            x, y = Path(a).name, Path(b).name
            if x != y:
                pairs.add((min(x, y), max(x, y)))
    res["pairs"] = pairs
    return res
