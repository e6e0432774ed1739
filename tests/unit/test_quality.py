from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFilter

from curation.imaging import analyse_image
from curation.imaging.convert import composite
from curation.quality import QualityConfig, evaluate, reject_counts
from curation.schema import CURATED_SCHEMA, DEDUP_SCHEMA, INVENTORY_SCHEMA, conform
from tests.conftest import arcade_sprites, mnist_digits, skimage_photo

# a clean, sharp photo's measurements (composite metrics and content signals)
GOOD = dict(width=640, height=480, brightness=120.0, contrast=50.0, entropy=7.0, sharpness=300.0, error_code=None,
            opaque_fraction=1.0, opaque_brightness=120.0, opaque_p05=20.0, opaque_p95=220.0, n_colors=3000,
            top_color_share=0.05, ink_fraction=0.6, edge_sharpness=0.4, native_sharpness=300.0, jpeg_quality=None)


def frames(rows: list[dict]):
    inv = conform(pl.DataFrame([{"image_id": f"i{i}", "shard": "s-000001", **GOOD, **r} for i, r in enumerate(rows)]), INVENTORY_SCHEMA)
    reps = [r.get("_rep", True) for r in rows]
    clusters = conform(
        pl.DataFrame({"image_id": inv["image_id"], "cluster_id": [f"i{i}" if rep else "i0" for i, rep in enumerate(reps)],
                      "is_representative": reps, "distance": [None if rep else 3 for rep in reps]}),
        DEDUP_SCHEMA,
    )
    return inv, clusters


def details_of(out: pl.DataFrame, image_id: str) -> list[dict]:
    return out.filter(pl.col("image_id") == image_id)["reject_details"].to_list()[0]


def test_every_reason_is_recorded_and_complete():
    inv, cl = frames([
        {},  # kept
        {"error_code": "truncated", "width": None, "height": None, "brightness": None},
        {"width": 6, "height": 400},  # too small AND extreme aspect ratio
        {"opaque_brightness": 10.0, "opaque_p95": 30.0, "contrast": 1.5},  # dark and low contrast
        {"clip_share": 0.4, "clip_rolloff": 245.0, "edge_ratio_min": 0.7, "edge_ratio_max": 0.8, "mid_ratio": 0.8,
         "flat_share": 0.1},  # blown out
        {"edge_sharpness": 0.03},  # blurry
        {"top_color_share": 0.995, "ink_fraction": 0.002},  # an empty canvas with a speck
        {"jpeg_quality": 8},
        {"_rep": False},  # duplicate of i0
    ])
    out = evaluate(inv, cl, QualityConfig())
    assert out.columns == list(CURATED_SCHEMA)
    reasons = dict(zip(out["image_id"], out["reasons"].to_list()))
    assert reasons["i0"] == [] and out["keep"].to_list() == [True] + [False] * 8
    assert reasons["i1"] == ["corrupt"]
    assert reasons["i2"] == ["too_small", "extreme_aspect_ratio"]
    assert reasons["i3"] == ["too_dark", "low_contrast"]
    assert reasons["i4"] == ["too_bright"]
    assert reasons["i5"] == ["blurry"]
    assert reasons["i6"] == ["low_entropy"]
    assert reasons["i7"] == ["compressed"]
    assert reasons["i8"] == ["duplicate"]
    counts = reject_counts(out)
    assert counts["too_small"] == 1 and counts["duplicate"] == 1 and counts["corrupt"] == 1 and counts["compressed"] == 1
    # every reject carries the measured value and the threshold it failed
    cfg = QualityConfig()
    assert details_of(out, "i2") == [
        {"reason": "too_small", "metric": "short_side", "op": "<", "value": 6.0, "threshold": float(cfg.min_side)},
        {"reason": "extreme_aspect_ratio", "metric": "aspect_ratio", "op": ">", "value": pytest.approx(400 / 6),
         "threshold": cfg.photo_max_aspect_ratio}]
    dark = {d["metric"]: (d["value"], d["threshold"]) for d in details_of(out, "i3") if d["reason"] == "too_dark"}
    assert dark == {"opaque_p95": (30.0, cfg.dark_p95), "opaque_brightness": (10.0, cfg.dark_mean)}
    bright = {(d["metric"], d["op"]): (d["value"], d["threshold"]) for d in details_of(out, "i4")}
    assert bright == {("clip_share", ">"): (pytest.approx(0.4), cfg.bright_clip_share),
                      ("clip_rolloff", ">"): (245.0, cfg.bright_rolloff),
                      ("flat_share", "<"): (pytest.approx(0.1), cfg.bright_max_flat),
                      ("edge_ratio_min", ">"): (pytest.approx(0.7), cfg.bright_min_edge_ratio),
                      ("edge_ratio_min", "<"): (pytest.approx(0.7), cfg.bright_max_edge_ratio),
                      ("mid_ratio", ">"): (pytest.approx(0.8), cfg.bright_min_mid_ratio),
                      ("opaque_brightness", ">"): (120.0, cfg.bright_min_mean),
                      ("opaque_fraction", ">="): (1.0, 1.0),  # no transparency
                      ("jpeg_quality_or_lossless", ">="): (100.0, cfg.min_jpeg_quality)}  # a PNG: no JPEG tables
    assert details_of(out, "i8")[0]["value"] == 3.0  # pHash distance to its representative
    assert details_of(out, "i0") == []


