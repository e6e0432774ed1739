"""Stage 6, `shard_report`, and the corpus roll-up `curation_summary` (duckdb over every shard).

A shard report shows its shard's own `curated_images` (a copy that supersedes an earlier shard's
copy is kept there). The corpus report takes the corpus-level view: every shard's curated rows with
every shard's supersede records applied (`curation.dedup.corpus_keep`), so an earlier, smaller copy
counts as rejected with the reason `superseded` (and the per-shard kept counts follow)."""


import time

import dagster as dg
import polars as pl

from assets._common import frame_md, make_config, per_shard, read_stage
from assets.factory import stage_asset
from curation import storage
from curation.stages import (
    CURATED_IMAGES,
    CURATION_SUMMARY,
    DEDUP_CLUSTERS,
    IMAGE_CLASSIFICATIONS,
    IMAGE_EMBEDDINGS,
    IMAGE_SCORES,
    RAW_INVENTORY,
    REPORT_STAGES,
    SEMANTIC_DUPLICATES,
    SHARD_REPORT,
)
from resources.corpus import CorpusResource, StageSettings

STAGE_ASSETS = REPORT_STAGES  # the report's time per stage, in stage order (curation/stages.py)
REPORTS_DIR = "reports"


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
                value = mat.metadata["elapsed_s"].value
                if isinstance(value, (int, float)):
                    out[name] = float(value)
    return out


def _read_optional(context, corpus: CorpusResource, stage: str, shard: str) -> pl.DataFrame | None:
    uri = corpus.stage_uri(stage, shard)
    return read_stage(context, corpus, stage, shard) if storage.exists(uri) else None


@stage_asset(SHARD_REPORT)
def shard_report(context: dg.AssetExecutionContext, corpus: CorpusResource) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _shard_report_one(context, corpus, shard))


def _shard_report_one(context: dg.AssetExecutionContext, corpus: CorpusResource, shard: str) -> dict:
    from curation.report import build_shard_report, markdown_preview, preview_thumbs
    from curation.scoring import apply_head_reasons

    t0 = time.monotonic()
    read = lambda stage: read_stage(context, corpus, stage, shard)  # noqa: E731
    # head reasons (low_aesthetic, nsfw, ...) are rejects like any other check
    curated = apply_head_reasons(read(CURATED_IMAGES), _read_optional(context, corpus, IMAGE_SCORES, shard))
    out_dir = corpus.stage_dir(REPORTS_DIR, "shards", shard)
    summary = build_shard_report(
        shard, read(RAW_INVENTORY), read(DEDUP_CLUSTERS), curated,
        _read_optional(context, corpus, IMAGE_EMBEDDINGS, shard),
        _read_optional(context, corpus, IMAGE_CLASSIFICATIONS, shard),
        out_dir, timings=stage_timings(context.instance, shard),
        semantic=_read_optional(context, corpus, SEMANTIC_DUPLICATES, shard),
    )
    # Dagster renders Markdown metadata inline only below 1,000 characters, else behind a
    # "[Show Markdown]" button: keep the count tables (short) apart from the thumbnail strip (data URIs).
    tables = markdown_preview(summary, [])
    with_thumbs = markdown_preview(summary, preview_thumbs(curated))
    strip = with_thumbs[len(tables):].strip() if with_thumbs.startswith(tables) else with_thumbs
    return {
        "report": dg.MetadataValue.path(storage.join(out_dir, "report.html")),
        **_report_link(f"shards/{shard}/report.html"),
        "summary_json": dg.MetadataValue.path(storage.join(out_dir, "summary.json")),
        "preview": dg.MetadataValue.md(tables),
        "thumbnails": dg.MetadataValue.md(strip or "_no kept images_"),
        "kept": int(summary["counts"].get("kept") or 0),
        "listed": int(summary["counts"].get("listed") or 0),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }



def _report_link(under_reports: str) -> dict[str, dg.MetadataValue]:
    """`report_link`: the report on the report server (CURATION_REPORT_URL), one click in the UI."""
    from resources.environment import report_url

    url = report_url(under_reports)
    return {"report_link": dg.MetadataValue.url(url)} if url else {}


def _scan(corpus: CorpusResource, stage: str, shards: list[str]) -> pl.LazyFrame | None:
    uris = [corpus.stage_uri(stage, s) for s in shards]
    uris = [u for u in uris if storage.exists(u)]
    if not uris:
        return None
    if storage.is_s3(corpus.output_root):
        return pl.concat([storage.read_parquet(u) for u in uris], how="diagonal_relaxed").lazy()
    # shards written by different versions may differ in optional columns (e.g. ImageNet labels)
    return pl.scan_parquet(uris, missing_columns="insert", extra_columns="ignore")


def _scan_required(corpus: CorpusResource, stage: str, shards: list[str]) -> pl.LazyFrame:
    frame = _scan(corpus, stage, shards)
    if frame is None:
        raise dg.Failure(f"no {stage} output for the curated shards {shards[:5]}: re-run them", allow_retries=False)
    return frame


@stage_asset(CURATION_SUMMARY)
def curation_summary(context: dg.AssetExecutionContext, corpus: CorpusResource,
                     settings: StageSettings) -> dg.MaterializeResult:
    import duckdb

    from assets.dedup import corpus_supersede_records
    from curation.dedup import SUPERSEDED, corpus_keep
    from curation.quality import QualityConfig
    from curation.report import build_corpus_report, corpus_counts, markdown_preview, with_kept_counts

    shards = [k for k in corpus.registry().keys() if storage.exists(corpus.stage_uri(CURATED_IMAGES, k))]
    if not shards:
        raise dg.Failure("no shard has been curated yet: materialise the curate_shard job for at least one shard first")
    shard_counts = None
    if not storage.is_s3(corpus.output_root):
        with duckdb.connect() as con:
            shard_counts = corpus_counts(con, corpus.output_root)
    timings: dict[str, float] = {}
    for s in shards:
        for k, v in stage_timings(context.instance, s).items():
            timings[k] = timings.get(k, 0.0) + v
    out_dir = corpus.stage_dir(REPORTS_DIR, "corpus")
    inventory, clusters, curated = (_scan_required(corpus, stage, shards)
                                    for stage in (RAW_INVENTORY, DEDUP_CLUSTERS, CURATED_IMAGES))
    records = corpus_supersede_records(corpus, shards)
    if make_config(QualityConfig, settings.quality).reject_duplicates and records.height:
        curated = corpus_keep(curated, records)  # the corpus-level view: the best copy wins
        if shard_counts is not None:
            shard_counts = with_kept_counts(shard_counts, curated)
    summary = build_corpus_report(
        inventory, clusters, curated, _scan(corpus, IMAGE_EMBEDDINGS, shards),
        _scan(corpus, IMAGE_CLASSIFICATIONS, shards), out_dir, timings=timings, shard_counts=shard_counts,
        semantic=_scan(corpus, SEMANTIC_DUPLICATES, shards),
    )
    md_counts = markdown_preview(summary, [])
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(storage.join(out_dir, "report.html")),
            **_report_link("corpus/report.html"),
            "summary_json": dg.MetadataValue.path(storage.join(out_dir, "summary.json")),
            "shards": len(shards),
            "supersede_records": records.height,
            "superseded": int(summary["rejects_by_reason"].get(SUPERSEDED, 0)),
            "preview": dg.MetadataValue.md(md_counts),
            "per_shard": frame_md(shard_counts) if shard_counts is not None else "n/a (s3 root)",
        }
    )
