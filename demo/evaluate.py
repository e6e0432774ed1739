"""Measure the demo run against the demo corpus's ground truth (`data/demo_expected.json`).

Only the demo's own shards count: rows of shards whose key names another source (`<source>-<seq>`,
e.g. a second folder registered beside the demo) are left out of every figure, so the numbers
describe the demo corpus whatever else the output root holds.

- nothing lost: every file of the corpus has exactly one raw_inventory row, every broken file an error code;
- dedup: recall = share of known copies (transformed or byte-identical) that share their original's
  cluster; precision = share of predicted duplicate links (member -> representative) whose two images
  belong to one known group. Natural duplicates the corpus already holds (identical sprites in two
  folders) are not in the ground truth, so this precision is a lower bound;
- few-shot: accuracy of the probe's label on the corpus's MNIST digits (labels from their folders),
  against chance (1 / number of classes).

    python -m demo.evaluate [--outputs data/outputs] [--expected data/demo_expected.json] [--source demo]
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import polars as pl

DEFAULT_SOURCE = "demo"


def _source_of(shard: pl.Expr) -> pl.Expr:
    """The source name of a shard key `<source>-<6+ digit sequence>` (`partitions.shards.shard_key`)."""
    return shard.str.replace(r"-\d{6,}$", "")


def _read(outputs: Path, stage: str, source: str) -> pl.DataFrame | None:
    """One stage's rows of `source`'s shards (None when the stage wrote nothing)."""
    files = sorted((outputs / stage).glob("*.parquet"))
    if not files:
        return None
    df = pl.read_parquet([str(p) for p in files])
    return df.filter(_source_of(pl.col("shard")) == source)


def _same_cluster(cluster_of: dict[str, str], a: str, b: str) -> bool:
    return a in cluster_of and cluster_of.get(a) == cluster_of.get(b)


def _dedup_figures(clusters: pl.DataFrame, rel: pl.DataFrame, copies: list[tuple[str, str]],
                   group_of: dict[str, int]) -> tuple[dict, dict[str, str]]:
    joined = clusters.join(rel, on="image_id")
    cid = dict(zip(joined["rel_path"], joined["cluster_id"], strict=True))
    id_to_rel = dict(zip(rel["image_id"], rel["rel_path"], strict=True))
    links = clusters.filter(~pl.col("is_representative") & (pl.col("dup_kind") != "not_hashed"))
    pairs = [(id_to_rel.get(a), id_to_rel.get(b)) for a, b in zip(links["image_id"], links["cluster_id"], strict=True)]
    correct = sum(1 for a, b in pairs if b is not None and a in group_of and group_of.get(a) == group_of.get(b))
    sizes = clusters.group_by("cluster_id").len()["len"]
    return {
        "dedup_known_copies": len(copies),
        "dedup_recall_known_copies": round(sum(_same_cluster(cid, o, p) for o, p in copies) / max(1, len(copies)), 4),
        "dedup_predicted_links": len(pairs),
        "dedup_precision_lower_bound": round(correct / max(1, len(pairs)), 4),
        "largest_cluster": int(sizes.max() or 0),
    }, cid


def _semantic_figures(sem: pl.DataFrame, rel: pl.DataFrame, cid: dict[str, str], copies: list[tuple[str, str]],
                      group_of: dict[str, int]) -> dict:
    id_to_rel = dict(zip(rel["image_id"], rel["rel_path"], strict=True))
    sid = {id_to_rel[a]: c for a, c in zip(sem["image_id"], sem["cluster_id"], strict=True) if a in id_to_rel}
    links = sem.filter(~pl.col("is_representative"))
    pairs = [(id_to_rel.get(a), id_to_rel.get(b)) for a, b in zip(links["image_id"], links["cluster_id"], strict=True)]
    ok = sum(1 for a, b in pairs if b is not None and a in group_of and group_of.get(a) == group_of.get(b))
    either = sum(1 for o, p in copies if _same_cluster(cid, o, p) or _same_cluster(sid, o, p))
    crops = [(o, p) for o, p in copies if "/crop/" in p]
    return {
        "semantic_links": len(pairs),
        "semantic_precision_lower_bound": round(ok / max(1, len(pairs)), 4),
        "recall_known_copies_hash_or_semantic": round(either / max(1, len(copies)), 4),
        "crop_recall_hash": round(sum(_same_cluster(cid, o, p) for o, p in crops) / max(1, len(crops)), 4),
        "crop_recall_hash_or_semantic": round(
            sum(_same_cluster(cid, o, p) or _same_cluster(sid, o, p) for o, p in crops) / max(1, len(crops)), 4),
    }


def _fewshot_figures(cls: pl.DataFrame, rel: pl.DataFrame, labels: dict[str, str]) -> dict:
    digits = cls.join(rel, on="image_id").filter(pl.col("rel_path").is_in(list(labels)))
    truth = [labels[p] for p in digits["rel_path"]]
    acc = sum(1 for t, p in zip(truth, digits["fs_label"], strict=True) if t == p) / max(1, len(truth))
    return {"fewshot_digits_evaluated": len(truth), "fewshot_accuracy": round(acc, 4),
            "fewshot_chance": round(1 / max(1, len({*labels.values()})), 4)}


def evaluate_demo(outputs: Path, expected_path: Path, corpus_root: Path, source: str = DEFAULT_SOURCE) -> dict:
    """The demo's figures from the stage outputs under `outputs`, counting only `source`'s shards."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]{0,39}", source):
        raise ValueError(f"--source {source!r}: a source name is lower-case letters, digits and '_'")
    exp = json.loads(expected_path.read_text())
    inv = _read(outputs, "raw_inventory", source)
    clusters = _read(outputs, "dedup_clusters", source)
    if inv is None or clusters is None or inv.height == 0:
        raise ValueError(f"no raw_inventory / dedup_clusters rows of source {source!r} under {outputs}: "
                         "run the pipeline on the demo first (make demo)")
    rel = inv.select("image_id", "rel_path", "error_code")
    on_disk = {str(p.relative_to(corpus_root)) for p in corpus_root.rglob("*")
               if p.is_file() and not p.name.startswith(".")}
    broken_ok = rel.filter(pl.col("rel_path").is_in(exp["broken"]))["error_code"].is_not_null().all()
    group_of = {p: i for i, g in enumerate(exp["duplicate_groups"]) for p in g}
    copies = [(g[0], p) for g in exp["duplicate_groups"] for p in g[1:]]

    out = {
        "source": source,
        "shards": int(inv["shard"].n_unique()),
        "files_on_disk": len(on_disk),
        "inventory_rows": rel.height,
        "files_missing_from_inventory": sorted(on_disk - set(rel["rel_path"]))[:20],
        "broken_files_with_error_code": bool(broken_ok),
    }
    dedup, cid = _dedup_figures(clusters, rel, copies, group_of)
    out.update(dedup)
    sem = _read(outputs, "semantic_duplicates", source)
    if sem is not None:
        out.update(_semantic_figures(sem, rel, cid, copies, group_of))
    cls = _read(outputs, "image_classifications", source)
    if cls is not None:
        out.update(_fewshot_figures(cls, rel, exp["digit_labels"]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outputs", default=os.environ.get("CURATION_OUTPUT_ROOT", "data/outputs"))
    ap.add_argument("--expected", default="data/demo_expected.json")
    ap.add_argument("--corpus", default="data/demo_corpus")
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="the demo's source name (the shard-key prefix)")
    args = ap.parse_args(argv)
    try:
        res = evaluate_demo(Path(args.outputs), Path(args.expected), Path(args.corpus), args.source)
    except ValueError as exc:
        ap.exit(2, f"demo.evaluate: {exc}\n")
    Path(args.outputs, "reports").mkdir(parents=True, exist_ok=True)
    Path(args.outputs, "reports", "demo_eval.json").write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k:36s} {v}")


if __name__ == "__main__":
    main()
