"""Typed per-stage settings: one `dg.Config` class per library config dataclass.

Each class mirrors the fields and defaults of its library dataclass (`curation.inventory.
InventoryConfig`, `curation.dedup.DedupConfig`, `curation.quality.QualityConfig`, `curation.export.
ExportConfig`, `curation.similarity.IndexConfig`, `curation.heads.HeadSpec`), so the launchpad
shows every knob with its default and Dagster checks types when a run is launched. Values are
checked when the config is built (at launch from the launchpad's run config, at definition time in
Python): a bad value raises `resources.environment.SettingError`, one line ``StageSettings.
<stage>.<field>=VALUE: what is allowed``, never retried; an unknown key names the known ones.
`to_library()` returns the library dataclass.

Where the rules come from: a library config with a range table (`curation/quality/config.py`'s
`_RANGES`, `{field: (lo, hi)}`) gives its fields' rules through `range_rules`, so the bounds here
are the library's own and cannot drift; only the wording of the thing ("a share") is written here.
Rules of libraries that check in code (`__post_init__`) are written out and compared with the
library on probe values by tests/unit/test_stage_rules.py; `resource_only` names the rules the
library does not have (the resource is stricter there on purpose). Whatever a rule lets through,
the library's own check still runs (`to_library()`), its message as one line naming the section.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, model_validator

from curation.dedup import DedupConfig
from curation.export.tars import ExportConfig
from curation.heads import ACTIVATIONS, HeadSpec
from curation.inventory import InventoryConfig
from curation.quality import QualityConfig
from curation.quality.config import _RANGES as QUALITY_RANGES  # the library's table: the rules derive from it
from curation.quality.config import PROFILES as QUALITY_PROFILES
from curation.similarity import STORAGES, IndexConfig
from resources.environment import SettingError

Rule = tuple[Callable[[Any], bool], str]
POSITIVE: Rule = (lambda v: v > 0, "a number > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "a number >= 0")
Range = tuple[float, float]  # inclusive bounds of a library range table; +-inf: unbounded


def _bound(x: float) -> str:
    return f"{x:g}"


def range_rule(lo: float, hi: float, what: str | None = None) -> Rule:
    """The rule `lo <= v <= hi` of a library range table, worded "`what` in [lo, hi]" (or ">= lo" /
    "<= hi" for an unbounded side). `what` defaults to "a whole number" for integer bounds, else
    "a number"; a "{}" in it places the bounds (e.g. "a ratio {} (long side / short side)")."""
    bounds = (f">= {_bound(lo)}" if math.isinf(hi) else f"<= {_bound(hi)}" if math.isinf(lo)
              else f"in [{_bound(lo)}, {_bound(hi)}]")
    finite = [b for b in (lo, hi) if not math.isinf(b)]
    what = what or ("a whole number" if all(isinstance(b, int) for b in finite) else "a number")
    allowed = what.format(bounds) if "{}" in what else f"{what} {bounds}"
    return (lambda v: lo <= v <= hi, allowed)


def range_rules(table: Mapping[str, Range], what: Mapping[str, str] | None = None) -> dict[str, Rule]:
    """One `range_rule` per field of a library range table; `what` words some of them."""
    what = what or {}
    return {name: range_rule(lo, hi, what.get(name)) for name, (lo, hi) in table.items()}


def choice_rule(choices: tuple[str, ...]) -> Rule:
    """The value is one of the library's `choices`, worded "'a', 'b' or 'c'"."""
    quoted = [repr(c) for c in choices]
    allowed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return (lambda v: v in choices, allowed)


class StageConfig(dg.Config):
    """Base of the stage settings: unknown keys and rule violations raise one-line SettingErrors."""

    library: ClassVar[type]
    section: ClassVar[str]
    rules: ClassVar[dict[str, Rule]] = {}
    resource_only: ClassVar[frozenset[str]] = frozenset()  # rules the library does not have

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise SettingError(cls.section, {k: data[k] for k in unknown},
                                   f"known {cls.library.__name__} settings: {sorted(cls.model_fields)}")
        return data

    def model_post_init(self, context: Any) -> None:
        for name, (ok, allowed) in self.rules.items():
            value = getattr(self, name)
            if not ok(value):
                raise SettingError(f"{self.section}.{name}", value, allowed)
        try:
            self.to_library()
        except (TypeError, ValueError) as exc:  # the library's own checks, as one line
            raise SettingError(self.section, self.model_dump(), str(exc).splitlines()[0]) from exc

    def to_library(self) -> Any:
        values = self.model_dump()
        types = {f.name: f.type for f in dataclasses.fields(self.library)}
        for name, value in values.items():
            if isinstance(value, list) and "tuple" in str(types.get(name, "")):
                values[name] = tuple(value)
        return self.library(**values)


