"""What ML users take away from a shard: model-head scores (`image_scores`), the training-ready export
(`curated_export`, WebDataset tars + Parquet manifest per shard, and the corpus-level
`corpus_manifest` over every exported shard) and the similarity index segment
(`similarity_index`). The work is in the library: curation/scoring.py, curation/heads.py,
curation/export/, curation/similarity.py; these functions read the stage inputs and record metadata."""


import time

import dagster as dg
import numpy as np
import polars as pl

from assets._common import check_per_shard, counts_md, make_config, per_shard, read_stage, shard_source
from assets.factory import stage_asset
from curation import storage
from curation.stages import (
    CORPUS_MANIFEST,
    CURATED_EXPORT,
    CURATED_IMAGES,
    IMAGE_CLASSIFICATIONS,
    IMAGE_EMBEDDINGS,
    IMAGE_SCORES,
    RAW_INVENTORY,
    SIMILARITY_INDEX,
)
from partitions.shards import SHARDS
from resources.corpus import CorpusResource, StageSettings


def export_root(corpus: CorpusResource) -> str:
    return corpus.stage_dir(CURATED_EXPORT)


def index_root(corpus: CorpusResource) -> str:
    return corpus.stage_dir(SIMILARITY_INDEX)


def load_heads(settings: StageSettings, model_id: str | None, dim: int | None) -> list:
    """The configured heads, loaded and checked against the embeddings' model and dimension. A head
    that cannot load or does not fit fails the step at once (never retried) with HeadLoadError's line."""
    from curation.heads import HeadLoadError, load_head

    heads = []
    for hs in settings.heads:
        try:
            head = load_head(hs.to_library())
            if model_id is not None and dim is not None:
                head.check_embedder(model_id, dim)
        except HeadLoadError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        heads.append(head)
    return heads


@stage_asset(IMAGE_SCORES)
def image_scores(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _image_scores_one(context, corpus, settings, shard))


