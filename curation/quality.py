"""The quality filter: which images make the curated set, and every reason for each one that doesn't.

An image is KEPT when it decoded, is the representative of its duplicate cluster, and passes every
check below. Every failed check is recorded (an image can fail several), so a rejected image's
reasons are complete, not just the first one found.

Metric definitions come from raw_inventory (computed on the analysis-size greyscale image after EXIF
orientation and compositing transparency on the documented background).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import polars as pl

from curation.schema import CURATED_SCHEMA, conform

REASONS = (
    "corrupt",
    "too_small",
    "extreme_aspect_ratio",
    "too_dark",
    "too_bright",
    "low_contrast",
    "low_entropy",
    "blurry",
    "duplicate",
)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality filter. The defaults and why:

    - min_side=32: below 32 px on the shorter side, an image carries too little for CLIP-style
      models (224 px input) even after upscaling; 32 also keeps classic 32x32 icon sets.
    - max_aspect_ratio=4.0: panoramas up to 4:1 survive a centre crop to a square with a quarter of
      their width; beyond that a square crop keeps less than 25% of the image (banners, strips,
      sprite sheets).
    - min_brightness=12 / max_brightness=245 (mean grey, 0..255): almost-black frames (lens caps,
      failed exposures) and blown-out or blank white pages; dark photos of night scenes average
      around 40-60 and bright snow scenes around 200, so both stay.
    - min_contrast=6 (std of grey levels): a flat colour or a near-uniform gradient; natural
      images sit well above 20.
    - min_entropy=1.5 bits (grey histogram): a handful of grey levels (blank pages, solid fills
      with a small mark); a two-tone logo has about 1 bit, typical photos 6-7.5.
    - min_sharpness=15 (variance of the Laplacian on the analysis-size image): heavily blurred or
      upscaled-from-thumbnail images fall below; the usual rule of thumb for full-size photos is
      ~100, but the analysis image is downscaled, which raises sharpness, and sprites and line art
      are sharp, so a low bar avoids rejecting small but crisp images.
    - reject_duplicates=True: only a cluster's representative enters the curated set.
    """

    min_side: int = 32
    max_aspect_ratio: float = 4.0
    min_brightness: float = 12.0
    max_brightness: float = 245.0
    min_contrast: float = 6.0
    min_entropy: float = 1.5
    min_sharpness: float = 15.0
    reject_duplicates: bool = True

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> QualityConfig:
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown quality setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**asdict(cls()), **overrides})


def evaluate(inventory: pl.DataFrame, clusters: pl.DataFrame, cfg: QualityConfig) -> pl.DataFrame:
    """One row per inventory row: keep flag and the list of reasons (CURATED_SCHEMA)."""
    df = inventory.join(
        clusters.select("image_id", "cluster_id", "is_representative"), on="image_id", how="left"
    )
    ok = pl.col("error_code").is_null()
    short = pl.min_horizontal("width", "height")
    long = pl.max_horizontal("width", "height")
    checks = {
        "corrupt": ~ok,
        "too_small": ok & (short < cfg.min_side),
        "extreme_aspect_ratio": ok & (long.cast(pl.Float64) / pl.max_horizontal(short, 1) > cfg.max_aspect_ratio),
        "too_dark": ok & (pl.col("brightness") < cfg.min_brightness),
        "too_bright": ok & (pl.col("brightness") > cfg.max_brightness),
        "low_contrast": ok & (pl.col("contrast") < cfg.min_contrast),
        "low_entropy": ok & (pl.col("entropy") < cfg.min_entropy),
        "blurry": ok & (pl.col("sharpness") < cfg.min_sharpness),
        "duplicate": pl.lit(cfg.reject_duplicates) & ok & ~pl.col("is_representative").fill_null(True),
    }
    reason_exprs = [pl.when(expr.fill_null(False)).then(pl.lit(name)).otherwise(None) for name, expr in checks.items()]
    df = df.with_columns(pl.concat_list(reason_exprs).list.drop_nulls().alias("reasons"))
    df = df.with_columns((pl.col("reasons").list.len() == 0).alias("keep"))
    return conform(df, CURATED_SCHEMA)


def reject_counts(curated: pl.DataFrame) -> dict[str, int]:
    """Rejected images per reason (an image with two reasons counts under both)."""
    exploded = curated.filter(~pl.col("keep")).select(pl.col("reasons").explode()).drop_nulls()
    counts = exploded.group_by("reasons").len()
    out = {r: 0 for r in REASONS}
    for reason, n in counts.iter_rows():
        out[reason] = int(n)
    return out
