"""Tests of curation.report on a small real corpus.

The corpus is ~45 real files: scikit-image's bundled photos, arcade's CC0 sprites and UI images
(when arcade is installed), real transformations of some of them (downscale, crop, re-encode, exact
copy, darken, blur, a strip, a tiny copy) and four broken files, one with a hostile HTML file name.
The stage frames are computed here from the pixels (PIL, numpy, imagehash), independently of the
pipeline's inventory and dedup code (the quality decision is curation.quality.evaluate), so the
report's numbers can be checked against counts made from the frames in plain Python.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFilter

from curation import errors, report
from curation.quality import REASONS, QualityConfig, evaluate
from curation.schema import CURATED_SCHEMA, DEDUP_SCHEMA, INVENTORY_SCHEMA, conform

imagehash = pytest.importorskip("imagehash")
skdata = pytest.importorskip("skimage.data")
try:  # arcade's CC0 sprites (the demo extra) add RGBA images; the tests still run without them
    import arcade
except ImportError:  # pragma: no cover - depends on the environment
    arcade = None

SHARD = "test-000001"
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "page", "text", "horse", "clock",
          "immunohistochemistry", "hubble_deep_field")
EVIL_NAME = 'broken/<b onmouseover="x">&evil<i>.png'  # an HTML error page saved with a hostile name
NEAR_HAMMING = 10
DATA_URI = re.compile(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)")


# ------------------------------------------------------------------------------ corpus + frames


def _arcade_pngs() -> list[Path]:
    if arcade is None:
        return []
    base = Path(arcade.__file__).parent / "resources" / "assets"
    return sorted(p for p in base.rglob("*.png") if p.is_file())


def _build_corpus(root: Path) -> dict[str, str]:
    """Write the files; return rel_path -> group ('photo', 'sprite', 'ui', 'broken')."""
    groups: dict[str, str] = {}

    def save(img: Image.Image, rel: str, group: str, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if rel.endswith(".jpg") else "PNG"
        if fmt == "JPEG" and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(path, fmt, **kw)
        groups[rel] = group

    photos: dict[str, Image.Image] = {}
    for name in PHOTOS:
        arr = getattr(skdata, name)()
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
        img = Image.fromarray(arr)
        photos[name] = img
        save(img, f"photos/{name}.jpg" if img.mode == "RGB" else f"photos/{name}.png", "photo", quality=90)

    pngs = _arcade_pngs()
    sprites = [p for p in pngs if "/images/" in p.as_posix()][::40][:12]
    ui = [p for p in pngs if "/images/" not in p.as_posix()][::25][:8]
    for p, group in [(p, "sprite") for p in sprites] + [(p, "ui") for p in ui]:
        rel = f"{'sprites' if group == 'sprite' else 'ui'}/{p.parent.name}_{p.name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / rel)
        groups[rel] = group

    astro = photos["astronaut"]
    w, h = astro.size
    save(astro.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "transformed/astronaut_half.png", "photo")
    save(astro.crop((10, 10, w - 10, h - 10)), "transformed/astronaut_crop.jpg", "photo", quality=85)
    save(astro, "transformed/astronaut_q60.jpg", "photo", quality=60)
    shutil.copyfile(root / "photos/coffee.jpg", root / "transformed/coffee_copy.jpg")
    groups["transformed/coffee_copy.jpg"] = "photo"
    save(photos["chelsea"], "transformed/chelsea_q50.jpg", "photo", quality=50)
    dark = Image.fromarray((np.asarray(photos["camera"], dtype=np.float32) * 0.03).astype(np.uint8))
    save(dark, "transformed/camera_dark.png", "photo")
    save(photos["horse"].filter(ImageFilter.GaussianBlur(12)), "transformed/horse_blur.png", "photo")
    save(photos["coins"].crop((0, 0, photos["coins"].width, 40)), "transformed/coins_strip.png", "photo")
    save(photos["clock"].resize((24, 20), Image.Resampling.LANCZOS), "transformed/clock_tiny.png", "photo")

    broken = root / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    astro.save(buf, "JPEG", quality=90)
    (broken / "truncated.jpg").write_bytes(buf.getvalue()[: buf.tell() // 3])
    (broken / "empty.png").write_bytes(b"")
    (broken / "not_an_image.jpg").write_bytes(b"this is a text file, not a JPEG\n")
    (root / EVIL_NAME).write_bytes(b"<html><body><h1>404 Not Found</h1></body></html>\n")
    groups[EVIL_NAME] = "broken"
    for name in ("truncated.jpg", "empty.png", "not_an_image.jpg"):
        groups[f"broken/{name}"] = "broken"
    return groups


def _hash64(h) -> int:
    return int(str(h), 16)


def _inventory_row(root: Path, rel: str, shard: str) -> dict:
    uri = str(root / rel)
    data = (root / rel).read_bytes()
    row: dict = {"image_id": hashlib.sha1(uri.encode()).hexdigest()[:16], "uri": uri, "rel_path": rel,
                 "shard": shard, "bytes": len(data), "mtime": os.path.getmtime(uri),
                 "sha256": hashlib.sha256(data).hexdigest()}
    if not data:
        return {**row, "error_code": errors.EMPTY_FILE, "error_message": "zero bytes"}
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img.load()
    except Image.DecompressionBombError as exc:
        return {**row, "error_code": errors.DECOMPRESSION_BOMB, "error_message": str(exc)}
    except OSError as exc:
        code = errors.TRUNCATED if "truncated" in str(exc) else errors.NOT_AN_IMAGE
        if "cannot identify" not in str(exc) and code != errors.TRUNCATED:
            code = errors.CORRUPT
        return {**row, "error_code": code, "error_message": str(exc)}
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    analysis = rgb.copy()
    analysis.thumbnail((256, 256))
    grey = np.asarray(analysis.convert("L"), dtype=np.float64)
    hist = np.bincount(grey.astype(np.uint8).ravel(), minlength=256) / grey.size
    nz = hist[hist > 0]
    lap = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1])
    means = np.asarray(analysis, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return {**row, "format": fmt, "width": img.width, "height": img.height, "mode": img.mode, "orientation": 1,
            "n_frames": getattr(img, "n_frames", 1), "has_alpha": has_alpha,
            "ahash": _hash64(imagehash.average_hash(rgb)), "dhash": _hash64(imagehash.dhash(rgb)),
            "phash": _hash64(imagehash.phash(rgb)), "whash": _hash64(imagehash.whash(rgb)),
            "color_mean_r": means[0], "color_mean_g": means[1], "color_mean_b": means[2],
            "brightness": float(grey.mean()), "contrast": float(grey.std()),
            "entropy": float(-(nz * np.log2(nz)).sum()), "sharpness": float(lap.var() if lap.size else 0.0),
            "decode_ms": 1.0, "error_code": None, "error_message": None}


def _dedup(inv: pl.DataFrame) -> pl.DataFrame:
    """Exact (sha256) then near (pHash Hamming <= NEAR_HAMMING) clusters; the first file in
    (shard, rel_path) order represents its cluster."""
    rows = inv.sort(["shard", "rel_path"]).iter_rows(named=True)
    reps: list[dict] = []
    out = []
    for r in rows:
        if r["error_code"] is not None:
            out.append({"image_id": r["image_id"], "shard": r["shard"], "cluster_id": r["image_id"],
                        "is_representative": True, "dup_kind": "not_hashed", "rep_shard": r["shard"], "distance": None})
            continue
        match, kind, dist = None, None, None
        for rep in reps:
            if rep["sha256"] == r["sha256"]:
                match, kind, dist = rep, "exact", 0
                break
        if match is None:
            best = min(reps, key=lambda rep: bin(rep["phash"] ^ r["phash"]).count("1"), default=None)
            if best is not None and bin(best["phash"] ^ r["phash"]).count("1") <= NEAR_HAMMING:
                match, kind, dist = best, "near", bin(best["phash"] ^ r["phash"]).count("1")
        if match is None:
            reps.append(r)
            out.append({"image_id": r["image_id"], "shard": r["shard"], "cluster_id": r["image_id"],
                        "is_representative": True, "dup_kind": "unique", "rep_shard": r["shard"], "distance": None})
        else:
            out.append({"image_id": r["image_id"], "shard": r["shard"], "cluster_id": match["image_id"],
                        "is_representative": False, "dup_kind": kind, "rep_shard": match["shard"], "distance": dist})
    df = pl.DataFrame(out, schema=DEDUP_SCHEMA)
    multi = df.group_by("cluster_id").len().filter(pl.col("len") > 1)["cluster_id"]
    df = df.with_columns(
        pl.when(pl.col("is_representative") & pl.col("cluster_id").is_in(multi.implode()))
        .then(pl.lit("representative")).otherwise(pl.col("dup_kind")).alias("dup_kind"))
    return conform(df, DEDUP_SCHEMA)


def _features(uri: str) -> np.ndarray:
    with Image.open(uri) as im:
        rgba = im.convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    small = np.asarray(rgb.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32).ravel() / 255.0
    return small - small.mean()


def _embed_and_classify(curated: pl.DataFrame, groups: dict[str, str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Real pixel features for kept images (8x8 RGB) and a nearest-centroid probe over the source
    groups (softmax of negative distances); zero-shot columns null as with the offline model."""
    kept = curated.filter(pl.col("keep"))
    feats = np.stack([_features(u) for u in kept["uri"]])
    labels = [groups[r] for r in kept["rel_path"]]
    names = sorted(set(labels))
    centroids = np.stack([feats[[lab == n for lab in labels]].mean(axis=0) for n in names])
    dist = np.linalg.norm(feats[:, None, :] - centroids[None], axis=2)
    logits = -dist * 4.0
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    best = prob.argmax(axis=1)
    emb = pl.DataFrame({"image_id": kept["image_id"], "shard": kept["shard"], "model": "pixels-8x8",
                        "embedding": [list(map(float, f)) for f in feats]})
    cls = pl.DataFrame({
        "image_id": kept["image_id"], "shard": kept["shard"],
        "zs_label": pl.Series([None] * kept.height, dtype=pl.String),
        "zs_prob": pl.Series([None] * kept.height, dtype=pl.Float32),
        "zs_topk_labels": pl.Series([None] * kept.height, dtype=pl.List(pl.String)),
        "zs_topk_probs": pl.Series([None] * kept.height, dtype=pl.List(pl.Float32)),
        "fs_label": [names[i] for i in best], "fs_prob": [float(prob[j, i]) for j, i in enumerate(best)],
    })
    return emb, cls


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    groups = _build_corpus(root)
    rels = sorted(groups)
    # two shards, so the corpus report and cross-shard duplicates have something to show
    shard_of = {rel: ("test-000002" if rel.startswith("transformed/") else SHARD) for rel in rels}
    inv = conform(pl.DataFrame([_inventory_row(root, rel, shard_of[rel]) for rel in rels],
                               schema_overrides={"ahash": pl.UInt64, "dhash": pl.UInt64, "phash": pl.UInt64,
                                                 "whash": pl.UInt64}, infer_schema_length=None), INVENTORY_SCHEMA)
    clusters = _dedup(inv)
    curated = evaluate(inv, clusters, QualityConfig())
    assert curated.schema == pl.Schema(CURATED_SCHEMA)
    emb, cls = _embed_and_classify(curated, groups)
    return {"root": root, "groups": groups, "inventory": inv, "clusters": clusters, "curated": curated,
            "embeddings": emb, "classifications": cls}


