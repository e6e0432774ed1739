"""Model heads over image embeddings: aesthetic, NSFW or any small MLP/linear scorer.

A head is a stack of linear layers (with an optional activation between them and on the output)
applied to the L2-normalised embedding of an image. It is declared by a `HeadSpec`: where its weights
are (`uri`: a local path, an `s3://` URI, or a Hugging Face hub file `hf-hub:<repo>/<file>`), which
embedding model it was trained on and with what dimension (both must match the embedder in use, or
scoring fails naming the setting), and optionally a quality rule: a `reason` (e.g. `low_aesthetic`,
`nsfw`) given to images whose score is below (`reject_below`) or above (`reject_above`) a threshold.

Weights are read without unpickling code: safetensors, or `torch.load(weights_only=True)` for
`.pt/.pth` state dicts (the form the LAION predictors are published in). The linear layers are the
state dict's 2-D `*.weight` tensors in key order (e.g. `layers.0.weight`, `layers.2.weight`, ...),
each with its `*.bias`; their shapes must chain from `dim` to one output.

Ready-made specs for the common heads (`LAION_AESTHETIC`, `LAION_NSFW`) carry the architecture and
the model they expect; their weights are not downloaded here: point `uri` at a copy you hold.
torch is imported lazily.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from curation import storage

ACTIVATIONS = ("none", "relu", "gelu", "sigmoid")
HUB_PREFIX = "hf-hub:"


class HeadLoadError(RuntimeError):
    """A head that cannot be loaded or does not fit the embedder (not retryable)."""


@dataclass(frozen=True)
class HeadSpec:
    name: str  # score column is `score_<name>`
    uri: str
    embedding_model: str  # the embedder model_id the head was trained on (prefix match on ':' parts)
    dim: int
    hidden_activation: str = "none"
    output_activation: str = "none"
    reason: str | None = None
    reject_below: float | None = None
    reject_above: float | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.name):
            raise ValueError(f"heads.name={self.name!r}: lower-case letters, digits and '_', starting with a letter")
        for field in ("hidden_activation", "output_activation"):
            if getattr(self, field) not in ACTIVATIONS:
                raise ValueError(f"heads.{self.name}.{field}={getattr(self, field)!r}: expected one of {ACTIVATIONS}")
        if self.dim <= 0:
            raise ValueError(f"heads.{self.name}.dim={self.dim}: must be positive")
        if (self.reject_below is not None or self.reject_above is not None) and not self.reason:
            raise ValueError(f"heads.{self.name}: a threshold needs a reason (e.g. low_aesthetic)")

    @property
    def column(self) -> str:
        return f"score_{self.name}"


# The LAION improved aesthetic predictor (linear layers with dropout, no activations; scores ~1-10)
# and the LAION CLIP-based NSFW detector, both over OpenAI CLIP ViT-L/14 image embeddings.
LAION_AESTHETIC = HeadSpec(name="aesthetic", uri="", embedding_model="open_clip:ViT-L-14:openai", dim=768,
                           reason="low_aesthetic", reject_below=4.5)
LAION_NSFW = HeadSpec(name="nsfw", uri="", embedding_model="open_clip:ViT-L-14:openai", dim=768,
                      hidden_activation="relu", output_activation="sigmoid", reason="nsfw", reject_above=0.5)


def model_matches(declared: str, model_id: str) -> bool:
    """`declared` equals `model_id` or is a prefix of it ending at a ':' (e.g. `open_clip:ViT-L-14`)."""
    return model_id == declared or model_id.startswith(declared.rstrip(":") + ":")


def _local_copy(uri: str, tmpdir: str) -> str:
    if uri.startswith(HUB_PREFIX):
        repo, _, filename = uri[len(HUB_PREFIX):].rpartition("/")
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(repo_id=repo, filename=filename)
        except Exception as exc:  # noqa: BLE001 - offline hub, missing file
            raise HeadLoadError(f"head {uri}: cannot fetch from the hub ({type(exc).__name__}: {exc}); without hub "
                                "access set its uri to a local path or s3:// URI") from exc
    if storage.is_s3(uri):
        local = os.path.join(tmpdir, "head" + os.path.splitext(uri)[1])
        try:
            with open(local, "wb") as f:
                f.write(storage.read_bytes(uri))
        except Exception as exc:  # noqa: BLE001
            raise HeadLoadError(f"head {uri}: cannot read ({type(exc).__name__}: {exc})") from exc
        return local
    if not os.path.isfile(uri):
        raise HeadLoadError(f"head file {uri!r} does not exist")
    return uri


def _state_dict(path: str) -> dict[str, Any]:
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise HeadLoadError(f"head {path!r}: cannot load safely (safetensors / weights_only): {exc}") from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise HeadLoadError(f"head {path!r} holds no state dict")
    return sd


def _key_order(key: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


class Head:
    """A loaded head: `score(embeddings) -> (N,) float32`."""

    def __init__(self, spec: HeadSpec, layers: list[tuple[np.ndarray, np.ndarray]]):
        self.spec, self.layers = spec, layers

    @classmethod
    def from_state_dict(cls, spec: HeadSpec, sd: dict[str, Any]) -> Head:
        weights = sorted((k for k, v in sd.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2), key=_key_order)
        if not weights:
            raise HeadLoadError(f"head {spec.name}: no linear layers in {spec.uri}")
        layers, width = [], spec.dim
        for k in weights:
            w = sd[k].float().numpy() if hasattr(sd[k], "float") else np.asarray(sd[k], np.float32)
            bias_key = k[: -len("weight")] + "bias"
            b = sd[bias_key].float().numpy() if bias_key in sd else np.zeros(w.shape[0], np.float32)
            if w.shape[1] != width:
                raise HeadLoadError(f"head {spec.name}: layer {k} takes {w.shape[1]} inputs, expected {width} "
                                    f"(heads.{spec.name}.dim={spec.dim})")
            layers.append((w.astype(np.float32), b.astype(np.float32)))
            width = w.shape[0]
        if width != 1:
            raise HeadLoadError(f"head {spec.name}: the last layer has {width} outputs, expected 1")
        return cls(spec, layers)

    def check_embedder(self, model_id: str, dim: int) -> None:
        if not model_matches(self.spec.embedding_model, model_id):
            raise HeadLoadError(f"head {self.spec.name} was trained on {self.spec.embedding_model!r} embeddings but "
                                f"the embedder is {model_id!r}: use that model (embedder settings) or a head for it "
                                f"(heads.{self.spec.name}.embedding_model)")
        if dim != self.spec.dim:
            raise HeadLoadError(f"head {self.spec.name} expects {self.spec.dim}-d embeddings, the embedder gives {dim}-d")

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.dim:
            raise HeadLoadError(f"head {self.spec.name}: embeddings of shape {x.shape}, expected (N, {self.spec.dim})")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            last = i == len(self.layers) - 1
            x = _activate(x, self.spec.output_activation if last else self.spec.hidden_activation)
        return x[:, 0].astype(np.float32)

    def reasons(self, scores: np.ndarray) -> np.ndarray:
        """True where the score fails the head's rule."""
        bad = np.zeros(len(scores), dtype=bool)
        if self.spec.reject_below is not None:
            bad |= scores < self.spec.reject_below
        if self.spec.reject_above is not None:
            bad |= scores > self.spec.reject_above
        return bad


def _activate(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "gelu":
        return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    return x


def load_head(spec: HeadSpec) -> Head:
    """Load a head's weights (see the module docstring); raises HeadLoadError with what to set."""
    if not spec.uri:
        raise HeadLoadError(f"head {spec.name}: no weights configured (heads.{spec.name}.uri)")
    with tempfile.TemporaryDirectory() as tmp:
        return Head.from_state_dict(spec, _state_dict(_local_copy(spec.uri, tmp)))


def with_uri(spec: HeadSpec, uri: str) -> HeadSpec:
    return replace(spec, uri=uri)
