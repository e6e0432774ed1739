"""Stage 4, `image_embeddings`: image embeddings of the curated set (GPU when present, CPU otherwise)."""


import time

import dagster as dg
import polars as pl

from assets._common import Progress, per_shard, read_stage, shard_source
from assets.factory import stage_asset
from curation import storage
from curation.imaging.policy import rgb_opener as image_opener  # uri -> RGB image under the open policy
from curation.stages import CURATED_IMAGES, IMAGE_EMBEDDINGS
from resources.corpus import CorpusResource
from resources.models import EmbedderResource


@stage_asset(IMAGE_EMBEDDINGS)
def image_embeddings(context: dg.AssetExecutionContext, corpus: CorpusResource,
                     embedder: EmbedderResource) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _image_embeddings_one(context, corpus, embedder, shard))


def _image_embeddings_one(context: dg.AssetExecutionContext, corpus: CorpusResource, embedder: EmbedderResource,
                          shard: str) -> dict:
    from curation.embedding import embed_shard
    from curation.imaging.policy import decode_rgb, source_reader

    t0 = time.monotonic()
    curated = read_stage(context, corpus, CURATED_IMAGES, shard, columns=["image_id", "uri", "keep"])
    items = curated.filter(pl.col("keep")).select("image_id", "uri")
    model = embedder.get_embedder()
    progress = Progress(context, "embeddings", len(items))
    root = corpus.source_root(shard_source(shard))
    result = embed_shard(
        items,
        image_opener(root),
        model,
        read_bytes=source_reader(root),  # raw bytes for the nvJPEG path on GPU, same limits as stage 1
        decode_bytes=decode_rgb,  # the decode of image_opener, for decoding in processes on a GPU host
        chunk_dir=corpus.stage_dir(f"{IMAGE_EMBEDDINGS}_chunks", shard),
        shard=shard,
        chunk_size=embedder.chunk_size,
        decode_processes=embedder.decode_processes,
        progress=progress,
    )
    uri = corpus.stage_uri(IMAGE_EMBEDDINGS, shard)
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