def _shard_frames(c: dict, shard: str) -> dict[str, pl.DataFrame]:
    return {k: c[k].filter(pl.col("shard") == shard) for k in ("inventory", "clusters", "curated", "embeddings",
                                                              "classifications")}


@pytest.fixture(scope="module")
def shard_report(corpus, tmp_path_factory) -> dict:
    """The shard report of the whole test corpus as ONE shard (every section populated), with the
    astronaut original deleted after inventory (its thumbnail must become a placeholder)."""
    out = tmp_path_factory.mktemp("report")
    frames = {k: corpus[k].with_columns(pl.lit(SHARD).alias("shard")) for k in
              ("inventory", "curated", "embeddings", "classifications")}
    frames["clusters"] = corpus["clusters"].with_columns(pl.lit(SHARD).alias("shard"), pl.lit(SHARD).alias("rep_shard"))
    gone = corpus["inventory"].filter(pl.col("rel_path") == "photos/astronaut.jpg").row(0, named=True)
    calls: list[str] = []

    def load(uri: str) -> Image.Image:
        calls.append(uri)
        if uri == gone["uri"]:
            raise FileNotFoundError(uri)
        return report.open_image(uri)

    timings = {"raw_inventory": 2.5, "dedup_clusters": 0.4, "curated_images": 0.1, "image_embeddings": 3.0,
               "image_classifications": 0.2}
    summary = report.build_shard_report(SHARD, frames["inventory"], frames["clusters"], frames["curated"],
                                        frames["embeddings"], frames["classifications"], str(out), load_image=load,
                                        timings=timings)
    return {"out": out, "summary": summary, "frames": frames, "calls": calls, "gone": gone, "timings": timings,
            "html": (out / "report.html").read_text(encoding="utf-8")}


