"""The whole graph, in process, over two shards of real images with a cross-shard duplicate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from partitions.discovery import discover_all
from partitions.shards import SHARDS, image_id
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource
from tests.conftest import arcade_sprites, mnist_digits
from tests.photo_corpus import photo

pytestmark = pytest.mark.slow


def build_corpus(root: Path) -> dict[str, str]:
    """Shard 1 (folder a/): photos and sprites. Shard 2 (folder b/): a downscaled re-encode and a
    byte copy of shard-1 images, new sprites, and a truncated file."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    originals = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        p = root / "a" / f"{name}.jpg"
        photo(name).convert("RGB").save(p, quality=92)
        originals[name] = p
    for i, s in enumerate(arcade_sprites()[::40][:8]):
        shutil.copyfile(s, root / "a" / f"sprite_{i}{s.suffix}")
    small = photo("astronaut").convert("RGB")
    small = small.resize((small.width // 2, small.height // 2), Image.Resampling.LANCZOS)
    small.save(root / "b" / "astronaut_small.jpg", quality=75)
    shutil.copyfile(originals["coffee"], root / "b" / "coffee_copy.jpg")
    for i, s in enumerate(arcade_sprites()[5::40][:4]):
        shutil.copyfile(s, root / "b" / f"sprite_new_{i}{s.suffix}")
    data = originals["chelsea"].read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(data[: len(data) // 4])
    return {"astronaut": str(originals["astronaut"]), "coffee": str(originals["coffee"])}


def build_fewshot(root: Path) -> None:
    X, y = mnist_digits(5000)
    for label in (0, 1, 7):
        idx = np.flatnonzero(y == label)[:8]
        for i in idx:
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(X[i]).resize((112, 112)).save(root / str(label) / f"{i}.png")


def test_two_shards_end_to_end(tmp_path):
    from assets.classifications import few_shot_probe, image_classifications
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from assets.reports import curation_summary, shard_report

    src, out = tmp_path / "src", tmp_path / "out"
    originals = build_corpus(src)
    build_fewshot(tmp_path / "fewshot")
    corpus = CorpusResource(output_root=str(out), sources={"t": str(src)}, shard_size=12)
    resources = {
        "corpus": corpus,
        "settings": StageSettings(inventory_workers=2),
        "embedder": EmbedderResource(device="cpu"),
        "classifier": ClassifierSettings(fewshot_uri=str(tmp_path / "fewshot")),
    }
    shards = discover_all(corpus.registry(), "t", str(src), shard_size=12)
    keys = [s.key for s in shards]
    assert keys == ["t-000001", "t-000002"] and [s.n_files for s in shards] == [12, 7]

    partitioned = [raw_inventory, dedup_clusters, curated_images, image_embeddings, image_classifications, shard_report]
    from assets.checks import ALL_CHECKS

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, keys)
        probe = dg.materialize([few_shot_probe], instance=instance, resources=resources)
        assert probe.success
        for key in keys:
            res = dg.materialize([*partitioned, *ALL_CHECKS], partition_key=key, instance=instance, resources=resources)
            assert res.success, key
            evals = res.get_asset_check_evaluations()
            assert len(evals) == len(ALL_CHECKS) and all(e.passed for e in evals), [(e.check_name, e.passed) for e in evals]
        summary = dg.materialize([curation_summary], instance=instance, resources=resources)
        assert summary.success

        read = lambda stage, key: pl.read_parquet(out / stage / f"{key}.parquet")  # noqa: E731
        inv = pl.concat([read("raw_inventory", k) for k in keys])
        # every file accounted for, the broken one with a reason
        assert inv.height == 19 and inv["image_id"].n_unique() == 19
        bad = inv.filter(pl.col("error_code").is_not_null())
        assert bad["rel_path"].to_list() == ["b/truncated.jpg"]
        # cross-shard duplicates join the earlier shard's cluster
        cl2 = read("dedup_clusters", "t-000002")
        by_path = dict(zip(read("raw_inventory", "t-000002")["image_id"], read("raw_inventory", "t-000002")["rel_path"]))
        cl2 = cl2.with_columns(pl.col("image_id").replace_strict(by_path).alias("rel_path"))
        small = cl2.filter(pl.col("rel_path") == "b/astronaut_small.jpg").row(0, named=True)
        copy = cl2.filter(pl.col("rel_path") == "b/coffee_copy.jpg").row(0, named=True)
        assert small["rep_shard"] == "t-000001" and small["cluster_id"] == image_id(originals["astronaut"])
        assert small["dup_kind"] == "near" and not small["is_representative"]
        assert copy["dup_kind"] == "exact" and copy["cluster_id"] == image_id(originals["coffee"])
        # curated: the duplicates and the broken file are rejected with their reasons
        cur2 = read("curated_images", "t-000002").with_columns(pl.col("image_id").replace_strict(by_path).alias("p"))
        reasons = dict(zip(cur2["p"], cur2["reasons"].to_list()))
        assert "duplicate" in reasons["b/astronaut_small.jpg"] and "duplicate" in reasons["b/coffee_copy.jpg"]
        assert reasons["b/truncated.jpg"] == ["corrupt"]
        # embeddings for exactly the kept images; few-shot labels for each
        for key in keys:
            kept = read("curated_images", key).filter(pl.col("keep"))
            emb = read("image_embeddings", key)
            assert sorted(emb["image_id"]) == sorted(kept["image_id"])
            mat = np.asarray(emb["embedding"].to_list())
            assert np.allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-2)
            cls = read("image_classifications", key)
            # photos and sprites against digit examples: the open-set probe calls every one unknown
            assert cls.height == emb.height and cls["fs_label"].is_in(["0", "1", "7", "unknown"]).all()
            assert (cls["fs_label"] == "unknown").all() and (cls["fs_reason"] == "out_of_distribution").all()
            assert (out / "reports" / "shards" / key / "report.html").exists()
        corpus_summary = json.loads((out / "reports" / "corpus" / "summary.json").read_text())
        assert corpus_summary["counts"]["listed"] == 19
        assert corpus_summary["counts"]["kept"] == int(pl.concat([read("curated_images", k) for k in keys])["keep"].sum())

        # re-running shard 2 gives identical clusters
        before = read("dedup_clusters", "t-000002")
        again = dg.materialize([partitioned[0], partitioned[1]], partition_key="t-000002", instance=instance, resources=resources)
        assert again.success and read("dedup_clusters", "t-000002").equals(before)


def test_assets_called_directly_with_build_asset_context(tmp_path):
    """Thin assets, called like functions (the project_atproto_dashboard pattern): each reads the
    previous stage's Parquet and writes its own for the given partition."""
    from assets.dedup import dedup_clusters
    from assets.inventory import raw_inventory
    from assets.quality import curated_images

    src, out = tmp_path / "src", tmp_path / "out"
    build_corpus(src)
    corpus = CorpusResource(output_root=str(out), sources={"t": str(src)}, shard_size=12)
    settings = StageSettings(inventory_workers=1)
    (first, _) = discover_all(corpus.registry(), "t", str(src), shard_size=12)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, [first.key])
        ctx = dg.build_asset_context(partition_key=first.key, instance=instance)
        inv = raw_inventory(ctx, corpus=corpus, settings=settings)
        assert inv.metadata["dagster/row_count"] == 12 and inv.metadata["errors"] == 0
        # dedup_clusters' step writes two datasets (a multi-asset): one result each
        out = {r.asset_key.to_user_string(): r for r in dedup_clusters(
            dg.build_asset_context(partition_key=first.key, instance=instance), corpus=corpus, settings=settings)}
        assert sorted(out) == ["dedup_clusters", "dedup_index"]
        cl = out["dedup_clusters"]
        assert out["dedup_index"].metadata["dagster/row_count"] == pl.read_parquet(out_index := out["dedup_index"].metadata["path"].path).height
        assert out_index == str(tmp_path / "out" / "dedup_index" / f"{first.key}.parquet")
        assert cl.metadata["dagster/row_count"] == 12 and cl.metadata["earlier_shards_compared"] == 0
        cur = curated_images(dg.build_asset_context(partition_key=first.key, instance=instance), corpus=corpus, settings=settings)
        assert cur.metadata["kept"] + cur.metadata["rejected"] == 12
        # a bad setting fails clearly, naming the unknown key, and is not retried
        with pytest.raises(dg.Failure, match="no_such_threshold"):
            curated_images(dg.build_asset_context(partition_key=first.key, instance=instance), corpus=corpus,
                           settings=StageSettings(quality={"no_such_threshold": 1}))


def test_classifications_use_only_a_stored_probe_of_the_current_model(tmp_path):
    """image_classifications never trains the probe: no probe, or one of another model, leaves the
    few-shot columns null and says why."""
    from assets.classifications import probe_uri, stored_probe
    from curation.classify import Probe, save_probe

    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={}, shard_size=12)
    on = ClassifierSettings(fewshot_uri=str(tmp_path / "fewshot"))
    assert stored_probe(corpus, ClassifierSettings(fewshot_uri=""), "m1") == (None, "few-shot is disabled (classifier.fewshot_uri is empty)")
    probe, reason = stored_probe(corpus, on, "m1")
    assert probe is None and reason.startswith("no few-shot probe stored at") and "few_shot_probe" in reason
    save_probe(Probe(["a", "b"], np.eye(2, 4, dtype=np.float32), np.zeros(2, dtype=np.float32), "m0"), probe_uri(corpus))
    probe, reason = stored_probe(corpus, on, "m1")
    assert probe is None and "trained on 'm0'" in reason and "re-materialise few_shot_probe" in reason
    probe, reason = stored_probe(corpus, on, "m0")
    assert reason is None and probe.classes == ["a", "b"] and probe.model == "m0"
