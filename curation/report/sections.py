"""The content of each report section as plain data for its template (no HTML is built here).

One function per section of `SECTIONS` takes the analysed `ReportData` (and, for sections with
thumbnails, the report's `Thumbnailer` and that section's tile budget) and returns the context
its template `templates/<section>.html` renders: display strings, table rows, chart data URIs
and thumbnail figures. Values are raw text; the templates escape them. Tiles are requested in
page order, so the budget of the class examples is what the sections before it left.

Choices (unchanged from the single-module report): rejected samples show per reason the images
failing the fewest other checks first, in a stable hash order; duplicate and semantic clusters
show the largest first, the representative first and marked (a placeholder when it lives in a
shard outside the report); class examples show the highest-scoring and lowest-confidence images.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from curation.report.charts import bar_chart, scatter
from curation.report.data import ReportData
from curation.report.formatting import basename, fmt, pct, rate
from curation.report.spec import (
    MAX_CLASSES_SHOWN,
    MAX_ERROR_FILES_PER_CODE,
    MAX_IMAGENET_CHARTED,
    STAGE_DEFINITIONS,
    STAGES,
)
from curation.report.thumbnails import Thumb, Thumbnailer

Context = dict[str, Any]


def figure(t: Thumb, *, rep: bool = False, badge: str = "", badge_class: str = "k", sub: str = "") -> Context:
    """One thumbnail tile as the `figure` macro draws it: image, badge overlaid top-left, file
    name, optional second line; its tooltip names the file and why a placeholder stands in."""
    title = t.title or t.caption
    if t.note:
        title += f" ({t.note})"
    return {"t": t, "cls": "t" + (" rep" if rep else "") + ("" if t.ok else " ph"),
            "kind": "image" if t.ok else "placeholder", "title": title, "badge": badge,
            "badge_cls": "badge" + ("" if rep else " " + badge_class), "sub": sub}


def table(header: list[str], rows: list[tuple[Any, ...]], numeric: list[bool]) -> Context:
    """A table for the `table` macro; `numeric` right-aligns a column."""
    return {"header": header, "rows": rows, "numeric": numeric}


def counts(d: ReportData) -> Context:
    c = d.summary["counts"]
    listed = c["listed"] or 0
    rows = [{"stage": s, "images": fmt(c[s]), "share": pct(c[s], listed), "definition": STAGE_DEFINITIONS[s],
             "width": f"{0.0 if (c[s] is None or not listed) else 100.0 * c[s] / listed:.1f}"} for s in STAGES]
    missing = ", ".join(s for s in ("embedded", "classified") if c[s] is None)
    per_shard = None
    if d.scope == "corpus" and d.per_shard is not None and d.per_shard.height:
        prow = [(r["shard"], *[fmt(r[s]) for s in STAGES]) for r in d.per_shard.iter_rows(named=True)]
        per_shard = {"n": d.per_shard.height, "collapse": d.per_shard.height > 30,
                     "table": table(["shard", *STAGES], prow, [False] + [True] * len(STAGES))}
    return {"rows": rows, "missing": missing, "per_shard": per_shard}


def rejects(d: ReportData) -> Context:
    rej, rejected, listed = d.summary["rejects_by_reason"], d.summary["rejected"], d.summary["counts"]["listed"]
    present = [(r, n) for r, n in rej.items() if n > 0]
    if not present:
        return {}
    chart = bar_chart([r for r, _ in present], [n for _, n in present], xlabel="rejected images", colour="#e15759")
    rows = [(r, fmt(n), pct(n, rejected), pct(n, listed)) for r, n in rej.items()]
    return {"rejected": fmt(rejected), "listed": fmt(listed), "chart": chart,
            "table": table(["reason", "images", "of rejected", "of listed"], rows, [False, True, True, True])}


def reject_samples(d: ReportData, th: Thumbnailer, budget: int) -> Context:
    rej = d.summary["rejects_by_reason"]
    reasons = [r for r, n in rej.items() if n > 0]
    if not reasons:
        return {}
    per_reason = max(1, min(8, budget // max(1, len(reasons))))
    rejected = d.cur.filter(~pl.col("keep").fill_null(False)).join(
        d.inv.select("image_id", "error_code"), on="image_id", how="left")
    # images with fewer reasons first (they show what THIS check catches), then a stable hash order
    rejected = rejected.with_columns(pl.col("reasons").list.len().alias("_n"),
                                     pl.col("image_id").hash(seed=5).alias("_h")).sort(["_n", "_h"])
    groups, used = [], 0
    for reason in reasons:
        figures = []
        for r in rejected.filter(pl.col("reasons").list.contains(reason)).head(per_reason).iter_rows(named=True):
            if used >= budget:
                break
            others = [x for x in r["reasons"] if x != reason]
            t = th.tile(r["image_id"], r["uri"], caption=basename(r["rel_path"]), error_code=r["error_code"],
                        title=f'{r["rel_path"]} — reasons: {", ".join(r["reasons"])}')
            if t is None:
                break
            used += 1
            figures.append(figure(t, sub=("also " + ", ".join(others)) if others else ""))
        more = rej[reason] - len(figures)
        groups.append({"reason": reason, "count": fmt(rej[reason]), "more": fmt(more) if more > 0 else "",
                       "figures": figures})
    return {"per_reason": per_reason, "groups": groups}


def _cluster_tiles(d: ReportData, th: Thumbnailer, c: dict[str, Any], members: pl.DataFrame, budget: int,
                   used: int, max_members: int) -> tuple[list[Context], int]:
    """The strip of one duplicate cluster: its representative (from another shard's inventory row,
    or a placeholder naming that shard), then members by distance; returns figures and tiles used."""
    cid = c["cluster_id"]
    rows = members.filter(pl.col("cluster_id") == cid).sort(
        [pl.col("is_representative").fill_null(False), pl.col("distance").fill_null(0), pl.col("image_id")],
        descending=[True, False, False])
    figures: list[Context] = []
    if rows.filter(pl.col("is_representative").fill_null(False)).height == 0:  # it lives in an earlier shard
        rep_inv = d.inv.filter(pl.col("image_id") == cid)
        if rep_inv.height:
            r = rep_inv.row(0, named=True)
            t = th.tile(cid, r["uri"], caption=basename(r["rel_path"]), title=r["rel_path"] or "",
                        error_code=r["error_code"])
        else:
            where = c["rep_shard"] or "another shard"
            t = th.tile(cid, None, caption=f"in {where}", title=f"representative {cid} in {where}",
                        missing_note=f"in {where}")
        if t is not None:
            figures.append(figure(t, rep=True, badge="REP"))
            used += 1
    for r in rows.head(max(0, max_members - len(figures))).iter_rows(named=True):
        if used >= budget:
            break
        is_rep = bool(r["is_representative"])
        dist = "" if is_rep or r["distance"] is None else f' d={r["distance"]}'
        size = f'{r["width"]}×{r["height"]}' if r["width"] is not None else ""
        t = th.tile(r["image_id"], r["uri"], caption=basename(r["rel_path"]) or r["image_id"],
                    title=f'{r["rel_path"]} {size} {r["dup_kind"]}{dist}', error_code=r["error_code"])
        if t is None:
            break
        used += 1
        figures.append(figure(t, rep=is_rep, badge=("REP" if is_rep else (r["dup_kind"] or "")) + dist))
    return figures, used


def duplicates(d: ReportData, th: Thumbnailer, budget: int, max_clusters: int = 8,
               max_members: int = 10) -> Context:
    dup = d.summary["duplicates"]
    stats = table(["", "images"],
                  [("clusters with duplicates", fmt(dup["clusters_with_duplicates"])),
                   ("duplicate images (not representatives)", fmt(dup["duplicate_images"])),
                   ("largest cluster", fmt(dup["largest_cluster"])),
                   ("duplicates of an image in another shard", fmt(dup["cross_shard"]))], [False, True])
    kinds = table(["dup_kind", "rows"], [(k, fmt(v)) for k, v in dup["by_kind"].items()], [False, True])
    multi: pl.DataFrame = d.extras["multi_clusters"]
    out: Context = {"stats": stats, "kinds": kinds, "shown": min(max_clusters, multi.height), "clusters": []}
    members = d.clu.join(d.inv.select("image_id", "uri", "rel_path", "error_code", "width", "height"),
                         on="image_id", how="left")
    used = 0
    for c in multi.head(max_clusters).iter_rows(named=True):
        if used >= budget:
            break
        figures, used = _cluster_tiles(d, th, c, members, budget, used, max_members)
        hidden = c["size"] - len(figures)
        out["clusters"].append({"cid": c["cluster_id"], "size": c["size"], "figures": figures,
                                "tail": f" · +{hidden} not shown" if hidden > 0 else ""})
    return out


def _semantic_tiles(d: ReportData, th: Thumbnailer, c: dict[str, Any], members: pl.DataFrame, budget: int,
                    used: int, max_members: int) -> tuple[list[Context], int]:
    """The strip of one semantic cluster: the representative (a placeholder when no inventory row
    of the report has it), then members by descending cosine; returns figures and tiles used."""
    cid = c["cluster_id"]
    rows = members.filter(pl.col("cluster_id") == cid)
    rep_rows = rows.filter(pl.col("is_representative").fill_null(False) & (pl.col("image_id") == cid))
    others = rows.filter(pl.col("image_id") != cid).sort(
        [pl.col("similarity").fill_null(0.0), pl.col("image_id")], descending=[True, False])
    figures: list[Context] = []
    rep_shard = c["rep_shard"] or "another shard"
    r: dict[str, Any] | None
    if rep_rows.height:
        r = rep_rows.row(0, named=True)
    else:  # the representative lives in an earlier shard: this frame has no row for it
        found = d.inv.filter(pl.col("image_id") == cid)
        r = found.row(0, named=True) if found.height else None
    sub = f"in {rep_shard}" if d.scope == "corpus" else "representative"
    if r is not None and r.get("uri") is not None:
        t = th.tile(cid, r["uri"], caption=basename(r["rel_path"]) or cid,
                    title=f'{r["rel_path"]} (representative, {rep_shard})', error_code=r.get("error_code"))
    else:
        t = th.tile(cid, None, caption=f"in {rep_shard}", title=f"representative {cid} in {rep_shard}",
                    missing_note=f"in {rep_shard}")
        sub = "not in this report"
    if t is not None:
        figures.append(figure(t, rep=True, badge="REP", sub=sub))
        used += 1
    for r in others.head(max(0, max_members - len(figures))).iter_rows(named=True):
        if used >= budget:
            break
        cos = "—" if r["similarity"] is None else f'{r["similarity"]:.3f}'
        where = f', {r["shard"]}' if r["shard"] != c["rep_shard"] else ""
        t = th.tile(r["image_id"], r["uri"], caption=basename(r["rel_path"]) or r["image_id"],
                    title=f'{r["rel_path"] or r["image_id"]}: cos {cos} to the representative{where}',
                    error_code=r["error_code"])
        if t is None:
            break
        used += 1
        figures.append(figure(t, sub=f"cos {cos}"))
    return figures, used


def semantic(d: ReportData, th: Thumbnailer, budget: int, max_clusters: int = 8, max_members: int = 10,
             max_cross: int = 4) -> Context:
    sem = d.summary["semantic"]
    if not sem["available"] or d.sem is None:
        return {"ran": False}
    min_sim = "—" if sem["min_similarity"] is None else f'{sem["min_similarity"]:.3f}'
    out: Context = {"ran": True, "clusters": [], "largest": None, "stats": table(["", "images"], [
        ("images compared (kept, embedded)", fmt(sem["images_compared"])),
        ("clusters with more than one member", fmt(sem["clusters_with_duplicates"])),
        ("images linked to a representative", fmt(sem["linked_images"])),
        ("links to a representative in another shard", fmt(sem["cross_shard"])),
        ("largest cluster", fmt(sem["largest_cluster"])),
        ("lowest cosine similarity of a link", min_sim)], [False, True])}
    multi: pl.DataFrame | None = d.extras.get("semantic_clusters")
    if multi is None or multi.height == 0:
        return out
    members = d.sem.unique("image_id", keep="first").join(d.inv.select("image_id", "uri", "rel_path", "error_code"),
                                                           on="image_id", how="left")
    largest = multi.head(max_clusters)
    cross = multi.filter(pl.col("cross") & ~pl.col("cluster_id").is_in(largest["cluster_id"].implode())).head(
        max_cross)
    shown = largest.height + cross.height
    out["largest"] = largest.height
    out["extra"] = (f", then {cross.height} cluster(s) linking images to a representative in another shard"
                    if cross.height else "")
    used = 0
    for i, c in enumerate(pl.concat([largest, cross]).iter_rows(named=True)):
        if used >= budget:
            break
        figures, used = _semantic_tiles(d, th, c, members, budget, used, max_members)
        hidden = c["size"] - len(figures)
        out["clusters"].append({
            "cid": c["cluster_id"], "size": c["size"], "figures": figures, "first_cross": i == largest.height,
            "where": f" · representative in {c['rep_shard']}" if c["cross"] and c["rep_shard"] else "",
            "tail": f" · +{hidden} not shown" if hidden > 0 else ""})
    out["not_shown"] = fmt(multi.height - shown) if multi.height > shown else ""
    return out


def classes(d: ReportData, th: Thumbnailer, budget: int, per_side: int = 4) -> Context:
    counts_ = d.summary["classes"]["counts"]
    if d.label_source is None or not counts_ or d.cls is None:
        return {"why": "no classification output was given to this report" if d.cls is None else
                "zero-shot labels are unavailable with the offline model and no few-shot probe is configured"}
    names = list(counts_)
    total = sum(counts_.values())
    lab, prob = f"{d.label_source}_label", f"{d.label_source}_prob"
    shown = names[:MAX_CLASSES_SHOWN]
    per_class = max(1, min(per_side, budget // max(1, 2 * len(shown))))
    rows = d.cls.select("image_id", pl.col(lab).alias("label"), pl.col(prob).alias("prob")).join(
        d.cur.select("image_id", "uri", "rel_path"), on="image_id", how="left")
    out: Context = {
        "why": "", "source": "few-shot linear probe" if d.label_source == "fs" else "zero-shot", "total": fmt(total),
        "n": len(counts_), "charted_top": len(names) > 40, "collapse": len(counts_) > 15, "per_class": per_class,
        "chart": bar_chart(names[:40], [counts_[n] for n in names[:40]], xlabel="images", colour="#59a14f"),
        "table": table(["class", "images", "share"], [(n, fmt(v), pct(v, total)) for n, v in counts_.items()],
                       [False, True, True]),
        "largest": len(shown) if len(names) > len(shown) else None, "classes": []}
    used = 0
    for name in shown:
        sub = rows.filter(pl.col("label") == name).sort(["prob", "image_id"], descending=[True, False],
                                                         nulls_last=True)
        top = sub.head(per_class)
        low = sub.filter(~pl.col("image_id").is_in(top["image_id"].to_list())).sort(
            ["prob", "image_id"], nulls_last=True).head(per_class)
        groups = []
        for part, frame in (("highest score", top), ("lowest confidence", low)):
            figures = []
            for r in frame.iter_rows(named=True):
                if used >= budget:
                    break
                p = "—" if r["prob"] is None else f'{r["prob"]:.2f}'
                t = th.tile(r["image_id"], r["uri"], caption=basename(r["rel_path"]) or r["image_id"],
                            title=f'{r["rel_path"]}: {name} p={p}')
                if t is None:
                    break
                used += 1
                figures.append(figure(t, badge=p, badge_class="k" if part == "highest score" else "low"))
            if figures:
                groups.append({"part": part, "figures": figures})
        out["classes"].append({"name": name, "count": fmt(counts_[name]), "groups": groups})
    return out


def imagenet(d: ReportData) -> Context | None:
    """The ImageNet-1k top-1 class distribution (chart of the largest, table of all with the mean
    top-1 probability); None when no image has an ImageNet label (the section is left out)."""
    im = d.summary["imagenet"]
    if not im["available"]:
        return None
    counts_, total = im["counts"], im["images"]
    names = list(counts_)
    embedded = d.summary["counts"]["embedded"]
    mean_p = im["mean_prob"]
    return {
        "total": fmt(total), "embedded": fmt(embedded) if embedded is not None else None, "n": fmt(len(names)),
        "charted_top": MAX_IMAGENET_CHARTED if len(names) > MAX_IMAGENET_CHARTED else None,
        "collapse": len(names) > 15,
        "source": im["source"],
        "chart": bar_chart(names[:MAX_IMAGENET_CHARTED], [counts_[n] for n in names[:MAX_IMAGENET_CHARTED]],
                           xlabel="images (top-1 label)", colour="#76b7b2"),
        "table": table(["ImageNet class", "images", "share", "mean top-1 p"],
                       [(n, fmt(v), pct(v, total), "—" if n not in mean_p else f"{mean_p[n]:.2f}")
                        for n, v in counts_.items()], [False, True, True, True]),
    }


def embedding_map(d: ReportData) -> Context:
    e = d.summary["embedding"]
    if d.map_points is None or d.map_points.height < 3:
        return {"note": d.map_note or "No embedding map."}
    n_emb = d.summary["counts"]["embedded"]
    sample = (f"a deterministic sample of {fmt(e['mapped_points'])} of {fmt(n_emb)} images"
              if n_emb and e["mapped_points"] < n_emb else f"{fmt(e['mapped_points'])} images")
    return {"note": "", "model": e["model"], "dim": e["dim"], "sample": sample, "colour_by": d.map_colour_by,
            "chart": scatter(d.map_points, d.map_colour_by.split(" (")[0], e["explained_variance"])}


def timings(d: ReportData) -> Context:
    t = d.summary["timings"]
    if not t:
        return {}
    rows = [(stage, f'{v["seconds"]:,.2f}', f'{fmt(v["items"])} {v["counted_as"]}', rate(v["per_second"]))
            for stage, v in t.items()]
    total = sum(v["seconds"] for v in t.values())
    listed = d.summary["counts"]["listed"]
    rows.append(("total", f"{total:,.2f}", f"{fmt(listed)} listed",
                 rate(listed / total if total > 0 and listed else None)))
    return {"table": table(["stage", "seconds", "items", "items / s"], rows, [False, True, True, True]),
            "chart": bar_chart(list(t), [v["seconds"] for v in t.values()], xlabel="seconds", colour="#f28e2b",
                               fmt="{:,.1f} s")}


def decode_errors(d: ReportData) -> Context:
    errs = d.summary["decode_errors"]
    if not errs:
        return {}
    bad = d.inv.filter(pl.col("error_code").is_not_null()).sort(["error_code", "shard", "rel_path"])
    codes = []
    for code, n in errs.items():
        rows = bad.filter(pl.col("error_code") == code).head(MAX_ERROR_FILES_PER_CODE)
        codes.append({"code": code, "span": rows.height + (1 if n > rows.height else 0),
                      "files": [{"path": r["rel_path"], "shard": r["shard"],
                                 "message": (r["error_message"] or "")[:300]} for r in rows.iter_rows(named=True)],
                      "more": fmt(n - rows.height) if n > rows.height else ""})
    return {"total": fmt(sum(errs.values())), "listed": fmt(d.summary["counts"]["listed"]),
            "per_code": MAX_ERROR_FILES_PER_CODE, "show_shard": d.scope == "corpus", "codes": codes,
            "table": table(["error code", "files"], [(k, fmt(v)) for k, v in errs.items()], [False, True])}


def kpis(d: ReportData) -> list[tuple[str, str]]:
    s = d.summary
    c = s["counts"]
    items = [
        ("listed", fmt(c["listed"])),
        ("kept", fmt(c["kept"])),
        ("keep rate", "—" if s["keep_rate"] is None else f'{100 * s["keep_rate"]:.1f}%'),
        ("duplicates", fmt(s["duplicates"]["duplicate_images"])),
        ("decode errors", fmt(sum(s["decode_errors"].values()))),
        ("classes", fmt(len(s["classes"]["counts"]))),
    ]
    if s["scope"] == "corpus":
        items.insert(0, ("shards", fmt(s["n_shards"])))
    return items