# ------------------------------------------------------------------------------ tests


def test_every_section_is_present_and_populated(shard_report):
    page = shard_report["html"]
    for sid, title in report.SECTIONS.items():
        assert f'<section id="{sid}"><h2>{title}</h2>' in page, sid
        assert f'href="#{sid}"' in page
    # populated, not the empty-state notes
    assert "No image was rejected" not in page
    assert "No duplicate clusters" not in page
    assert "No class labels" not in page
    assert "No stage timings" not in page
    assert 'alt="embedding map"' in page and 'alt="rejects by reason"' in page and 'alt="class distribution"' in page
    assert "<figure class=\"t rep" in page  # representative marked in a cluster strip
    for code in ("empty_file", "truncated", "not_an_image"):
        assert code in page
    assert "broken/truncated.jpg" in page  # decode errors list file names


def test_summary_numbers_match_frames(shard_report):
    f, s = shard_report["frames"], shard_report["summary"]
    inv = f["inventory"].to_dicts()
    rep = {r["image_id"]: r["is_representative"] for r in f["clusters"].to_dicts()}
    cur = f["curated"].to_dicts()
    expected_counts = {
        "listed": len(inv),
        "decoded": sum(r["error_code"] is None for r in inv),
        "unique": sum(r["error_code"] is None and rep[r["image_id"]] is not False for r in inv),
        "kept": sum(r["keep"] for r in cur),
        "embedded": len(set(f["embeddings"]["image_id"])),
        "classified": sum(r["fs_label"] is not None for r in f["classifications"].to_dicts()),
    }
    assert s["counts"] == expected_counts
    assert s["rejected"] == sum(not r["keep"] for r in cur)
    reasons = Counter(x for r in cur if not r["keep"] for x in r["reasons"])
    assert s["rejects_by_reason"] == {r: reasons.get(r, 0) for r in REASONS}
    assert s["decode_errors"] == dict(Counter(r["error_code"] for r in inv if r["error_code"]))
    sizes = Counter(r["cluster_id"] for r in f["clusters"].to_dicts())
    assert s["duplicates"]["clusters_with_duplicates"] == sum(1 for n in sizes.values() if n > 1)
    assert s["duplicates"]["largest_cluster"] == max(sizes.values())
    assert s["duplicates"]["duplicate_images"] == sum(v is False for v in rep.values())
    assert s["classes"]["source"] == "fs"
    assert s["classes"]["counts"] == dict(Counter(f["classifications"]["fs_label"].to_list()))
    assert s["embedding"]["mapped_points"] == expected_counts["embedded"]
    t = s["timings"]["image_embeddings"]
    assert t["items"] == expected_counts["kept"]
    rate = expected_counts["kept"] / shard_report["timings"]["image_embeddings"]
    assert t["per_second"] == pytest.approx(rate, rel=1e-3)
    # the corpus exercises the interesting cases, so the checks above are not vacuous
    assert expected_counts["decoded"] < expected_counts["listed"]
    assert expected_counts["unique"] < expected_counts["decoded"]
    assert s["duplicates"]["largest_cluster"] >= 3
    assert sum(1 for v in s["rejects_by_reason"].values() if v) >= 4
    on_disk = json.loads((shard_report["out"] / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(s))


def test_embedded_thumbnails_decode_and_html_is_self_contained(shard_report):
    page = shard_report["html"]
    uris = DATA_URI.findall(page)
    assert len(uris) >= 20
    for fmt, payload in uris:
        with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
            im.load()
            assert im.format == ("PNG" if fmt == "png" else "JPEG")
            assert im.width >= 1 and im.height >= 1
    stripped = DATA_URI.sub("", page)
    assert not re.search(r"(?i)\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", stripped)
    assert not re.search(r"(?i)https?://", stripped)
    assert "<script" not in page.lower()
    assert "@import" not in page and "url(" not in stripped
    # a hostile file name is escaped, never markup
    assert '<b onmouseover="x">' not in page
    assert "&lt;b onmouseover=&quot;x&quot;&gt;&amp;evil&lt;i&gt;.png" in page


def test_broken_thumbnails_become_placeholders(shard_report):
    page, gone, calls = shard_report["html"], shard_report["gone"], shard_report["calls"]
    assert gone["uri"] in calls  # the report tried the deleted file...
    assert f'data-thumb="placeholder" data-image-id="{gone["image_id"]}"' in page  # ...and showed a placeholder
    broken = shard_report["frames"]["inventory"].filter(pl.col("error_code").is_not_null())
    assert broken.height == 4
    for uri in broken["uri"]:
        assert uri not in calls  # files that never decoded are not opened again
    for image_id in broken["image_id"]:
        assert f'data-thumb="placeholder" data-image-id="{image_id}"' in page
    assert shard_report["summary"]["thumbnails"]["placeholders"] >= 4


def test_thumbnails_are_bounded(corpus, tmp_path):
    f = _shard_frames(corpus, SHARD)
    calls: list[str] = []

    def load(uri: str) -> Image.Image:
        calls.append(uri)
        return report.open_image(uri)

    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], None, None, str(tmp_path),
                                  load_image=load, max_thumbs=5)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<figure") <= 5
    assert len(set(calls)) <= 5
    assert s["thumbnails"]["rendered"] + s["thumbnails"]["placeholders"] <= 5
    assert s["counts"]["embedded"] is None and s["counts"]["classified"] is None
    assert "No embeddings were given" in page and "No class labels" in page


