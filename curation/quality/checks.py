"""What each image is (content kind) and the checks that fit it, as polars expressions.

Content kind (`kind_expr`), from the stage-1 content signals (curation.imaging.content):
  cutout   has transparency covering more than 2% of the canvas (opaque_fraction < CUTOUT_MAX_OPAQUE):
           sprites, icons and clip art on a transparent canvas;
  graphic  opaque, flat colour with hard edges: its most common colour covers >= GRAPHIC_FLAT_SHARE,
           edge_sharpness >= GRAPHIC_EDGE and at most GRAPHIC_MAX_COLORS quantised colours
           (clip art on white, line art, flags, screenshots of UI);
  photo    everything else, and every row whose content signals are null (inventories written
           before they existed).
Profile `photo` makes every image a photo; `graphics` makes every opaque image a graphic.

A check is one or more CONDITIONS (metric, op, threshold) that must all hold; it applies to the
kinds it names. Every condition of a fired check is recorded as {reason, metric, op, value,
threshold} in `reject_details`. `corrupt` records the error code as metric (value null) and
`duplicate` the pHash distance to its representative (threshold null). A condition whose metric
is null never fires.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import polars as pl

from curation.imaging.convert import CUTOUT_MAX_OPAQUE, EMPTY_OPAQUE  # shared with stage 1's cut-out compositing
from curation.quality.config import QualityConfig

GRAPHIC_FLAT_SHARE = 0.3
GRAPHIC_EDGE = 0.6
GRAPHIC_MAX_COLORS = 512
KINDS = ("photo", "graphic", "cutout")

REASONS = (
    "corrupt",
    "too_small",
    "extreme_aspect_ratio",
    "too_dark",
    "too_bright",
    "low_contrast",
    "low_entropy",
    "blurry",
    "compressed",
    "duplicate",
)

DETAIL_DTYPE = pl.Struct({"reason": pl.String, "metric": pl.String, "op": pl.String,
                          "value": pl.Float64, "threshold": pl.Float64})

ALL_KINDS = KINDS
PHOTO = ("photo",)
DRAWN = ("graphic", "cutout")
OPAQUE = ("photo", "graphic")
CUTOUT = ("cutout",)


@dataclass(frozen=True)
class Condition:
    metric: str  # a column name, or a derived metric of `_metric` (short_side, aspect_ratio,
    # edge_ratio_spread, jpeg_quality_or_lossless, clip_raggedness, unclipped_boundary)
    op: str  # "<", ">" or ">="
    threshold: float


@dataclass(frozen=True)
class Check:
    reason: str
    kinds: tuple[str, ...]
    conditions: tuple[Condition, ...]


def kind_expr(profile: str) -> pl.Expr:
    """The content kind of each row (see module docstring)."""
    cutout = pl.col("opaque_fraction") < CUTOUT_MAX_OPAQUE
    graphic = ((pl.col("top_color_share") >= GRAPHIC_FLAT_SHARE) & (pl.col("edge_sharpness") >= GRAPHIC_EDGE)
               & (pl.col("n_colors") <= GRAPHIC_MAX_COLORS))
    if profile == "photo":
        return pl.lit("photo")
    if profile == "graphics":
        return pl.when(cutout.fill_null(False)).then(pl.lit("cutout")).otherwise(pl.lit("graphic"))
    return (pl.when(cutout.fill_null(False)).then(pl.lit("cutout"))
            .when(graphic.fill_null(False)).then(pl.lit("graphic")).otherwise(pl.lit("photo")))


def checks(cfg: QualityConfig) -> tuple[Check, ...]:
    """The threshold checks of `cfg`, in REASONS order (corrupt and duplicate are not threshold checks)."""
    c = Condition
    # a photo's edges: not blurred, not drawn (drawn art steps in one pixel even in its blurriest
    # direction), and a photo's fine texture
    photo_edges = (c("edge_ratio_min", ">", cfg.bright_min_edge_ratio), c("edge_ratio_min", "<", cfg.bright_max_edge_ratio),
                   c("mid_ratio", ">", cfg.bright_min_mid_ratio))
    camera_made = (c("opaque_fraction", ">=", 1.0), c("jpeg_quality_or_lossless", ">=", cfg.min_jpeg_quality))
    exposed = (c("opaque_brightness", ">", cfg.bright_min_mean), *camera_made)
    return (
        Check("too_small", ALL_KINDS, (c("short_side", "<", cfg.min_side),)),
        Check("extreme_aspect_ratio", DRAWN, (c("aspect_ratio", ">", cfg.max_aspect_ratio),)),
        Check("extreme_aspect_ratio", PHOTO, (c("aspect_ratio", ">", cfg.photo_max_aspect_ratio),)),
        Check("too_dark", OPAQUE, (c("opaque_p95", "<", cfg.dark_p95), c("opaque_brightness", "<", cfg.dark_mean))),
        # blown highlights that roll off softly (a photo, not a white page), in a picture that is
        # neither blurred nor heavily compressed (either one rolls drawn edges off into white too),
        # not dark overall (a white glyph on black), and without transparency (over-exposure is a
        # camera's fault; art with a cut-out shape, like a playing card's rounded corners, is not)
        Check("too_bright", OPAQUE, (c("clip_share", ">", cfg.bright_clip_share),
                                     c("clip_rolloff", ">", cfg.bright_rolloff),
                                     c("flat_share", "<", cfg.bright_max_flat), *photo_edges, *exposed)),
        # a blown-out texture (grass, gravel, sand): the clipping breaks up into specks, and nothing
        # unclipped is flat colour
        Check("too_bright", OPAQUE, (c("clip_share", ">", cfg.bright_clip_share),
                                     c("clip_raggedness", ">", cfg.bright_raggedness),
                                     c("flat_share", "<", cfg.bright_texture_flat), *exposed)),
        # a large blown area beside a solid, textured subject (a sky behind a person): what is left
        # unclipped is neither flat colour nor thin lines on white (drawings meet their page that way)
        Check("too_bright", OPAQUE, (c("clip_share", ">", cfg.bright_area_share),
                                     c("flat_share", "<", cfg.bright_photo_flat),
                                     c("unclipped_boundary", "<", cfg.bright_max_boundary),
                                     *photo_edges, *exposed)),
        # the whole frame blown white
        Check("too_bright", OPAQUE, (c("clip_share", ">=", cfg.bright_blown_share), *camera_made)),
        # a dark scene exposed up (a night sky): its darkest tones lifted, its highlights clipped
        Check("too_bright", PHOTO, (c("opaque_brightness", "<", cfg.bright_min_mean),
                                    c("opaque_p05", ">", cfg.bright_dark_p05),
                                    c("clip_share", ">", cfg.bright_dark_clip_share), *camera_made)),
        Check("low_contrast", OPAQUE, (c("contrast", "<", cfg.min_contrast),)),
        # a cutout's content is its shape: a white icon on white is flat once composited, but not empty
        Check("low_contrast", CUTOUT, (c("contrast", "<", cfg.min_contrast), c("opaque_fraction", "<", EMPTY_OPAQUE))),
        Check("low_entropy", OPAQUE, (c("top_color_share", ">", cfg.near_empty_share),
                                      c("ink_fraction", "<", cfg.near_empty_ink))),
        Check("blurry", PHOTO, (c("edge_sharpness", "<", cfg.photo_min_edge),)),
        Check("blurry", PHOTO, (c("edge_sharpness", "<", cfg.photo_soft_edge),
                                c("native_sharpness", "<", cfg.photo_min_native_sharpness))),
        # every direction's strongest edges spread over 2+ px (Gaussian blur, upscaled thumbnail)
        Check("blurry", PHOTO, (c("edge_ratio_max", "<", cfg.photo_max_edge_ratio),
                                c("top_color_share", "<", cfg.near_empty_share))),
        # one direction smeared, another not (motion blur, camera shake)
        Check("blurry", PHOTO, (c("edge_ratio_min", "<", cfg.photo_motion_edge_ratio),
                                c("edge_ratio_spread", ">", cfg.photo_motion_spread),
                                c("top_color_share", "<", cfg.near_empty_share))),
        # a milder smear in a picture without fine texture (a focused photo keeps its grain) that is
        # not flat colour (tiles the auto profile classes as photos have no grain to lose either)
        Check("blurry", PHOTO, (c("edge_ratio_min", "<", cfg.photo_smear_edge_ratio),
                                c("edge_ratio_spread", ">", cfg.photo_smear_spread),
                                c("mid_ratio", "<", cfg.photo_smear_mid_ratio),
                                c("flat_share", "<", cfg.photo_smear_max_flat),
                                c("top_color_share", "<", cfg.near_empty_share))),
        Check("blurry", DRAWN, (c("edge_sharpness", "<", cfg.graphic_min_edge),
                                c("edge_ratio_max", "<", cfg.graphic_soft_edge_ratio))),
        Check("blurry", DRAWN, (c("edge_ratio_max", "<", cfg.graphic_max_edge_ratio),
                                c("edge_sharpness", "<", cfg.graphic_ratio_max_edge),
                                c("top_color_share", "<", cfg.near_empty_share))),
        Check("compressed", ALL_KINDS, (c("jpeg_quality", "<", cfg.min_jpeg_quality),)),
    )


def _metric(name: str) -> pl.Expr:
    short = pl.min_horizontal("width", "height").cast(pl.Float64)
    if name == "short_side":
        return short
    if name == "jpeg_quality_or_lossless":  # 100 for files without JPEG tables
        return pl.col("jpeg_quality").cast(pl.Float64).fill_null(100.0)
    if name == "edge_ratio_spread":
        return pl.col("edge_ratio_max").cast(pl.Float64) - pl.col("edge_ratio_min").cast(pl.Float64)
    if name in ("clip_raggedness", "unclipped_boundary"):  # null unless some but not all pixels clip
        share = pl.col("clip_share").cast(pl.Float64)
        per = (share * (1.0 - share)).sqrt() if name == "clip_raggedness" else 1.0 - share
        return pl.when((share > 0.0) & (share < 1.0)).then(pl.col("clip_boundary").cast(pl.Float64) / per)
    if name == "aspect_ratio":
        return pl.max_horizontal("width", "height").cast(pl.Float64) / pl.max_horizontal(short, pl.lit(1.0))
    return pl.col(name).cast(pl.Float64)


_OPS = {"<": operator.lt, ">": operator.gt, ">=": operator.ge}  # Condition.op -> comparison


def _holds(cond: Condition) -> pl.Expr:
    return _OPS[cond.op](_metric(cond.metric), cond.threshold)


def _detail(reason: str, metric: str, op: str | None, value: pl.Expr, threshold: float | None) -> pl.Expr:
    return pl.struct(pl.lit(reason).alias("reason"), pl.lit(metric).alias("metric"),
                     pl.lit(op, dtype=pl.String).alias("op"), value.cast(pl.Float64).alias("value"),
                     pl.lit(threshold, dtype=pl.Float64).alias("threshold"))


def fired_details(cfg: QualityConfig, ok: pl.Expr, kind: pl.Expr, duplicate: pl.Expr) -> list[pl.Expr]:
    """One List(DETAIL_DTYPE)-able expression per condition: its detail struct when its check fired,
    else null; in REASONS order."""
    out: list[pl.Expr] = [pl.when(~ok).then(_detail("corrupt", "error_code", None, pl.lit(None), None))]
    for chk in checks(cfg):
        fired = ok & kind.is_in(list(chk.kinds))
        for cond in chk.conditions:
            fired = fired & _holds(cond)
        fired = fired.fill_null(False)
        out += [pl.when(fired).then(_detail(chk.reason, cond.metric, cond.op, _metric(cond.metric), cond.threshold))
                for cond in chk.conditions]
    out.append(pl.when(duplicate).then(_detail("duplicate", "phash_distance", None, pl.col("distance"), None)))
    return out
