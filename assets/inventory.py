"""Stage 1, `raw_inventory`: every file of a shard accounted for, in one decode per image."""


import time

import dagster as dg
import polars as pl

from assets._common import BACKFILL_POLICY, OWNERS, Progress, RETRY, counts_md, make_config, per_shard, shard_source
from curation import storage
from orchestration.k8s import cpu_step_tags
from curation.schema import INVENTORY_SCHEMA
from partitions.shards import SHARDS
from resources.corpus import CorpusResource, StageSettings


def build_inventory(manifest: pl.DataFrame, shard: str, root: str, cfg, workers: int, progress=None) -> pl.DataFrame:
    from curation.inventory import iter_inventory

    batches = list(iter_inventory(manifest, shard, root, cfg, workers=workers, progress=progress))
    if not batches:
        return pl.DataFrame(schema=INVENTORY_SCHEMA)
    return pl.concat(batches, how="vertical")


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    group_name="ingest",
    kinds={"python", "polars", "parquet"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="4", memory="8Gi", cpu_limit="8", memory_limit="16Gi"),
    retry_policy=RETRY,
    description=(
        "One row per file in the shard's manifest, never fewer: URI, bytes, mtime, sha256, format, "
        "size after EXIF orientation, mode, aHash/dHash/pHash/wHash and quality metrics from ONE decode; "
        "unreadable files get an error code and message, and the shard still succeeds."
    ),
)
def raw_inventory(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _raw_inventory_one(context, corpus, settings, shard))


def _raw_inventory_one(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    from curation.inventory import InventoryConfig, default_workers

    t0 = time.monotonic()
    manifest = corpus.registry().manifest(shard)
    cfg = make_config(InventoryConfig, settings.inventory)
    workers = settings.inventory_workers or default_workers()
    progress = Progress(context, "inventory", len(manifest))
    df = build_inventory(manifest, shard, corpus.source_root(shard_source(shard)), cfg, workers, progress)
    if len(df) != len(manifest):
        raise dg.Failure(f"inventory has {len(df)} rows for {len(manifest)} manifest entries in {shard}")
    uri = corpus.stage_uri("raw_inventory", shard)
    storage.write_parquet(df, uri)
    errors = df.filter(pl.col("error_code").is_not_null()).group_by("error_code").len().sort("error_code")
    formats = df.group_by("format").len().sort("len", descending=True)
    return {
        "dagster/row_count": len(df),
        "path": dg.MetadataValue.path(uri),
        "decoded": int(df["error_code"].is_null().sum()),
        "errors": int(df["error_code"].is_not_null().sum()),
        "errors_by_code": counts_md(dict(errors.iter_rows()), ("error_code", "files")),
        "formats": counts_md({str(k): v for k, v in formats.iter_rows()}, ("format", "files")),
        "bytes_total": int(df["bytes"].fill_null(0).sum()),
        "images_per_second": round(len(df) / max(progress.elapsed, 1e-9), 1),
        "workers": workers,
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