def test_loader_that_always_fails_still_gives_a_report(corpus, tmp_path):
    f = _shard_frames(corpus, SHARD)

    def load(uri: str) -> Image.Image:
        raise RuntimeError("storage is down")

    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], f["embeddings"],
                                  f["classifications"], str(tmp_path), load_image=load)
    assert s["thumbnails"]["rendered"] == 0 and s["thumbnails"]["placeholders"] > 0
    assert (tmp_path / "summary.json").exists()


def test_zero_shot_labels_used_when_no_probe(corpus, tmp_path):
    f = _shard_frames(corpus, SHARD)
    cls = f["classifications"].with_columns(
        pl.col("fs_label").alias("zs_label"), pl.col("fs_prob").cast(pl.Float32).alias("zs_prob"),
        pl.lit(None, pl.String).alias("fs_label"), pl.lit(None, pl.Float64).alias("fs_prob"))
    # an 'unknown' zero-shot label does not count as classified
    first = cls["image_id"][0]
    cls = cls.with_columns(pl.when(pl.col("image_id") == first).then(pl.lit("unknown"))
                           .otherwise(pl.col("zs_label")).alias("zs_label"))
    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], f["embeddings"], cls,
                                  str(tmp_path), max_thumbs=20)
    assert s["classes"]["source"] == "zs"
    assert s["counts"]["classified"] == cls.height - 1
    assert "unknown" not in s["classes"]["counts"]


def test_corpus_report_and_duckdb_counts_agree(corpus, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    from curation import storage

    root = tmp_path / "outputs"
    shards = sorted(corpus["inventory"]["shard"].unique())
    assert len(shards) == 2
    for shard in shards:
        f = _shard_frames(corpus, shard)
        for key, stage in report.STAGE_DIRS.items():
            storage.write_parquet(f[key], str(root / stage / f"{shard}.parquet"))
    counts = report.corpus_counts(duckdb.connect(), str(root))
    lazy = {k: pl.scan_parquet(str(root / v / "*.parquet")) for k, v in report.STAGE_DIRS.items()}
    out = tmp_path / "corpus_report"
    s = report.build_corpus_report(lazy["inventory"], lazy["clusters"], lazy["curated"], lazy["embeddings"],
                                   lazy["classifications"], str(out), max_thumbs=30)
    assert s["scope"] == "corpus" and s["n_shards"] == 2
    assert counts.to_dicts() == s["per_shard"]
    for stage in report.STAGES:
        assert s["counts"][stage] == sum(r[stage] for r in s["per_shard"])
    assert s["counts"]["listed"] == corpus["inventory"].height
    assert s["counts"]["kept"] == int(corpus["curated"]["keep"].sum())
    # cross-shard duplicates: transformed copies in shard 2 represented by originals in shard 1
    assert s["duplicates"]["cross_shard"] > 0
    page = (out / "report.html").read_text()
    assert "Per shard (2)" in page
    for sid in report.SECTIONS:
        assert f'<section id="{sid}">' in page
    # precomputed counts replace the frame counts
    s2 = report.build_corpus_report(lazy["inventory"], lazy["clusters"], lazy["curated"], None, None,
                                    str(tmp_path / "r2"), shard_counts=counts, max_thumbs=0)
    assert s2["counts"] == s["counts"]


def test_corpus_counts_without_later_stages(corpus, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    from curation import storage

    root = tmp_path / "outputs"
    f = _shard_frames(corpus, SHARD)
    for key in ("inventory", "clusters", "curated"):
        storage.write_parquet(f[key], str(root / report.STAGE_DIRS[key] / f"{SHARD}.parquet"))
    counts = report.corpus_counts(duckdb.connect(), str(root))
    row = counts.row(0, named=True)
    assert row["embedded"] is None and row["classified"] is None
    assert row["listed"] == f["inventory"].height
    assert report.corpus_counts(duckdb.connect(), str(tmp_path / "nothing")).height == 0


def test_markdown_preview_is_small(shard_report, corpus):
    thumbs = report.preview_thumbs(corpus["curated"], n=8)
    assert 1 <= len(thumbs) <= 8 and all(t.ok for t in thumbs)
    md = report.markdown_preview(shard_report["summary"], thumbs)
    assert len(md) <= 16_000
    images = DATA_URI.findall(md)
    assert 1 <= len(images) <= 8
    for _, payload in images:
        with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
            assert max(im.size) <= report.PREVIEW_PX
    assert "| listed |" in md and "| kept |" in md
    for reason, n in shard_report["summary"]["rejects_by_reason"].items():
        assert (f"| {reason} | {n:,} |" in md) == (n > 0)
    # a tight budget drops images, never the tables
    tight = report.markdown_preview(shard_report["summary"], thumbs, max_chars=len(md) - 10)
    assert len(DATA_URI.findall(tight)) < len(images) and "| kept |" in tight
    assert len(DATA_URI.findall(report.markdown_preview(shard_report["summary"], thumbs * 3))) <= 8


def test_tiles_handle_every_mode():
    for mode in ("RGB", "RGBA", "LA", "L", "P", "I;16", "I", "F", "CMYK", "1"):
        img = Image.new(mode, (300, 120))
        tile = report.render_tile(img)
        assert tile.mode == "RGB" and max(tile.size) == report.THUMB_PX
    tiny = report.render_tile(Image.new("RGBA", (10, 10), (255, 0, 0, 128)))
    assert tiny.size == (40, 40)  # upscaled at most 4x
    ph = report.placeholder_tile("decompression_bomb")
    assert ph.size == (report.THUMB_PX, report.THUMB_PX)


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or "")
                 if p and os.path.exists(p)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(shard_report, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,3000",
                    f"file://{shard_report['out'] / 'report.html'}"],
                   check=True, capture_output=True, timeout=60)
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert arr.shape[:2] == (3000, 1400)
    assert arr.std() > 20  # not a blank page
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["REPORT_SCREENSHOT"])


