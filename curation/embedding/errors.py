"""Errors of the embedding stage and how failures are classified.

* `EmbedderLoadError` - a configured model cannot be built; built by `load_error`, whose message
  always names the setting to change (`EmbedderSpec` field, `EmbedderResource` key, ``EMBEDDER_*``
  environment variable).
* `RetryableDeviceError` - the accelerator failed; the Dagster retry policy retries the step.
  `is_cuda_failure` tells such failures (lost device, ECC error, illegal access, cuDNN/cuBLAS errors)
  from plain bugs; CUDA out-of-memory is not one of them (the caller halves the batch instead).
* `ZeroShotUnavailableError` - the embedder has no text tower.
* `format_image_error` - the per-image ``"<code>: <Type>: <message>"`` recorded in the ``error``
  column, with a code from `curation.errors`.

Importing this module imports neither torch nor PIL.
"""

from __future__ import annotations

from curation import errors as error_codes

# Where each setting is configured, named in every load error.
SETTING_HELP = {
    "kind": "EmbedderResource.kind / env EMBEDDER_KIND ('open_clip' or 'efficientnet_lite0')",
    "model_name": "EmbedderResource.model_name / env EMBEDDER_MODEL",
    "pretrained": "EmbedderResource.pretrained / env EMBEDDER_PRETRAINED",
    "device": "EmbedderResource.device / env EMBEDDER_DEVICE ('auto', 'cpu', 'cuda', 'cuda:N')",
    "precision": "EmbedderResource.precision / env EMBEDDER_PRECISION ('auto', 'fp32', 'fp16', 'bf16')",
    "batch_size": "EmbedderResource.batch_size / env EMBEDDER_BATCH_SIZE",
}


class EmbedderLoadError(RuntimeError):
    """A configured model cannot be built; the message names the setting to change."""


class RetryableDeviceError(RuntimeError):
    """The accelerator failed (lost device, ECC error, illegal access): retry the step, maybe elsewhere."""


class ZeroShotUnavailableError(RuntimeError):
    """The embedder has no text tower (e.g. EfficientNet-Lite0), so zero-shot labels cannot be computed."""


def load_error(setting: str, message: str) -> EmbedderLoadError:
    """`EmbedderLoadError` with `message` and where `setting` is configured."""
    return EmbedderLoadError(f"{message} - set {SETTING_HELP[setting]}")


_CUDA_FAILURE_MARKERS = (
    "CUDA error", "CUDA-capable device", "cudaError", "CUBLAS_STATUS", "cuDNN error", "CUDNN_STATUS",
    "NVML", "device-side assert", "unspecified launch failure", "ECC error", "GPU is lost",
    "illegal memory access",
)


def is_cuda_failure(exc: BaseException) -> bool:
    """True for an accelerator failure worth retrying elsewhere; False for CUDA OOM and plain bugs."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in _CUDA_FAILURE_MARKERS)


def image_error_code(exc: BaseException) -> str:
    """The `curation.errors` code for an image that could not be read or decoded (the one
    exception classifier of every stage, `curation.errors.classify_exception`)."""
    return error_codes.classify_exception(exc, "open")[0]


def format_image_error(exc: BaseException) -> str:
    """``"<code>: <Type>: <message>"`` (message cut at 300 characters) for the ``error`` column."""
    return f"{image_error_code(exc)}: {type(exc).__name__}: {str(exc)[:300]}"
