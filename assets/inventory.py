"""Stage 1, `raw_inventory`: every file of a shard accounted for, in one decode per image."""


import time

import dagster as dg
import polars as pl

from assets._common import Progress, counts_md, make_config, per_shard, shard_source
from assets.factory import stage_asset
from curation import storage
from curation.schema import INVENTORY_SCHEMA
from curation.stages import RAW_INVENTORY
from resources.corpus import CorpusResource, StageSettings


def build_inventory(manifest: pl.DataFrame, shard: str, root: str, cfg, workers: int, progress=None) -> pl.DataFrame:
    from curation.inventory import iter_inventory

    batches = list(iter_inventory(manifest, shard, root, cfg, workers=workers, progress=progress))
    if not batches:
        return pl.DataFrame(schema=INVENTORY_SCHEMA)
    return pl.concat(batches, how="vertical")


@stage_asset(RAW_INVENTORY)
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
    uri = corpus.stage_uri(RAW_INVENTORY, shard)
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
