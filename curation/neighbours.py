"""Nearest images of a query, for `curate similar` and the HTML page it writes.

`query_of(output_root, path_or_id, embed)` gives the query vector: an image id (16 hex characters)
is looked up in `image_embeddings`; anything else is a path or URI of an image file, decoded under
the stage's open policy and embedded with `embed` (the configured embedder, same preprocessing as
the `image_embeddings` stage). `nearest(output_root, query, k)` searches the `similarity_index`
segments and returns `Neighbour`s (image id, cosine score, source URI from `curated_images`), best
first. `render_html(...)` writes a self-contained page: the query and its neighbours as thumbnails
(curation.report thumbnails) with their scores; Jinja2 autoescape is on, so no value becomes markup.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import jinja2
import numpy as np
import polars as pl

from curation import storage
from curation.stages import CURATED_IMAGES, IMAGE_EMBEDDINGS, SIMILARITY_INDEX

ID_RE = re.compile(r"[0-9a-f]{16}")


class QueryError(ValueError):
    """The query cannot be answered (unknown id, no index yet, unreadable image): one line."""


@dataclass(frozen=True)
class Query:
    label: str  # the id or path asked for
    vector: np.ndarray
    image_id: str | None  # when the query is an image of the corpus
    uri: str | None


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    shard: str
    score: float
    uri: str | None


def _shard_files(output_root: str, dataset: str) -> list[str]:
    root = storage.join(output_root, dataset)
    return [storage.join(root, n) for n in storage.list_dir(root) if n.endswith(".parquet")]


def _uris(output_root: str, ids_by_shard: dict[str, set[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for shard, ids in ids_by_shard.items():
        uri = storage.join(output_root, CURATED_IMAGES, f"{shard}.parquet")
        if storage.exists(uri):
            df = storage.read_parquet(uri, columns=["image_id", "uri"]).filter(pl.col("image_id").is_in(list(ids)))
            out.update(zip(df["image_id"], df["uri"]))
    return out


def corpus_model(output_root: str) -> str | None:
    """The embedding model of the corpus (the `model` of the first embedded shard), if any."""
    for f in _shard_files(output_root, IMAGE_EMBEDDINGS):
        models = storage.read_parquet(f, columns=["model"])["model"].drop_nulls()
        if len(models):
            return str(models[0])
    return None


def query_of(output_root: str, path_or_id: str, embed: Callable[[str], np.ndarray]) -> Query:
    if ID_RE.fullmatch(path_or_id):
        for f in _shard_files(output_root, IMAGE_EMBEDDINGS):
            df = storage.read_parquet(f, columns=["image_id", "shard", "embedding"]).filter(
                (pl.col("image_id") == path_or_id) & pl.col("embedding").is_not_null())
            if len(df):
                uri = _uris(output_root, {df["shard"][0]: {path_or_id}}).get(path_or_id)
                return Query(path_or_id, np.asarray(df["embedding"][0], np.float32), path_or_id, uri)
        if not storage.exists(path_or_id):
            raise QueryError(f"image id {path_or_id} is in no shard's {IMAGE_EMBEDDINGS} under {output_root}")
    try:
        vector = embed(path_or_id)
    except Exception as exc:  # noqa: BLE001 - any decode/read failure is one line for the user
        raise QueryError(f"{path_or_id}: cannot embed it ({type(exc).__name__}: {exc})") from exc
    return Query(path_or_id, np.asarray(vector, np.float32), None, path_or_id)


def nearest(output_root: str, query: Query, k: int, cfg=None) -> list[Neighbour]:
    from curation.similarity import IndexConfig, SimilarityIndex

    root = storage.join(output_root, SIMILARITY_INDEX)
    index = SimilarityIndex.load(root, cfg=cfg or IndexConfig())
    if not len(index):
        raise QueryError(f"no {SIMILARITY_INDEX} segments under {root}: materialise {SIMILARITY_INDEX} first")
    hits = index.search(query.vector[None, :], k=k)[0]
    by_shard: dict[str, set[str]] = {}
    for h in hits:
        by_shard.setdefault(h.shard, set()).add(h.image_id)
    uris = _uris(output_root, by_shard)
    return [Neighbour(h.image_id, h.shard, h.score, uris.get(h.image_id)) for h in hits]


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Similar to {{ query.label }}</title>
<style>body{font:14px sans-serif;margin:1em}figure{display:inline-block;margin:4px;width:{{ px }}px;
vertical-align:top}figcaption{font-size:11px;word-break:break-all}.q{outline:3px solid #36c}</style></head><body>
<h1>Images similar to {{ query.label }}</h1><p>{{ hits|length }} nearest by cosine similarity of the embeddings.</p>
<figure class="q"><img src="{{ qthumb.data_uri }}" alt="query"><figcaption>query<br>{{ query.label }}</figcaption></figure>
{% for n, t in rows %}<figure><img src="{{ t.data_uri }}" alt="{{ n.image_id }}" title="{{ n.uri }}">
<figcaption>{{ loop.index }}. {{ '%.3f'|format(n.score) }}<br>{{ n.image_id }}</figcaption></figure>{% endfor %}
</body></html>"""


def render_html(query: Query, hits: list[Neighbour], out_path: str, load_image=None) -> None:
    from curation.report.spec import THUMB_PX
    from curation.report.thumbnails import Thumbnailer, open_image

    th = Thumbnailer(load_image or open_image, max_thumbs=len(hits) + 1)
    qthumb = th.tile(query.image_id or "query", query.uri, caption="query", missing_note="no file")
    rows = [(n, th.tile(n.image_id, n.uri, caption=f"{n.score:.3f}", missing_note="no uri")) for n in hits]
    env = jinja2.Environment(autoescape=True)
    page = env.from_string(_PAGE).render(query=query, qthumb=qthumb, rows=rows, hits=hits, px=THUMB_PX + 8)
    storage.write_bytes_atomic(out_path, page.encode())