_INV, _DEDUP, _QUALITY = InventoryConfig(), DedupConfig(), QualityConfig()
_EXPORT, _INDEX = ExportConfig(), IndexConfig()


class InventorySettings(StageConfig):
    """curation.inventory.InventoryConfig: per-file limits and the analysis image."""

    library: ClassVar[type] = InventoryConfig
    section: ClassVar[str] = "StageSettings.inventory"
    rules: ClassVar[dict[str, Rule]] = {
        "max_pixels": POSITIVE, "max_bytes": POSITIVE, "decode_timeout_s": POSITIVE, "chunk_size": POSITIVE,
        # curation.imaging.WHASH_IMAGE_SCALE: the wavelet hash needs at least a 64 x 64 analysis image
        "analysis_size": (lambda v: v >= 64, "a whole number of pixels >= 64"),
        "background": (lambda v: len(v) == 3 and all(0 <= c <= 255 for c in v), "three channel values in [0, 255]"),
        "start_method": choice_rule(("forkserver", "spawn")),
    }
    resource_only: ClassVar[frozenset[str]] = frozenset({"start_method"})

    max_pixels: int = Field(default=_INV.max_pixels,
                            description="declared width*height above which a file is DECOMPRESSION_BOMB, undecoded")
    max_bytes: int = Field(default=_INV.max_bytes, description="files larger than this are TOO_LARGE_FILE, unread")
    decode_timeout_s: float = Field(default=_INV.decode_timeout_s, description="wall-clock bound per file -> TIMEOUT")
    analysis_size: int = Field(default=_INV.analysis_size, description="side of the grey analysis image (px)")
    background: list[int] = Field(default=list(_INV.background),
                                  description="RGB that transparency is composited on (a cut-out it swallows, e.g. a "
                                              "white icon on white, is hashed and embedded on the contrasting colour: "
                                              "black for a light background, white for a dark one; docs/stages.md)")
    chunk_size: int = Field(default=_INV.chunk_size, description="files per message to a worker")
    start_method: str = Field(default=_INV.start_method, description="worker start method: 'forkserver' or 'spawn'")
    extra_hashes: bool = Field(default=_INV.extra_hashes,
                               description="also compute aHash and wHash (nothing downstream reads them; off by default)")


class DedupSettings(StageConfig):
    """curation.dedup.DedupConfig: near-duplicate rules (see its docstring for why these defaults)."""

    library: ClassVar[type] = DedupConfig
    section: ClassVar[str] = "StageSettings.dedup"
    rules: ClassVar[dict[str, Rule]] = {
        "phash_radius": (lambda v: 0 <= v < 32, "a whole number in [0, 32)"),
        "dhash_radius": (lambda v: 0 <= v < 32, "a whole number in [0, 32)"),
        "max_chroma_diff": NON_NEGATIVE, "min_contrast": NON_NEGATIVE, "min_entropy": NON_NEGATIVE,
        "pair_batch": POSITIVE, "index_batch": POSITIVE,
        "max_thumb_diff": (lambda v: 0 <= v <= 255, "a channel difference in [0, 255]"),
        "max_detail_distance": (lambda v: 0 <= v <= 256, "a number of bits in [0, 256] (256: check off)"),
        "max_aspect_diff": NON_NEGATIVE,
        "strict_phash_radius": (lambda v: 0 <= v < 32, "a whole number in [0, 32)"),
        "strict_dhash_radius": (lambda v: 0 <= v < 32, "a whole number in [0, 32)"),
    }
    resource_only: ClassVar[frozenset[str]] = frozenset({"min_contrast", "min_entropy", "pair_batch", "index_batch"})

    phash_radius: int = Field(default=_DEDUP.phash_radius, description="max pHash Hamming distance of a duplicate")
    dhash_radius: int = Field(default=_DEDUP.dhash_radius, description="max dHash Hamming distance of a duplicate")
    max_chroma_diff: float = Field(default=_DEDUP.max_chroma_diff, description="max chromaticity difference per channel")
    min_contrast: float = Field(default=_DEDUP.min_contrast, description="grey std below which an image is not hashed")
    min_entropy: float = Field(default=_DEDUP.min_entropy, description="grey entropy (bits) below which it is not hashed")
    pair_batch: int = Field(default=_DEDUP.pair_batch, description="candidate pairs verified per batch")
    index_batch: int = Field(default=_DEDUP.index_batch, description="index rows streamed per batch")
    max_thumb_diff: int = Field(default=_DEDUP.max_thumb_diff,
                                description="verification: max difference of any 8x8 RGB thumbnail cell/channel")
    max_detail_distance: int = Field(default=_DEDUP.max_detail_distance,
                                     description="verification: max 256-bit pHash Hamming distance (256: off)")
    max_aspect_diff: float = Field(default=_DEDUP.max_aspect_diff,
                                   description="verification: max |log(w/h)| difference of a duplicate pair")
    strict_phash_radius: int = Field(default=_DEDUP.strict_phash_radius,
                                     description="pHash radius for rows without a stored thumbnail (old inventories)")
    strict_dhash_radius: int = Field(default=_DEDUP.strict_dhash_radius,
                                     description="dHash radius for rows without a stored thumbnail")