def test_empty_shard_gives_a_report(tmp_path):
    from curation.schema import CLASSIFICATION_COLUMNS, EMBEDDING_COLUMNS

    inv, clu, cur = (pl.DataFrame(schema=s) for s in (INVENTORY_SCHEMA, DEDUP_SCHEMA, CURATED_SCHEMA))
    s = report.build_shard_report(SHARD, inv, clu, cur, None, None, str(tmp_path))
    assert s["counts"] == {"listed": 0, "decoded": 0, "unique": 0, "kept": 0, "embedded": None, "classified": None}
    assert s["rejected"] == 0 and s["keep_rate"] is None and s["decode_errors"] == {}
    emb = pl.DataFrame(schema={"image_id": pl.String, "shard": pl.String, "model": pl.String,
                               "embedding": pl.List(pl.Float32)})
    cls = pl.DataFrame(schema={c: (pl.List(pl.String) if c == "zs_topk_labels" else pl.List(pl.Float32)
                                   if c == "zs_topk_probs" else pl.Float32 if c.endswith("prob") else pl.String)
                               for c in CLASSIFICATION_COLUMNS})
    assert tuple(emb.columns) == EMBEDDING_COLUMNS
    s = report.build_shard_report(SHARD, inv, clu, cur, emb, cls, str(tmp_path))
    assert s["counts"]["embedded"] == 0 and s["counts"]["classified"] == 0
    page = (tmp_path / "report.html").read_text()
    for sid in report.SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "Every listed file decoded" in page and "No image was rejected" in page


def test_s3_out_dir_is_written_through_storage(corpus, monkeypatch):
    from curation import storage

    written: dict[str, bytes] = {}
    monkeypatch.setattr(storage, "write_bytes_atomic", lambda uri, data: written.__setitem__(uri, data))
    f = _shard_frames(corpus, SHARD)
    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], f["embeddings"],
                                  f["classifications"], "s3://bucket/reports/test-000001/", max_thumbs=10)
    assert set(written) == {"s3://bucket/reports/test-000001/report.html", "s3://bucket/reports/test-000001/summary.json"}
    assert s["report"] == "s3://bucket/reports/test-000001/report.html"
    assert json.loads(written["s3://bucket/reports/test-000001/summary.json"])["counts"] == s["counts"]
    assert written["s3://bucket/reports/test-000001/report.html"].startswith(b"<!DOCTYPE html>")


def test_embedding_map_handles_array_dtype_and_several_models(corpus, tmp_path):
    f = _shard_frames(corpus, SHARD)
    emb = f["embeddings"]
    dim = len(emb["embedding"][0])
    arr = emb.with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, dim)))
    other = arr.head(2).with_columns(pl.lit("other-model").alias("model"))  # a minority model is ignored
    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], pl.concat([arr, other]),
                                  f["classifications"], str(tmp_path), max_thumbs=0, max_map_points=5)
    e = s["embedding"]
    assert e["model"] == "pixels-8x8" and e["dim"] == dim
    assert e["mapped_points"] == 5  # bounded by max_map_points
    assert 1.0 >= e["explained_variance"][0] >= e["explained_variance"][1] >= 0.0
    assert 'alt="embedding map"' in (tmp_path / "report.html").read_text()


# ------------------------------------------------------------------------------ semantic duplicates

SEM_SECTION = re.compile(r'<section id="semantic-duplicates">(.*?)</section>', re.S)
SEM_CLUSTER = re.compile(r'<div class="cluster"><div class="meta">cluster <code>([0-9a-f]+)</code>(.*?)</div>'
                         r'<div class="strip">(.*?)</div></div>', re.S)
FIGURE = re.compile(r'<figure class="([^"]*)" data-thumb="(\w+)" data-image-id="([^"]*)".*?</figure>', re.S)
EXTERNAL_REP = "0123456789abcdef"
SEM_THRESHOLD = 0.9  # a representative in a shard outside the report's frames


def _semantic_frame(inv: pl.DataFrame, threshold: float = SEM_THRESHOLD) -> pl.DataFrame:
    """Leader clustering of the decoded images in (shard, rel_path) order by the cosine of their
    8x8 pixel features: an image joins the most similar earlier representative (any earlier shard
    too) at or above `threshold`, else represents itself."""
    rows = inv.filter(pl.col("error_code").is_null()).sort(["shard", "rel_path"])
    x = np.stack([_features(u).astype(np.float64) for u in rows["uri"]])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # a flat image: all zeros
    reps: list[int] = []
    out = []
    for i, r in enumerate(rows.iter_rows(named=True)):
        best = max(reps, key=lambda k: float(x[i] @ x[k]), default=None)
        if best is not None and float(x[i] @ x[best]) >= threshold:
            out.append({"image_id": r["image_id"], "shard": r["shard"], "cluster_id": rows["image_id"][best],
                        "is_representative": False, "rep_shard": rows["shard"][best],
                        "similarity": float(x[i] @ x[best])})
        else:
            reps.append(i)
            out.append({"image_id": r["image_id"], "shard": r["shard"], "cluster_id": r["image_id"],
                        "is_representative": True, "rep_shard": r["shard"], "similarity": 1.0})
    return pl.DataFrame(out, schema={"image_id": pl.String, "shard": pl.String, "cluster_id": pl.String,
                                     "is_representative": pl.Boolean, "rep_shard": pl.String,
                                     "similarity": pl.Float32})


