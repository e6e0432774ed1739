"""The training-ready export (curation/export): WebDataset tars + a Hugging Face-readable manifest.

Real images (arcade's sprites, scikit-image's photos as JPEG); the output is loaded back with the
`webdataset` and `datasets` libraries, and a torch DataLoader reads the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from curation import storage
from curation.export import ExportConfig, build_samples, export_shard, plan_tars
from tests.conftest import skimage_photo, write_real_images
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

SHARD = "cam-000001"


def _corpus(root: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    files = write_real_images(root, 40, prefix="sprite")
    for name in ("astronaut", "coffee", "chelsea"):
        p = root / f"{name}.jpg"
        skimage_photo(name).convert("RGB").save(p, quality=90)
        files.append(p)
    rows = []
    for i, p in enumerate(files):
        data = p.read_bytes()
        with Image.open(p) as im:
            rows.append({"image_id": hashlib.sha1(str(p).encode()).hexdigest()[:16], "uri": str(p),
                         "rel_path": p.name, "shard": SHARD, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(), "format": im.format,
                         "width": im.width, "height": im.height, "brightness": 100.0 + i,
                         "contrast": 30.0, "entropy": 5.0, "sharpness": 200.0})
    inventory = pl.DataFrame(rows)
    keep = [i % 7 != 3 for i in range(len(rows))]  # every 7th image rejected
    curated = inventory.select("image_id").with_columns(
        pl.Series("keep", keep), pl.col("image_id").alias("cluster_id"))
    return inventory, curated


def _read(uri: str) -> bytes:
    return Path(uri).read_bytes()


@pytest.fixture
def corpus(tmp_path):
    inventory, curated = _corpus(tmp_path / "src")
    return inventory, curated, build_samples(inventory, curated)


CFG = ExportConfig(target_tar_bytes=64 * 1024, rows_per_group=5)


def test_every_kept_image_is_exported_exactly_once_and_loads_in_webdataset(tmp_path, corpus):
    import webdataset as wds

    inventory, curated, samples = corpus
    res = export_shard(samples, str(tmp_path / "export"), SHARD, _read, CFG)
    kept = set(curated.filter(pl.col("keep"))["image_id"])
    assert len(res.tars) > 2 and res.samples == len(kept) and len(res.errors) == 0
    seen: list[str] = []
    by_id = {r["image_id"]: r for r in inventory.to_dicts()}
    for sample in wds.WebDataset(res.tars, shardshuffle=False, empty_check=False):
        key = sample["__key__"]
        seen.append(key)
        img_key = next(k for k in sample if k not in ("__key__", "__url__", "__local_path__", "json"))
        assert hashlib.sha256(sample[img_key]).hexdigest() == by_id[key]["sha256"]  # original encoding
        meta = json.loads(sample["json"])
        assert meta["image_id"] == key and meta["uri"] == by_id[key]["uri"] and meta["cluster_id"] == key
        assert meta["width"] == by_id[key]["width"] and meta["metrics"]["brightness"] == by_id[key]["brightness"]
    assert sorted(seen) == sorted(kept) and len(seen) == len(set(seen))
    assert {os.path.basename(p) for p in os.listdir(tmp_path / "export" / "tars" / SHARD)} == (
        {os.path.basename(t) for t in res.tars} | {os.path.basename(t) + ".json" for t in res.tars} | {"_plan.json"})


def test_manifest_loads_in_datasets_with_images_and_feeds_a_dataloader(tmp_path, corpus):
    import datasets
    import torch
    from torch.utils.data import DataLoader

    _, curated, samples = corpus
    res = export_shard(samples, str(tmp_path / "export"), SHARD, _read, CFG)
    ds = datasets.load_dataset("parquet", data_files=res.manifest_uri, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert sorted(ds["image_id"]) == sorted(curated.filter(pl.col("keep"))["image_id"])
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (first["width"], first["height"])
    assert first["tar"].startswith(f"tars/{SHARD}/")

    def to_tensor(batch):
        return {"x": [torch.tensor(list(im.convert("L").resize((8, 8)).getdata()), dtype=torch.float32)
                      for im in batch["image"]], "id": batch["image_id"]}

    loader = DataLoader(ds.with_transform(to_tensor), batch_size=8)
    total = sum(len(b["id"]) for b in loader)
    assert total == len(ds)


def test_a_killed_export_resumes_without_rewriting_finished_tars(tmp_path, corpus):
    _, _, samples = corpus
    root = str(tmp_path / "export")
    calls = {"n": 0}

    def dying(uri: str) -> bytes:
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt("killed")
        return _read(uri)

    with pytest.raises(KeyboardInterrupt):
        export_shard(samples, root, SHARD, dying, CFG)
    done = sorted(p for p in (tmp_path / "export" / "tars" / SHARD).glob("*.tar"))
    assert done and not (tmp_path / "export" / "manifests" / f"{SHARD}.parquet").exists()
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    res = export_shard(samples, root, SHARD, _read, CFG)
    assert res.reused_tars == len(stamps)
    for p in done:
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamps[p.name]
    fresh = export_shard(samples, str(tmp_path / "fresh"), SHARD, _read, CFG)
    for a, b in zip(res.tars, fresh.tars):
        assert Path(a).read_bytes() == Path(b).read_bytes()  # same input, same bytes
    again = export_shard(samples, root, SHARD, _read, CFG)  # complete: nothing rewritten
    assert again.bytes_written == 0 and again.samples == res.samples


def test_a_source_gone_since_the_inventory_is_recorded_not_dropped(tmp_path, corpus):
    _, _, samples = corpus
    gone, changed = samples["uri"][0], samples["uri"][1]
    os.unlink(gone)
    Image.new("RGB", (40, 40), (9, 9, 9)).save(changed, format="PNG")
    res = export_shard(samples, str(tmp_path / "export"), SHARD, _read, CFG)
    errs = {r["uri"]: r["error_code"] for r in res.errors.to_dicts()}
    assert errs == {gone: "not_found", changed: "changed_since_inventory"}
    assert res.samples == len(samples) - 2
    stored = storage.read_parquet(res.errors_uri)
    assert set(stored["uri"]) == {gone, changed}
    manifest = pl.read_parquet(res.manifest_uri, columns=["uri"])
    assert not set(manifest["uri"]) & {gone, changed} and len(manifest) == res.samples


def test_embeddings_travel_as_npy_and_the_plan_respects_the_target():
    assert [(t.start, t.end) for t in plan_tars("s", [40, 40, 40, 100, 10], 100)] == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert plan_tars("s", [], 100) == []
    with pytest.raises(ValueError, match="export.target_tar_bytes"):
        ExportConfig(target_tar_bytes=10)


def test_embedding_member(tmp_path, corpus):
    import numpy as np
    import webdataset as wds

    inventory, curated, _ = corpus
    kept = curated.filter(pl.col("keep"))
    emb = kept.select("image_id").with_columns(
        pl.Series("embedding", [[float(i), 1.0, 0.5] for i in range(len(kept))], dtype=pl.List(pl.Float32)))
    samples = build_samples(inventory, curated, embeddings=emb)
    cfg = ExportConfig(target_tar_bytes=64 * 1024, include_embedding=True)
    res = export_shard(samples, str(tmp_path / "export"), SHARD, _read, cfg)
    vecs = {s["__key__"]: np.load(io.BytesIO(s["npy"])) for s in wds.WebDataset(res.tars, shardshuffle=False)}
    want = dict(zip(emb["image_id"], emb["embedding"].to_list()))
    assert vecs.keys() == want.keys()
    assert all(np.allclose(vecs[k], want[k]) for k in want)


def test_export_to_s3(s3, tmp_path, corpus):
    import webdataset as wds

    _, curated, samples = corpus
    root = s3.uri("exports/curated")
    res = export_shard(samples, root, SHARD, _read, CFG)
    assert all(t.startswith("s3://") for t in res.tars)
    local = tmp_path / "dl"
    local.mkdir()
    paths = []
    for t in res.tars:
        p = local / t.rsplit("/", 1)[1]
        p.write_bytes(storage.read_bytes(t))
        paths.append(str(p))
    keys = [s["__key__"] for s in wds.WebDataset(paths, shardshuffle=False)]
    assert sorted(keys) == sorted(curated.filter(pl.col("keep"))["image_id"])
    assert len(storage.read_parquet(res.manifest_uri)) == len(keys)
    again = export_shard(samples, root, SHARD, _read, CFG)
    assert again.bytes_written == 0