class QualitySettings(StageConfig):
    """curation.quality.QualityConfig: the content-aware quality filter (see its docstring for why
    each default)."""

    library: ClassVar[type] = QualityConfig
    section: ClassVar[str] = "StageSettings.quality"
    rules: ClassVar[dict[str, Rule]] = {"profile": choice_rule(QUALITY_PROFILES), **range_rules(QUALITY_RANGES, {
        "min_side": "a whole number of pixels", "max_aspect_ratio": "a ratio {} (long side / short side)",
        "photo_max_aspect_ratio": "a ratio {} (long side / short side)", "min_contrast": "a grey-level std",
        "min_jpeg_quality": "a JPEG quality", "near_empty_share": "a share", "near_empty_ink": "a share",
        "dark_p95": "a grey level", "dark_mean": "a grey level", "bright_rolloff": "a grey level",
        "bright_clip_share": "a share", "bright_min_edge_ratio": "an edge ratio", "bright_min_mean": "a grey level",
        "bright_min_mid_ratio": "a step ratio", "bright_max_edge_ratio": "an edge ratio", "bright_max_flat": "a share",
        "bright_raggedness": "a clip raggedness", "bright_texture_flat": "a share",
        "bright_area_share": "a share", "bright_photo_flat": "a share", "bright_max_boundary": "a boundary share",
        "bright_blown_share": "a share", "bright_dark_p05": "a grey level", "bright_dark_clip_share": "a share",
        "photo_min_edge": "an edge sharpness", "photo_soft_edge": "an edge sharpness",
        "photo_min_native_sharpness": "a Laplacian variance", "graphic_min_edge": "an edge sharpness",
        "photo_max_edge_ratio": "an edge ratio", "photo_motion_edge_ratio": "an edge ratio",
        "photo_motion_spread": "an edge-ratio spread", "photo_smear_edge_ratio": "an edge ratio",
        "photo_smear_spread": "an edge-ratio spread", "photo_smear_mid_ratio": "a step ratio", "photo_smear_max_flat": "a share",
        "graphic_max_edge_ratio": "an edge ratio",
        "graphic_soft_edge_ratio": "an edge ratio", "graphic_ratio_max_edge": "an edge sharpness"})}

    profile: str = Field(default=_QUALITY.profile, description="how each image's kind is found: auto | photo | graphics")
    min_side: int = Field(default=_QUALITY.min_side, description="shorter side below this (px) is too_small")
    max_aspect_ratio: float = Field(default=_QUALITY.max_aspect_ratio,
                                    description="long/short side above this is extreme_aspect_ratio (drawn images)")
    photo_max_aspect_ratio: float = Field(default=_QUALITY.photo_max_aspect_ratio,
                                          description="the same for photos")
    min_contrast: float = Field(default=_QUALITY.min_contrast, description="grey std below this is low_contrast")
    min_jpeg_quality: int = Field(default=_QUALITY.min_jpeg_quality,
                                  description="estimated JPEG quality below this is compressed")
    near_empty_share: float = Field(default=_QUALITY.near_empty_share,
                                    description="top colour share above this (with little ink) is low_entropy")
    near_empty_ink: float = Field(default=_QUALITY.near_empty_ink, description="drawn share below this, with the above")
    dark_p95: float = Field(default=_QUALITY.dark_p95, description="photos: 95th grey percentile below this ...")
    dark_mean: float = Field(default=_QUALITY.dark_mean, description="... and mean below this are too_dark")
    bright_clip_share: float = Field(default=_QUALITY.bright_clip_share,
                                     description="photos and graphics: clipped share above this ...")
    bright_rolloff: float = Field(default=_QUALITY.bright_rolloff,
                                  description="... with the grey next to the clipped pixels above this ...")
    bright_min_edge_ratio: float = Field(default=_QUALITY.bright_min_edge_ratio,
                                         description="... in a picture whose blurriest edge ratio is above this ...")
    bright_max_edge_ratio: float = Field(default=_QUALITY.bright_max_edge_ratio,
                                         description="... and below this (not drawn art: one-pixel edges everywhere) ...")
    bright_max_flat: float = Field(default=_QUALITY.bright_max_flat,
                                   description="... and whose flat-colour share is below this ...")
    bright_min_mid_ratio: float = Field(default=_QUALITY.bright_min_mid_ratio,
                                        description="... and mean 2-px / 4-px step ratio above this (not blurred) ...")
    bright_min_mean: float = Field(default=_QUALITY.bright_min_mean,
                                   description="... and whose opaque pixels' mean grey is above this: too_bright")
    bright_raggedness: float = Field(default=_QUALITY.bright_raggedness,
                                     description="too_bright also: clipping broken up into specks (raggedness above this) ...")
    bright_texture_flat: float = Field(default=_QUALITY.bright_texture_flat,
                                       description="... with a flat-colour share below this (a blown-out texture)")
    bright_area_share: float = Field(default=_QUALITY.bright_area_share,
                                     description="too_bright also: clipped share above this, not blurred ...")
    bright_photo_flat: float = Field(default=_QUALITY.bright_photo_flat,
                                     description="... with a flat-colour share below this ...")
    bright_max_boundary: float = Field(default=_QUALITY.bright_max_boundary,
                                       description="... and the unclipped pixels' boundary share below this (no line art)")
    bright_blown_share: float = Field(default=_QUALITY.bright_blown_share,
                                      description="too_bright also: clipped share at or above this (a white frame)")
    bright_dark_p05: float = Field(default=_QUALITY.bright_dark_p05,
                                   description="too_bright also, photos: a dark picture with 5th grey percentile above this ...")
    bright_dark_clip_share: float = Field(default=_QUALITY.bright_dark_clip_share,
                                          description="... with a clipped share above this (a night sky exposed up)")
    photo_min_edge: float = Field(default=_QUALITY.photo_min_edge, description="photos: edge sharpness below this is blurry")
    photo_soft_edge: float = Field(default=_QUALITY.photo_soft_edge,
                                   description="photos: soft edges below this with little native detail ...")
    photo_min_native_sharpness: float = Field(default=_QUALITY.photo_min_native_sharpness,
                                              description="... (native Laplacian variance below this) are blurry")
    graphic_min_edge: float = Field(default=_QUALITY.graphic_min_edge,
                                    description="graphics and cutouts: edge sharpness below this ...")
    graphic_soft_edge_ratio: float = Field(default=_QUALITY.graphic_soft_edge_ratio,
                                           description="... with the sharpest edge ratio below this is blurry")
    photo_max_edge_ratio: float = Field(default=_QUALITY.photo_max_edge_ratio,
                                        description="photos: sharpest direction's edge ratio below this is blurry")
    photo_motion_edge_ratio: float = Field(default=_QUALITY.photo_motion_edge_ratio,
                                           description="photos: blurriest direction's edge ratio below this ...")
    photo_motion_spread: float = Field(default=_QUALITY.photo_motion_spread,
                                       description="... with the sharpest this much above it is blurry (motion)")
    photo_smear_edge_ratio: float = Field(default=_QUALITY.photo_smear_edge_ratio,
                                          description="photos: blurriest edge ratio below this ...")
    photo_smear_spread: float = Field(default=_QUALITY.photo_smear_spread,
                                      description="... with the sharpest this much above it ...")
    photo_smear_mid_ratio: float = Field(default=_QUALITY.photo_smear_mid_ratio,
                                         description="... and mean 2-px / 4-px step ratio below this ...")
    photo_smear_max_flat: float = Field(default=_QUALITY.photo_smear_max_flat,
                                        description="... and a flat-colour share below this is blurry (a smear)")
    graphic_max_edge_ratio: float = Field(default=_QUALITY.graphic_max_edge_ratio,
                                          description="graphics and cutouts: sharpest edge ratio below this ...")
    graphic_ratio_max_edge: float = Field(default=_QUALITY.graphic_ratio_max_edge,
                                          description="... with edge sharpness below this is blurry")
    reject_duplicates: bool = Field(default=_QUALITY.reject_duplicates,
                                    description="only a duplicate cluster's representative is kept")




