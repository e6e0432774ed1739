"""A cut-out the background swallows (a white icon on transparency composited on white is one flat
colour) is composited on the contrasting background for what is hashed, thumbnailed and embedded
(`curation.imaging.convert.composite_visible`), while the content signals the quality checks judge
keep the configured composite. Real images: arcade's white Xbox button prompts (CC0)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation.dedup import DedupConfig
from curation.dedup.shard import dedup_shard
from curation.imaging.analyse import AnalysisConfig, analyse_image, decode_first_frame, prepare_frame
from curation.imaging.content import CONTENT_COLUMNS, content_signals, grey_of
from curation.imaging.convert import composite, composite_visible, contrasting, opaque_share, swallowed
from curation.imaging.policy import decode_rgb
from curation.inventory import InventoryConfig, iter_inventory
from curation.quality import QualityConfig
from curation.quality.evaluate import evaluate
from tests.hostile_corpus import manifest_for


def _prompt(name: str) -> Path:
    import arcade

    p = Path(arcade.__file__).parent / "resources" / "assets" / "input_prompt" / "xbox" / f"{name}.png"
    assert p.exists(), p
    return p


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def test_contrasting_background_and_the_cutout_test():
    assert contrasting((255, 255, 255)) == (0, 0, 0)
    assert contrasting((200, 200, 200)) == (0, 0, 0)
    assert contrasting((0, 0, 0)) == (255, 255, 255)
    icon = Image.open(_prompt("lt")).convert("RGBA")
    white, had_alpha = composite(icon)
    assert had_alpha and 0.001 <= opaque_share(icon) < 0.98
    assert np.asarray(white.convert("L")).std() == 0.0  # pure white art on white: one flat colour
    assert swallowed(opaque_share(icon), 0.0) and not swallowed(opaque_share(icon), 5.0)
    assert not swallowed(0.0005, 0.0) and not swallowed(0.99, 0.0) and not swallowed(None, 0.0)
    flat, _ = composite_visible(icon)
    assert np.asarray(flat.convert("L")).std() > 50  # on black the shape shows
    assert flat.getpixel((0, 0)) == (0, 0, 0)  # a transparent corner
    # an empty transparent canvas, a nearly opaque white image and an opaque one stay on white
    empty = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    assert composite_visible(empty)[0].getpixel((0, 0)) == (255, 255, 255)
    nearly = Image.new("RGBA", (100, 100), (255, 255, 255, 255))
    nearly.putpixel((0, 0), (255, 255, 255, 0))
    assert composite_visible(nearly)[0].getpixel((0, 0)) == (255, 255, 255)
    assert composite_visible(icon.convert("RGB"))[1] is False


def test_dark_art_on_transparency_keeps_the_white_background():
    from tests.conftest import arcade_sprites

    sprite = next(p for p in arcade_sprites() if "female_adventurer" in str(p) and p.suffix == ".png")
    img = Image.open(sprite).convert("RGBA")
    assert np.asarray(composite(img)[0].convert("L")).std() > 5.0
    rgb = decode_rgb(sprite.read_bytes())
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.tobytes() == composite(img)[0].tobytes()


def test_stage_1_measures_the_shape_but_quality_sees_the_configured_composite():
    data = _prompt("lt").read_bytes()
    rec = analyse_image(data)
    assert rec["contrast"] >= DedupConfig().min_contrast and rec["entropy"] >= DedupConfig().min_entropy
    thumb = np.frombuffer(rec["thumb_rgb"], dtype=np.uint8)
    assert thumb.max() - thumb.min() > 100  # the thumbnail shows white art on black
    # the content signals are those of the white composite, as before
    cfg = AnalysisConfig()
    img, _ = decode_first_frame(data, cfg, {})
    frame = prepare_frame(img, cfg)
    flat, _ = composite(frame, cfg.background)
    expected = content_signals(img, frame, grey_of(flat), cfg.analysis_size)
    assert {c: rec[c] for c in CONTENT_COLUMNS} == expected
    # embeddings see the shape too
    assert np.asarray(decode_rgb(data).convert("L")).std() > 50


@pytest.fixture
def white_icons(tmp_path):
    """Three white prompts, each as the file, a half-size PNG and a WebP (alpha kept)."""
    rows = []
    for name in ("lt", "rb", "button_start"):
        icon = Image.open(_prompt(name)).convert("RGBA")
        for variant, data in (("orig", _prompt(name).read_bytes()),
                              ("half", _png(icon.resize((icon.width // 2, icon.height // 2), Image.LANCZOS))),
                              ("webp", _png(icon, "WEBP", quality=80))):
            p = tmp_path / f"{name}_{variant}.{'webp' if variant == 'webp' else 'png'}"
            p.write_bytes(data)
            rows.append((p, name))
    return rows


def _inventory(rows, root):
    man = manifest_for(root, [p.name for p, _ in rows])
    return pl.concat(list(iter_inventory(man, "s", str(root), InventoryConfig(), workers=1)))


def test_white_icons_dedup_by_shape_and_stay_kept(white_icons, tmp_path):
    inv = _inventory(white_icons, tmp_path)
    clusters, _ = dedup_shard(inv, None, DedupConfig())
    d = inv.select("image_id", "rel_path").join(clusters.select("image_id", "cluster_id", "is_representative"),
                                                on="image_id")
    d = d.with_columns(pl.col("rel_path").str.replace(r"_[^_]+$", "").alias("name"))
    per_name = d.group_by("name").agg(pl.col("cluster_id").n_unique().alias("clusters"))
    assert per_name["clusters"].to_list() == [1, 1, 1]  # every copy joins its original
    assert d["cluster_id"].n_unique() == 3  # and the three icons stay apart
    curated = evaluate(inv, clusters, QualityConfig())
    reps = curated.filter(pl.col("image_id").is_in(d.filter("is_representative")["image_id"].implode()))
    assert reps["keep"].all() and set(reps["content_kind"]) == {"cutout"}