def test_thresholds_and_profile_are_configurable_and_bad_settings_fail():
    inv, cl = frames([{"width": 20, "height": 20}, {"_rep": False}])
    cfg = QualityConfig.from_overrides({"min_side": 32, "reject_duplicates": False})
    assert evaluate(inv, cl, cfg)["reasons"].to_list() == [["too_small"], []]
    with pytest.raises(ValueError, match="min_sidee"):
        QualityConfig.from_overrides({"min_sidee": 3})
    with pytest.raises(ValueError, match="profile"):
        QualityConfig.from_overrides({"profile": "icons"})
    # a 5:1 crisp flat-colour banner: a graphic under auto/graphics, judged as a photo under `photo`
    banner = {"width": 1000, "height": 200, "top_color_share": 0.6, "n_colors": 40, "edge_sharpness": 0.9}
    inv, cl = frames([banner])
    kinds = {p: evaluate(inv, cl, QualityConfig(profile=p)).row(0, named=True) for p in ("auto", "graphics", "photo")}
    assert kinds["auto"]["content_kind"] == "graphic" and kinds["auto"]["keep"]
    assert kinds["graphics"]["keep"]
    assert kinds["photo"]["content_kind"] == "photo" and kinds["photo"]["reasons"] == ["extreme_aspect_ratio"]


# ---------------------------------------------------------------------------- real images, end to end


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _curate(named: dict[str, bytes], cfg: QualityConfig | None = None) -> dict[str, dict]:
    rows = [{"image_id": name, "shard": "s", **analyse_image(data)} for name, data in named.items()]
    inv = conform(pl.DataFrame(rows, infer_schema_length=None), INVENTORY_SCHEMA)
    cl = inv.select("image_id", pl.col("image_id").alias("cluster_id"), pl.lit(True).alias("is_representative"))
    out = evaluate(inv, cl, cfg or QualityConfig())
    return {r["image_id"]: r for r in out.iter_rows(named=True)}


def _expose(img: Image.Image, stops: float) -> Image.Image:
    lin = (np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0) ** 2.2 * 2.0 ** stops
    return Image.fromarray((np.clip(lin, 0, 1) ** (1 / 2.2) * 255).round().astype(np.uint8))


