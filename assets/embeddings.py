"""Stage 4, `image_embeddings`: image embeddings of the curated set (GPU when present, CPU otherwise)."""


import time
import dagster as dg
import polars as pl

from assets._common import BACKFILL_POLICY, OWNERS, Progress, RETRY, per_shard, read_stage, shard_source
from assets.quality import curated_images
from curation import storage
from curation.imaging.policy import rgb_opener as image_opener  # uri -> RGB image under the open policy
from orchestration.k8s import gpu_step_tags
from partitions.shards import SHARDS
from resources.corpus import CorpusResource
from resources.models import EmbedderResource


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
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
    return per_shard(context, lambda shard: _image_embeddings_one(context, corpus, embedder, shard))


def _image_embeddings_one(context: dg.AssetExecutionContext, corpus: CorpusResource, embedder: EmbedderResource, shard: str) -> dict:
    from curation.embedding import embed_shard
    from curation.reader import read_source

    t0 = time.monotonic()
    curated = read_stage(context, corpus, "curated_images", shard, columns=["image_id", "uri", "keep"])
    items = curated.filter(pl.col("keep")).select("image_id", "uri")
    model = embedder.get_embedder()
    progress = Progress(context, "embeddings", len(items))
    root = corpus.source_root(shard_source(shard))
    result = embed_shard(
        items,
        image_opener(root),
        model,
        read_bytes=lambda uri: read_source(uri, root, max_bytes=512 * 1024 * 1024)[0],  # nvJPEG path on GPU
        chunk_dir=corpus.stage_dir("image_embeddings_chunks", shard),
        shard=shard,
        chunk_size=embedder.chunk_size,
        progress=progress,
    )
    uri = corpus.stage_uri("image_embeddings", shard)
    storage.write_parquet(result, uri)
    failed = result.filter(pl.col("embedding").is_null())
    return {
        "dagster/row_count": len(result),
        "path": dg.MetadataValue.path(uri),
        "model": model.name,
        "dim": model.dim,
        "embedded": len(result) - len(failed),
        "failed": len(failed),
        "device": str(model.device),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "images_per_second": round(len(items) / max(progress.elapsed, 1e-9), 1),
    }
