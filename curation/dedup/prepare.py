"""Per-shard input arrays and the representative ranking of the hash dedup stage.

`prepare_arrays` turns one shard's inventory rows (INVENTORY_SCHEMA) into the numpy arrays the
pipeline works on (`ShardArrays`): which rows are hashed (no error code, both hashes present),
which are *eligible* for near matching (hashed, enough contrast and grey-level entropy), the hashes,
the 64-bit sha256 prefix, the chromaticity and the representative rank. `Assignment` is the mutable
per-row result the pipeline steps fill in. `representative_rank` decides which copy of a cluster
within a shard is its representative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from curation.dedup.config import DedupConfig
from curation.dedup.verify import VerifyFeatures, chromaticity, detail_array
from curation.imaging.features import thumb_array

__all__ = ["Assignment", "ShardArrays", "prepare_arrays", "representative_rank"]


@dataclass(frozen=True)
class ShardArrays:
    """One shard's rows as arrays (length n, in the order of the input frame)."""

    n: int
    image_id: pl.Series  # String
    shard: pl.Series  # String (null when the input has no shard column)
    hashed: np.ndarray  # bool: no error code and both hashes present
    eligible: np.ndarray  # bool: hashed and informative enough to near-match
    phash: np.ndarray  # uint64 (0 where null)
    dhash: np.ndarray  # uint64 (0 where null)
    has_sha: np.ndarray  # bool: sha256 present
    sha64: np.ndarray  # uint64: first 64 bits of sha256 (0 where null)
    chroma: np.ndarray  # uint8 (n, 3), `chromaticity`
    rank: np.ndarray  # int64: representative priority, 0 = best (`representative_rank`)
    feats: VerifyFeatures  # chroma, thumbnails and aspect ratios for `verify_candidates`
    width: np.ndarray  # int64 (-1 where null)
    height: np.ndarray  # int64 (-1 where null)
    nbytes: np.ndarray  # int64 file size (-1 where null)
    thumb_rgb: pl.Series  # Binary (null where absent)
    phash256: pl.Series  # Binary (null where absent)


@dataclass
class Assignment:
    """Per-row decisions, filled in by the pipeline steps.

    cl_local: index (into the shard) of the row's local representative (itself when it leads or
    joined an earlier cluster); cl_earlier: row of the earlier index whose cluster the row joins, -1
    when none; dist: pHash distance to the representative; kind: dup_kind ("" until decided)."""

    cl_local: np.ndarray
    cl_earlier: np.ndarray
    dist: np.ndarray
    kind: np.ndarray

    @classmethod
    def new(cls, n: int) -> Assignment:
        return cls(
            cl_local=np.arange(n, dtype=np.int64),
            cl_earlier=np.full(n, -1, dtype=np.int64),
            dist=np.zeros(n, dtype=np.int16),
            kind=np.full(n, "", dtype=object),
        )


def _sha64(col: pl.Series) -> np.ndarray:
    """First 64 bits of the sha256 hex digest as uint64, 0 where null (callers mask nulls)."""
    s = col.cast(pl.String).str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return s.fill_null(0).to_numpy().astype(np.uint64)


def _arr(df: pl.DataFrame, name: str, dtype, fill) -> np.ndarray:
    if name not in df.columns:
        return np.full(df.height, fill, dtype=dtype)
    return df[name].fill_null(fill).to_numpy().astype(dtype)


def _binary(df: pl.DataFrame, name: str) -> pl.Series:
    """Column `name` as Binary, all null when the frame has no such column."""
    return df[name].cast(pl.Binary) if name in df.columns else pl.Series(name, [None] * df.height, dtype=pl.Binary)


def representative_rank(current: pl.DataFrame) -> np.ndarray:
    """Representative priority of every row within the shard (0 = the best copy to keep): largest
    width * height, then largest file size, then uri, then image_id (missing values rank last).
    The rank is a permutation of 0..n-1, so it breaks every tie deterministically."""
    n = current.height
    pri = pl.DataFrame({
        "px": (current["width"].cast(pl.Int64) * current["height"].cast(pl.Int64)).fill_null(-1),
        "by": current["bytes"].cast(pl.Int64).fill_null(-1),
        "uri": current["uri"].cast(pl.String).fill_null(""),
        "id": current["image_id"].cast(pl.String).fill_null(""),
    })
    order = pri.with_row_index("i").sort(["px", "by", "uri", "id"], descending=[True, True, False, False])["i"]
    rank = np.empty(n, dtype=np.int64)
    rank[order.to_numpy()] = np.arange(n)
    return rank


def prepare_arrays(current: pl.DataFrame, cfg: DedupConfig) -> ShardArrays:
    """The arrays of one shard's inventory rows (see `ShardArrays`); missing optional columns
    (shard, error_code, sha256, colour means, contrast, entropy, thumb_rgb, phash256) count as null."""
    n = current.height
    cols = current.columns
    err = current["error_code"].is_not_null().to_numpy() if "error_code" in cols else np.zeros(n, bool)
    hashed = ~err & ~current["phash"].is_null().to_numpy() & ~current["dhash"].is_null().to_numpy()
    contrast = _arr(current, "contrast", np.float64, 0.0)
    entropy = _arr(current, "entropy", np.float64, 0.0)
    chroma = chromaticity(*(current[c].cast(pl.Float64).to_numpy() if c in cols else np.full(n, np.nan)
                            for c in ("color_mean_r", "color_mean_g", "color_mean_b")))
    width, height = _arr(current, "width", np.int64, -1), _arr(current, "height", np.int64, -1)
    thumbs, details = _binary(current, "thumb_rgb"), _binary(current, "phash256")
    tarr, has_t = thumb_array(thumbs)
    darr, has_d = detail_array(details)
    return ShardArrays(
        n=n,
        image_id=current["image_id"].cast(pl.String),
        shard=current["shard"].cast(pl.String) if "shard" in cols else pl.Series([None] * n, dtype=pl.String),
        hashed=hashed,
        eligible=hashed & (contrast >= cfg.min_contrast) & (entropy >= cfg.min_entropy),
        phash=_arr(current, "phash", np.uint64, 0),
        dhash=_arr(current, "dhash", np.uint64, 0),
        has_sha=current["sha256"].is_not_null().to_numpy() if "sha256" in cols else np.zeros(n, bool),
        sha64=_sha64(current["sha256"]) if "sha256" in cols else np.zeros(n, np.uint64),
        chroma=chroma,
        rank=representative_rank(current),
        feats=VerifyFeatures.build(chroma, tarr, has_t, width, height, darr, has_d),
        width=width,
        height=height,
        nbytes=_arr(current, "bytes", np.int64, -1),
        thumb_rgb=thumbs,
        phash256=details,
    )
