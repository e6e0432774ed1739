"""Optional second dedup pass: semantic (embedding) near duplicates, within a shard and across shards.

Modules: `config` (SemanticDedupConfig, schemas), `lsh` (hyperplanes, centre, band keys, Hamming
limits), `vectors` (int8 / float16 / projection encodings, dot products), `pairs` (LSH pair search,
cross-index query, brute force), `match` (best earlier representative), `verify` (the two-stage
rule's crop-aware thumbnail check), `calibrate` (per-model rules from labelled pairs), `shard`
(the `semantic_dedup_shard` pipeline), `ivf` / `ivf_store` (the partitioned cross-shard index the
pipeline queries by default: only the lists nearest each image are read) and `buckets` (a
multi-probe SimHash alternative, bench only).

Why
---
Perceptual hashes (curation/dedup/) miss crops and re-framings: a 3% crop per side moves pHash by
~6 bits, out of reach of any radius that keeps precision (recall on the demo's crops: 0.09). Image
embeddings barely move under such a crop (cosine 0.95-0.99 on the demo, see `SemanticDedupConfig`),
so this pass runs on stage 4's embeddings (the curated set, i.e. after the hash pass).

Design (mirrors curation/dedup/)
----------------------------------
* **Two-stage rule, per model.** A pair links when its cosine is >= ``threshold``, or >=
  ``wide_threshold`` and stage 1's 8x8 thumbnails align (one image against windows of the other,
  `verify.align_diff` <= ``max_align_diff``): crops, re-framings and re-renders whose cosine falls
  short of the strict threshold, but not recolours. Calibrated per embedding model on labelled
  pairs (`calibrate`, bench/results/semantic_calibration.json). The candidate search (LSH, the
  cross-shard query) runs at ``wide_threshold``; leader clustering runs on the pairs that link.
* **Deterministic.** Every random quantity (LSH hyperplanes, the index projection) comes from a fixed
  seed and the embedding dimension only. The partitioned index's quantizers are fitted (fixed seed)
  on the earlier shards' rows in registration order; they decide which rows a query compares
  (recall), never the rule a compared pair is judged by.
* **No chaining.** Leader (star) clustering in priority order (input order = curated order; the
  first row of the shard has the highest priority): an image joins a cluster only if its cosine
  with the cluster's *representative itself* is >= the threshold (`curation.dedup.leader_clusters`).
* **Shards are immutable.** Shard N is compared with the persisted index of shards 1..N-1 first: an
  image whose cosine with an earlier *representative* is >= the threshold joins that cluster (the
  earliest shard wins, then the highest similarity, then the smallest cluster_id). The rest is
  clustered within the shard. Earlier outputs are never rewritten.
* **No all-pairs comparison.** Candidates come from random-hyperplane LSH (SimHash) with banding:
  ``n_bands`` bands of ``band_bits`` sign bits each; two images are candidates when all bits of at
  least one band agree. For a pair at angle theta a bit agrees with probability 1 - theta/pi, so a
  band with probability p**band_bits and some band with 1 - (1 - p**band_bits)**n_bands. Every pair
  is emitted once (by the first band it shares) and verified by an exact cosine. The search is
  probabilistic: recall against brute force at the threshold is measured (bench/semantic.py).
* **Compact index.** The index keeps, for representatives only, the band keys (``n_bands`` x uint32)
  and the vector used to verify cross-shard candidates (``index_vectors``: the embedding as int8
  with a per-row scale, the default; float16, exact; or an int8 random projection). Cosine is
  scale-invariant, so no scale is stored. Within-shard similarities use the full embeddings.
* **Cross-shard cost.** With `index="ivf"` the shard queries a partitioned index of the earlier
  representatives (`curation.semantic.ivf`, `match_earlier_ivf`): each image reads its nprobe
  nearest lists of bounded size (not the default: its recall fell at 5M rows on the synthetic
  bench). The default streaming path (`index="stream"`): `match_earlier` takes the earlier index as one frame or one frame per
  earlier shard (memory bounded by one shard's index); per earlier representative and band one
  lookup of its key in a direct table of the shard's keys (binary search when band_bits > 20),
  then each candidate pair (once, by its first shared band) goes through a Hamming pre-filter on
  all n_bands * band_bits key bits (popcount of packed words; `hamming_limits`: the distance a
  pair at cosine >= threshold - 0.01 exceeds with probability <= 1e-9, from the binomial law of
  SimHash bits, so results equal verifying every candidate; demo and synthetic: identical) and
  the survivors are verified by exact cosine, decoding only their index rows, in cache-sized
  blocks. 10k-image shard vs 1M earlier representatives: see bench/results/semantic.json.

Index schema: `index_schema` (curation/semantic/config.py).
"""

from curation.semantic.config import (
    SEMANTIC_SCHEMA,
    VECTOR_ENCODINGS,
    SemanticDedupConfig,
    index_schema,
)
from curation.semantic.lsh import band_keys, fit_center, hamming_limits
from curation.semantic.match import best_earlier_match, match_earlier
from curation.semantic.pairs import brute_force_pairs, lsh_pairs, query_pairs
from curation.semantic.shard import semantic_dedup_shard
from curation.semantic.vectors import decode, encode, query_vectors

__all__ = [
    "SEMANTIC_SCHEMA",
    "VECTOR_ENCODINGS",
    "SemanticDedupConfig",
    "band_keys",
    "best_earlier_match",
    "brute_force_pairs",
    "decode",
    "encode",
    "fit_center",
    "hamming_limits",
    "index_schema",
    "lsh_pairs",
    "match_earlier",
    "query_pairs",
    "query_vectors",
    "semantic_dedup_shard",
]