def _image_scores_one(context, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    from curation.scoring import score_columns, score_shard

    t0 = time.monotonic()
    columns = ["image_id", "model", "embedding"] if settings.heads else ["image_id", "model"]
    emb = read_stage(context, corpus, IMAGE_EMBEDDINGS, shard, columns=columns)
    if not settings.heads:
        emb = emb.with_columns(pl.lit(None, dtype=pl.List(pl.Float32)).alias("embedding"))
    present = emb.filter(pl.col("embedding").is_not_null())
    model_id = present["model"][0] if len(present) else None
    dim = len(present["embedding"][0]) if len(present) else None
    scores = score_shard(emb, load_heads(settings, model_id, dim))
    uri = corpus.stage_uri(IMAGE_SCORES, shard)
    storage.write_parquet(scores, uri)
    reasons = scores.select(pl.col("reasons").explode().drop_nulls())["reasons"].value_counts(sort=True)
    means = {c: scores[c].mean() for c in score_columns(scores)}
    return {
        "dagster/row_count": len(scores),
        "path": dg.MetadataValue.path(uri),
        "heads": ", ".join(h.name for h in settings.heads) or "none",
        "rejected_by_heads": int((scores["reasons"].list.len() > 0).sum()),
        "by_reason": counts_md({str(r): int(n) for r, n in reasons.iter_rows()}),
        **{f"mean_{c}": round(float(m), 4) for c, m in means.items() if isinstance(m, (int, float))},
        "elapsed_s": round(time.monotonic() - t0, 3),
    }


def export_samples(context, corpus: CorpusResource, shard: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The shard's curated table with head reasons applied, and the export's sample frame."""
    from curation.export import build_samples
    from curation.scoring import apply_head_reasons

    read = lambda stage, **kw: read_stage(context, corpus, stage, shard, **kw)  # noqa: E731
    scores = read(IMAGE_SCORES)
    curated = apply_head_reasons(read(CURATED_IMAGES), scores)
    samples = build_samples(read(RAW_INVENTORY), curated, classifications=read(IMAGE_CLASSIFICATIONS),
                            embeddings=read(IMAGE_EMBEDDINGS, columns=["image_id", "embedding"]),
                            scores=scores.drop("reasons", "reject_details"))
    return curated, samples


@stage_asset(CURATED_EXPORT)
def curated_export(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _curated_export_one(context, corpus, settings, shard))


def _curated_export_one(context, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    from curation.export import ExportConfig, export_shard
    from curation.imaging.policy import source_reader

    t0 = time.monotonic()
    curated, samples = export_samples(context, corpus, shard)
    cfg = make_config(ExportConfig, settings.export)
    if not cfg.include_embedding and "embedding" in samples.columns:
        samples = samples.drop("embedding")
    root = export_root(corpus)
    result = export_shard(samples, root, shard, source_reader(corpus.source_root(shard_source(shard))), cfg)
    excluded = curated.filter(~pl.col("keep")).select(pl.col("reasons").explode())["reasons"].value_counts(sort=True)
    return {
        "dagster/row_count": result.samples,
        "manifest": dg.MetadataValue.path(result.manifest_uri),
        "tars": len(result.tars),
        "reused_tars": result.reused_tars,
        "bytes_written": result.bytes_written,
        "export_errors": len(result.errors),
        "excluded": counts_md({str(r): int(n) for r, n in excluded.iter_rows()}),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }


def corpus_manifest_uri(corpus: CorpusResource) -> str:
    return corpus.stage_dir(CORPUS_MANIFEST, "manifest.parquet")


@stage_asset(CORPUS_MANIFEST)
def corpus_manifest(context: dg.AssetExecutionContext, corpus: CorpusResource,
                    settings: StageSettings) -> dg.MaterializeResult:
    """Every exported shard's manifest rows (no image bytes) and every supersede record of those
    shards -> the corpus-level keepers (`curation.export.corpus_manifest`). With
    `quality.reject_duplicates` off every copy is kept, so no record applies."""
    from assets.dedup import corpus_supersede_records
    from curation.export import corpus_manifest as build
    from curation.export import read_manifest_metadata
    from curation.quality import QualityConfig

    root = export_root(corpus)
    uris = {k: storage.join(root, "manifests", f"{k}.parquet") for k in corpus.registry().keys()}
    shards = [k for k, u in uris.items() if storage.exists(u)]
    if not shards:
        raise dg.Failure("no shard has been exported yet: materialise curated_export for at least one shard first",
                         allow_retries=False)
    rows = pl.concat([read_manifest_metadata(uris[k]) for k in shards], how="diagonal_relaxed")
    records = corpus_supersede_records(corpus, shards)  # only exported shards: their copies are in tars
    if not make_config(QualityConfig, settings.quality).reject_duplicates:
        records = records.head(0)
    listed, stats = build(rows, records)
    uri = corpus_manifest_uri(corpus)
    storage.write_parquet(listed, uri)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": stats.rows,
        "path": dg.MetadataValue.path(uri),
        "shards": len(shards),
        "exported_samples": rows.height,
        "superseded": stats.superseded,
        "supersede_records": records.height,
    })


@stage_asset(SIMILARITY_INDEX)
def similarity_index(context: dg.AssetExecutionContext, corpus: CorpusResource, settings: StageSettings) -> dg.MaterializeResult:
    return per_shard(context, lambda shard: _similarity_index_one(context, corpus, settings, shard))


def _similarity_index_one(context, corpus: CorpusResource, settings: StageSettings, shard: str) -> dict:
    from curation.similarity import IndexConfig, segment_uris, write_segment

    t0 = time.monotonic()
    emb = read_stage(context, corpus, IMAGE_EMBEDDINGS, shard, columns=["image_id", "embedding"])
    emb = emb.filter(pl.col("embedding").is_not_null())
    vectors = np.asarray(emb["embedding"].to_list(), dtype=np.float32).reshape(len(emb), -1)
    nbytes = write_segment(index_root(corpus), shard, emb["image_id"].to_list(), vectors,
                           make_config(IndexConfig, settings.similarity))
    return {
        "dagster/row_count": len(emb),
        "path": dg.MetadataValue.path(segment_uris(index_root(corpus), shard)[0]),
        "bytes": nbytes,
        "bytes_per_vector": round(nbytes / max(1, len(emb)), 1),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }


@dg.asset_check(asset=CURATED_EXPORT, blocking=False, partitions_def=SHARDS,
                description="Every kept image that passes the heads is exactly once in the manifest or the "
                            "errors file; nothing else.")
def export_complete(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _export_complete_one(context, corpus, shard))


def _export_complete_one(context, corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    curated, _ = export_samples(context, corpus, shard)
    kept = set(curated.filter(pl.col("keep"))["image_id"])
    root = export_root(corpus)
    manifest = storage.read_parquet(storage.join(root, "manifests", f"{shard}.parquet"), columns=["image_id"])
    errors = storage.read_parquet(storage.join(root, "errors", f"{shard}.parquet"))
    listed = manifest["image_id"].to_list() + errors["image_id"].to_list()
    dupes, missing, extra = len(listed) - len(set(listed)), len(kept - set(listed)), len(set(listed) - kept)
    return dg.AssetCheckResult(passed=dupes == missing == extra == 0,
                               metadata={"kept": len(kept), "manifest_rows": len(manifest), "errors": len(errors),
                                         "duplicates": dupes, "missing": missing, "not_kept": extra})


@dg.asset_check(asset=SIMILARITY_INDEX, blocking=False, partitions_def=SHARDS,
                description="The shard's segment has one id per embedded image and as many vectors as ids.")
def similarity_index_complete(context: dg.AssetCheckExecutionContext, corpus: CorpusResource) -> dg.AssetCheckResult:
    return check_per_shard(context, lambda shard: _similarity_index_complete_one(corpus, shard))


def _similarity_index_complete_one(corpus: CorpusResource, shard: str) -> dg.AssetCheckResult:
    from curation.similarity import load_segment

    emb = storage.read_parquet(corpus.stage_uri(IMAGE_EMBEDDINGS, shard), columns=["image_id", "embedding"])
    embedded = set(emb.filter(pl.col("embedding").is_not_null())["image_id"])
    seg = load_segment(index_root(corpus), shard)
    ids = seg.ids
    return dg.AssetCheckResult(
        passed=len(ids) == len(set(ids)) == len(embedded) and set(ids) == embedded and seg.index.ntotal == len(ids),
        metadata={"embedded": len(embedded), "ids": len(ids), "vectors": int(seg.index.ntotal)})


EXPORT_CHECKS = [export_complete, similarity_index_complete]
