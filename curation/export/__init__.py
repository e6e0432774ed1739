"""Training-ready export of a shard's kept images (the `curated_export` stage).

For one shard the export writes, under an export root (local folder or s3:// prefix):

- `tars/<shard>/<shard>-NNNNNN.tar`: WebDataset shards. Each kept image is one sample keyed by its
  `image_id` (16 hex chars, no dots): `<key>.<ext>` holds the image bytes in their original encoding,
  `<key>.json` the sample's metadata (image id, source URI, size, labels with probabilities, cluster
  id, quality metrics and scores), and, when asked for, `<key>.npy` its embedding. Tars are cut at a
  target size in bytes (a sample is never split; one larger than the target gets a tar of its own).
- `manifests/<shard>.parquet`: one row per exported sample (the same metadata, the tar it is in, and
  by default the image itself as a Hugging Face `Image` column), with Hugging Face `datasets` features
  in its schema metadata, so `datasets.load_dataset("parquet", data_files=".../manifests/*.parquet")`
  yields PIL images and a torch `DataLoader` can read it directly.
- `errors/<shard>.parquet`: kept images that could not be exported (source gone or changed since
  the inventory), each with its error code and message. Nothing is dropped silently.

Guarantees: every kept image of the shard is in exactly one tar and one manifest row, or in the
errors file; nothing else is written. Every file is written atomically (a temporary name renamed
into place locally; one completed multipart upload on S3). The tar boundaries are planned before
anything is written, from the inventory's byte counts, and recorded in `tars/<shard>/_plan.json`, so a
killed export resumes: tars of the same plan that already exist are kept, the rest are written, and
the manifest (written last) marks the shard complete.

Across shards (`corpus`): a shard's export is never rewritten, so when a later shard brings a larger
copy of an earlier shard's picture both tars hold a copy. `corpus_manifest` (the unpartitioned
`corpus_manifest` asset, `<output_root>/corpus_manifest/manifest.parquet`) lists exactly the
corpus-level keepers, the best exported copy of each cluster, with the tar, key and shard manifest
each lives in: training jobs read it (or filter the shard manifests / tars by its `key`s) to skip
the stale earlier copies.
"""

from curation.export.corpus import CorpusManifestStats, corpus_manifest, read_manifest_metadata
from curation.export.manifest import hf_features, write_manifest
from curation.export.samples import SAMPLE_COLUMNS, build_samples, sample_json
from curation.export.tars import ExportConfig, ExportResult, TarPlan, export_shard, plan_tars

__all__ = [
    "SAMPLE_COLUMNS",
    "CorpusManifestStats",
    "ExportConfig",
    "ExportResult",
    "TarPlan",
    "build_samples",
    "corpus_manifest",
    "export_shard",
    "hf_features",
    "plan_tars",
    "read_manifest_metadata",
    "sample_json",
    "write_manifest",
]
