"""The `Embedder` interface: images (and, with a text tower, texts) to L2-normalised float32 vectors.

Subclasses set the model attributes (`model_id`, `dim`, `device`, `dtype`, `batch_size`,
`image_size`, `resize_size`, `mean`, `std`) and implement `_forward_images`; the base class gives
the shared preprocessing and the batched, fault-tolerant forward pass:

* `pil_to_array` (CPU, thread-safe, pure PIL/numpy) and `resize_crop_on_device` (GPU tensors from
  nvJPEG) produce the same geometry: shortest side to `resize_size` (bicubic), centre crop
  `image_size`.
* `embed_pixels_topk` runs sub-batches of `batch_size`; on ``torch.cuda.OutOfMemoryError`` it halves
  `batch_size` (kept for the rest of the run) and goes on; at batch size 1, and on any other CUDA
  failure (lost device, ECC error, illegal access), it raises `RetryableDeviceError`. It returns
  `Embedded`: the L2-normalised embeddings and, for a model with an ImageNet head (`class_names`
  set, `_head_logits` implemented), the `topk` class indices and softmax probabilities computed
  from the un-normalised features through the head (one matmul, no second forward pass). The
  same code runs on every device and for CPU- and GPU-decoded pixels. `embed_pixels` returns the
  embeddings only.
* Without a text tower `embed_texts` / `logit_scale` raise `ZeroShotUnavailableError`.

torch and PIL are imported inside the methods.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.embedding.errors import SETTING_HELP, RetryableDeviceError, ZeroShotUnavailableError, is_cuda_failure
from curation.embedding.imagenet import DEFAULT_TOPK, topk_from_logits

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """What `Embedder.embed_pixels_topk` returns for n images."""

    embeddings: np.ndarray  # float32 [n, dim], L2-normalised
    topk_idx: np.ndarray | None = None  # int64 [n, k] class indices, best first (None: no head)
    topk_prob: np.ndarray | None = None  # float32 [n, k] softmax probabilities


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
    dtype: torch.dtype
    batch_size: int
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    supports_text: bool = False
    class_names: tuple[str, ...] | None = None  # set by models with an ImageNet head
    topk: int = DEFAULT_TOPK

    # -- to implement -----------------------------------------------------------------------------
    @abstractmethod
    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model forward on a normalised batch already on `device` in `dtype`; returns [N, dim]."""

    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits [N, classes] from the un-normalised features `_forward_images` returned;
        implemented by models with a classifier head (then `class_names` is set)."""
        raise NotImplementedError(f"{self.model_id} has no classifier head")

    @property
    def has_head(self) -> bool:
        """True when the model records ImageNet top-k labels."""
        return self.class_names is not None and self.topk > 0

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [len(texts), dim] (float32)."""
        raise ZeroShotUnavailableError(
            f"{self.model_id} has no text tower: zero-shot classification is unavailable; configure an "
            f"open_clip model ({SETTING_HELP['kind']}) or use a few-shot probe"
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
            "imagenet_topk": self.topk if self.has_head else 0,
            "embedding_storage": "List(Float32) holding float16-rounded, L2-normalised values",
        }

    def pil_to_array(self, img: Image.Image) -> np.ndarray:
        """RGB (alpha composited on white, or black for a cut-out white swallows), shortest side ->
        resize_size (bicubic), centre crop image_size -> uint8 array [S, S, 3]
        (`curation.embedding.decode_pool.to_model_array`: pure PIL/numpy, safe to call from many
        threads and from decode processes)."""
        from curation.embedding.decode_pool import to_model_array

        return to_model_array(img, self.resize_size, self.image_size)

    def pil_to_uint8(self, img: Image.Image) -> torch.Tensor:
        """`pil_to_array` as a CHW uint8 tensor [3, S, S]."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.pil_to_array(img).transpose(2, 0, 1)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..255 float [N,3,S,S] on device -> normalised `dtype` tensor."""
        import torch

        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        return ((x.float() - mean) / std).to(self.dtype)

    def resize_crop_on_device(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
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
        """`embed_pixels_topk(...).embeddings`: float32 [N, dim], L2-normalised."""
        return self.embed_pixels_topk(pixels, channels_last).embeddings

    def embed_pixels_topk(self, pixels: Any, channels_last: bool = False) -> Embedded:
        """Embed a batch of 0..255 pixels: uint8/float [N,3,S,S], or uint8 [N,S,S,3] with
        `channels_last` (numpy or torch, on any device), with the ImageNet top-k when the model has
        a head. Runs in sub-batches of `batch_size`; halves `batch_size` on CUDA OOM and goes on;
        raises `RetryableDeviceError` on any other CUDA failure."""
        import torch

        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(pixels)
        n = int(pixels.shape[0])
        res = Embedded(np.empty((n, self.dim), dtype=np.float32))
        if self.has_head:
            res.topk_idx = np.empty((n, self.topk), dtype=np.int64)
            res.topk_prob = np.empty((n, self.topk), dtype=np.float32)
        start = 0
        while start < n:
            bs = min(self.batch_size, n - start)
            try:
                with torch.inference_mode():
                    x = pixels[start:start + bs].to(self.device, non_blocking=True)
                    if channels_last:
                        x = x.permute(0, 3, 1, 2)
                    feats = self._forward_images(self.normalize(x))
                    if res.topk_idx is not None and res.topk_prob is not None:
                        idx, prob = topk_from_logits(self._head_logits(feats), self.topk)
                        res.topk_idx[start:start + bs] = idx.cpu().numpy()
                        res.topk_prob[start:start + bs] = prob.cpu().numpy()
                    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
                    res.embeddings[start:start + bs] = feats.cpu().numpy()
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
                if is_cuda_failure(exc):
                    raise RetryableDeviceError(f"device failure on {self.device}: {exc}") from exc
                raise
            start += bs
        return res

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images (convenience, no overlap): float32 [N, dim], L2-normalised."""
        return self.embed_images_topk(images).embeddings

    def embed_images_topk(self, images: Sequence[Image.Image]) -> Embedded:
        """`embed_pixels_topk` of PIL images (convenience, no overlap)."""
        if not images:
            k = self.topk if self.has_head else 0
            empty = (np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)) if k else (None, None)
            return Embedded(np.empty((0, self.dim), dtype=np.float32), *empty)
        return self.embed_pixels_topk(np.stack([self.pil_to_array(im) for im in images]), channels_last=True)
