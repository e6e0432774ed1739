"""Stage 2, `dedup_clusters`: exact and near duplicates within the shard and against every earlier
shard. The same step writes `dedup_index` (the shard's hash index, plus the block files of the
cross-shard index store, curation/index_store.py) that later shards dedup against."""

import io
import time

import dagster as dg
import polars as pl

from assets._common import counts_md, make_config, per_shard_outputs, read_stage
from assets.factory import stage_asset
from curation import storage
from curation.index_store import IndexStore, MissingEarlierIndexError
from curation.scalars import max_int
from curation.stages import DEDUP_CLUSTERS, RAW_INVENTORY, stage
from resources.corpus import CorpusResource, StageSettings

STAGE = stage(DEDUP_CLUSTERS)
CLUSTERS, INDEX = STAGE.outputs


def dedup_index_store(corpus: CorpusResource, context=None) -> IndexStore:
    """The hash pass's cross-shard index (`dedup_index/<shard>.parquet` and its block files).
    With a step `context`, a corrupt shard index is handled like any corrupt stage file (read_stage)."""
    read = (lambda key: read_stage(context, corpus, INDEX, key, asset=STAGE.name)) if context is not None else None
    return IndexStore(INDEX, lambda key: corpus.stage_uri(INDEX, key), corpus.stage_dir(f"{INDEX}_blocks"), read)


def load_earlier_index(corpus: CorpusResource, keys: list[str], shard: str, context=None):
    """Index rows of every shard registered before `shard` (O(log N) block files); a clear, retryable
    failure when an earlier shard has no index yet (parallel backfills: it is not done yet)."""
    try:
        return dedup_index_store(corpus, context).load_earlier(keys, shard)
    except MissingEarlierIndexError as exc:
        raise dg.Failure(f"dedup of {exc}. Materialise {STAGE.name} for them first "
                         "(this step retries automatically in backfills).") from exc


def corpus_supersede_records(corpus: CorpusResource, shards: list[str]) -> pl.DataFrame:
    """The supersede records (SUPERSEDE_SCHEMA) in the `dedup_index` of each of `shards` that has one,
    reading only the columns they need; an index written before supersede records existed has none.
    An index file that cannot be read fails the step (not retried) naming the file: the corpus-level
    view must not silently miss a shard's records."""
    from curation.dedup import SUPERSEDE_SCHEMA, supersede_records

    frames = [pl.DataFrame(schema=SUPERSEDE_SCHEMA)]
    need = ["flags", *SUPERSEDE_SCHEMA]
    for shard in shards:
        uri = corpus.stage_uri(INDEX, shard)
        if not storage.exists(uri):
            continue
        try:
            buf = io.BytesIO(storage.read_bytes(uri))
            if "supersedes" not in pl.read_parquet_schema(buf):
                continue
            buf.seek(0)
            frames.append(supersede_records(pl.read_parquet(buf, columns=need)))
        except Exception as exc:  # noqa: BLE001 - any decode failure
            raise dg.Failure(f"{INDEX} file {uri} of shard {shard} cannot be read ({exc}): re-run "
                             f"{STAGE.name} for that shard", allow_retries=False) from exc
    return pl.concat(frames).sort("shard_seq", "image_id")


@stage_asset(STAGE.name)
def dedup_clusters(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings):
    yield from per_shard_outputs(context, lambda shard: _dedup_clusters_one(context, corpus, settings, shard),
                             STAGE.outputs)


def _dedup_clusters_one(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings,
                        shard: str) -> dict[str, dict]:
    from curation.dedup import DedupConfig, dedup_shard

    t0 = time.monotonic()
    registry = corpus.registry()
    keys = registry.keys()
    inventory = read_stage(context, corpus, RAW_INVENTORY, shard)
    earlier = load_earlier_index(corpus, keys, shard, context)
    cfg = make_config(DedupConfig, settings.dedup)
    clusters, index = dedup_shard(inventory, earlier, cfg)
    if len(clusters) != len(inventory):
        raise dg.Failure(f"dedup returned {len(clusters)} rows for {len(inventory)} inventory rows")
    uri, index_uri = corpus.stage_uri(CLUSTERS, shard), corpus.stage_uri(INDEX, shard)
    storage.write_parquet(clusters, uri)
    storage.write_parquet(index, index_uri)
    blocks = dedup_index_store(corpus, context).write_blocks(keys, shard)
    kinds = dict(clusters.group_by("dup_kind").len().iter_rows())
    sizes = clusters.group_by("cluster_id").len()
    cross = int((clusters["rep_shard"] != clusters["shard"]).fill_null(False).sum())
    elapsed = round(time.monotonic() - t0, 3)
    return {
        CLUSTERS: {
            "dagster/row_count": len(clusters),
            "path": dg.MetadataValue.path(uri),
            "clusters": int(sizes.height),
            "largest_cluster": max_int(sizes["len"]),
            "duplicates": int((~clusters["is_representative"]).sum()),
            "cross_shard_duplicates": cross,
            "earlier_shards_compared": len(registry.earlier_keys(shard)),
            "elapsed_s": elapsed,
            "by_kind": counts_md({str(k): int(v) for k, v in kinds.items()}, ("kind", "images")),
        },
        INDEX: {
            "dagster/row_count": len(index),
            "path": dg.MetadataValue.path(index_uri),
            "blocks_written": ", ".join(b.rsplit("/", 1)[-1] for b in blocks) or "none",
        },
    }
