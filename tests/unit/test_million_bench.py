"""bench/million.py and bench/million_corpus.py: the pure parts (the seeded plan, deterministic chunk
generation with its manifest, the variants, the per-shard figures)."""

import io

import numpy as np
import polars as pl
from PIL import Image

from bench import million
from bench import million_corpus as mc


def _bases(n: int) -> list[mc.Base]:
    return [mc.Base("fashion" if i % 2 else "clipart", f"ref{i}") for i in range(n)]


def test_plan_is_seeded_complete_and_spread():
    bases = _bases(60)
    a = mc.plan(400, seed=3, shard_size=50, bases=bases)
    assert a.equals(mc.plan(400, seed=3, shard_size=50, bases=bases))
    assert not a.equals(mc.plan(400, seed=4, shard_size=50, bases=bases))
    assert a.height == 400 and sorted(a["rank"].to_list()) == list(range(400))
    assert a["path"].n_unique() == 400
    assert a["path"].str.contains(r"^\d{4}/\d{7}\.(png|jpg|webp)$").all()
    # duplicates share their base's group; a hue copy is its own group, never a base's id
    dup = a.filter(pl.col("variant") != "hue")
    assert (dup["group"] == dup["base_group"]).all()
    hue = a.filter(pl.col("variant") == "hue")
    assert (hue["group"] >= len(bases)).all() and hue["group"].n_unique() == hue.height
    assert set(hue["base_kind"]) <= set(mc.COLOUR_KINDS)
    # groups span several shards (rank // shard_size), so cross-shard dedup is exercised
    spans = a.with_columns((pl.col("rank") // 50).alias("s")).group_by("base_group").agg(pl.col("s").n_unique())
    assert spans["s"].max() > 1


def test_render_variants_decode_and_differ():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    import random

    for v in (*mc.DUP_VARIANTS, "hue"):
        data, made, out = mc.render(v, img, random.Random(1))
        dec = Image.open(io.BytesIO(data))
        dec.load()
        assert dec.size == out.size
        assert dec.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[mc.EXT.get(made, "png")]
    assert mc.render("crop4", img, random.Random(1))[2].size == (77, 58)  # 4% off each dimension
    grey = Image.new("RGB", (40, 40), (120, 120, 120))
    assert mc.render("hue", grey, random.Random(1))[1] == "png_resave"  # no visible hue shift: a duplicate


def test_chunk_generation_is_deterministic_and_resumable(tmp_path):
    src = tmp_path / "art.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 120, 4), dtype=np.uint8)).save(src)
    members = [(i, f"0000/{i:07d}.{mc.EXT[v]}", 7, v) for i, v in enumerate(mc.DUP_VARIANTS)]
    job = (str(tmp_path / "a"), 0, 5, [(7, "clipart", str(src), members)])
    assert mc._chunk_rows(job) == len(members)
    first = pl.read_parquet(tmp_path / "a" / ".manifest" / "part-00000.parquet")
    assert mc._chunk_rows(job) == 0  # files already there are not rewritten
    assert mc._chunk_rows((str(tmp_path / "b"), 0, 5, job[3])) == len(members)
    for path in first["path"]:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    assert first["duplicate"].all() and (first["group"] == 7).all()
    assert first["bytes"].to_list() == [(tmp_path / "a" / p).stat().st_size for p in first["path"]]
    dist = mc.size_distribution(first)
    assert sum(dist["long_side_px"]["histogram"].values()) == len(members)


def test_cross_shard_share_and_flatness():
    df = pl.DataFrame({"group": [1, 1, 1, 2, 2], "shard": ["a", "a", "b", "a", "b"]})
    # positives: 3 + 1 = 4 pairs; within one shard: 1 (group 1 in a) -> 3 of 4 cross-shard
    assert million._cross_share(df) == 0.75
    rows = [{"event": "shard", "success": True, "index": i, "wall_s": 10.0 + 0.5 * i,
             "stages_s": {s: 1.0 for s in million.TIMED}, "earlier_index_load": {"seconds": 0.01 * i}}
            for i in range(1, 21)]
    f = million.flatness(rows)
    assert abs(f["linear_fit_s_per_shard_index"] - 0.5) < 1e-6
    assert f["first_decile_median_s"] == 10.75 and f["last_decile_median_s"] == 19.75  # 2 of 20 rows each
    assert million.flatness(rows[:3]) == {}
