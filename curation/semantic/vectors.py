"""Vector encodings of the semantic index, and the dot products that verify candidate pairs.

`encode` turns unit embeddings into the index's stored vectors (cfg.index_vectors: float16, int8
scaled per row, or an int8 fixed random projection); `decode` turns stored vectors back into unit
float32 rows (int8 de-biased); `query_vectors` gives the query-side rows comparable with decoded
index rows. `dots` computes row-wise cosines of candidate pairs in cache-sized blocks; the result
per pair does not depend on the blocking. Deterministic (fixed seed).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from curation.semantic.config import SemanticDedupConfig

__all__ = ["decode", "dots", "encode", "projection", "query_vectors", "unit_rows"]


@lru_cache(maxsize=8)
def projection(seed: int, dim: int, pdim: int) -> np.ndarray:
    return np.random.default_rng([seed, dim, 2]).standard_normal((dim, pdim)).astype(np.float32)



def _int8(y: np.ndarray) -> np.ndarray:
    m = np.abs(y).max(axis=1, keepdims=True)
    return np.rint(y / np.where(m > 0, m, 1.0) * 127.0).astype(np.int8)


def encode(x: np.ndarray, cfg: SemanticDedupConfig, batch: int = 65536) -> np.ndarray:
    """The index's vector for unit rows `x` (cfg.index_vectors): float16 (n, dim), int8 (n, dim)
    scaled to max |127| per row, or int8 (n, proj_dim) of the fixed random projection."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x, dtype=np.float32)
    if cfg.index_vectors == "float16":
        return np.asarray(x, dtype=np.float32).astype(np.float16)
    n, dim = x.shape

    def rows(s: int) -> np.ndarray:  # float32 per batch (a float16 input is not copied whole)
        return np.asarray(x[s:s + batch], dtype=np.float32)

    if cfg.index_vectors == "int8":
        return np.concatenate([_int8(rows(s)) for s in range(0, n, batch)]) if n else np.empty((0, dim), np.int8)
    pm = projection(cfg.seed, dim, cfg.proj_dim)
    return (np.concatenate([_int8(rows(s) @ pm) for s in range(0, n, batch)]) if n
            else np.empty((0, cfg.proj_dim), np.int8))


def decode(v: np.ndarray, cfg: SemanticDedupConfig) -> np.ndarray:
    """Unit float32 rows from index vectors; int8 rows are de-biased (the rounding noise, variance
    1/12 per non-zero component, is taken out of the norm so cosines are not pulled down)."""
    f = np.asarray(v, dtype=np.float32)
    n2 = (f * f).sum(axis=1)
    if cfg.index_vectors != "float16":
        n2 = np.maximum(n2 - (f != 0).sum(axis=1) / 12.0, n2 * 0.5)
    nrm = np.sqrt(n2)[:, None]
    return f / np.where(nrm > 0, nrm, 1.0)


def query_vectors(x: np.ndarray, cfg: SemanticDedupConfig) -> np.ndarray:
    """Unit float32 rows to compare with `decode`d index vectors: the embeddings themselves, or their
    (unrounded) projection for index_vectors="proj"."""
    if cfg.index_vectors != "proj" or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    return unit_rows(np.asarray(x, dtype=np.float32) @ projection(cfg.seed, x.shape[1], cfg.proj_dim))


def unit_rows(q: np.ndarray) -> np.ndarray:
    """int8 (or float) rows -> float32 unit rows (zero rows stay zero)."""
    f = np.asarray(q, dtype=np.float32)
    nrm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(nrm > 0, nrm, 1.0)


def dots(a: np.ndarray, b: np.ndarray, xa: np.ndarray, xb: np.ndarray, batch: int,
          decode_b=None) -> np.ndarray:
    """Row-wise dot products xa[a] . xb[b] (float32). Gathered in small blocks (cache-sized: 1,024
    pairs; the result per pair does not depend on the block). decode_b: applied to the gathered
    rows of xb (e.g. `decode` of raw int8 index rows, row-wise, so only candidate rows are decoded)."""
    out = np.empty(len(a), dtype=np.float32)
    step = min(batch, 1024)
    for s in range(0, len(a), step):
        vb = xb[b[s:s + step]]
        if decode_b is not None:
            vb = decode_b(vb)
        out[s:s + step] = np.einsum("ij,ij->i", xa[a[s:s + step]].astype(np.float32, copy=False),
                                    vb.astype(np.float32, copy=False))
    return out

