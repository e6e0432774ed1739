"""Everything a report shows, computed once from the stage frames: `analyse` returns `ReportData`.

Inputs are the stage frames (DataFrame or LazyFrame, schemas of `curation.schema`); only the
columns a section needs are collected, and at most `max_map_points` embeddings. The result holds
the collected frames, the JSON summary (`summary`, written as `summary.json`: counts per stage,
rejects by reason, decode errors, duplicate and semantic-duplicate statistics, class counts, the
embedding map's model and explained variance, timings with throughput, the ImageNet top-1 class
counts) and the 2-D PCA points of the embedding map. Labels come from the few-shot probe (`fs_*`)
when any image has one, else from zero-shot (`zs_*`, "unknown" ignored). ImageNet labels (the
offline model's classifier head, `curation.embedding.imagenet`) come from the classifications'
``in_label``/``in_prob`` when that frame has them, else from the embeddings' ``in_topk_labels`` /
``in_topk_probs`` (first entry); without either the summary says ``available: false``. Nothing
here renders or writes anything.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curation.quality import reject_counts
from curation.report.counts import collect_columns, optional_columns, stage_counts_by_shard
from curation.report.spec import SEMANTIC_COLUMNS, STAGE_ITEMS, STAGES, UNKNOWN_LABEL, Frame
from curation.scalars import max_int, min_float


@dataclass
class ReportData:
    """Everything a report shows, computed once from the frames."""

    scope: str
    title: str
    summary: dict[str, Any]
    per_shard: pl.DataFrame | None
    inv: pl.DataFrame
    clu: pl.DataFrame
    cur: pl.DataFrame
    cls: pl.DataFrame | None
    label_source: str | None
    map_points: pl.DataFrame | None = None  # x, y, colour label
    map_colour_by: str = ""
    map_note: str = ""
    sem: pl.DataFrame | None = None  # semantic_duplicates rows (None: the optional pass was not run)
    imagenet: pl.DataFrame | None = None  # image_id, label, prob: ImageNet top-1 (None: no such columns)
    extras: dict[str, Any] = field(default_factory=dict)


def _dup_stats(clu: pl.DataFrame, inv_ids: pl.Series) -> tuple[dict[str, Any], pl.DataFrame]:
    """Summary numbers and a frame of clusters with their display size (rep counted even when it
    lives in an earlier shard), largest first."""
    grouped = clu.filter(pl.col("cluster_id").is_not_null()).group_by("cluster_id").agg(
        pl.len().alias("rows"),
        pl.col("is_representative").fill_null(False).any().alias("rep_here"),
        pl.col("rep_shard").drop_nulls().first().alias("rep_shard"),
    )
    known = inv_ids.cast(pl.String).unique().alias("cluster_id").to_frame()
    known = known.with_columns(pl.lit(True).alias("_rep_listed"))
    grouped = grouped.join(known, on="cluster_id", how="left").with_columns(
        (pl.col("rows") + (~pl.col("rep_here") & pl.col("_rep_listed").is_null()).cast(pl.Int64)).alias("size")
    ).drop("_rep_listed").sort(["size", "cluster_id"], descending=[True, False])
    multi = grouped.filter(pl.col("size") > 1)
    kinds = {str(k): int(v) for k, v in clu.group_by("dup_kind").len().sort("dup_kind").iter_rows() if k is not None}
    stats = {
        "clusters_with_duplicates": int(multi.height),
        "duplicate_images": int((~clu["is_representative"].fill_null(True)).sum()),
        "largest_cluster": max_int(grouped["size"]) if grouped.height else 0,
        "by_kind": kinds,
        "cross_shard": int((clu["rep_shard"] != clu["shard"]).fill_null(False).sum()),
    }
    return stats, multi


def _semantic_stats(sem: pl.DataFrame | None) -> tuple[dict[str, Any], pl.DataFrame | None]:
    """Summary numbers of the semantic pass and its clusters with more than one member (display
    size counts the representative even when it lives in a shard outside the frame), largest first."""
    keys = ("images_compared", "representatives", "clusters_with_duplicates", "linked_images", "cross_shard",
            "largest_cluster", "min_similarity")
    if sem is None:
        return {"available": False, **dict.fromkeys(keys)}, None
    sem = sem.unique("image_id", keep="first")
    linked = sem.filter(~pl.col("is_representative").fill_null(False))
    grouped = sem.filter(pl.col("cluster_id").is_not_null()).group_by("cluster_id").agg(
        pl.len().alias("rows"),
        (pl.col("is_representative").fill_null(False) & (pl.col("image_id") == pl.col("cluster_id")))
        .any().alias("rep_here"),
        pl.col("rep_shard").drop_nulls().first().alias("rep_shard"),
        pl.col("similarity").filter(~pl.col("is_representative").fill_null(False)).min().alias("min_sim"),
        (pl.col("shard") != pl.col("rep_shard")).fill_null(False).any().alias("cross"),
    ).with_columns((pl.col("rows") + (~pl.col("rep_here")).cast(pl.Int64)).alias("size"))
    multi = grouped.filter(pl.col("size") > 1).sort(["size", "min_sim", "cluster_id"],
                                                    descending=[True, False, False], nulls_last=True)
    min_sim = min_float(linked["similarity"])
    stats = {
        "available": True,
        "images_compared": int(sem.height),
        "representatives": int(sem["is_representative"].fill_null(False).sum()),
        "clusters_with_duplicates": int(multi.height),
        "linked_images": int(linked.height),
        "cross_shard": int((linked["rep_shard"] != linked["shard"]).fill_null(False).sum()),
        "largest_cluster": max_int(multi["size"]) if multi.height else 0,
        "min_similarity": None if min_sim is None else round(min_sim, 4),
    }
    return stats, multi


def _imagenet_top1(embeddings: Frame | None, classifications: Frame | None) -> tuple[pl.DataFrame | None, str | None]:
    """(image_id, label, prob of each image's ImageNet top-1, the frame it came from), or (None,
    None) when neither frame has an ImageNet label."""
    for frame, source, label, prob in ((classifications, "image_classifications", "in_label", "in_prob"),
                                       (embeddings, "image_embeddings", "in_topk_labels", "in_topk_probs")):
        if frame is None:
            continue
        lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        if not {label, prob} <= set(lf.collect_schema().names()):
            continue
        lab, p = pl.col(label), pl.col(prob)
        if label == "in_topk_labels":
            lab, p = lab.list.first(), p.list.first()
        df = lf.select(pl.col("image_id"), lab.cast(pl.String).alias("label"), p.cast(pl.Float64).alias("prob")) \
            .filter(pl.col("label").is_not_null()).unique("image_id", keep="first").collect()
        if df.height:  # columns of a model without a head are all null: nothing to show
            return df, source
    return None, None


def _imagenet_stats(top1: pl.DataFrame | None, source: str | None) -> dict[str, Any]:
    """Summary of the ImageNet labels: images labelled, classes, count and mean probability per
    top-1 class (largest first)."""
    if top1 is None:
        return {"available": False, "source": None, "images": 0, "counts": {}, "mean_prob": {}}
    per = top1.group_by("label").agg(pl.len().alias("n"), pl.col("prob").mean().alias("p")).sort(
        ["n", "label"], descending=[True, False])
    return {"available": True, "source": source, "images": int(top1.height),
            "counts": {str(k): int(n) for k, n, _ in per.iter_rows()},
            "mean_prob": {str(k): round(float(p), 4) for k, _, p in per.iter_rows() if p is not None}}


def _timing_rows(timings: Mapping[str, float] | None, counts: Mapping[str, int | None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for stage, seconds in (timings or {}).items():
        seconds = float(seconds)
        items_key = STAGE_ITEMS.get(stage, "listed")
        items = counts.get(items_key)
        rate = (items / seconds) if (items is not None and seconds > 0) else None
        out[stage] = {"seconds": round(seconds, 3), "items": items, "counted_as": items_key,
                      "per_second": round(rate, 2) if rate is not None else None}
    return out


def analyse(*, scope: str, shard: str | None, inventory: Frame, clusters: Frame, curated: Frame,
            embeddings: Frame | None, classifications: Frame | None, timings: Mapping[str, float] | None,
            shard_counts: pl.DataFrame | None, max_map_points: int, semantic: Frame | None = None) -> ReportData:
    """Collect the frames and compute the summary and the embedding map of one report
    (`scope` "shard" or "corpus"); `shard_counts` replaces the per-shard counts computed here."""
    inv = collect_columns(inventory, ["image_id", "uri", "rel_path", "shard", "error_code", "error_message",
                               "width", "height", "format"])
    clu = collect_columns(clusters, ["image_id", "shard", "cluster_id", "is_representative", "dup_kind", "rep_shard",
                              "distance"])
    cur = collect_columns(curated, ["image_id", "uri", "rel_path", "shard", "keep", "reasons", "cluster_id",
                                    *optional_columns(curated, ["reject_details"])])
    cls = collect_columns(classifications, ["image_id", "shard", "zs_label", "zs_prob", "fs_label", "fs_prob"])
    sem = collect_columns(semantic, SEMANTIC_COLUMNS)
    assert inv is not None and clu is not None and cur is not None

    per_shard = stage_counts_by_shard(inv, clu, cur, embeddings, cls)
    if shard_counts is not None:
        per_shard = shard_counts.select("shard", *[pl.col(s).cast(pl.Int64) for s in STAGES]).sort("shard")
    absent = {"embedded": embeddings is None, "classified": classifications is None}
    counts: dict[str, int | None] = {}
    for s in STAGES:
        col = per_shard[s]
        if col.len() == 0:  # no shard at all: null only for a stage whose frame was not given
            counts[s] = None if (shard_counts is None and absent.get(s, False)) else 0
        else:  # null when every shard's count is null (that stage has no output)
            counts[s] = None if col.null_count() == col.len() else int(col.sum())

    rejects = reject_counts(cur.select("keep", "reasons"))
    rejected = int((~cur["keep"].fill_null(False)).sum())
    errs = inv.filter(pl.col("error_code").is_not_null()).group_by("error_code").len().sort(
        ["len", "error_code"], descending=[True, False])
    decode_errors = {str(k): int(v) for k, v in errs.iter_rows()}
    dup, multi = _dup_stats(clu, inv["image_id"])
    sem_stats, sem_multi = _semantic_stats(sem)
    in_top1, in_source = _imagenet_top1(embeddings, classifications)

    label_source = _label_source(cls)
    class_counts: dict[str, int] = {}
    if label_source is not None and cls is not None:
        lab = f"{label_source}_label"
        labelled = cls.filter(pl.col(lab).is_not_null() & (pl.col(lab) != UNKNOWN_LABEL))
        for k, v in labelled.group_by(lab).len().sort(["len", lab], descending=[True, False]).iter_rows():
            class_counts[str(k)] = int(v)

    data = ReportData(scope=scope, title="", summary={}, per_shard=per_shard, inv=inv, clu=clu, cur=cur, cls=cls,
                 label_source=label_source, sem=sem, imagenet=in_top1)
    data.extras["multi_clusters"] = multi
    data.extras["semantic_clusters"] = sem_multi
    emb_info = embedding_map(data, embeddings, max_map_points)

    listed = counts["listed"] or 0
    summary: dict[str, Any] = {
        "scope": scope,
        "shard": shard,
        "n_shards": int(per_shard.height),
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "counts": counts,
        "rejected": rejected,
        "keep_rate": round((counts["kept"] or 0) / listed, 4) if listed else None,
        "rejects_by_reason": rejects,
        "decode_errors": decode_errors,
        "duplicates": dup,
        "semantic": sem_stats,
        "classes": {"source": label_source, "counts": class_counts},
        "imagenet": _imagenet_stats(in_top1, in_source),
        "embedding": emb_info,
        "timings": _timing_rows(timings, counts),
    }
    if scope == "corpus":
        summary["per_shard"] = per_shard.to_dicts()
    data.summary = summary
    data.title = f"Curation report: shard {shard}" if scope == "shard" else "Curation report: whole corpus"
    return data


def embedding_map(data: ReportData, embeddings: Frame | None, max_points: int) -> dict[str, Any]:
    """Project a deterministic sample of the embeddings to 2-D with PCA; fills data.map_points."""
    info: dict[str, Any] = {"model": None, "dim": None, "mapped_points": 0, "explained_variance": None}
    if embeddings is None:
        data.map_note = "No embeddings were given to the report."
        return info
    lf = embeddings.lazy() if isinstance(embeddings, pl.DataFrame) else embeddings
    models = lf.select("model").group_by("model").len().sort("len", descending=True).collect()
    if models.height == 0:
        data.map_note = "The embeddings table is empty."
        return info
    model = models["model"][0]
    info["model"] = model
    ids = (lf.filter(pl.col("model").eq_missing(model)).select("image_id").unique()
           .with_columns(pl.col("image_id").hash(seed=17).alias("_h")).sort("_h").head(max(0, max_points))
           .select("image_id").collect())
    emb = lf.filter(pl.col("model").eq_missing(model)).join(ids.lazy(), on="image_id", how="semi") \
        .unique("image_id", keep="first").select("image_id", "embedding").sort("image_id").collect()
    if emb.height < 3:
        data.map_note = f"Only {emb.height} embedding(s): too few for a map."
        return info
    if isinstance(emb.schema["embedding"], pl.Array):
        emb = emb.with_columns(pl.col("embedding").arr.to_list())
    lens = emb["embedding"].list.len()
    dim = max_int(lens)
    if dim < 2:
        data.map_note = f"Embeddings have {dim} dimension(s): nothing to project."
        return info
    emb = emb.filter(lens == dim)
    x = np.asarray(emb["embedding"].list.to_array(dim).to_numpy(), dtype=np.float64)
    ok = np.isfinite(x).all(axis=1)
    emb, x = emb.filter(pl.Series(ok)), x[ok]
    info["dim"] = dim
    if x.shape[0] < 3:
        data.map_note = "Too few finite embeddings for a map."
        return info
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.column_stack([proj, np.zeros(len(proj))])
    var = s**2
    explained = [round(float(v / var.sum()), 4) if var.sum() > 0 else 0.0 for v in var[:2]]
    info["mapped_points"] = int(x.shape[0])
    info["explained_variance"] = explained

    pts = pl.DataFrame({"image_id": emb["image_id"], "x": proj[:, 0], "y": proj[:, 1]})
    if data.label_source is not None and data.cls is not None:
        lab = f"{data.label_source}_label"
        pts = pts.join(data.cls.select("image_id", pl.col(lab).alias("colour")).unique("image_id"),
                       on="image_id", how="left")
        data.map_colour_by = "class (" + ("few-shot" if data.label_source == "fs" else "zero-shot") + ")"
    else:
        folder = data.cur.select("image_id", pl.col("rel_path").str.split("/").list.first().alias("colour"))
        pts = pts.join(folder.unique("image_id"), on="image_id", how="left")
        data.map_colour_by = "top-level folder (no class labels)"
    data.map_points = pts.with_columns(pl.col("colour").fill_null(UNKNOWN_LABEL))
    return info


def _label_source(cls: pl.DataFrame | None) -> str | None:
    if cls is None or cls.height == 0:
        return None
    if cls["fs_label"].is_not_null().any():
        return "fs"
    zs = cls["zs_label"]
    if (zs.is_not_null() & (zs != UNKNOWN_LABEL)).any():
        return "zs"
    return None
