"""Configuration and on-disk schema of the hash dedup stage.

`DedupConfig` holds the near-duplicate rules (radii, colour limit, eligibility) and the batch sizes
of the search; invalid values raise ValueError in the constructor. `INDEX_SCHEMA` is the schema of
the persisted cross-shard index (one row per hashed image of every materialised shard) and the
``FLAG_*`` constants are the bits of its ``flags`` column. The numeric part is 4 + 2 + 8 + 8 + 8 +
3 + 1 = 34 bytes per image, plus, on the rows later shards near-match (eligible representatives and
superseding copies), the 192-byte thumbnail and the 32-byte 256-bit pHash that verify candidates;
the near-duplicate search touches only phash, dhash, chroma and flags of eligible representatives
(20 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from curation.schema import Schema

__all__ = ["FLAG_ELIGIBLE", "FLAG_REP", "FLAG_SAME_BYTES", "FLAG_SUPERSEDES", "INDEX_SCHEMA", "DedupConfig", "near_matchable"]


INDEX_SCHEMA: Schema = {
    "image_id": pl.String,
    "shard": pl.String,
    "shard_seq": pl.Int32,  # registration order of the shard (0, 1, 2, ...): earlier shards win
    "cluster_id": pl.String,
    "rep_shard": pl.String,
    "distance": pl.Int16,  # pHash distance to the representative (0 for the representative)
    "sha64": pl.UInt64,  # first 16 hex digits of sha256; exact match also needs equal phash+dhash
    "phash": pl.UInt64,
    "dhash": pl.UInt64,
    "chroma_r": pl.UInt8,  # chromaticity (channel mean / sum of channel means) * 255
    "chroma_g": pl.UInt8,
    "chroma_b": pl.UInt8,
    "flags": pl.UInt8,  # FLAG_ELIGIBLE | FLAG_REP | FLAG_SAME_BYTES | FLAG_SUPERSEDES
    "width": pl.Int32,  # pixel size and file size: aspect check, and which copy is the best one
    "height": pl.Int32,
    "bytes": pl.Int64,
    # the verification features, on near-matchable rows only (FLAG_ELIGIBLE with FLAG_REP or
    # FLAG_SUPERSEDES; null on the others, which later shards never near-match, and on rows analysed
    # before stage 1 computed them):
    "thumb_rgb": pl.Binary,  # stage 1's 8x8 RGB thumbnail
    "phash256": pl.Binary,  # stage 1's 256-bit pHash (32 bytes)
    "supersedes": pl.String,  # FLAG_SUPERSEDES rows: image_id of the cluster's previous best copy
    "superseded_shard": pl.String,  # ...and its shard
}

FLAG_ELIGIBLE = 1  # may take part in near-duplicate matching
FLAG_REP = 2  # representative of its cluster (the only rows later shards near-match against)
FLAG_SAME_BYTES = 4  # byte-identical to its representative (representatives themselves included)
FLAG_SUPERSEDES = 8  # joined an earlier cluster and is a better copy than its best copy so far


def near_matchable(flags: np.ndarray) -> np.ndarray:
    """The index rows later shards near-match against: eligible, and the representative of their
    cluster or a copy that superseded it (`match_near_earlier`); only they carry the verification
    features (`build_index`)."""
    f = np.asarray(flags)
    return ((f & FLAG_ELIGIBLE) != 0) & ((f & (FLAG_REP | FLAG_SUPERSEDES)) != 0)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate rules. Look-alike images (digits, icons, sprites, cards) are what breaks
    precision, and their number grows with the square of the corpus (~0.35% of unrelated pairs of
    real photos, digits and sprites lie within pHash distance 10).

    Two stages: the search finds every pair within the *candidate* radii (pHash and dHash), then
    each candidate is verified on stage 1's 8x8 RGB thumbnail (`curation.dedup.verify`). Measured on
    the accuracy bench's labelled set (bench/accuracy.py: 3,722 real images, 781 groups: clip art
    re-rendered from SVG at 24-256 px, resizes over 8x, re-encodes, <= 48 px images, hue shifts,
    recoloured sprites, playing cards and animation frames as look-alike negatives), tuned on one
    half of the sources and checked on the other.

    phash_radius: 4, dhash_radius: 8 (candidate radii). Re-renders and resizes across a 4-8x range
        move pHash by 4-6 and dHash by 3-8, so the one-stage radii 2/4 found only 75% of the true
        pairs (74% of those with a <= 48 px member 61%); 4/8 holds 90%. pHash distances are even
        (imagehash sets exactly 32 bits), so 5 is the same as 4. On their own these radii link
        look-alikes (hue shifts, card suits, animation frames: 759 false pairs on the set); the
        thumbnail check removes almost all of them. Cost: 5 x 9 block combinations with ~20-bit
        composite keys (bench/dedup.py: 5M uniform hashes in 43 CPU-seconds, one core; radii 2/4:
        ~1 s); 6/10 would hold
        94% but needs 77 combinations with ~15-bit keys, far too slow at 5M.
    max_thumb_diff: 70 levels, the largest allowed difference of any cell and channel of the two
        8x8 RGB thumbnails (white-composited, box-filtered). Copies differ by < 40 in almost every
        cell; a recolour or another animation frame differs by > 100 where they differ. Global
        colour means (the chromaticity) cannot see a small recoloured area. On the accuracy set
        80 scores best (F1 within 0.003 of 70); on the unit-test corpus (tests/unit/test_dedup.py:
        upscaled MNIST digits as look-alikes) 80 lets precision drop to 0.978, 70 keeps 0.984 at
        recall 0.730 (60: 0.991 / 0.698, resizes start to fail). Known limit: two red playing
        cards (2 of diamonds vs 2 of hearts) differ by only ~20.
    max_detail_distance: 44 bits, the largest Hamming distance of the two images' 256-bit pHashes
        (stage 1's ``phash256``: 16 x 16 DCT frequencies of the hash image, `phash256_batch`), checked
        with the thumbnail (256 turns it off). The 64-bit hashes and the 8 x 8 thumbnail cannot tell
        apart look-alikes that differ in detail finer than an eighth of the picture (two shirts of
        one cut at 28 px), and those links grow with the square of the corpus. Measured on 300,000
        images of the million run's generator (bench/dedup_scale.py, sharded as the pipeline runs):
        copies lie at a median of 6 bits (99th percentile 50), the false links that pass the
        thumbnail at a median of 46; with the check the pair precision is 0.898 instead of 0.805
        (Fashion-MNIST items 0.95 instead of 0.82) for recall 0.677 instead of 0.680; at 1,000,000
        images 0.736 instead of 0.531 (recall 0.671 / 0.665). Clip art reads 0.24 at 1M either
        way, but not from look-alikes the check could tell apart: at 300,000 images 94% of its
        false pairs (62,968 of 66,891) lie inside one generated series, openclipart's 1,375 star
        polygons (shapes/stars/star_<n>pt<k>step.png), which at the corpus's 48-160 px render as
        the same ring; without them pair precision is 0.950 at 300,000 and 0.861 at 1,000,000 (95%
        of clip art's false pairs there), the rest mostly Fashion-MNIST items of one cut. Per image,
        0.971 / 0.942 of the images dropped as duplicates at 300,000 / 1,000,000 keep a
        representative of their own group (`drop_precision` in bench/results/dedup_scale.json). On the
        accuracy set it costs recall 0.876 -> 0.867 (<= 48 px 0.800 -> 0.785). Tighter limits buy
        little more: at 1M, 40 bits read precision 0.767 / recall 0.668 and 36 bits 0.792 / 0.661
        (clip art stays 0.24), while on the accuracy set recall falls to 0.863 (<= 48 px 0.777) at 40
        and 0.857 (0.765) at 36, F1 0.919 / 0.916 against imagehash's best 0.910; 48 bits read 0.90
        at 300k (single-shard simulation) and 0.872 (0.792) on the accuracy set.
    max_aspect_diff: 0.1, the largest |log(w1/h1) - log(w2/h2)|: the thumbnails and hashes ignore
        the aspect ratio, so a stretched look-alike is told apart here.
    strict_phash_radius: 2, strict_dhash_radius: 4, max_chroma_diff: 0.02. The rule for pairs where
        a row has no thumbnail (inventories written before it existed): the one-stage rule, whose
        precision does not need the thumbnail. Chromaticity: channel mean divided by the sum of the
        channel means, after +8 to stabilise dark images; brightness and contrast changes leave it
        nearly unchanged, a channel swap moves it by 0.09 (median).
    min_contrast: 5.0 grey levels (std). A flat image (one colour, or JPEG noise around one colour)
        has a std of 0-3; its pHash bits are the signs of rounding noise, so flat images would all
        "match" each other and form one giant cluster of unrelated files.
    min_entropy: 0.5 bits. Near-empty images (a tiny mark on a plain background: 90% background has
        ~0.5 bits) have hashes dominated by the background. Ineligible images are still exact
        duplicates by sha256.
    pair_batch: candidate pairs verified per batch (bounds memory: ~100 bytes per candidate).
    index_batch: index rows streamed per batch in `query_index`.
    """

    phash_radius: int = 4
    dhash_radius: int = 8
    max_thumb_diff: int = 70
    max_detail_distance: int = 44
    max_aspect_diff: float = 0.1
    strict_phash_radius: int = 2
    strict_dhash_radius: int = 4
    max_chroma_diff: float = 0.02
    min_contrast: float = 5.0
    min_entropy: float = 0.5
    pair_batch: int = 1 << 19
    index_batch: int = 1 << 20

    def __post_init__(self) -> None:
        if not (0 <= self.phash_radius < 32 and 0 <= self.dhash_radius < 32):
            raise ValueError("radii must be in [0, 32)")
        if self.max_chroma_diff < 0:
            raise ValueError("max_chroma_diff must be >= 0")
        if not (0 <= self.strict_phash_radius <= self.phash_radius and 0 <= self.strict_dhash_radius <= self.dhash_radius):
            raise ValueError("strict_phash_radius / strict_dhash_radius must be in [0, phash_radius / dhash_radius]")
        if not 0 <= self.max_thumb_diff <= 255:
            raise ValueError(f"max_thumb_diff must be in [0, 255], got {self.max_thumb_diff}")
        if not 0 <= self.max_detail_distance <= 256:
            raise ValueError(f"max_detail_distance must be in [0, 256], got {self.max_detail_distance}")
        if self.max_aspect_diff < 0:
            raise ValueError(f"max_aspect_diff must be >= 0, got {self.max_aspect_diff}")
