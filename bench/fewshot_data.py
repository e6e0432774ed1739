"""Demo-corpus data for the few-shot benchmark: ground truth per file, and embeddings cached once.

Truth comes from the demo corpus layout (`curation.demo_corpus`): ``digits/<d>/...`` are MNIST digits
labelled ``d``; ``photos/...`` (scikit-image) and ``sprites/...`` (arcade) belong to no digit class;
``transformed/<kind>/<stem>`` and ``transformed/exact_copies/<stem>`` inherit the kind of the original
named by their stem (``digits__<d>__...``, ``photos__...``, ``sprites__...``); ``broken/`` is skipped.
Embeddings (default EfficientNet-Lite0 on CPU) are cached as ``.npz`` under ``data/fewshot_cache``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from bench.common import REPO

CACHE = REPO / "data" / "fewshot_cache"


def truth(rel: str) -> tuple[str, str | None] | None:
    """(group, digit label or None) for a corpus-relative path; None for files outside the truth."""
    parts = rel.split("/")
    if parts[0] == "transformed" and len(parts) >= 3:
        stem = parts[-1].split("__")
        parts = stem[:2] if stem[0] == "digits" else stem[:1]
    if parts[0] == "digits" and len(parts) >= 2:
        return "digit", parts[1]
    if parts[0] in ("photos", "sprites"):
        return ("photo" if parts[0] == "photos" else "sprite"), None
    return None


def embed_files(paths: list[Path], cache: Path, batch: int = 64) -> tuple[list[str], np.ndarray]:
    """(paths that decoded, embeddings [n, d]) of `paths`, cached in `cache` (.npz) keyed by the path list."""
    from curation.embedding import EmbedderSpec, build_embedder, read_image_uri

    names = [str(p) for p in paths]
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        if list(z["requested"]) == names:
            return list(z["paths"]), z["emb"]
    embedder = build_embedder(EmbedderSpec(device="cpu", batch_size=batch))
    ok_paths: list[str] = []
    rows: list[np.ndarray] = []
    for start in range(0, len(names), batch):
        imgs, kept = [], []
        for p in names[start:start + batch]:
            try:
                imgs.append(read_image_uri(p).copy())
                kept.append(p)
            except Exception as exc:  # noqa: BLE001 - an undecodable file is reported and not embedded
                print(f"skipped {p}: {exc}", flush=True)
        if imgs:
            rows.append(embedder.embed_images(imgs))
            ok_paths.extend(kept)
        print(f"embedded {min(start + batch, len(names))}/{len(names)}", flush=True)
    emb = np.concatenate(rows).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, requested=np.asarray(names), paths=np.asarray(ok_paths), emb=emb)
    return ok_paths, emb


def demo_embeddings(corpus: Path, fewshot: Path, n_digits: int = 1000) -> dict:
    """Embeddings and truth of the few-shot examples and of every corpus file with a truth."""
    ex = sorted(p for p in fewshot.rglob("*.png"))
    ex_paths, ex_emb = embed_files(ex, CACHE / "fewshot.npz")
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and truth(p.relative_to(corpus).as_posix()) is not None)
    # every photo, sprite and transformed copy; a seeded sample of the 4,700 untransformed digits
    # (embedding all of them takes ~30 min on a loaded 2-core machine and adds nothing to the figures)
    digits = [p for p in files if p.relative_to(corpus).parts[0] == "digits"]
    keep = set(random.Random(0).sample(digits, min(n_digits, len(digits))))
    files = [p for p in files if p.relative_to(corpus).parts[0] != "digits" or p in keep]
    c_paths, c_emb = embed_files(files, CACHE / "corpus.npz")
    rels = [Path(p).relative_to(corpus).as_posix() for p in c_paths]
    t = [truth(r) for r in rels]
    return {
        "ex_emb": ex_emb, "ex_labels": [Path(p).parent.name for p in ex_paths],
        "emb": c_emb, "rel": rels, "group": [g for g, _ in t], "digit": [d for _, d in t],
    }


if __name__ == "__main__":
    d = demo_embeddings(REPO / "data" / "demo_corpus", REPO / "data" / "demo_fewshot")
    print(len(d["ex_labels"]), "examples;", len(d["rel"]), "corpus files embedded")
