"""Stage 2: exact and near-duplicate clustering of one shard against itself and all earlier shards.

Modules: `config` (DedupConfig, INDEX_SCHEMA, flags), `keys` (block plan, composite keys, slots),
`verify` (chromaticity, candidate verification), `search` (within-shard near pairs), `cluster`
(leader clustering), `query` (cross-shard query), `prepare` (per-shard arrays, representative
ranking), `earlier` (matching against the earlier index) and `shard` (the `dedup_shard` pipeline).

Overview
--------
* **Exact duplicates** share the file's sha256 (the index keeps a 64-bit prefix, and an exact match
  also requires equal pHash and dHash, so a prefix collision cannot merge two different images).
  Exact matching needs no image content, so flat/near-empty images can still be exact duplicates.
* **Near duplicates** must agree on *three* independent signals with the cluster's representative:
  pHash Hamming distance <= ``phash_radius``, dHash Hamming distance <= ``dhash_radius`` and a colour
  check (chromaticity, see `DedupConfig`). Only *eligible* images (enough contrast and grey-level
  entropy) take part: the hashes of flat or near-empty images carry no information.
* **No chaining.** Clusters are built by leader (star) clustering in representative-priority order:
  an image joins a cluster only if it is within the radii of the cluster's *representative itself*.
  Connected components over pair links would chain A~B~C into one cluster although A and C differ.
* **Shards are immutable once materialised.** A shard is compared with the persisted index of all
  earlier shards first: an image that is an exact copy of an earlier row joins that row's cluster;
  an eligible image within the radii of an earlier *representative* joins that representative's
  cluster (the earliest shard wins, then the smallest pHash distance, then the smaller cluster_id).
  Everything else is clustered within the shard, with representative priority: largest pixel count,
  then largest file size, then uri (then image_id). Earlier shards' outputs are never rewritten, so a
  representative's ``dup_kind`` says "unique" in its own shard even if later shards add members.
* **No all-pairs comparison.** Candidate pairs come from multi-index hashing over *both* hashes
  (`near_pairs`): pHash is cut into ``phash_radius + 1`` bit blocks and dHash into
  ``dhash_radius + 1`` blocks. By the pigeonhole principle a pair within both radii has at least one
  identical pHash block *and* one identical dHash block, so it shares the composite key of some
  (pHash block, dHash block) combination: the search is exact (it finds every pair brute force
  finds), and the composite keys are 32 bits long for the default radii (3 x 5 combinations), so
  buckets stay tiny even for 5M uniform hashes. Each pair is emitted once, by the first combination it matches, then
  verified (pHash first, which rejects most candidates). Everything is vectorised numpy: one
  in-place 64-bit sort per combination. Larger radii stay exact but cost more: the key length is
  64/(phash_radius+1) + 64/(dhash_radius+1) bits, so 8/8 (~14-bit keys) is fine for 100k images but
  far too slow for 5M; 4/4 (5 x 5 combinations, ~26-bit keys) still clusters 5M in seconds.
* **Cross-shard cost.** `query_index` sorts the *shard's* composite keys and streams the earlier
  index past them in chunks: per index row and combination one key computation and one lookup in a
  1 MiB presence table (~0.07 us per index row in total with the default radii, i.e. ~0.4 s per
  shard at 5M earlier images, less than reading the index from Parquet); candidate generation,
  verification and clustering are proportional to the shard and its matches, and earlier shards are
  never re-clustered. (A 10k shard: 0.03 s against 100k earlier rows, 0.14 s against 1M.)

Index schema (`INDEX_SCHEMA`), one row per hashed image of every materialised shard::

    image_id str, shard str, shard_seq Int32, cluster_id str, rep_shard str, distance Int16,
    sha64 UInt64 (first 64 bits of sha256), phash UInt64, dhash UInt64,
    chroma_r/g/b UInt8 (chromaticity * 255), flags UInt8 (bit0 eligible, bit1 representative,
    bit2 byte-identical to the representative)

The numeric part is 4 + 2 + 8 + 8 + 8 + 3 + 1 = 34 bytes per image; measured (bench/dedup.py) the
whole row is ~72 bytes in memory (polars, with the strings) and ~25 bytes in zstd Parquet (the three
64-bit hashes are incompressible; ids, shard names and flags compress away). The near-duplicate
search touches only phash, dhash, chroma and flags of eligible representatives (20 bytes).
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
from curation.dedup.supersede import SUPERSEDE_SCHEMA, corpus_keep, find_supersedes, supersede_records
from curation.dedup.verify import VerifyFeatures, chromaticity, verify_candidates

__all__ = [
    "FLAG_SUPERSEDES",
    "INDEX_SCHEMA",
    "SUPERSEDE_SCHEMA",
    "DedupConfig",
    "VerifyFeatures",
    "corpus_keep",
    "find_supersedes",
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
