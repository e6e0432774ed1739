"""Stage 2: exact and near-duplicate clustering of one shard against itself and all earlier shards.

Modules: `config` (DedupConfig, INDEX_SCHEMA, flags), `keys` (block plan, composite keys, slots),
`verify` (two-stage verification: thumbnails, 256-bit pHash, aspect, chromaticity), `supersede` (best copy across
shards: supersede records and the corpus-level keep decision), `search` (within-shard near pairs), `cluster`
(leader clustering), `query` (cross-shard query), `prepare` (per-shard arrays, representative
ranking), `earlier` (matching against the earlier index) and `shard` (the `dedup_shard` pipeline).

Overview
--------
* **Exact duplicates** share the file's sha256 (the index keeps a 64-bit prefix, and an exact match
  also requires equal pHash and dHash, so a prefix collision cannot merge two different images).
  Exact matching needs no image content, so flat/near-empty images can still be exact duplicates.
* **Near duplicates, two stages.** Candidates are the pairs within the *candidate* radii
  (pHash Hamming distance <= ``phash_radius`` 4 AND dHash <= ``dhash_radius`` 8: wide enough for
  neighbouring sizes, SVG re-renders and <= 48 px images); each candidate is then verified on
  features stage 1 stores in the inventory and this stage copies into its index: the 8x8 RGB
  thumbnail of the white-composited image (every cell and channel within ``max_thumb_diff``), the
  aspect ratio and the 256-bit pHash (``phash256`` within ``max_detail_distance`` bits: the detail
  the 8x8 thumbnail cannot see, which look-alikes differ in; `verify`). Rows without a thumbnail
  (inventories written before it existed) take the strict one-stage rule (pHash <= 2, dHash <= 4,
  chromaticity). Only *eligible* images (enough contrast and grey-level entropy) take part: the
  hashes of flat or near-empty images carry no information.
* **No chaining.** Clusters are built by leader (star) clustering in representative-priority order:
  an image joins a cluster only if it is within the radii of the cluster's *representative itself*.
  Connected components over pair links would chain A~B~C into one cluster although A and C differ.
* **Shards are immutable once materialised.** A shard is compared with the persisted index of all
  earlier shards first: an image that is an exact copy of an earlier row joins that row's cluster;
  an eligible image within the rules of an earlier *representative* (or of a copy that superseded
  one) joins that cluster (the earliest shard wins, then the smallest pHash distance, then the
  smaller cluster_id). Everything else is clustered within the shard, with representative
  priority: largest pixel count, then largest file size, then uri (then image_id). Earlier
  shards' outputs are never rewritten, so a representative's ``dup_kind`` says "unique" in its
  own shard even if later shards add members.
* **The best copy wins across shards** (`supersede`). When the best of a shard's rows that joined
  an earlier cluster has more pixels (then more bytes; ties keep the earlier copy) than that
  cluster's best copy so far, the shard's index row records that it *supersedes* it
  (FLAG_SUPERSEDES, ``supersedes``, ``superseded_shard``): the earlier partition is not touched.
  Who applies it: the shard's own `curated_images` keeps the superseding copy (`shard_keep` with
  the shard's own records: kept when acceptable, i.e. kept or rejected only as a duplicate, with
  ``supersedes`` / ``superseded_shard`` naming the copy it replaces), so it is embedded and
  exported with its shard, and a shard's outputs still depend only on it and earlier shards. The
  corpus-level readers take the corpus view, `corpus_keep(all shards' curated rows, all shards'
  records)`: per cluster the best acceptable copy is kept and every other kept copy is dropped
  with the reason ``superseded`` (the corpus report, `curation_summary`); the export's corpus
  manifest (`curation.export.corpus_manifest`) does the same over the exported rows, so it lists
  the best *exported* copy and a stale earlier tar's copy is left out, never rewritten.
* **No all-pairs comparison.** Candidate pairs come from multi-index hashing over *both* hashes
  (`near_pairs`): pHash is cut into ``phash_radius + 1`` bit blocks and dHash into
  ``dhash_radius + 1`` blocks. By the pigeonhole principle a pair within both radii has at least one
  identical pHash block *and* one identical dHash block, so it shares the composite key of some
  (pHash block, dHash block) combination: the search is exact (it finds every pair brute force
  finds); with the default candidate radii 4/8 there are 5 x 9 combinations with ~20-bit composite
  keys (2/4: 3 x 5, 32-bit keys). Each pair is emitted once, by the first combination it matches, then
  verified (pHash first, which rejects most candidates). Everything is vectorised numpy: one
  in-place 64-bit sort per combination. Larger radii stay exact but cost more: the key length is
  64/(phash_radius+1) + 64/(dhash_radius+1) bits, so 8/8 (~14-bit keys) is fine for 100k images but
  far too slow for 5M; 4/8 clusters 5M uniform hashes in ~45 CPU-seconds (bench/dedup.py).
* **Cross-shard cost.** `query_index` sorts the *shard's* keys and streams the earlier index past
  them in chunks: per index row and key one key computation and one lookup in a 1 MiB presence
  table; candidate generation, verification and clustering are proportional to the shard and its
  matches, and earlier shards are never re-clustered. Its keys are pairs of pHash blocks (pHash cut
  into ``phash_radius + 2`` blocks: a pair within the radius has two identical blocks; 15 keys of
  ~21 bits at the default 4), not the within-shard combinations: on real, skewed hashes (small
  dark-background images have low-entropy dHash blocks) they give ~5x fewer candidates in a third
  of the passes (`curation.dedup.query`). The earlier rows' thumbnails and 256-bit pHashes are
  decoded only for the representatives candidate pairs reach (`curation.dedup.earlier`).

Index schema (`INDEX_SCHEMA`), one row per hashed image of every materialised shard::

    image_id str, shard str, shard_seq Int32, cluster_id str, rep_shard str, distance Int16,
    sha64 UInt64 (first 64 bits of sha256), phash UInt64, dhash UInt64,
    chroma_r/g/b UInt8 (chromaticity * 255), flags UInt8 (bit0 eligible, bit1 representative,
    bit2 byte-identical to the representative, bit3 supersedes the cluster's best copy so far),
    width Int32, height Int32, bytes Int64, thumb_rgb Binary (192 bytes, null for old rows),
    supersedes str, superseded_shard str (null unless bit3)

The numeric part is 34 + 16 bytes per image plus the 192-byte thumbnail. The near-duplicate
search touches phash, dhash, chroma, flags and, for candidates only, the thumbnail and size of
eligible representatives. Indexes written before the size and thumbnail columns existed are read
with those columns null (their rows take the strict rule and are never superseded).
"""

from __future__ import annotations

from curation.dedup.cluster import cluster_hashes, leader_clusters
from curation.dedup.config import FLAG_SUPERSEDES, INDEX_SCHEMA, DedupConfig
from curation.dedup.earlier import best_earlier_match
from curation.dedup.keys import block_plan
from curation.dedup.prepare import representative_rank
from curation.dedup.query import query_index
from curation.dedup.search import near_pairs
from curation.dedup.shard import dedup_shard
from curation.dedup.supersede import SUPERSEDE_SCHEMA, SUPERSEDED, corpus_keep, find_supersedes, shard_keep, supersede_records
from curation.dedup.verify import VerifyFeatures, chromaticity, verify_candidates

__all__ = [
    "FLAG_SUPERSEDES",
    "INDEX_SCHEMA",
    "SUPERSEDED",
    "SUPERSEDE_SCHEMA",
    "DedupConfig",
    "VerifyFeatures",
    "corpus_keep",
    "find_supersedes",
    "shard_keep",
    "supersede_records",
    "best_earlier_match",
    "block_plan",
    "chromaticity",
    "cluster_hashes",
    "dedup_shard",
    "leader_clusters",
    "near_pairs",
    "query_index",
    "representative_rank",
    "verify_candidates",
]
