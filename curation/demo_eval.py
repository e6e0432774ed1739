"""Measure the demo run against the demo corpus's ground truth (`data/demo_expected.json`).

- nothing lost: every file of the corpus has exactly one raw_inventory row, every broken file an error code;
- dedup: recall = share of known copies (transformed or byte-identical) that share their original's
  cluster; precision = share of predicted duplicate links (member -> representative) whose two images
  belong to one known group. Natural duplicates the corpus already holds (identical sprites in two
  folders) are not in the ground truth, so this precision is a lower bound;
- few-shot: accuracy of the probe's label on the corpus's MNIST digits (labels from their folders),
  against chance (1 / number of classes).

    python -m curation.demo_eval [--outputs data/outputs] [--expected data/demo_expected.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import polars as pl


def evaluate_demo(outputs: Path, expected_path: Path, corpus_root: Path) -> dict:
    exp = json.loads(expected_path.read_text())
    inv = pl.read_parquet(str(outputs / "raw_inventory" / "*.parquet"))
    clusters = pl.read_parquet(str(outputs / "dedup_clusters" / "*.parquet"))
    cls_files = list((outputs / "image_classifications").glob("*.parquet"))
    rel = inv.select("image_id", "rel_path", "error_code")
    on_disk = {str(p.relative_to(corpus_root)) for p in corpus_root.rglob("*") if p.is_file() and not p.name.startswith(".")}
    missing = sorted(on_disk - set(rel["rel_path"]))
    broken_ok = rel.filter(pl.col("rel_path").is_in(exp["broken"]))["error_code"].is_not_null().all()

    cid = dict(zip(clusters.join(rel, on="image_id")["rel_path"], clusters.join(rel, on="image_id")["cluster_id"]))
    group_of = {p: i for i, g in enumerate(exp["duplicate_groups"]) for p in g}
    copies = [(g[0], p) for g in exp["duplicate_groups"] for p in g[1:]]
    found = sum(1 for orig, p in copies if orig in cid and cid.get(orig) == cid.get(p))
    id_to_rel = dict(zip(rel["image_id"], rel["rel_path"]))
    links = clusters.filter(~pl.col("is_representative") & (pl.col("dup_kind") != "not_hashed"))
    pairs = [(id_to_rel[a], id_to_rel.get(b)) for a, b in zip(links["image_id"], links["cluster_id"])]
    correct = sum(1 for a, b in pairs if b is not None and a in group_of and group_of.get(a) == group_of.get(b))
    sizes = clusters.group_by("cluster_id").len()["len"]

    out = {
        "files_on_disk": len(on_disk),
        "inventory_rows": rel.height,
        "files_missing_from_inventory": missing[:20],
        "broken_files_with_error_code": bool(broken_ok),
        "dedup_known_copies": len(copies),
        "dedup_recall_known_copies": round(found / max(1, len(copies)), 4),
        "dedup_predicted_links": len(pairs),
        "dedup_precision_lower_bound": round(correct / max(1, len(pairs)), 4),
        "largest_cluster": int(sizes.max() or 0),
    }
    sem_files = list((outputs / "semantic_duplicates").glob("*.parquet"))
    if sem_files:
        sem = pl.read_parquet([str(p) for p in sem_files])
        sid = {id_to_rel[a]: c for a, c in zip(sem["image_id"], sem["cluster_id"])}
        sem_links = sem.filter(~pl.col("is_representative"))
        sem_pairs = [(id_to_rel[a], id_to_rel.get(b)) for a, b in zip(sem_links["image_id"], sem_links["cluster_id"])]
        sem_ok = sum(1 for a, b in sem_pairs if b is not None and a in group_of and group_of.get(a) == group_of.get(b))
        both = sum(1 for orig, p in copies
                   if (orig in cid and cid.get(orig) == cid.get(p)) or (orig in sid and sid.get(orig) == sid.get(p)))
        crops = [(g[0], p) for g in exp["duplicate_groups"] for p in g[1:] if "/crop/" in p]
        crop_hash = sum(1 for o, p in crops if o in cid and cid.get(o) == cid.get(p))
        crop_both = sum(1 for o, p in crops if (o in cid and cid.get(o) == cid.get(p)) or (o in sid and sid.get(o) == sid.get(p)))
        out.update({
            "semantic_links": len(sem_pairs),
            "semantic_precision_lower_bound": round(sem_ok / max(1, len(sem_pairs)), 4),
            "recall_known_copies_hash_or_semantic": round(both / max(1, len(copies)), 4),
            "crop_recall_hash": round(crop_hash / max(1, len(crops)), 4),
            "crop_recall_hash_or_semantic": round(crop_both / max(1, len(crops)), 4),
        })
    if cls_files:
        cls = pl.read_parquet([str(p) for p in cls_files]).join(rel, on="image_id")
        labels = exp["digit_labels"]
        digits = cls.filter(pl.col("rel_path").is_in(list(labels)))
        truth = [labels[p] for p in digits["rel_path"]]
        acc = sum(1 for t, p in zip(truth, digits["fs_label"]) if t == p) / max(1, len(truth))
        n_classes = len({*labels.values()})
        out.update({"fewshot_digits_evaluated": len(truth), "fewshot_accuracy": round(acc, 4),
                    "fewshot_chance": round(1 / n_classes, 4)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outputs", default=os.environ.get("CURATION_OUTPUT_ROOT", "data/outputs"))
    ap.add_argument("--expected", default="data/demo_expected.json")
    ap.add_argument("--corpus", default="data/demo_corpus")
    args = ap.parse_args()
    res = evaluate_demo(Path(args.outputs), Path(args.expected), Path(args.corpus))
    Path(args.outputs, "reports").mkdir(parents=True, exist_ok=True)
    Path(args.outputs, "reports", "demo_eval.json").write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k:36s} {v}")


if __name__ == "__main__":
    main()
