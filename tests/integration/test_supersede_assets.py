"""The best copy wins across shards, through Dagster: a 48 px copy of a photo arrives in shard 1
(kept and exported there), 128 px and 256 px copies arrive later in shard 2. Shard 1's outputs are
never rewritten; shard 2 keeps its 256 px copy (it supersedes shard 1's), the corpus report counts
the 48 px copy as `superseded`, and the corpus manifest lists exactly one copy, the 256 px one,
while shard 1's tar still holds the stale copy it no longer lists. Real photos (skimage.data)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from partitions.discovery import discover_all
from partitions.shards import SHARDS
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.models import EmbedderResource
from tests.photo_corpus import photo

pytestmark = pytest.mark.slow


def _png(name: str, side: int | None = None) -> bytes:
    img = photo(name).convert("RGB")
    if side is not None:
        img = img.resize((side, side * img.height // img.width), resample=3)  # bicubic
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _digests(out: Path, shard: str) -> dict[str, str]:
    """sha256 of every file a shard's steps wrote (stage Parquet files, export tars and manifests)."""
    files = [p for p in out.rglob("*") if p.is_file() and (p.stem == shard or shard in p.parts)
             and "dedup_index_blocks" not in p.parts]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _ids(out: Path, shard: str) -> dict[str, str]:
    inv = pl.read_parquet(out / "raw_inventory" / f"{shard}.parquet")
    return dict(zip(inv["rel_path"], inv["image_id"]))