def test_real_graphics_icons_and_sprites_are_kept_under_auto():
    sprites = arcade_sprites()
    alpha = [p for p in sprites if Image.open(p).mode in ("RGBA", "LA", "P")][:12]
    assert len(alpha) >= 8
    named = {f"sprite{i}": p.read_bytes() for i, p in enumerate(alpha)}
    # the same sprites as small icons (16 and 24 px, alpha kept): crisp at native scale
    for i, p in enumerate(alpha[:6]):
        named[f"icon{i}"] = _png(Image.open(p).convert("RGBA").resize((16 + 8 * (i % 2),) * 2, Image.LANCZOS))
    # white-on-transparency icon: bright opaque pixels, but an icon, not a blown-out page
    a = np.asarray(Image.open(alpha[0]).convert("RGBA")).copy()
    a[..., :3] = 255
    named["white_icon"] = _png(Image.fromarray(a))
    # flat-colour art: two-tone silhouette of an MNIST digit, opaque, scaled up with hard edges
    X, _ = mnist_digits(6)
    for i, d in enumerate(X):
        two_tone = np.where(np.asarray(d).reshape(28, 28) > 0.3 * np.max(d), 0, 255).astype(np.uint8)
        named[f"digit{i}"] = _png(Image.fromarray(two_tone).resize((112, 112), Image.NEAREST))
    out = _curate(named)
    rejected = {k: (v["reasons"], v["reject_details"]) for k, v in out.items() if not v["keep"]}
    assert rejected == {}
    assert out["white_icon"]["content_kind"] == "cutout"
    assert {out[f"digit{i}"]["content_kind"] for i in range(6)} == {"graphic"}


def test_real_photos_are_kept_and_degradations_rejected_with_value_and_threshold():
    cfg = QualityConfig()
    named = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo = skimage_photo(name)
        named[name] = _jpeg(photo, 92)
        named[f"{name}_blur"] = _png(photo.filter(ImageFilter.GaussianBlur(0.04 * min(photo.size))))
        named[f"{name}_under"] = _jpeg(_expose(photo, -6.0), 90)
        named[f"{name}_q6"] = _jpeg(photo, 6)
    # blown out: +4 / +5 stops clip large areas that roll off softly (QualityConfig.bright_rolloff)
    named["chelsea_over"] = _jpeg(_expose(skimage_photo("chelsea"), 4.0), 90)
    named["rocket_over"] = _jpeg(_expose(skimage_photo("rocket"), 5.0), 90)
    named["blank"] = _png(Image.new("RGB", (400, 300), (238, 236, 230)))
    out = _curate(named, cfg)
    expected = {f"{n}_{s}": r for n in ("astronaut", "chelsea", "coffee", "rocket")
                for s, r in (("blur", "blurry"), ("under", "too_dark"), ("q6", "compressed"))}
    expected.update(chelsea_over="too_bright", rocket_over="too_bright")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        assert out[name]["keep"], (name, out[name]["reasons"], out[name]["reject_details"])
    for name, reason in expected.items():
        row = out[name]
        assert reason in row["reasons"], (name, row["reasons"])
        failed = [d for d in row["reject_details"] if d["reason"] == reason]
        assert failed and all(d["value"] is not None and d["threshold"] is not None for d in failed)
        for d in failed:  # the recorded value really fails the recorded threshold
            assert {"<": d["value"] < d["threshold"], ">": d["value"] > d["threshold"],
                    ">=": d["value"] >= d["threshold"]}[d["op"]], d
    assert out["blank"]["reasons"] == ["low_contrast", "low_entropy"]  # a blank page: nothing clipped, no edges
    flat = [d for d in out["blank"]["reject_details"] if d["reason"] == "low_contrast"]
    assert flat == [{"reason": "low_contrast", "metric": "contrast", "op": "<", "value": 0.0, "threshold": cfg.min_contrast}]


def test_report_rejects_show_the_value_and_the_threshold():
    from curation.report.sections import failed_checks, measured

    inv, cl = frames([{}, {"edge_sharpness": 0.03}, {"opaque_brightness": 10.0, "opaque_p95": 30.0}])
    out = evaluate(inv, cl, QualityConfig())
    assert failed_checks(out) == {"blurry": "edge_sharpness < 0.08", "too_dark": "opaque_brightness < 30; opaque_p95 < 50"}
    assert measured(details_of(out, "i1"), "blurry") == "edge_sharpness 0.03 < 0.08"
    assert measured(details_of(out, "i2"), "too_dark") == "opaque_p95 30 < 50, opaque_brightness 10 < 30"
    assert failed_checks(out.drop("reject_details")) == {}  # curated sets written before reject_details


