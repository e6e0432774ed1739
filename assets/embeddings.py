"""Stage 4, `image_embeddings`: image embeddings of the curated set (GPU when present, CPU otherwise)."""

from __future__ import annotations

import time
import dagster as dg
import polars as pl

from assets._common import OWNERS, RETRY, Progress, shard_source
from assets.quality import curated_images
from curation import storage
from orchestration.k8s import gpu_step_tags
from partitions.shards import SHARDS
from resources.corpus import CorpusResource
from resources.models import EmbedderResource


def image_opener(root: str, max_bytes: int = 512 * 1024 * 1024):
    """A function uri -> RGB PIL image (EXIF-oriented, transparency composited like stage 1)."""
    from curation.imaging import load_rgb
    from curation.reader import read_source

    def open_rgb(uri: str):
        data, _ = read_source(uri, root, max_bytes=max_bytes)
        return load_rgb(data)

    return open_rgb


@dg.asset(
    partitions_def=SHARDS,
    deps=[curated_images],
    group_name="ml",
    kinds={"pytorch", "polars", "parquet"},
    owners=OWNERS,
    pool="gpu",
    op_tags=gpu_step_tags(),
    retry_policy=RETRY,
    description=(
        "L2-normalised image embeddings (float16 precision) of every kept image, written in chunks so a "
        "killed step resumes after its last completed chunk. Model from the `embedder` resource."
    ),
)
def image_embeddings(context: dg.AssetExecutionContext, corpus: CorpusResource, embedder: EmbedderResource) -> dg.MaterializeResult:
    from curation.embedding import embed_shard

    t0 = time.monotonic()
    shard = context.partition_key
    curated = storage.read_parquet(corpus.stage_uri("curated_images", shard), columns=["image_id", "uri", "keep"])
    items = curated.filter(pl.col("keep")).select("image_id", "uri")
    model = embedder.get_embedder()
    progress = Progress(context, "embeddings", len(items))
    result = embed_shard(
        items,
        image_opener(corpus.source_root(shard_source(shard))),
        model,
        chunk_dir=corpus.stage_dir("image_embeddings_chunks", shard),
        shard=shard,
        progress=progress,
    )
    uri = corpus.stage_uri("image_embeddings", shard)
    storage.write_parquet(result, uri)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(result),
            "path": dg.MetadataValue.path(uri),
            "model": model.name,
            "dim": model.dim,
            "device": str(model.device),
            "elapsed_s": round(time.monotonic() - t0, 3),
            "images_per_second": round(len(items) / max(progress.elapsed, 1e-9), 1),
        }
    )
