"""A nearest-neighbour index over the corpus's image embeddings, built incrementally as shards land.

Each shard gets one immutable segment (`similarity_index/<shard>.faiss` + `<shard>.ids.parquet`): a
faiss HNSW graph over that shard's L2-normalised embeddings, inner-product metric (= cosine), with
8-bit scalar-quantised vectors by default. A new shard builds only its own segment: nothing earlier
is rebuilt. A query searches every segment for its k best and merges them by score; the result is
the corpus-wide top k (exact up to HNSW's own recall, measured in bench/similarity.py against brute
force). Segments are serialised with faiss's own format (no pickle) and stored through
`curation.storage`, so they live on local disk or S3 alike.

faiss is imported lazily (loading the Dagster definitions does not import it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from curation import storage

STORAGES = ("sq8", "flat", "fp16")


@dataclass(frozen=True)
class IndexConfig:
    """HNSW settings. m: graph degree; ef_construction / ef_search: candidate list sizes at build
    and query time (higher = better recall, slower); storage: how vectors are kept in the index
    (`sq8` 1 byte per dimension, `fp16` 2, `flat` 4)."""

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 96
    storage: str = "sq8"

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"similarity.storage={self.storage!r}: expected one of {', '.join(STORAGES)}")
        for name in ("m", "ef_construction", "ef_search"):
            if getattr(self, name) < 2:
                raise ValueError(f"similarity.{name}={getattr(self, name)}: must be >= 2")

    def factory(self) -> str:
        return f"HNSW{self.m}," + {"sq8": "SQ8", "fp16": "SQfp16", "flat": "Flat"}[self.storage]


@dataclass(frozen=True)
class Hit:
    image_id: str
    shard: str
    score: float  # cosine similarity


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def build_segment(vectors: np.ndarray, cfg: IndexConfig = IndexConfig()):
    """A faiss HNSW index over `vectors` (rows normalised here)."""
    import faiss

    x = unit_rows(vectors)
    index = faiss.index_factory(x.shape[1], cfg.factory(), faiss.METRIC_INNER_PRODUCT)
    # faiss types index_factory as the base Index; an "HNSW..." factory string builds an IndexHNSW
    index.hnsw.efConstruction = cfg.ef_construction  # type: ignore[attr-defined]
    if len(x):
        index.train(x)
        index.add(x)
    return index


def segment_uris(root: str, shard: str) -> tuple[str, str]:
    return storage.join(root, f"{shard}.faiss"), storage.join(root, f"{shard}.ids.parquet")


def write_segment(root: str, shard: str, ids: Sequence[str], vectors: np.ndarray,
                  cfg: IndexConfig = IndexConfig()) -> int:
    """Build and store the segment of one shard; returns the bytes of the stored index. The ids
    file is written last, so a segment without it is incomplete and is rebuilt."""
    import faiss

    index_uri, ids_uri = segment_uris(root, shard)
    index = build_segment(vectors, cfg)
    data = faiss.serialize_index(index).tobytes()
    storage.write_bytes_atomic(index_uri, data)
    storage.write_parquet(pl.DataFrame({"image_id": list(ids), "shard": [shard] * len(ids)},
                                       schema={"image_id": pl.String, "shard": pl.String}), ids_uri)
    return len(data)


class Segment:
    def __init__(self, shard: str, index, ids: list[str], ef_search: int):
        self.shard, self.index, self.ids = shard, index, ids
        self.index.hnsw.efSearch = ef_search

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.ids:
            return np.full((len(q), 0), -np.inf, np.float32), np.zeros((len(q), 0), np.int64)
        return self.index.search(q, min(k, len(self.ids)))


def load_segment(root: str, shard: str, cfg: IndexConfig = IndexConfig()) -> Segment:
    import faiss

    index_uri, ids_uri = segment_uris(root, shard)
    ids = storage.read_parquet(ids_uri)["image_id"].to_list()
    index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(index_uri), dtype=np.uint8))
    return Segment(shard, index, ids, cfg.ef_search)


def segments_present(root: str) -> list[str]:
    """Shards whose segment is complete (ids file written), in name order."""
    return sorted(n.removesuffix(".ids.parquet") for n in storage.list_dir(root) if n.endswith(".ids.parquet"))


class SimilarityIndex:
    """The corpus-wide index: every segment, searched together."""

    def __init__(self, segments: Iterable[Segment]):
        self.segments = list(segments)

    @classmethod
    def load(cls, root: str, shards: Sequence[str] | None = None, cfg: IndexConfig = IndexConfig()) -> SimilarityIndex:
        keys = segments_present(root) if shards is None else list(shards)
        return cls(load_segment(root, s, cfg) for s in keys)

    def __len__(self) -> int:
        return sum(len(s.ids) for s in self.segments)

    def search(self, queries: np.ndarray, k: int = 10, exclude: Sequence[str | None] | None = None) -> list[list[Hit]]:
        """Top `k` hits per query row (cosine, best first), across all segments. `exclude[i]`, if
        given, is an image id left out of query i's hits (the query image itself)."""
        q = unit_rows(np.atleast_2d(queries))
        extra = 1 if exclude is not None else 0
        per_query: list[list[Hit]] = [[] for _ in range(len(q))]
        for seg in self.segments:
            scores, idx = seg.search(q, k + extra)
            for i in range(len(q)):
                per_query[i].extend(Hit(seg.ids[j], seg.shard, float(s)) for s, j in zip(scores[i], idx[i]) if j >= 0)
        out = []
        for i, hits in enumerate(per_query):
            skip = exclude[i] if exclude is not None else None
            hits = sorted((h for h in hits if h.image_id != skip), key=lambda h: (-h.score, h.image_id))
            out.append(hits[:k])
        return out


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """Exact top-k row indices by cosine (ground truth for recall), in blocks of the corpus."""
    q = unit_rows(queries)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(vectors), block):
        x = unit_rows(vectors[start:start + block])
        s = q @ x.T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall_at_k(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth))
    return hits / max(1, sum(min(k, len(t)) for t in truth))