def test_content_signals_measure_opaque_pixels_at_native_scale():
    from curation.imaging.content import content_signals, jpeg_quality

    sprite = next(p for p in arcade_sprites() if Image.open(p).mode == "RGBA")
    rgba = Image.open(sprite).convert("RGBA")
    a = np.asarray(rgba).copy()
    a[..., :3] = 255  # the same silhouette, drawn white
    white = analyse_image(_png(Image.fromarray(a)))
    assert 0.0 < white["opaque_fraction"] < 0.98 and white["opaque_brightness"] == pytest.approx(255.0)
    # on white it would be one flat colour (brightness 255, what made it "too bright" before); a cut-out
    # the background swallows is measured and hashed on black (convert.composite_visible)
    assert white["brightness"] < 250 and white["contrast"] >= 5.0
    icon = rgba.resize((16, 16), Image.LANCZOS)
    sig = content_signals(icon, icon, composite(icon)[0], 128)
    rec = analyse_image(_png(icon))
    # crisp at its own 16 px; the 128 px analysis image (upscaled 8x) calls it soft
    assert sig["edge_sharpness"] > 0.5 and rec["edge_sharpness"] == pytest.approx(sig["edge_sharpness"])
    assert rec["native_sharpness"] > 10 * rec["sharpness"]
    photo = skimage_photo("astronaut")
    q = [jpeg_quality(Image.open(io.BytesIO(_jpeg(photo, k)))) for k in (6, 50, 75, 95)]
    assert q[0] < 30 <= q[1] and q[1:] == [50, 75, 95]
    assert jpeg_quality(Image.open(io.BytesIO(_png(photo)))) is None


def test_inventories_without_content_signals_still_evaluate():
    from curation.imaging.content import CONTENT_COLUMNS

    inv, cl = frames([{}, {"width": 4, "height": 4}, {"contrast": 1.0}])
    out = evaluate(inv.drop(*CONTENT_COLUMNS), cl.drop("distance"), QualityConfig())
    assert out["reasons"].to_list() == [[], ["too_small"], ["low_contrast"]]
    assert out["content_kind"].to_list() == ["photo"] * 3


def _motion(img: Image.Image, length: int, dy: int, dx: int) -> Image.Image:
    """A linear motion blur of `length` px along (dy, dx): the mean of shifted copies, wrapped
    borders cropped."""
    a = np.asarray(img, dtype=np.float64)
    acc = sum(np.roll(a, (k * dy, k * dx), axis=(0, 1)) for k in range(length)) / length
    return Image.fromarray(acc[length:-length, length:-length].round().astype(np.uint8))


