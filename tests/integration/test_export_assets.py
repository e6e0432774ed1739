"""The ML take-away stages as assets over a small shard of real images: head scores with a head the
test trains (its reason rejects images from the export and shows in the report), the training export
read back with `webdataset` and `datasets` (every kept image exactly once, nothing else), the
similarity index (`curate similar` finds the query image first and writes thumbnails), and a head
for another embedding model failing the step at once, not retried."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from partitions.discovery import discover_all
from partitions.shards import SHARDS
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource
from tests.conftest import arcade_sprites
from tests.photo_corpus import photo

pytestmark = pytest.mark.slow

KEY = "t-000001"


def build_source(root: Path) -> None:
    """Photos, sprites and one byte copy (a duplicate, rejected by the quality filter)."""
    root.mkdir(parents=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo(name).convert("RGB").save(root / f"{name}.jpg", quality=90)
    for i, s in enumerate(arcade_sprites()[::30][:10]):
        shutil.copyfile(s, root / f"sprite_{i:02d}{s.suffix}")
    shutil.copyfile(root / "coffee.jpg", root / "coffee_copy.jpg")


def save_head(path: Path, dim: int, seed: int = 0):
    """A small torch MLP over the embeddings, saved as safetensors (what a user would train)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def _materialize(assets, instance, resources, **kw):
    return dg.materialize(assets, partition_key=KEY, instance=instance, resources=resources, **kw)


def test_scores_export_index_and_similar(tmp_path):
    import datasets
    import torch
    import webdataset as wds

    from assets.classifications import image_classifications
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.export import EXPORT_CHECKS, curated_export, image_scores, similarity_index
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from assets.reports import shard_report
    from orchestration.cli import main as curate

    src, out = tmp_path / "src", tmp_path / "out"
    build_source(src)
    corpus = CorpusResource(output_root=str(out), sources={"t": str(src)}, shard_size=50)
    assert [s.key for s in discover_all(corpus.registry(), "t", str(src), shard_size=50)] == [KEY]
    base = {"corpus": corpus, "embedder": EmbedderResource(device="cpu"),
            "classifier": ClassifierSettings(fewshot_uri="")}
    upstream = [raw_inventory, dedup_clusters, curated_images, image_embeddings, image_classifications]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, [KEY])
        assert _materialize(upstream, instance, {**base, "settings": StageSettings(inventory_workers=1)}).success
        emb = pl.read_parquet(out / "image_embeddings" / f"{KEY}.parquet")
        model_id, dim = emb["model"][0], len(emb["embedding"][0])
        mat = np.asarray(emb["embedding"].to_list(), dtype=np.float32)

        # a head trained on this embedder; threshold at its median score -> about half rejected
        model = save_head(tmp_path / "aesthetic.safetensors", dim)
        with torch.no_grad():
            expected = model(torch.from_numpy(mat / np.linalg.norm(mat, axis=1, keepdims=True)))[:, 0].numpy()
        threshold = float(np.median(expected))
        head = {"name": "aesthetic", "uri": str(tmp_path / "aesthetic.safetensors"),
                "embedding_model": model_id.rsplit(":", 1)[0], "dim": dim,
                "activations": ["relu", "none"], "reason": "low_aesthetic", "reject_below": threshold}
        settings = StageSettings(inventory_workers=1, heads=[head], export={"target_tar_bytes": 64 * 1024})
        resources = {**base, "settings": settings}
        res = _materialize([image_scores, curated_export, similarity_index, shard_report, *EXPORT_CHECKS],
                           instance, resources, selection=[image_scores, curated_export, similarity_index,
                                                           shard_report, *EXPORT_CHECKS])
        assert res.success
        evals = res.get_asset_check_evaluations()
        assert len(evals) == 2 and all(e.passed for e in evals), [(e.check_name, e.metadata) for e in evals]

        scores = pl.read_parquet(out / "image_scores" / f"{KEY}.parquet")
        got = dict(zip(scores["image_id"], scores["score_aesthetic"]))
        assert np.allclose([got[i] for i in emb["image_id"]], expected, atol=1e-4)
        low = set(emb["image_id"].filter(pl.Series(expected < threshold)))
        assert low and set(scores.filter(pl.col("reasons").list.contains("low_aesthetic"))["image_id"]) == low

        curated = pl.read_parquet(out / "curated_images" / f"{KEY}.parquet")
        kept = set(curated.filter(pl.col("keep"))["image_id"]) - low
        assert len(curated) == 15 and not curated["keep"].all()  # the byte copy is a duplicate
        assert kept and len(kept) < curated["keep"].sum()

        # the export: every kept image that passes the head, exactly once, nothing else
        root = out / "curated_export"
        tars = sorted(str(p) for p in (root / "tars" / KEY).glob("*.tar"))
        inv = pl.read_parquet(out / "raw_inventory" / f"{KEY}.parquet").filter(pl.col("image_id").is_in(list(kept)))
        assert len(tars) >= 2 or inv["bytes"].sum() < 64 * 1024  # cut at the 64 KiB target
        seen = [json.loads(s["json"])["image_id"] for s in wds.WebDataset(tars, shardshuffle=False)]
        assert sorted(seen) == sorted(kept)
        ds = datasets.load_dataset("parquet", data_files=str(root / "manifests" / "*.parquet"), split="train")
        assert sorted(ds["image_id"]) == sorted(kept) and ds[0]["image"].size[0] > 0
        assert "score_aesthetic" in ds.column_names
        excluded = res.asset_materializations_for_node("curated_export")[0].metadata["excluded"].value
        assert "low_aesthetic" in excluded and "duplicate" in excluded

        # the report lists the head reason among the rejects
        summary = json.loads((out / "reports" / "shards" / KEY / "summary.json").read_text())
        assert "low_aesthetic" in json.dumps(summary["rejects_by_reason"])
        assert "low_aesthetic" in (out / "reports" / "shards" / KEY / "report.html").read_text()

        # the index: every embedded image once; `curate similar` answers with the query image first
        ids = pl.read_parquet(out / "similarity_index" / f"{KEY}.ids.parquet")["image_id"]
        assert sorted(ids) == sorted(emb["image_id"])
        query = emb["image_id"][0]
        html = tmp_path / "similar.html"
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = curate(["similar", query, "-k", "5", "--output-root", str(out), "--html", str(html)])
        assert rc == 0, buf.getvalue()
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        assert lines[1].split()[0] == query and len(lines) == 7 and lines[-1] == f"wrote {html}"  # header, 5 hits
        page = html.read_text()
        assert page.count("data:image/") >= 6 and "<script" not in page

        # a photo path is embedded the same way and finds its own image first
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert curate(["similar", str(src / "chelsea.jpg"), "-k", "3", "--output-root", str(out)]) == 0
        chelsea = curated.filter(pl.col("rel_path") == "chelsea.jpg")["image_id"][0]
        assert buf.getvalue().splitlines()[1].split()[0] == chelsea

        # a head for another embedding model fails the step at once, with the head's message, no retry
        wrong = {**head, "embedding_model": "open_clip:ViT-L-14:openai"}
        bad = _materialize([image_scores], instance, {**base, "settings": StageSettings(heads=[wrong])},
                           raise_on_error=False)
        assert not bad.success
        failures = [e for e in bad.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1 and not [e for e in bad.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert "trained on 'open_clip:ViT-L-14:openai' embeddings" in failures[0].event_specific_data.error.message