def _expected_semantic(sem: pl.DataFrame) -> dict:
    """The summary numbers counted in plain Python from the rows."""
    rows = sem.to_dicts()
    ids = {r["image_id"] for r in rows}
    linked = [r for r in rows if not r["is_representative"]]
    members = Counter(r["cluster_id"] for r in linked)
    sizes = {cid: n + 1 for cid, n in members.items()}  # + the representative, wherever it lives
    assert all(cid in ids or any(r["cluster_id"] == cid and r["rep_shard"] != r["shard"] for r in linked)
               for cid in sizes)
    return {"available": True, "images_compared": len(rows),
            "representatives": sum(bool(r["is_representative"]) for r in rows),
            "clusters_with_duplicates": len(sizes), "linked_images": len(linked),
            "cross_shard": sum(r["rep_shard"] != r["shard"] for r in linked),
            "largest_cluster": max(sizes.values(), default=0),
            "min_similarity": round(min(float(np.float32(r["similarity"])) for r in linked), 4)}


def _check_strips(section: str, sem: pl.DataFrame) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every strip: representative first (marked), then members by descending similarity, each
    captioned with its cosine to the representative as in the frame."""
    by_id = {r["image_id"]: r for r in sem.to_dicts()}
    strips = SEM_CLUSTER.findall(section)
    assert strips
    out = []
    for cid, _meta, strip in strips:
        figs = FIGURE.findall(strip)
        assert figs[0][2] == cid and "rep" in figs[0][0].split()
        assert ">REP</span>" in strip.split("</figure>")[0]
        sims = []
        for (cls, _kind, image_id), body in zip(figs[1:], strip.split("</figure>")[1:], strict=False):
            assert "rep" not in cls.split()
            r = by_id[image_id]
            assert r["cluster_id"] == cid and not r["is_representative"]
            assert f'<figcaption class="s">cos {r["similarity"]:.3f}</figcaption>' in body
            sims.append(r["similarity"])
        assert sims and sims == sorted(sims, reverse=True)
        out.append((cid, figs))
    return out


def test_semantic_section_shows_clusters_and_matching_numbers(corpus, tmp_path):
    frames = {k: corpus[k].with_columns(pl.lit(SHARD).alias("shard")) for k in
              ("inventory", "curated", "embeddings", "classifications")}
    clusters = corpus["clusters"].with_columns(pl.lit(SHARD).alias("shard"), pl.lit(SHARD).alias("rep_shard"))
    sem = _semantic_frame(frames["inventory"])
    # one image linked to a representative in an earlier shard (not in this report's inventory)
    single = sem.group_by("cluster_id").len().filter(pl.col("len") == 1)["cluster_id"].sort()[0]
    sem = sem.with_columns(
        pl.when(pl.col("image_id") == single).then(pl.lit(EXTERNAL_REP)).otherwise("cluster_id").alias("cluster_id"),
        (pl.col("is_representative") & (pl.col("image_id") != single)).alias("is_representative"),
        pl.when(pl.col("image_id") == single).then(pl.lit("test-000000")).otherwise("rep_shard").alias("rep_shard"),
        pl.when(pl.col("image_id") == single).then(pl.lit(0.975, pl.Float32)).otherwise("similarity")
        .alias("similarity"))
    expected = _expected_semantic(sem)
    assert expected["largest_cluster"] >= 3 and expected["cross_shard"] == 1  # not vacuous

    s = report.build_shard_report(SHARD, frames["inventory"], clusters, frames["curated"], frames["embeddings"],
                                  frames["classifications"], str(tmp_path), semantic=sem.lazy())
    assert s["semantic"] == expected
    assert json.loads((tmp_path / "summary.json").read_text())["semantic"] == expected
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<a href="#semantic-duplicates">Semantic duplicates</a>' in page
    section = SEM_SECTION.search(page).group(1)
    assert "was not run" not in section
    strips = _check_strips(section, sem)
    sizes = Counter(sem.filter(~pl.col("is_representative"))["cluster_id"].to_list())
    largest = max(sizes.values()) + 1
    first_cid, first_figs = strips[0]
    assert sizes[first_cid] + 1 == largest and len(first_figs) == largest  # largest cluster first, complete
    external = [figs for cid, figs in strips if cid == EXTERNAL_REP]
    assert external and external[0][0][1] == "placeholder"  # its representative: a placeholder tile
    assert "representative in test-000000" in section
    assert section.count("<figure") <= int(report.DEFAULT_MAX_THUMBS * 0.2)
    # still one self-contained file
    stripped = DATA_URI.sub("", page)
    assert not re.search(r"(?i)https?://|\b(src|href)\s*=\s*[\"']?\s*//", stripped)
    assert "<script" not in page.lower() and "url(" not in stripped and "@import" not in page
    for fmt, payload in DATA_URI.findall(section):
        with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
            im.load()
    # the thumbnail budget bounds the strips too
    s = report.build_shard_report(SHARD, frames["inventory"], clusters, frames["curated"], None, None,
                                  str(tmp_path / "small"), semantic=sem, max_thumbs=10)
    small = SEM_SECTION.search((tmp_path / "small" / "report.html").read_text()).group(1)
    assert 1 <= small.count("<figure") <= 2
    assert s["thumbnails"]["rendered"] + s["thumbnails"]["placeholders"] <= 10
    assert s["semantic"] == expected


def test_semantic_section_says_when_the_pass_was_not_run(shard_report):
    section = SEM_SECTION.search(shard_report["html"]).group(1)
    assert "was not run" in section
    assert "python -m orchestration.cli run --semantic" in section and "semantic_dedup" in section
    assert "<figure" not in section
    sem = shard_report["summary"]["semantic"]
    assert sem["available"] is False and sem["images_compared"] is None
    assert json.loads((shard_report["out"] / "summary.json").read_text())["semantic"] == sem


def test_corpus_report_semantic_section_over_shards(corpus, tmp_path):
    from curation import storage

    sem = _semantic_frame(corpus["inventory"])  # transformed copies (shard 2) link to originals (shard 1)
    root = tmp_path / "outputs"
    for shard in sorted(corpus["inventory"]["shard"].unique()):
        f = _shard_frames(corpus, shard)
        for key, stage in report.STAGE_DIRS.items():
            storage.write_parquet(f[key], str(root / stage / f"{shard}.parquet"))
        storage.write_parquet(sem.filter(pl.col("shard") == shard),
                              str(root / "semantic_duplicates" / f"{shard}.parquet"))
    lazy = {k: pl.scan_parquet(str(root / v / "*.parquet")) for k, v in report.STAGE_DIRS.items()}
    out = tmp_path / "corpus_report"
    s = report.build_corpus_report(lazy["inventory"], lazy["clusters"], lazy["curated"], lazy["embeddings"],
                                   lazy["classifications"], str(out), max_thumbs=60,
                                   semantic=pl.scan_parquet(str(root / "semantic_duplicates" / "*.parquet")))
    expected = _expected_semantic(sem)
    assert expected["cross_shard"] >= 1
    assert s["semantic"] == expected
    section = SEM_SECTION.search((out / "report.html").read_text()).group(1)
    strips = _check_strips(section, sem)
    cross = {r["cluster_id"] for r in sem.to_dicts() if r["rep_shard"] != r["shard"]}
    shown = [figs for cid, figs in strips if cid in cross]
    assert shown and all(figs[0][1] == "image" for figs in shown)  # the corpus inventory has the representative


# ------------------------------------------------------------------------------ hostile input

SCRIPT_NAME = "<script>alert(1)</script>.png"  # a folder "<script>alert(1)<" holding "script>.png"
SCRIPT_LABEL = "<img src=x onerror=alert(1)>"
SCRIPT_MESSAGE = "<script>alert(2)</script> cannot identify image file"


class _Tags(HTMLParser):
    """Every start tag of a page with its attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, [name for name, _ in attrs]))


