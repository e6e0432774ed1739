"""ImageNet-1k labels from a model's classifier head: class names, top-k, and the label columns.

* `imagenet_class_names()` - the 1000 class names, index order, from what timm ships
  (``timm.data.ImageNetInfo().index_to_description(i)``): the first comma-separated name of each
  description ("goldfish, Carassius auratus" -> "goldfish"). The two names that occur twice in
  ImageNet-1k ("crane": the bird and the machine; "maillot") carry their WordNet synset id, e.g.
  "crane (n02012849)", so every name is unique. timm (and so torch) is imported on first call.
* `topk_from_logits(logits, k)` - softmax over the classes in float32 and the k largest: (indices
  int64 [n,k], probabilities float32 [n,k]) as torch tensors on the logits' device.
* The embedding output carries ``in_topk_labels`` (List(String), best first) and ``in_topk_probs``
  (List(Float32)) for every embedded image of a model with an ImageNet head; both are null for
  models without one (open_clip) and for images that failed (`curation.embedding.output`).
* `imagenet_columns(emb_df)` - from embedding rows, one row per embedded image id with
  ``image_id, in_label, in_prob, in_topk_labels, in_topk_probs`` (`IMAGENET_COLUMNS`): the top-1
  label and probability and the top-k lists. Rows of a frame without the ``in_*`` columns (written
  before they existed, or by a model without a head) get nulls. `add_imagenet_columns(cls_df,
  emb_df)` left-joins them onto classification rows, keeping their order.

Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from curation.schema import Schema

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

DEFAULT_TOPK = 5
TOPK_LABELS = "in_topk_labels"
TOPK_PROBS = "in_topk_probs"
IMAGENET_OUTPUT_SCHEMA: Schema = {
    TOPK_LABELS: pl.List(pl.String),
    TOPK_PROBS: pl.List(pl.Float32),
}
IMAGENET_COLUMNS: Schema = {
    "image_id": pl.String,
    "in_label": pl.String,
    "in_prob": pl.Float32,
    TOPK_LABELS: pl.List(pl.String),
    TOPK_PROBS: pl.List(pl.Float32),
}


def short_class_names(descriptions: Sequence[str], synsets: Sequence[str]) -> tuple[str, ...]:
    """First comma-separated name of each description; a name that occurs more than once gets its
    synset id appended ("crane (n02012849)")."""
    if len(descriptions) != len(synsets):
        raise ValueError(f"{len(descriptions)} descriptions but {len(synsets)} synsets")
    first = [d.split(",")[0].strip() for d in descriptions]
    seen = Counter(first)
    return tuple(f"{n} ({s})" if seen[n] > 1 else n for n, s in zip(first, synsets, strict=True))


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (see the module docstring)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    n = info.num_classes()
    return short_class_names([info.index_to_description(i) for i in range(n)],
                             [info.index_to_label_name(i) for i in range(n)])


def topk_from_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, probabilities) of the `k` most probable classes, best first; softmax in float32."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k=min(k, int(probs.shape[-1])), dim=-1)
    return top.indices, top.values


def imagenet_columns(emb_df: pl.DataFrame) -> pl.DataFrame:
    """`IMAGENET_COLUMNS` for every embedded row of `emb_df` (embedding output), one row per
    image id (the first), in input order; nulls where the ``in_*`` columns are absent or null."""
    df = emb_df.filter(pl.col("embedding").is_not_null()) if "embedding" in emb_df.columns else emb_df
    df = df.unique("image_id", keep="first", maintain_order=True)
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in IMAGENET_OUTPUT_SCHEMA.items() if c not in df.columns]
    df = df.with_columns(missing) if missing else df
    labels = pl.col(TOPK_LABELS).cast(pl.List(pl.String))
    probs = pl.col(TOPK_PROBS).cast(pl.List(pl.Float32))
    return df.select(
        pl.col("image_id").cast(pl.String),
        labels.list.first().alias("in_label"),
        probs.list.first().alias("in_prob"),
        labels.alias(TOPK_LABELS),
        probs.alias(TOPK_PROBS),
    )


def add_imagenet_columns(cls_df: pl.DataFrame, emb_df: pl.DataFrame) -> pl.DataFrame:
    """`cls_df` (one row per image id) with the four ``in_*`` columns of `imagenet_columns(emb_df)`
    appended (left join on image_id, order kept; nulls for ids without a label)."""
    extra = imagenet_columns(emb_df)
    return cls_df.drop([c for c in extra.columns if c != "image_id" and c in cls_df.columns]).join(
        extra, on="image_id", how="left", maintain_order="left")
