"""demo.evaluate counts only the demo's own shards.

A small corpus of real images (scikit-image photos, a downscaled copy, an MNIST digit, an empty
file) is inventoried as the source `demo`; the same files are inventoried again as a second
source `extra` (a copy of the folder registered beside the demo), whose images are exact duplicates
of the demo's and whose digit the probe labels wrongly. The evaluation must describe the demo alone:
one inventory row per file, one predicted duplicate link, the demo digit's label only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from demo.evaluate import evaluate_demo

skdata = pytest.importorskip("skimage.data")

REPO = Path(__file__).resolve().parents[2]
DIGIT = "digits/3/mnist_00007.png"
COPY = "transformed/downscale/photos__astronaut.png"


def _corpus(root: Path) -> dict:
    """Write the files; return the expected.json of `demo.corpus` for them."""
    from demo.corpus import mnist

    (root / "photos").mkdir(parents=True)
    astro = Image.fromarray(skdata.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)
    astro.save(root / "photos/astronaut.png")
    Image.fromarray(skdata.coffee()).resize((120, 80), Image.Resampling.LANCZOS).save(root / "photos/coffee.png")
    (root / COPY).parent.mkdir(parents=True)
    astro.resize((64, 64), Image.Resampling.LANCZOS).save(root / COPY)
    X, y = mnist()
    i = int(next(k for k in range(len(y)) if y[k] == 3))
    (root / DIGIT).parent.mkdir(parents=True)
    Image.fromarray(X[i]).save(root / DIGIT)
    (root / "broken").mkdir()
    (root / "broken/empty.png").write_bytes(b"")
    return {"duplicate_groups": [["photos/astronaut.png", COPY]], "broken": ["broken/empty.png"],
            "digit_labels": {DIGIT: "3"}}


def _id(source: str, rel: str) -> str:
    return hashlib.sha1(f"{source}:{rel}".encode()).hexdigest()[:16]


def _outputs(root: Path, corpus: Path) -> None:
    """Stage outputs of the two sources, as the pipeline writes them (one Parquet file per shard)."""
    rels = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file())
    for source, shard, label in (("demo", "demo-000001", "3"), ("extra", "extra-000002", "5")):
        inv = pl.DataFrame({"image_id": [_id(source, r) for r in rels], "uri": [str(corpus / r) for r in rels],
                            "rel_path": rels, "shard": shard,
                            "error_code": ["empty_file" if r.startswith("broken/") else None for r in rels]})
        rows = []
        for r in rels:
            if source == "demo":  # the downscaled copy joins the original; everything else represents itself
                rep = _id("demo", "photos/astronaut.png") if r == COPY else _id("demo", r)
                kind = "not_hashed" if r.startswith("broken/") else ("near" if r == COPY else "unique")
            else:  # every decodable file of the second source is an exact copy of the demo's
                rep = _id(source, r) if r.startswith("broken/") else _id("demo", r)
                kind = "not_hashed" if r.startswith("broken/") else "exact"
            rows.append({"image_id": _id(source, r), "shard": shard, "cluster_id": rep,
                         "is_representative": rep == _id(source, r), "dup_kind": kind})
        clusters = pl.DataFrame(rows)
        decodable = clusters.filter(pl.col("dup_kind") != "not_hashed")
        sem = decodable.select("image_id", "shard", "cluster_id", "is_representative")
        cls = pl.DataFrame({"image_id": [_id(source, DIGIT)], "shard": [shard], "fs_label": [label]})
        for stage, df in (("raw_inventory", inv), ("dedup_clusters", clusters), ("semantic_duplicates", sem),
                          ("image_classifications", cls)):
            (root / stage).mkdir(parents=True, exist_ok=True)
            df.write_parquet(root / stage / f"{shard}.parquet")


@pytest.fixture
def demo_run(tmp_path):
    corpus = tmp_path / "demo_corpus"
    expected = _corpus(corpus)
    (tmp_path / "demo_expected.json").write_text(json.dumps(expected))
    outputs = tmp_path / "outputs"
    _outputs(outputs, corpus)
    return {"corpus": corpus, "expected": tmp_path / "demo_expected.json", "outputs": outputs}


def test_only_the_demo_source_is_counted(demo_run):
    res = evaluate_demo(demo_run["outputs"], demo_run["expected"], demo_run["corpus"])
    assert res["source"] == "demo" and res["shards"] == 1
    assert res["files_on_disk"] == 5 and res["inventory_rows"] == 5  # not 10: the second source is left out
    assert res["files_missing_from_inventory"] == [] and res["broken_files_with_error_code"] is True
    assert res["dedup_known_copies"] == 1 and res["dedup_recall_known_copies"] == 1.0
    assert res["dedup_predicted_links"] == 1 and res["dedup_precision_lower_bound"] == 1.0
    assert res["largest_cluster"] == 2
    assert res["semantic_links"] == 1 and res["semantic_precision_lower_bound"] == 1.0
    assert res["fewshot_digits_evaluated"] == 1 and res["fewshot_accuracy"] == 1.0  # the other source's "5" ignored

    other = evaluate_demo(demo_run["outputs"], demo_run["expected"], demo_run["corpus"], source="extra")
    assert other["inventory_rows"] == 5 and other["dedup_predicted_links"] == 4
    assert other["fewshot_accuracy"] == 0.0


def test_cli_writes_the_figures_and_names_a_missing_source(demo_run):
    args = ["--outputs", str(demo_run["outputs"]), "--expected", str(demo_run["expected"]),
            "--corpus", str(demo_run["corpus"])]
    run = subprocess.run([sys.executable, "-m", "demo.evaluate", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    written = json.loads((demo_run["outputs"] / "reports" / "demo_eval.json").read_text())
    assert written["inventory_rows"] == 5 and "inventory_rows" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "demo.evaluate", *args, "--source", "nosuch"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nosuch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    helped = subprocess.run([sys.executable, "-m", "demo.evaluate", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "--source" in helped.stdout
