"""Configuration and schemas of the semantic (embedding) dedup pass.

`SemanticDedupConfig` holds the similarity threshold, the LSH banding and the index's vector
encoding (invalid values raise ValueError in the constructor). `SEMANTIC_SCHEMA` is the per-row
output; `index_schema(cfg, dim)` the persisted cross-shard index, one row per embedded image::

    image_id str, shard str, shard_seq Int32, cluster_id str, rep_shard str, similarity Float32,
    is_representative bool, keys Array(UInt32, n_bands), vec Array(Int8 | Float16, dim | proj_dim),
    thumb Binary (192 bytes: stage 1's thumbnail, for the two-stage rule; older indexes lack it)
    (keys, vec and thumb are null for members: only representatives are matched against)

Bytes per representative: 4 * n_bands + the vector + the thumbnail: 192 + 1,280 (int8, 1280-d, the
defaults) + 192 in memory; see bench/results/semantic.json for Parquet sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from curation.schema import Schema

__all__ = ["SEMANTIC_SCHEMA", "VECTOR_ENCODINGS", "SemanticDedupConfig", "index_schema"]


VECTOR_ENCODINGS = ("float16", "int8", "proj")


@dataclass(frozen=True)
class SemanticDedupConfig:
    """Semantic near-duplicate rules and search parameters.

    enabled: False skips the pass (every image its own cluster; an empty index is still written).
    threshold: 0.97 cosine (L2-normalised embeddings, so cosine = dot product). Measured with the
        offline EfficientNet-Lite0 (1280-d) on the demo corpus (bench/semantic.py ->
        bench/results/semantic.json; every known copy embedded, float16 precision like stage 4):
        * copies vs their original (p1 / p5 / median; share below 0.97): 3%-per-side crops
          0.939 / 0.955 / 0.987, 10% below; brightness 0.931 / 0.956 / 0.984, 13%; downscales
          0.757 / 0.889 / 0.992, 17% (tiny sprites lose detail); JPEG re-encodes 0.896 / 0.928 /
          0.969, 56% (the hash pass catches 94% of these anyway); exact copies 1.0.
        * unrelated pairs (12.9M: all pairs of the 5,079 curated images outside known groups):
          median 0.69, p99 0.89; at or above 0.94: 3.9e-4 of pairs, 0.95: 1.5e-4, 0.96: 4.6e-5,
          0.97: 1.5e-5, 0.98: 7.3e-6. Nearly all are same-class MNIST digits (an ImageNet model sees
          "a white stroke on black": 1,605 digit pairs at 0.95, 56 at 0.97) and game tiles that are
          near-identical by design (planetLeft / planetMid / planetRight: 119 tile pairs at 0.97).
        * known groups, semantic pass after the hash pass (the pipeline), flagged / precision / crop
          recall / all-kinds recall: 0.95: 1,110 / 0.35 / 0.78 / 0.91; 0.96: 814 / 0.50 / 0.76 / 0.90;
          0.97: 647 / 0.65 / 0.77 / 0.90; 0.98: 578 / 0.70 / 0.63 / 0.87 (hash pass alone: 453 /
          0.78 / 0.13 / 0.74). Crop recall is capped at ~0.85 there because 17 of the 111 crop
          pairs lose a member to the quality filter before stage 4; on the pairs both kept, 0.97
          catches ~90%. "Precision" counts look-alike digits and the tile variants as errors.
        0.97 is where false links stop growing faster than caught copies (0.96 -> 0.97 halves the
        unrelated pairs and loses one crop). For photos (0.2-2 Mpx, skimage, tests/unit/
        test_semantic.py) crops score 0.94-0.99 (median 0.97) and unrelated photos stay < 0.94, so
        photo corpora without look-alikes can use 0.94-0.95 (with band_bits 14, n_bands 64). The
        leader clustering keeps clusters star-shaped either way: a false link costs one image,
        never a chain.
    calibrated: True replaces `threshold`, `wide_threshold` and `max_align_diff` by the embedding
        model's calibrated rule when one is recorded (`for_model`, `curation.semantic.calibrate`):
        cosines differ between models, so one constant does not fit them all. False: as given.
    wide_threshold: None (the default: no verification stage, `threshold` alone) or a cosine <=
        `threshold`. Two-stage rule (`curation.semantic.verify`): a pair whose cosine is in
        [wide_threshold, threshold) links only when the crop-aware difference of the two stage-1
        8x8 thumbnails (`align_diff`: one image against a window of the other) is <=
        `max_align_diff`; pairs >= threshold link on the cosine alone. This catches crops,
        re-framings and re-renders whose cosine falls below the strict threshold while keeping
        recolours and animation frames apart (bench/results/semantic_calibration.json). Needs a
        ``thumb_rgb`` column in the input (without one, or for a row without a thumbnail, only
        `threshold` applies). LSH candidates are searched at wide_threshold: use band_bits 14 x
        n_bands 64 or more bands when it is < 0.95 (see band_bits).
        Calibrated for EfficientNet-Lite0 (`CALIBRATED_VERIFY`): wide_threshold 0.85 with
        max_align_diff 6.0; LSH candidate recall at 0.85 on the labelled set is 0.82 with the
        default 16 x 48 bands, 0.94 with 14 x 64 and 0.98 with 12 x 64 (bench/results/
        semantic_calibration.json, `lsh_candidate_recall_at_wide_threshold`).
    max_align_diff: 6.0 levels (0..255): the largest `align_diff` of a verified pair.
    band_bits / n_bands: 16 bits x 48 bands (192 bytes of keys per representative), hashing around
        the corpus centre (`fit_center`). On the demo embeddings a centred bit agrees with p ~0.85
        for pairs >= 0.95 and ~0.50 for random pairs. Measured recall vs brute force on the demo
        (5,079 real embeddings): 1.000 at 0.97 (16 x 32: 0.996), 0.89 at 0.95; candidates ~1% of
        all pairs (the demo is dense: 4,500 MNIST digits). For thresholds <= 0.95 use 14 x 64
        (recall 0.98 at 0.95, 2x the candidates).
    index_vectors: "int8". How the index keeps each representative's vector for cross-shard
        verification (the current shard is always verified with its full embeddings):
        * "float16": the embedding itself (2 * dim bytes; 2,560 for 1280-d). Exact: stage 4 stores
          float16-precision embeddings, so decisions equal brute force.
        * "int8": the embedding scaled to max |127| per row (dim bytes; 1,280). Cosines use the
          exact query vector and the de-biased int8 vector (rounding noise of variance 1/12 step**2
          per non-zero component is subtracted from the norm), error std ~0.0003: decisions differ
          from brute force only for pairs within ~0.001 of the threshold (demo: recall 0.98,
          precision 0.99 on the 1,966 pairs >= 0.95, which crowd the threshold).
        * "proj": a fixed Gaussian random projection to proj_dim dims, int8 (proj_dim bytes). Cheap,
          but on ReLU features (non-negative, sharing one large common direction) the projection's
          error is correlated across pairs (a per-seed bias of up to +-0.003 at 256-768 dims):
          demo recall vs brute force 0.86 at 256 dims. Not recommended for these embeddings.
    proj_dim: 256, dimensions for index_vectors="proj".
    seed: fixes the hyperplanes and the projection (changing it invalidates earlier indexes: the
        shard's index records nothing about it, so keep it fixed for a corpus).
    pair_batch: candidate pairs generated per batch (bounds memory; cosines are computed in blocks
        of at most 1,024 pairs).
    """

    enabled: bool = True
    threshold: float = 0.97
    calibrated: bool = True
    wide_threshold: float | None = None
    max_align_diff: float = 6.0
    band_bits: int = 16
    n_bands: int = 48
    index_vectors: str = "int8"
    proj_dim: int = 256
    seed: int = 20240611
    pair_batch: int = 1 << 18

    def for_model(self, model_id: str | None) -> SemanticDedupConfig:
        """This config with `model_id`'s calibrated threshold (`curation.semantic.calibrate.
        CALIBRATED_THRESHOLDS`) and, when recorded, its two-stage rule (`CALIBRATED_VERIFY`:
        wide_threshold, max_align_diff) when `calibrated` is true and the model has one; else unchanged."""
        from curation.semantic.calibrate import CALIBRATED_THRESHOLDS, CALIBRATED_VERIFY

        t = CALIBRATED_THRESHOLDS.get(model_id or "") if self.calibrated else None
        if t is None:
            return self
        wide, diff = CALIBRATED_VERIFY.get(model_id or "", (None, self.max_align_diff))
        return replace(self, threshold=t, wide_threshold=wide, max_align_diff=diff)

    @property
    def search_threshold(self) -> float:
        """The cosine the candidate search verifies at: wide_threshold when set, else threshold."""
        return self.threshold if self.wide_threshold is None else self.wide_threshold

    def __post_init__(self) -> None:
        if not (-1.0 <= self.threshold <= 1.0):
            raise ValueError("threshold must be a cosine in [-1, 1]")
        if self.wide_threshold is not None and not (-1.0 <= self.wide_threshold <= self.threshold):
            raise ValueError(f"wide_threshold must be None or a cosine in [-1, threshold={self.threshold}], "
                             f"got {self.wide_threshold}")
        if not (0.0 <= self.max_align_diff <= 255.0):
            raise ValueError(f"max_align_diff must be in [0, 255] levels, got {self.max_align_diff}")
        if not (1 <= self.band_bits <= 32):
            raise ValueError("band_bits must be in [1, 32]")
        if self.n_bands < 1:
            raise ValueError("n_bands must be >= 1")
        if self.proj_dim < 1:
            raise ValueError("proj_dim must be >= 1")
        if self.index_vectors not in VECTOR_ENCODINGS:
            raise ValueError(f"index_vectors must be one of {VECTOR_ENCODINGS}")


SEMANTIC_SCHEMA: Schema = {
    "image_id": pl.String,
    "shard": pl.String,
    "cluster_id": pl.String,  # the representative's image_id
    "is_representative": pl.Boolean,
    "rep_shard": pl.String,
    "similarity": pl.Float32,  # cosine with the representative (1.0 for representatives)
}


def index_schema(cfg: SemanticDedupConfig, dim: int) -> Schema:
    """Index columns for embeddings of dimension `dim` (`vec` depends on cfg.index_vectors)."""
    vec = {"float16": pl.Array(pl.Float16, dim), "int8": pl.Array(pl.Int8, dim),
           "proj": pl.Array(pl.Int8, cfg.proj_dim)}[cfg.index_vectors]
    return {
        "image_id": pl.String,
        "shard": pl.String,
        "shard_seq": pl.Int32,
        "cluster_id": pl.String,
        "rep_shard": pl.String,
        "similarity": pl.Float32,
        "is_representative": pl.Boolean,
        "keys": pl.Array(pl.UInt32, cfg.n_bands),
        "vec": vec,
        "thumb": pl.Binary,  # stage 1's 8x8 RGB thumbnail (two-stage verification; null when unknown)
    }
