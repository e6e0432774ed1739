"""Cross-shard matching of the semantic pass: each shard row's best earlier representative.

Earlier shards are immutable: a row can only join an earlier cluster. `match_earlier` streams the
earlier index (one frame, or one frame per earlier shard so memory is bounded by one shard's index)
past the shard's band keys (`query_pairs`), verifying candidates by exact cosine against the decoded
index vectors; `best_earlier_match` decides which earlier representative a row joins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import polars as pl

from curation.schema import Schema
from curation.semantic.config import SemanticDedupConfig
from curation.semantic.lsh import hamming_limits
from curation.semantic.pairs import query_pairs
from curation.semantic.vectors import query_vectors
from curation.semantic.verify import verify_links

__all__ = ["MATCH_SCHEMA", "best_earlier_match", "match_earlier", "match_earlier_ivf"]

_MATCH_COLS = ["shard_seq", "cluster_id", "rep_shard", "is_representative", "keys", "vec"]

# q: row of the shard; seq: the earlier row's shard_seq; s: cosine with that representative
MATCH_SCHEMA: Schema = {"q": pl.Int64, "seq": pl.Int32, "s": pl.Float32, "cluster_id": pl.String,
                                        "rep_shard": pl.String}


def best_earlier_match(candidates: pl.DataFrame) -> pl.DataFrame:
    """One candidate per shard row ``q`` (MATCH_SCHEMA columns): the earliest shard (``seq``), then
    the highest similarity (``s``), then the smallest cluster_id wins. Sorted by q."""
    return candidates.sort(["q", "seq", "s", "cluster_id"], descending=[False, False, True, False]).unique(
        subset="q", keep="first", maintain_order=True)


def _thumb_rows(col: pl.Series) -> np.ndarray:
    from curation.imaging.features import thumb_array

    return thumb_array(col.cast(pl.Binary))[0]


def match_earlier(
    x: np.ndarray, keys: np.ndarray, earlier: pl.DataFrame | Iterable[pl.DataFrame] | None, cfg: SemanticDedupConfig,
    chunk: int = 131072, *, center: np.ndarray | None = None, prefilter: bool = True,
    thumbs: np.ndarray | None = None,
) -> pl.DataFrame:
    """Best earlier representative (`best_earlier_match`) for each query row with cosine >= threshold.
    `earlier` may be one index frame or an iterable of them (e.g. one per earlier shard, read
    lazily: memory is then bounded by one shard's index). center: the hashing centre `keys` were
    computed with (for the Hamming pre-filter, `hamming_limits`; prefilter=False verifies every
    candidate, "proj" always does). Index vectors are decoded for candidate rows only. With
    cfg.wide_threshold, candidates are searched at it and those below threshold must pass
    `verify_links` on `thumbs` (the query rows' thumbnails) and the index's ``thumb`` column
    (older indexes without one: threshold alone). Returns
    MATCH_SCHEMA columns: q (row of x), seq (shard_seq), s (similarity), cluster_id, rep_shard."""
    empty = pl.DataFrame(schema=MATCH_SCHEMA)
    if earlier is None or len(x) == 0:
        return empty
    frames = [earlier] if isinstance(earlier, pl.DataFrame) else earlier
    qvec = query_vectors(x, cfg)
    wide = cfg.search_threshold < cfg.threshold
    search = replace(cfg, threshold=cfg.search_threshold) if wide else cfg
    max_ham = hamming_limits(x, search, center) if prefilter and cfg.index_vectors != "proj" else None
    best = empty
    for frame in frames:
        if frame is None or frame.height == 0:
            continue
        usable = pl.col("is_representative") & pl.col("keys").is_not_null() & pl.col("vec").is_not_null()
        reps = frame.select(_MATCH_COLS + (["thumb"] if wide and "thumb" in frame.columns else []))
        if not reps.select(usable.fill_null(False).all()).item():  # copy only when some rows are unusable
            reps = reps.filter(usable)
        if reps.height == 0:
            continue
        found = []
        for s in range(0, reps.height, chunk):
            part = reps.slice(s, chunk)
            qq, rr, ss = query_pairs(keys, qvec, part["keys"].to_numpy().astype(np.uint32, copy=False),
                                     part["vec"].to_numpy(), search, max_hamming=max_ham, raw_index=True)
            found.append((qq, rr + s, ss))
        qq, rr, ss = (np.concatenate([f[k] for f in found]) for k in range(3))
        if wide:
            ithumb = _thumb_rows(reps["thumb"].gather(rr)) if "thumb" in reps.columns and thumbs is not None else None
            ok = verify_links(ss, None if ithumb is None else thumbs[qq], ithumb, cfg.threshold,  # type: ignore[index]
                              cfg.wide_threshold, cfg.max_align_diff)
            qq, rr, ss = qq[ok], rr[ok], ss[ok]
        if len(qq) == 0:
            continue
        m = pl.DataFrame({
            "q": qq, "seq": reps["shard_seq"].cast(pl.Int32).gather(rr), "s": ss,
            "cluster_id": reps["cluster_id"].cast(pl.String).gather(rr),
            "rep_shard": reps["rep_shard"].cast(pl.String).gather(rr),
        })
        best = best_earlier_match(pl.concat([best, m.cast(empty.schema)]))
    return best


def match_earlier_ivf(
    x: np.ndarray, keys: np.ndarray, quant, parts: list, cfg: SemanticDedupConfig, icfg, *,
    center: np.ndarray | None = None, thumbs: np.ndarray | None = None, stats: dict | None = None,
) -> pl.DataFrame:
    """`match_earlier` over the partitioned index (`curation.semantic.ivf`): candidates are the rows
    of the lists each query row probes (`query_ivf`, Hamming pre-filter as in `match_earlier`) in
    `parts` (`IvfPart`s with payload seq, cluster_id, rep_shard, thumb), verified the same way (the
    two-stage rule on the parts' thumbnails when cfg.wide_threshold is set). Same MATCH_SCHEMA
    result; `stats` (a dict) receives the query's `IvfStats` fields."""
    from dataclasses import asdict

    from curation.semantic.ivf import query_ivf
    from curation.semantic.lsh import pack_bits

    empty = pl.DataFrame(schema=MATCH_SCHEMA)
    wide = cfg.search_threshold < cfg.threshold
    search = replace(cfg, threshold=cfg.search_threshold) if wide else cfg
    max_ham = hamming_limits(x, search, center) if cfg.index_vectors != "proj" else None
    qq, pp, rr, ss, st = query_ivf(parts, quant, x, pack_bits(keys, cfg.band_bits), search, icfg, max_hamming=max_ham)
    if stats is not None:
        stats.update(asdict(st))
    if len(qq) == 0:
        return empty

    def col(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(parts[p].payload[name][rr[pp == p]]) for p in range(len(parts))]) \
            if len(parts) > 1 else np.asarray(parts[0].payload[name][rr])

    o = np.argsort(pp, kind="stable")  # col() gathers part by part
    qq, pp, rr, ss = qq[o], pp[o], rr[o], ss[o]
    if wide and thumbs is not None:
        ok = verify_links(ss, thumbs[qq], col("thumb"), cfg.threshold, cfg.wide_threshold, cfg.max_align_diff)
    else:
        ok = ss >= cfg.threshold
    if not ok.any():
        return empty
    m = pl.DataFrame({
        "q": qq[ok], "seq": col("seq")[ok].astype(np.int32), "s": ss[ok],
        "cluster_id": [v.decode() for v in col("cluster_id")[ok]],
        "rep_shard": [v.decode() for v in col("rep_shard")[ok]],
    })
    return best_earlier_match(m.cast(empty.schema))