def test_a_larger_copy_in_a_later_shard_wins_in_the_corpus_views(tmp_path):
    from assets.checks import ALL_CHECKS
    from assets.classifications import image_classifications
    from assets.dedup import dedup_clusters
    from assets.embeddings import image_embeddings
    from assets.export import EXPORT_CHECKS, corpus_manifest, curated_export, image_scores
    from assets.inventory import raw_inventory
    from assets.quality import curated_images
    from assets.reports import curation_summary, shard_report

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a_astronaut_48.png").write_bytes(_png("astronaut", 48))
    for name in ("coffee", "chelsea", "rocket"):
        (src / f"a_{name}.png").write_bytes(_png(name, 160))
    corpus = CorpusResource(output_root=str(out), sources={"t": str(src)}, shard_size=50)
    resources = {"corpus": corpus, "settings": StageSettings(inventory_workers=1),
                 "embedder": EmbedderResource(device="cpu"), "classifier": ClassifierSettings(fewshot_uri="")}
    shard_assets = [raw_inventory, dedup_clusters, curated_images, image_embeddings, image_classifications,
                    image_scores, curated_export, shard_report, *ALL_CHECKS, *EXPORT_CHECKS]
    corpus_assets = [curation_summary, corpus_manifest]

    def curate(key: str) -> None:
        res = dg.materialize(shard_assets, partition_key=key, instance=instance, resources=resources)
        assert res.success, key
        evals = res.get_asset_check_evaluations()
        assert evals and all(e.passed for e in evals), [(e.check_name, e.metadata) for e in evals if not e.passed]

    with dg.instance_for_test() as instance:
        (k1,) = [s.key for s in discover_all(corpus.registry(), "t", str(src), shard_size=50)]
        instance.add_dynamic_partitions(SHARDS.name, [k1])
        curate(k1)
        assert dg.materialize(corpus_assets, instance=instance, resources=resources).success
        small = _ids(out, k1)["a_astronaut_48.png"]
        cur1 = pl.read_parquet(out / "curated_images" / f"{k1}.parquet")
        assert cur1.filter(pl.col("image_id") == small)["keep"].to_list() == [True]
        assert cur1["supersedes"].null_count() == cur1.height  # nothing earlier to supersede
        before = _digests(out, k1)
        assert any(p.startswith("curated_export/tars/") for p in before) and f"curated_images/{k1}.parquet" in before
        first = pl.read_parquet(out / "corpus_manifest" / "manifest.parquet")
        assert small in first["image_id"].to_list() and first.height == cur1["keep"].sum()

        # shard 2 brings two larger copies (and one new photo)
        (src / "b_astronaut_128.png").write_bytes(_png("astronaut", 128))
        (src / "b_astronaut_256.png").write_bytes(_png("astronaut", 256))
        (src / "b_camera.png").write_bytes(_png("camera", 160))
        (k2,) = [s.key for s in discover_all(corpus.registry(), "t", str(src), shard_size=50)]
        instance.add_dynamic_partitions(SHARDS.name, [k2])
        curate(k2)
        summary_run = dg.materialize(corpus_assets, instance=instance, resources=resources)
        assert summary_run.success

        # shard 1's outputs are byte for byte what they were
        assert _digests(out, k1) == before
        # shard 2: both copies joined shard 1's cluster; the 256 px one supersedes the 48 px one and is kept
        ids2 = _ids(out, k2)
        big, mid = ids2["b_astronaut_256.png"], ids2["b_astronaut_128.png"]
        cl2 = pl.read_parquet(out / "dedup_clusters" / f"{k2}.parquet")
        assert set(cl2.filter(pl.col("image_id").is_in([big, mid]))["cluster_id"]) == {small}
        cur2 = pl.read_parquet(out / "curated_images" / f"{k2}.parquet")
        row = cur2.filter(pl.col("image_id") == big).row(0, named=True)
        assert row["keep"] and row["reasons"] == [] and row["reject_details"] == []
        assert (row["supersedes"], row["superseded_shard"]) == (small, k1)
        assert cur2.filter(pl.col("image_id") == mid)["reasons"].to_list() == [["duplicate"]]
        mats = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("curated_images"),
                                                                     asset_partitions=[k2]), limit=1).records
        assert mats[0].asset_materialization.metadata["supersedes_earlier"].value == 1
        # ... and shard 2's export holds it
        m2 = pl.read_parquet(out / "curated_export" / "manifests" / f"{k2}.parquet", columns=["image_id"])
        assert big in m2["image_id"].to_list() and mid not in m2["image_id"].to_list()

        # the corpus manifest: exactly one copy of the astronaut, the largest, and where it lives
        manifest = pl.read_parquet(out / "corpus_manifest" / "manifest.parquet")
        astro = {small, mid, big}
        listed = manifest.filter(pl.col("image_id").is_in(list(astro)))
        assert listed["image_id"].to_list() == [big]
        hit = listed.row(0, named=True)
        assert (hit["shard"], hit["supersedes"], hit["superseded_shard"]) == (k2, small, k1)
        assert hit["manifest"] == f"manifests/{k2}.parquet" and hit["tar"].startswith(f"tars/{k2}/")
        with tarfile.open(out / "curated_export" / hit["tar"]) as tar:
            assert f"{big}.png" in tar.getnames()
        # every other kept image of both shards is listed once; only the stale copy is left out
        kept = set(cur1.filter(pl.col("keep"))["image_id"]) | set(cur2.filter(pl.col("keep"))["image_id"])
        assert manifest["image_id"].n_unique() == manifest.height and set(manifest["image_id"]) == kept - {small}
        meta = summary_run.asset_materializations_for_node("corpus_manifest")[0].metadata
        assert meta["superseded"].value == 1 and meta["shards"].value == 2
        # a WebDataset reader filtered by the manifest's keys sees every listed sample once, and one astronaut
        import webdataset as wds

        tars = sorted(str(p) for p in (out / "curated_export" / "tars").glob("*/*.tar"))
        keys = set(manifest["key"])
        seen = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False).select(lambda s: s["__key__"] in keys)]
        assert sorted(seen) == sorted(keys) and astro & set(seen) == {big}
        # the stale copy is still in shard 1's tar (never rewritten), just not listed
        m1 = pl.read_parquet(out / "curated_export" / "manifests" / f"{k1}.parquet", columns=["image_id", "tar"])
        stale_tar = m1.filter(pl.col("image_id") == small)["tar"][0]
        with tarfile.open(out / "curated_export" / stale_tar) as tar:
            assert f"{small}.png" in tar.getnames()

        # the corpus report counts the 48 px copy as rejected, reason `superseded`; shard 1 has one kept less
        summary = json.loads((out / "reports" / "corpus" / "summary.json").read_text())
        assert summary["rejects_by_reason"]["superseded"] == 1
        per_shard = {r["shard"]: r["kept"] for r in summary["per_shard"]}
        assert per_shard == {k1: int(cur1["keep"].sum()) - 1, k2: int(cur2["keep"].sum())}
        assert summary["counts"]["kept"] == len(kept) - 1 == manifest.height
        assert "superseded" in (out / "reports" / "corpus" / "report.html").read_text()
        smeta = summary_run.asset_materializations_for_node("curation_summary")[0].metadata
        assert smeta["superseded"].value == 1 and smeta["supersede_records"].value == 1
        # shard reports stay shard-level: shard 1's still counts its copy as kept
        shard1 = json.loads((out / "reports" / "shards" / k1 / "summary.json").read_text())
        assert shard1["counts"]["kept"] == int(cur1["keep"].sum())