def test_hostile_file_name_label_and_message_are_escaped(corpus, tmp_path):
    """A kept image saved under a script-tag name, a class label that is an <img onerror> tag and
    a decode-error message with a script tag show as text: the page has no script element and no
    event-handler attribute, and each string appears escaped where the report shows it."""
    frames = {k: corpus[k].with_columns(pl.lit(SHARD).alias("shard")) for k in
              ("inventory", "curated", "embeddings", "classifications")}
    clusters = corpus["clusters"].with_columns(pl.lit(SHARD).alias("shard"), pl.lit(SHARD).alias("rep_shard"))
    kept = frames["curated"].filter(pl.col("keep")).sort("rel_path").row(0, named=True)
    evil_file = tmp_path / "corpus" / SCRIPT_NAME
    evil_file.parent.mkdir(parents=True)
    shutil.copyfile(kept["uri"], evil_file)  # the real image, under the hostile name
    assert evil_file.name == "script>.png" and evil_file.parent.name == "<script>alert(1)<"
    broken = frames["inventory"].filter(pl.col("error_code").is_not_null()).sort("rel_path").row(0, named=True)

    def rename(df: pl.DataFrame) -> pl.DataFrame:
        hit = pl.col("image_id") == kept["image_id"]
        out = df.with_columns(pl.when(hit).then(pl.lit(SCRIPT_NAME)).otherwise("rel_path").alias("rel_path"),
                              pl.when(hit).then(pl.lit(str(evil_file))).otherwise("uri").alias("uri"))
        return out

    inv = rename(frames["inventory"]).with_columns(
        pl.when(pl.col("image_id") == broken["image_id"]).then(pl.lit(SCRIPT_MESSAGE))
        .otherwise("error_message").alias("error_message"))
    cur = rename(frames["curated"])
    kept_label = frames["classifications"].filter(pl.col("image_id") == kept["image_id"])["fs_label"][0]
    cls = frames["classifications"].with_columns(
        pl.when(pl.col("fs_label") == kept_label).then(pl.lit(SCRIPT_LABEL)).otherwise("fs_label").alias("fs_label"))
    out = tmp_path / "report"
    s = report.build_shard_report(SHARD, inv, clusters, cur, frames["embeddings"], cls, str(out))
    page = (out / "report.html").read_text(encoding="utf-8")

    assert SCRIPT_LABEL in s["classes"]["counts"]  # the summary keeps the raw label
    parser = _Tags()
    parser.feed(page)
    assert parser.tags and all(tag != "script" for tag, _ in parser.tags)
    assert not [(tag, a) for tag, attrs in parser.tags for a in attrs if a.startswith("on")]
    assert "<script" not in page.lower() and SCRIPT_LABEL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page  # in the tile's title
    assert "<figcaption>script&gt;.png</figcaption>" in page  # the tile's caption: the file name
    assert f"<h3>{html.escape(SCRIPT_LABEL)} · " in page  # the class heading
    assert f'<td class="">{html.escape(SCRIPT_LABEL)}</td>' in page  # the class table
    assert "&lt;script&gt;alert(2)&lt;/script&gt; cannot identify image file" in page  # decode errors
    evil_tiles = re.findall(r'<figure [^>]*data-image-id="' + kept["image_id"] + r'"[^>]*>', page)
    assert evil_tiles and all('data-thumb="image"' in t for t in evil_tiles)  # the file itself was shown


# ------------------------------------------------------------------------------ ImageNet labels

HOSTILE_CLASS = '<img src=x onerror="y">'


def _with_imagenet(emb: pl.DataFrame, curated: pl.DataFrame) -> pl.DataFrame:
    """Embedding rows with ImageNet top-3 columns: the top-1 class named after the file's folder
    (a hostile name for about half the photos), probabilities from the image's own 8x8 features."""
    folder = dict(zip(curated["image_id"], curated["rel_path"].str.split("/").list.first()))
    rows = []
    for image_id, vec in zip(emb["image_id"].to_list(), emb["embedding"].to_list()):
        top = HOSTILE_CLASS if folder[image_id] == "photos" and int(image_id, 16) % 2 else folder[image_id]
        p1 = float(0.4 + 0.5 * np.tanh(3 * np.std(vec)))
        rows.append(([top, "window screen", "web site"], [p1, (1 - p1) * 0.6, (1 - p1) * 0.3]))
    return emb.with_columns(pl.Series("in_topk_labels", [r[0] for r in rows], dtype=pl.List(pl.String)),
                            pl.Series("in_topk_probs", [r[1] for r in rows], dtype=pl.List(pl.Float32)))