def test_edge_ratios_find_gaussian_blur_upscaled_thumbnails_and_motion_blur():
    cfg = QualityConfig()
    named: dict[str, bytes] = {}
    for name in ("astronaut", "camera", "coffee", "rocket"):
        photo = skimage_photo(name)
        side = min(photo.size)
        named[name] = _png(photo)
        named[f"{name}_gauss"] = _png(photo.filter(ImageFilter.GaussianBlur(0.02 * side)))
        thumb = photo.resize((48, round(48 * photo.size[1] / photo.size[0])), Image.LANCZOS)
        named[f"{name}_upscaled"] = _png(thumb.resize(photo.size, Image.BICUBIC))
        for tag, (dy, dx) in {"h": (0, 1), "v": (1, 0), "d": (1, 1)}.items():
            named[f"{name}_motion_{tag}"] = _png(_motion(photo, int(0.05 * side), dy, dx))
    rows = {k: analyse_image(v) for k, v in named.items()}
    out = _curate(named, cfg)
    for name in ("astronaut", "camera", "coffee", "rocket"):
        sharp = rows[name]
        # a focused photo: one-pixel edges in every direction
        assert sharp["edge_ratio_min"] > cfg.photo_motion_edge_ratio + 0.05 and sharp["edge_ratio_max"] > 0.65
        assert out[name]["keep"], (name, out[name]["reject_details"])
        for kind in ("gauss", "upscaled"):  # isotropic: even the sharpest direction is 2+ px wide
            r = rows[f"{name}_{kind}"]
            assert r["edge_ratio_max"] < cfg.photo_max_edge_ratio, (name, kind, r["edge_ratio_max"])
            assert any(d["metric"] == "edge_ratio_max" and d["value"] < d["threshold"] == cfg.photo_max_edge_ratio
                       for d in out[f"{name}_{kind}"]["reject_details"])
        for tag in ("h", "v", "d"):  # anisotropic: smeared along the motion, crisper across it
            key = f"{name}_motion_{tag}"
            r = rows[key]
            # the edge-crispness rules alone miss it: the edges across the motion stay crisp
            assert r["edge_sharpness"] > cfg.photo_min_edge and r["native_sharpness"] > cfg.photo_min_native_sharpness
            assert r["edge_ratio_min"] < cfg.photo_motion_edge_ratio, (key, r["edge_ratio_min"])
            details = {d["metric"]: d for d in out[key]["reject_details"] if d["reason"] == "blurry"}
            assert {"edge_ratio_min", "edge_ratio_max"} & set(details), (key, details)
            if tag in ("h", "v"):  # along an axis: the motion rule itself, with its spread
                assert r["edge_ratio_max"] - r["edge_ratio_min"] > cfg.photo_motion_spread, (key, r)
                fired = [(d["metric"], d["threshold"]) for d in out[key]["reject_details"] if d["reason"] == "blurry"]
                assert r["edge_ratio_min"] < cfg.photo_motion_edge_ratio  # (the smear rule may fire too)
                assert {("edge_ratio_min", cfg.photo_motion_edge_ratio), ("edge_ratio_spread", cfg.photo_motion_spread)} <= set(fired)


def test_a_milder_smear_is_blurry_by_the_smear_rule():
    # a 1.5% smear leaves the blurriest direction just above photo_motion_edge_ratio, but evens
    # out the photo's grain (mid_ratio), which the focused photo keeps
    cfg = QualityConfig()
    named: dict[str, bytes] = {}
    for name, dirs in (("astronaut", {"h": (0, 1), "v": (1, 0)}), ("chelsea", {"v": (1, 0)})):
        photo = skimage_photo(name)
        named[name] = _png(photo)
        for tag, (dy, dx) in dirs.items():
            named[f"{name}_smear_{tag}"] = _png(_motion(photo, int(0.015 * min(photo.size)), dy, dx))
    rows = {k: analyse_image(v) for k, v in named.items()}
    out = _curate(named, cfg)
    for key, r in rows.items():
        if "_smear_" not in key:
            assert out[key]["keep"] and r["mid_ratio"] > cfg.photo_smear_mid_ratio, (key, r)
            continue
        assert r["edge_ratio_min"] >= cfg.photo_motion_edge_ratio, (key, r)  # the first motion rule misses it
        details = {d["metric"]: d for d in out[key]["reject_details"] if d["reason"] == "blurry"}
        assert details["mid_ratio"]["value"] < details["mid_ratio"]["threshold"] == cfg.photo_smear_mid_ratio, (key, r)
        assert details["edge_ratio_min"]["threshold"] == cfg.photo_smear_edge_ratio


