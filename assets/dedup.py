"""Stage 2, `dedup_clusters`: exact and near duplicates within the shard and against every earlier shard."""


import time
import dagster as dg
import polars as pl

from assets._common import BACKFILL_POLICY, OWNERS, counts_md, make_config, per_shard, read_stage
from assets.inventory import raw_inventory
from curation import storage
from curation.index_blocks import closing_blocks, earlier_blocks
from orchestration.k8s import cpu_step_tags
from partitions.shards import SHARDS, ShardRegistry
from resources.corpus import CorpusResource, StageSettings

# Dedup of shard N reads the dedup index of shards 1..N-1 (as O(log N) block files, see
# curation/index_blocks.py). In a parallel backfill an earlier shard
# may not be done yet: the step then fails with a clear message and retries with backoff, so the
# result never depends on the order in which shards happened to run.
WAIT_FOR_EARLIER = dg.RetryPolicy(max_retries=8, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _block_uri(corpus: CorpusResource, keys: list[str], start: int, end: int) -> str:
    if start == end:
        return corpus.stage_uri("dedup_index", keys[start - 1])
    return corpus.stage_uri("dedup_index_blocks", f"{keys[start - 1]}__{keys[end - 1]}")


def _load_block(context, corpus: CorpusResource, keys: list[str], start: int, end: int,
                missing: list[str]) -> list[pl.DataFrame]:
    """The index rows of shards start..end (1-based positions): one block file when it exists,
    else its two halves (recursively), rebuilding the block file from them (curation/index_blocks.py).
    Shards without an index are appended to `missing`."""
    if start == end:
        key = keys[start - 1]
        if not storage.exists(corpus.stage_uri("dedup_index", key)):
            missing.append(key)
            return []
        if context is None:
            return [storage.read_parquet(corpus.stage_uri("dedup_index", key))]
        return [read_stage(context, corpus, "dedup_index", key, asset="dedup_clusters")]
    uri = _block_uri(corpus, keys, start, end)
    try:
        return [storage.read_parquet(uri)]
    except FileNotFoundError:
        pass
    except storage.CorruptOutputError:
        storage.delete(uri)  # derived data: rebuilt below from the shards' own indexes
    mid = start + (end - start + 1) // 2 - 1
    n_missing = len(missing)
    parts = _load_block(context, corpus, keys, start, mid, missing) + _load_block(context, corpus, keys, mid + 1, end, missing)
    if len(missing) == n_missing and parts:
        storage.write_parquet(pl.concat(parts, how="vertical_relaxed"), uri)
    return parts


def load_earlier_index(corpus: CorpusResource, registry: ShardRegistry, shard: str, context=None) -> pl.DataFrame | None:
    """Index rows of every shard registered before `shard`, read as O(log N) block files."""
    keys = registry.keys()
    position = keys.index(shard) + 1
    frames: list[pl.DataFrame] = []
    missing: list[str] = []
    for start, end in earlier_blocks(position):
        frames += _load_block(context, corpus, keys, start, end, missing)
    if missing:
        raise dg.Failure(
            f"dedup of {shard} compares against every earlier shard, but {len(missing)} earlier shard(s) "
            f"have no dedup index yet: {missing[:10]}{'...' if len(missing) > 10 else ''}. Materialise "
            "dedup_clusters for them first (this step retries automatically in backfills)."
        )
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def write_index_blocks(context, corpus: CorpusResource, registry: ShardRegistry, shard: str) -> None:
    """After `shard` wrote its index: drop block files that contain it (they may hold an older
    version of its index) and write the blocks it closes."""
    keys = registry.keys()
    position = keys.index(shard) + 1
    pos_of = {k: i + 1 for i, k in enumerate(keys)}
    for name in storage.list_dir(corpus.stage_dir("dedup_index_blocks")):
        first, sep, last = name.removesuffix(".parquet").partition("__")
        if sep and pos_of.get(first, 0) <= position <= pos_of.get(last, 0):
            storage.delete(corpus.stage_uri("dedup_index_blocks", name.removesuffix(".parquet")))
    for start, _mid, end in closing_blocks(position):
        _load_block(context, corpus, keys, start, end, [])


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[raw_inventory],
    group_name="dedup",
    kinds={"python", "polars", "parquet"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="2", memory="8Gi"),
    retry_policy=WAIT_FOR_EARLIER,
    description=(
        "Exact (sha256) and near (perceptual-hash) duplicate clusters, within the shard and against every "
        "earlier shard, with one deterministic representative per cluster (see README 'Dedup')."
    ),
)
def dedup_clusters(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _dedup_clusters_one(context, corpus, settings, shard))


def _dedup_clusters_one(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    from curation.dedup import DedupConfig, dedup_shard

    t0 = time.monotonic()
    registry = corpus.registry()
    inventory = read_stage(context, corpus, "raw_inventory", shard)
    earlier = load_earlier_index(corpus, registry, shard, context)
    cfg = make_config(DedupConfig, settings.dedup)
    clusters, index = dedup_shard(inventory, earlier, cfg)
    if len(clusters) != len(inventory):
        raise dg.Failure(f"dedup returned {len(clusters)} rows for {len(inventory)} inventory rows")
    uri = corpus.stage_uri("dedup_clusters", shard)
    storage.write_parquet(clusters, uri)
    storage.write_parquet(index, corpus.stage_uri("dedup_index", shard))
    write_index_blocks(context, corpus, registry, shard)
    kinds = dict(clusters.group_by("dup_kind").len().iter_rows())
    sizes = clusters.group_by("cluster_id").len()
    cross = int((clusters["rep_shard"] != clusters["shard"]).fill_null(False).sum())
    return {
        "dagster/row_count": len(clusters),
        "path": dg.MetadataValue.path(uri),
        "clusters": int(sizes.height),
        "largest_cluster": int(sizes["len"].max() or 0),
        "duplicates": int((~clusters["is_representative"]).sum()),
        "cross_shard_duplicates": cross,
        "earlier_shards_compared": len(registry.earlier_keys(shard)),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "by_kind": counts_md({str(k): int(v) for k, v in kinds.items()}, ("kind", "images")),
    }