class ExportSettings(StageConfig):
    """curation.export.ExportConfig: the training-ready export (WebDataset tars + Parquet manifest)."""

    library: ClassVar[type] = ExportConfig
    section: ClassVar[str] = "StageSettings.export"
    rules: ClassVar[dict[str, Rule]] = {
        "target_tar_bytes": (lambda v: v >= 64 * 1024, "a byte count >= 65536 (64 KiB)"),
        "rows_per_group": (lambda v: v >= 1, "a whole number >= 1"),
    }

    target_tar_bytes: int = Field(default=_EXPORT.target_tar_bytes, description="bytes per WebDataset tar to aim at")
    include_embedding: bool = Field(default=_EXPORT.include_embedding,
                                    description="add <key>.npy (float32 embedding) to each sample and the manifest")
    manifest_images: bool = Field(default=_EXPORT.manifest_images,
                                  description="image bytes in the manifest's `image` column (Hugging Face Image)")
    rows_per_group: int = Field(default=_EXPORT.rows_per_group, description="manifest rows per Parquet row group")


class SimilaritySettings(StageConfig):
    """curation.similarity.IndexConfig: the HNSW segment built per shard."""

    library: ClassVar[type] = IndexConfig
    section: ClassVar[str] = "StageSettings.similarity"
    rules: ClassVar[dict[str, Rule]] = {
        "m": (lambda v: v >= 2, "a whole number >= 2"),
        "ef_construction": (lambda v: v >= 2, "a whole number >= 2"),
        "ef_search": (lambda v: v >= 2, "a whole number >= 2"),
        "storage": choice_rule(STORAGES),
    }

    m: int = Field(default=_INDEX.m, description="HNSW graph degree")
    ef_construction: int = Field(default=_INDEX.ef_construction, description="candidate list size when building")
    ef_search: int = Field(default=_INDEX.ef_search, description="candidate list size when querying")
    storage: str = Field(default=_INDEX.storage, description="vectors in the index: sq8 (1 B/dim), fp16, flat (4 B/dim)")