def test_edge_ratios_of_drawn_images_and_degenerate_frames():
    from curation.imaging.content import content_signals

    sprite = next(p for p in arcade_sprites() if Image.open(p).mode == "RGBA" and min(Image.open(p).size) >= 64)
    rgba = Image.open(sprite).convert("RGBA")
    crisp = analyse_image(_png(rgba))
    up = rgba.resize((rgba.width // 4, rgba.height // 4), Image.LANCZOS).resize(rgba.size, Image.BICUBIC)
    soft = analyse_image(_png(up))
    cfg = QualityConfig()
    assert crisp["edge_ratio_max"] > cfg.graphic_max_edge_ratio > soft["edge_ratio_max"], (crisp, soft)
    out = _curate({"crisp": _png(rgba), "soft": _png(up)}, cfg)
    assert out["crisp"]["keep"] and "blurry" in out["soft"]["reasons"]
    for img in (Image.new("L", (2, 40), 128), Image.new("RGB", (64, 64), (200, 10, 10))):  # too thin; flat
        rgb = img.convert("RGB")
        sig = content_signals(img, img, rgb, 128)
        assert sig["edge_ratio_min"] is None and sig["edge_ratio_max"] is None


def test_clipping_signals_tell_a_blown_out_photo_from_clip_art_on_white():
    cfg = QualityConfig()
    named = {}
    stops = {"chelsea": 4.0, "coffee": 3.0, "rocket": 5.0}
    for name, st in stops.items():
        photo = skimage_photo(name)
        named[name] = _jpeg(photo, 92)
        named[f"{name}_over"] = _jpeg(_expose(photo, st), 90)
    # drawn sprites flattened on a white page (opaque): large clipped areas met at hard outlines
    pages = []
    for p in [p for p in arcade_sprites() if Image.open(p).mode == "RGBA"][::7]:  # spread over the kinds of sprite
        page = Image.new("RGBA", Image.open(p).size, (255, 255, 255, 255))
        page.alpha_composite(Image.open(p).convert("RGBA"))
        if np.asarray(page.convert("L")).min() < 128:  # skip white-on-transparency art (a blank page here)
            pages.append(page.convert("RGB"))
    assert len(pages) >= 8
    for i, page in enumerate(pages[:16]):
        named[f"on_white{i}"] = _png(page)
    rows = {k: analyse_image(v) for k, v in named.items()}
    out = _curate(named, cfg)
    for name in stops:
        assert rows[name]["clip_share"] < cfg.bright_clip_share and out[name]["keep"], (name, rows[name]["clip_share"])
        r = rows[f"{name}_over"]
        assert r["clip_share"] > cfg.bright_clip_share and r["clip_rolloff"] > cfg.bright_rolloff, (name, r)
        assert r["mid_ratio"] > cfg.bright_min_mid_ratio, (name, r)  # a photo's fine texture survives the exposure
        assert "too_bright" in out[f"{name}_over"]["reasons"]
    on_white = [k for k in named if k.startswith("on_white")]
    clipped = [k for k in on_white if rows[k]["clip_share"] > cfg.bright_clip_share]
    assert len(clipped) >= 12  # the white page is clipped like a blown-out photo ...
    soft = [k for k in clipped if rows[k]["clip_rolloff"] > cfg.bright_rolloff]
    # ... but met at outlines and colours; one playing card's grey-shaded face rolls off softly, and
    # its flat colour (every step an isolated edge: mid_ratio ~0.5-0.6) keeps it from too_bright
    assert len(soft) <= 1, [(k, rows[k]["clip_rolloff"]) for k in soft]
    assert all(rows[k]["mid_ratio"] < cfg.bright_min_mid_ratio for k in soft), [rows[k] for k in soft]
    assert [k for k in on_white if "too_bright" in out[k]["reasons"]] == []
    flat = analyse_image(_png(Image.new("RGB", (64, 48), (255, 255, 255))))
    assert flat["clip_share"] == 1.0 and flat["clip_rolloff"] is None  # nothing unclipped to roll off into


def test_blown_textures_skies_frames_and_night_skies_are_too_bright_by_their_own_rule():
    # over-exposures the soft roll-off rule misses: a texture whose clipping breaks up into specks
    # (grass), a sky blown out behind a person (the cameraman: a hard roll-off into his coat), a
    # white frame, and a night sky exposed up (Hubble deep field: dark, but its black lifted)
    cfg = QualityConfig()
    over = {"grass": 3.0, "camera": 3.0, "hubble_deep_field": 4.0}
    named = {}
    for name, st in over.items():
        photo = skimage_photo(name)
        named[name] = _jpeg(photo, 92)
        named[f"{name}_over"] = _jpeg(_expose(photo, st), 90)
    named["white"] = _jpeg(Image.new("RGB", (320, 240), (255, 255, 255)), 90)
    rows = {k: analyse_image(v) for k, v in named.items()}
    out = _curate(named, cfg)
    for name in over:
        assert out[name]["keep"], (name, out[name]["reject_details"])
        assert "too_bright" in out[f"{name}_over"]["reasons"], (name, rows[f"{name}_over"])

    def fired(key: str) -> set[str]:
        return {d["metric"] for d in out[key]["reject_details"] if d["reason"] == "too_bright"}

    grass = rows["grass_over"]
    assert grass["clip_rolloff"] <= cfg.bright_rolloff  # the soft roll-off rule alone missed it
    assert grass["flat_share"] < cfg.bright_texture_flat and {"clip_raggedness", "flat_share"} <= fired("grass_over")
    camera = rows["camera_over"]
    assert camera["clip_rolloff"] <= cfg.bright_rolloff and camera["clip_share"] > cfg.bright_area_share
    assert camera["clip_boundary"] / (1 - camera["clip_share"]) < cfg.bright_max_boundary
    assert "unclipped_boundary" in fired("camera_over")
    assert rows["white"]["clip_share"] == 1.0 and fired("white") >= {"clip_share"}
    assert rows["white"]["clip_rolloff"] is None  # nothing to roll off into: only the blown-frame rule sees it
    night = rows["hubble_deep_field_over"]
    assert night["opaque_brightness"] < cfg.bright_min_mean and night["opaque_p05"] > cfg.bright_dark_p05
    assert rows["hubble_deep_field"]["opaque_p05"] < cfg.bright_dark_p05  # its clean black


def test_crisp_flat_colour_tiles_are_kept_and_their_upscaled_thumbnails_are_blurry():
    # arcade's 128 px tiles and d-pad prompts: flat colour whose strongest steps are small anti-aliased
    # steps between similar colours (edge_sharpness < graphic_min_edge) or a wide anti-aliased outline
    # (edge ratio < graphic_max_edge_ratio): crisp art the blur rules once rejected
    cfg = QualityConfig()
    wanted = {"dirtHalf.png", "stoneHalf_mid.png", "dpad_down.png"}
    files = {p.name: p for p in arcade_sprites() if p.name in wanted}
    assert set(files) == wanted, sorted(files)
    named = {}
    for name, path in files.items():
        rgba = Image.open(path).convert("RGBA")
        named[name] = _png(rgba)
        thumb = rgba.resize((32, 32), Image.LANCZOS)  # a 32 px thumbnail blown up 4x with bicubic
        named[f"{name}_up"] = _png(thumb.resize((128, 128), Image.BICUBIC))
    rows = {k: analyse_image(v) for k, v in named.items()}
    assert rows["dirtHalf.png"]["edge_sharpness"] < cfg.graphic_min_edge  # the old rule alone rejected it
    assert rows["dirtHalf.png"]["edge_ratio_max"] > cfg.graphic_soft_edge_ratio
    assert rows["dpad_down.png"]["edge_ratio_max"] < cfg.graphic_max_edge_ratio  # the ratio rule alone rejected it
    assert rows["dpad_down.png"]["edge_sharpness"] > cfg.graphic_ratio_max_edge
    out = _curate(named, cfg)
    for name in wanted:
        assert out[name]["keep"], (name, out[name]["reject_details"], rows[name])
        assert "blurry" in out[f"{name}_up"]["reasons"], (name, rows[f"{name}_up"])


def test_white_glyphs_on_black_and_cut_out_white_cards_are_not_too_bright():
    # MNIST digits (white strokes on black, enlarged 4x like the demo's), re-encoded as JPEG and
    # downscaled: their strokes clip and roll off softly, but the picture is dark (bright_min_mean)
    cfg = QualityConfig()
    X, _ = mnist_digits(40)
    named = {}
    for i in range(0, 40, 4):
        big = Image.fromarray(X[i].reshape(28, 28).astype(np.uint8)).resize((112, 112), Image.Resampling.NEAREST)
        named[f"digit{i}_jpeg"] = _jpeg(big.convert("RGB"), 85)
        named[f"digit{i}_down"] = _png(big.resize((56, 56), Image.Resampling.LANCZOS))
    # arcade's playing cards: white art with rounded (transparent) corners and grey-shaded faces
    cards = [p for p in arcade_sprites() if p.name.startswith("card") and Image.open(p).mode == "RGBA"][:8]
    assert len(cards) >= 4
    for p in cards:
        named[p.name] = _png(Image.open(p).convert("RGBA"))
    rows = {k: analyse_image(v) for k, v in named.items()}
    out = _curate(named, cfg)
    clipped_digits = [k for k in named if k.startswith("digit") and rows[k]["clip_share"] > cfg.bright_clip_share]
    assert clipped_digits  # the strokes do clip: only the mean keeps the rule from firing
    for k in named:
        assert "too_bright" not in out[k]["reasons"], (k, rows[k], out[k]["reject_details"])
    for p in cards:
        assert rows[p.name]["opaque_fraction"] < 1.0
    # the same card flattened on white (opaque, no cut-out shape left) is judged like a photo again
    flat = Image.new("RGBA", Image.open(cards[0]).size, (255, 255, 255, 255))
    flat.alpha_composite(Image.open(cards[0]).convert("RGBA"))
    assert analyse_image(_png(flat.convert("RGB")))["opaque_fraction"] == 1.0


def test_reject_details_equal_the_concat_list_reference_on_real_images():
    """`evaluate` collects each row's fired conditions through a long frame; the lists are the ones
    the direct (27x slower) ``concat_list(...).list.drop_nulls()`` gives, in order, on real photos
    and their degradations, sprites, duplicates and a corrupt row, and on an empty shard."""
    from curation.quality.checks import DETAIL_DTYPE, fired_details, kind_expr
    from curation.quality.evaluate import _collect_details

    named = {}
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        photo = skimage_photo(name)
        named[name] = _jpeg(photo, 92)
        named[f"{name}_blur"] = _jpeg(photo.filter(ImageFilter.GaussianBlur(4)), 92)
        named[f"{name}_dark"] = _png(_expose(photo, -4))
        named[f"{name}_q5"] = _jpeg(photo, 5)
        named[f"{name}_thumb"] = _png(photo.resize((6, 40)))
    for i, p in enumerate(arcade_sprites()[:10]):
        named[f"sprite{i}"] = p.read_bytes()
    named["corrupt"] = b"\x89PNG\r\n\x1a\n not really"
    rows = [{"image_id": name, "shard": "s", **analyse_image(data)} for name, data in named.items()]
    inv = conform(pl.DataFrame(rows, infer_schema_length=None), INVENTORY_SCHEMA)
    ids = inv["image_id"].to_list()
    cl = inv.select("image_id", pl.Series("cluster_id", [ids[0] if i % 3 == 1 else x for i, x in enumerate(ids)]),
                    pl.Series("is_representative", [i % 3 != 1 for i in range(len(ids))]),
                    pl.Series("distance", [4 if i % 3 == 1 else 0 for i in range(len(ids))], dtype=pl.Int16))
    cfg = QualityConfig()
    ok = pl.col("error_code").is_null()
    details = fired_details(cfg, ok, pl.col("content_kind"), (ok & ~pl.col("is_representative").fill_null(True)).fill_null(False))
    got = {}
    for label, frame in (("all", inv), ("empty", inv.head(0))):
        df = frame.join(cl, on="image_id", how="left")
        df = df.with_columns(pl.when(ok).then(kind_expr(cfg.profile)).otherwise(None).alias("content_kind"))
        ref = df.select(pl.concat_list([d.cast(DETAIL_DTYPE) for d in details]).list.drop_nulls()).to_series()
        got[label] = _collect_details(df, details)
        assert got[label].dtype == pl.List(DETAIL_DTYPE) and got[label].len() == frame.height
        assert got[label].to_list() == ref.to_list()
    n = got["all"].list.len()
    assert n.max() >= 3 and (n == 0).any() and (n == 1).any()  # several conditions, one, and kept rows
