"""Stage 6, `shard_report`, and the corpus roll-up `curation_summary` (duckdb over every shard)."""


import time

import dagster as dg
import polars as pl

from assets._common import BACKFILL_POLICY, OWNERS, RETRY, frame_md, per_shard, read_stage
from assets.classifications import image_classifications
from assets.dedup import dedup_clusters
from assets.embeddings import image_embeddings
from assets.inventory import raw_inventory
from assets.quality import curated_images
from curation import storage
from orchestration.k8s import cpu_step_tags
from partitions.shards import SHARDS
from resources.corpus import CorpusResource

STAGE_ASSETS = ("raw_inventory", "dedup_clusters", "curated_images", "image_embeddings", "image_classifications")


def stage_timings(instance: dg.DagsterInstance, shard: str) -> dict[str, float]:
    """Seconds each stage took for this shard, from the `elapsed_s` metadata of its latest materialisation."""
    out: dict[str, float] = {}
    for name in STAGE_ASSETS:
        res = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[shard]), limit=1
        )
        for rec in res.records:
            mat = rec.asset_materialization
            if mat is not None and "elapsed_s" in mat.metadata:
                out[name] = float(mat.metadata["elapsed_s"].value)
    return out


def _read_optional(context, corpus: CorpusResource, stage: str, shard: str) -> pl.DataFrame | None:
    uri = corpus.stage_uri(stage, shard)
    return read_stage(context, corpus, stage, shard) if storage.exists(uri) else None


@dg.asset(
    partitions_def=SHARDS,
    backfill_policy=BACKFILL_POLICY,
    deps=[raw_inventory, dedup_clusters, curated_images, image_embeddings, image_classifications],
    group_name="reports",
    kinds={"python", "html", "polars"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="1", memory="4Gi", cpu_limit="2", memory_limit="8Gi"),
    retry_policy=RETRY,
    description=(
        "What was kept, dropped and why for one shard: a self-contained HTML report (thumbnails, duplicate "
        "strips, rejects per reason, classes, embedding map, time per stage) and summary.json."
    ),
)
def shard_report(context: dg.AssetExecutionContext, corpus: CorpusResource) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _shard_report_one(context, corpus, shard))


def _shard_report_one(context: dg.AssetExecutionContext, corpus: CorpusResource, shard: str) -> dict:
    from curation.report import build_shard_report, markdown_preview, preview_thumbs

    t0 = time.monotonic()
    read = lambda stage: read_stage(context, corpus, stage, shard)  # noqa: E731
    curated = read("curated_images")
    out_dir = corpus.stage_dir("reports", "shards", shard)
    summary = build_shard_report(
        shard, read("raw_inventory"), read("dedup_clusters"), curated,
        _read_optional(context, corpus, "image_embeddings", shard),
        _read_optional(context, corpus, "image_classifications", shard),
        out_dir, timings=stage_timings(context.instance, shard),
        semantic=_read_optional(context, corpus, "semantic_duplicates", shard),
    )
    # Dagster renders Markdown metadata inline only below 1,000 characters, else behind a
    # "[Show Markdown]" button: keep the count tables (short) apart from the thumbnail strip (data URIs).
    tables = markdown_preview(summary, [])
    with_thumbs = markdown_preview(summary, preview_thumbs(curated))
    strip = with_thumbs[len(tables):].strip() if with_thumbs.startswith(tables) else with_thumbs
    return {
        "report": dg.MetadataValue.path(storage.join(out_dir, "report.html")),
        "summary_json": dg.MetadataValue.path(storage.join(out_dir, "summary.json")),
        "preview": dg.MetadataValue.md(tables),
        "thumbnails": dg.MetadataValue.md(strip or "_no kept images_"),
        "kept": int(summary["counts"].get("kept") or 0),
        "listed": int(summary["counts"].get("listed") or 0),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }



def _scan(corpus: CorpusResource, stage: str, shards: list[str]) -> pl.LazyFrame | None:
    uris = [corpus.stage_uri(stage, s) for s in shards]
    uris = [u for u in uris if storage.exists(u)]
    if not uris:
        return None
    if storage.is_s3(corpus.output_root):
        return pl.concat([storage.read_parquet(u) for u in uris], how="vertical_relaxed").lazy()
    return pl.scan_parquet(uris)


@dg.asset(
    deps=[shard_report],
    group_name="reports",
    kinds={"duckdb", "html", "polars"},
    owners=OWNERS,
    op_tags=cpu_step_tags(cpu="1", memory="4Gi", cpu_limit="2", memory_limit="8Gi"),
    description=(
        "Every shard rolled up: per-shard stage counts from one duckdb query over the stage outputs, and the "
        "corpus HTML report + summary.json (same sections as the shard reports, aggregated)."
    ),
)
def curation_summary(context: dg.AssetExecutionContext, corpus: CorpusResource) -> dg.MaterializeResult:
    import duckdb

    from curation.report import build_corpus_report, corpus_counts, markdown_preview

    shards = [k for k in corpus.registry().keys() if storage.exists(corpus.stage_uri("curated_images", k))]
    if not shards:
        raise dg.Failure("no shard has been curated yet: materialise curate_shard for at least one shard first")
    shard_counts = None
    if not storage.is_s3(corpus.output_root):
        with duckdb.connect() as con:
            shard_counts = corpus_counts(con, corpus.output_root)
    timings: dict[str, float] = {}
    for s in shards:
        for k, v in stage_timings(context.instance, s).items():
            timings[k] = timings.get(k, 0.0) + v
    out_dir = corpus.stage_dir("reports", "corpus")
    summary = build_corpus_report(
        _scan(corpus, "raw_inventory", shards), _scan(corpus, "dedup_clusters", shards),
        _scan(corpus, "curated_images", shards), _scan(corpus, "image_embeddings", shards),
        _scan(corpus, "image_classifications", shards), out_dir, timings=timings, shard_counts=shard_counts,
        semantic=_scan(corpus, "semantic_duplicates", shards),
    )
    md_counts = markdown_preview(summary, [])
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(storage.join(out_dir, "report.html")),
            "summary_json": dg.MetadataValue.path(storage.join(out_dir, "summary.json")),
            "shards": len(shards),
            "preview": dg.MetadataValue.md(md_counts),
            "per_shard": frame_md(shard_counts) if shard_counts is not None else "n/a (s3 root)",
        }
    )