def test_imagenet_section_from_embedding_labels(corpus, tmp_path):
    f = _shard_frames(corpus, SHARD)
    emb = _with_imagenet(f["embeddings"], f["curated"])
    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], emb, f["classifications"],
                                  str(tmp_path), max_thumbs=10)
    expected = Counter(r[0] for r in emb["in_topk_labels"].to_list())
    im = s["imagenet"]
    assert im["available"] and im["source"] == "image_embeddings" and im["images"] == emb.height
    assert im["counts"] == dict(expected) and list(im["counts"].values()) == sorted(expected.values(), reverse=True)
    pairs = list(zip(emb["in_topk_labels"].to_list(), emb["in_topk_probs"].to_list()))
    probs = {k: np.mean([p[0] for lab, p in pairs if lab[0] == k]) for k in expected}
    assert im["mean_prob"] == pytest.approx(probs, abs=1e-4)
    page = (tmp_path / "report.html").read_text()
    sid, title = report.IMAGENET_SECTION["id"], report.IMAGENET_SECTION["title"]
    assert f'<section id="{sid}"><h2>{title}</h2>' in page and f'href="#{sid}"' in page
    assert page.index('<section id="classes">') < page.index(f'<section id="{sid}">') < page.index(
        '<section id="embedding-map">')
    assert 'alt="ImageNet class distribution"' in page
    section = page[page.index(f'<section id="{sid}">'):page.index('<section id="embedding-map">')]
    for label, n in expected.items():
        assert f"<td class=\"\">{html.escape(label, quote=True)}</td><td class=\"n\">{n}</td>" in section
    assert HOSTILE_CLASS not in page and html.escape(HOSTILE_CLASS, quote=True) in section
    assert f"{emb.height} labelled images of {emb.height} embedded in {len(expected)} classes" in section
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["imagenet"] == json.loads(json.dumps(im))


def test_no_imagenet_section_without_labels(shard_report, corpus, tmp_path):
    sid = report.IMAGENET_SECTION["id"]
    assert shard_report["summary"]["imagenet"]["available"] is False
    assert sid not in shard_report["html"]
    # an open_clip model writes the columns, all null: still no section
    f = _shard_frames(corpus, SHARD)
    emb = f["embeddings"].with_columns(pl.lit(None, pl.List(pl.String)).alias("in_topk_labels"),
                                       pl.lit(None, pl.List(pl.Float32)).alias("in_topk_probs"))
    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], emb, f["classifications"],
                                  str(tmp_path), max_thumbs=0)
    assert s["imagenet"]["available"] is False and sid not in (tmp_path / "report.html").read_text()


def test_imagenet_labels_of_classifications_come_first(corpus, tmp_path):
    f = _shard_frames(corpus, SHARD)
    emb = _with_imagenet(f["embeddings"], f["curated"])
    cls = f["classifications"].with_columns(
        pl.when(pl.col("fs_label") == "photo").then(pl.lit("tabby")).otherwise(pl.lit("espresso")).alias("in_label"),
        pl.col("fs_prob").cast(pl.Float32).alias("in_prob"))
    s = report.build_shard_report(SHARD, f["inventory"], f["clusters"], f["curated"], emb, cls, str(tmp_path),
                                  max_thumbs=0)
    assert s["imagenet"]["source"] == "image_classifications"
    assert s["imagenet"]["counts"] == dict(Counter(cls["in_label"].to_list()))


def test_corpus_report_imagenet_section_over_shards(corpus, tmp_path):
    from curation import storage

    root = tmp_path / "outputs"
    shards = sorted(corpus["inventory"]["shard"].unique())
    total: Counter = Counter()
    for shard in shards:
        f = _shard_frames(corpus, shard)
        f["embeddings"] = _with_imagenet(f["embeddings"], f["curated"])
        total.update(r[0] for r in f["embeddings"]["in_topk_labels"].to_list())
        for key, stage in report.STAGE_DIRS.items():
            storage.write_parquet(f[key], str(root / stage / f"{shard}.parquet"))
    lazy = {k: pl.scan_parquet(str(root / v / "*.parquet")) for k, v in report.STAGE_DIRS.items()}
    s = report.build_corpus_report(lazy["inventory"], lazy["clusters"], lazy["curated"], lazy["embeddings"],
                                   lazy["classifications"], str(tmp_path / "r"), max_thumbs=0)
    assert s["imagenet"]["counts"] == dict(total) and len(total) >= 3
    assert f'<section id="{report.IMAGENET_SECTION["id"]}">' in (tmp_path / "r" / "report.html").read_text()


def test_preview_thumbnails_are_captioned_kept_or_rejected_and_why(shard_report, corpus):
    cur = corpus["curated"]
    assert (~cur["keep"]).any() and cur["keep"].any()
    thumbs = report.preview_thumbs(cur, n=8)
    rows = {r["image_id"]: r for r in cur.iter_rows(named=True)}
    assert any(t.caption.startswith("rejected (") for t in thumbs)
    assert any(t.caption.startswith("kept: ") for t in thumbs)
    for t in thumbs:
        r = rows[t.image_id]
        name = r["rel_path"].rsplit("/", 1)[-1]
        want = f"kept: {name}" if r["keep"] else f"rejected ({', '.join(r['reasons'])}): {name}"
        assert t.caption == want
    md = report.markdown_preview(shard_report["summary"], thumbs)
    for t in thumbs:  # under its image, in the Markdown table
        assert f"| {t.caption.replace('|', '/')} |" in md or f" {t.caption.replace('|', '/')} |" in md
    assert len(DATA_URI.findall(md)) == len(thumbs)