class HeadSettings(StageConfig):
    """curation.heads.HeadSpec: one model head over the embeddings (score column `score_<name>`)."""

    library: ClassVar[type] = HeadSpec
    section: ClassVar[str] = "StageSettings.heads"
    rules: ClassVar[dict[str, Rule]] = {
        "dim": POSITIVE,
        "activations": (lambda v: len(v) == 2 and all(a in ACTIVATIONS for a in v),
                        f"[hidden, output], each one of {', '.join(ACTIVATIONS)}"),
    }

    name: str = Field(description="head name: lower-case letters, digits, '_' (score column score_<name>)")
    uri: str = Field(description="weights: local path, s3:// URI or hf-hub:<repo>/<file> (safetensors or .pt state dict)")
    embedding_model: str = Field(description="embedder model_id the head was trained on (prefix at ':' allowed)")
    dim: int = Field(description="embedding dimension the head expects")
    activations: list[str] = Field(default=["none", "none"],
                                   description="[between layers, on the output]: none | relu | gelu | sigmoid")
    reason: str | None = Field(default=None, description="quality reason for images failing the rule, e.g. low_aesthetic")
    reject_below: float | None = Field(default=None, description="scores below this get `reason`")
    reject_above: float | None = Field(default=None, description="scores above this get `reason`")

    def to_library(self) -> HeadSpec:
        hidden, output = (self.activations + ["none", "none"])[:2]
        return HeadSpec(name=self.name, uri=self.uri, embedding_model=self.embedding_model, dim=self.dim,
                        hidden_activation=hidden, output_activation=output, reason=self.reason,
                        reject_below=self.reject_below, reject_above=self.reject_above)


STAGE_CONFIGS: tuple[type[StageConfig], ...] = (InventorySettings, DedupSettings, QualitySettings, ExportSettings,
                                                 SimilaritySettings)  # heads: a list (StageSettings.heads)
