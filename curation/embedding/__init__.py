"""Image embeddings: the embedder interface, its two implementations and the chunked, resumable
`embed_shard` stage.

Importing this package imports neither torch, torchvision, open_clip nor timm: they are imported
inside the functions that need them, so loading the Dagster definitions stays fast.

Modules (each has its own contract in its docstring):

* `spec` - `EmbedderSpec` and the device / precision / batch-size resolution.
* `errors` - `EmbedderLoadError`, `RetryableDeviceError`, `ZeroShotUnavailableError`, CUDA-failure
  and per-image error classification.
* `base` - the `Embedder` interface: preprocessing and the batched forward pass (OOM halves the
  batch; other CUDA failures are retryable).
* `models` - `OpenClipEmbedder`, `EfficientNetLite0Embedder` (the offline default) and
  `build_embedder`. Nothing ever falls back silently to random weights: a configured model that
  cannot be loaded raises `EmbedderLoadError` at once, naming the setting to change.
* `checkpoints` - local / s3:// checkpoints loaded without unpickling code, the packaged
  EfficientNet-Lite0 weights and their key mapping.
* `imagenet` - ImageNet-1k class names (from timm), top-k from a head's logits, and
  `imagenet_columns` / `add_imagenet_columns` (the ``in_*`` label columns for classification rows).
* `io` - `read_image_uri` / `read_bytes_uri`.
* `gpu_decode` - nvJPEG decoding on a side CUDA stream.
* `output` - the output rows (`EMBED_OUTPUT_SCHEMA`), `split_errors`, `embeddings_to_numpy`.
* `chunks` - the resumable chunk store (`chunk_uri`, validation, background writes).
* `producer` - ordered prefetch, batching and decoding on CPU workers ahead of the model.
* `shard` - `embed_shard`, the stage.

Output of `embed_shard`: one row per input row, in input order, columns
``image_id, shard, model, embedding, error, in_topk_labels, in_topk_probs``; ``embedding`` is
``List(Float32)`` holding float16-rounded, L2-normalised values (null when the image failed),
``error`` is null or ``"<code>: <message>"`` with a code from `curation.errors`; the ``in_topk_*``
lists hold the top-5 ImageNet class names and probabilities of models with an ImageNet head (null
for open_clip models and failed images). `split_errors` separates embedded from failed rows.
"""

from curation.embedding.base import Embedded, Embedder
from curation.embedding.checkpoints import (
    load_state_dict_safely,
    map_lukemelas_state_dict,
    packaged_efficientnet_lite0_path,
)
from curation.embedding.chunks import chunk_uri
from curation.embedding.errors import EmbedderLoadError, RetryableDeviceError, ZeroShotUnavailableError
from curation.embedding.gpu_decode import NVJPEG_BATCH
from curation.embedding.imagenet import (
    IMAGENET_COLUMNS,
    add_imagenet_columns,
    imagenet_class_names,
    imagenet_columns,
)
from curation.embedding.io import read_bytes_uri, read_image_uri
from curation.embedding.models import EfficientNetLite0Embedder, OpenClipEmbedder, build_embedder
from curation.embedding.output import (
    EMBED_OUTPUT_SCHEMA,
    EMBEDDING_DTYPE,
    embedding_metadata,
    embeddings_to_numpy,
    split_errors,
)
from curation.embedding.shard import embed_shard
from curation.embedding.spec import (
    KINDS,
    OFFLINE_DEFAULT,
    OPEN_CLIP_DEFAULT,
    PACKAGED,
    PRECISIONS,
    RANDOM_INIT,
    EmbedderSpec,
    auto_batch_size,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "EMBEDDING_DTYPE",
    "EMBED_OUTPUT_SCHEMA",
    "IMAGENET_COLUMNS",
    "KINDS",
    "NVJPEG_BATCH",
    "OFFLINE_DEFAULT",
    "OPEN_CLIP_DEFAULT",
    "PACKAGED",
    "PRECISIONS",
    "RANDOM_INIT",
    "EfficientNetLite0Embedder",
    "Embedded",
    "Embedder",
    "EmbedderLoadError",
    "EmbedderSpec",
    "OpenClipEmbedder",
    "RetryableDeviceError",
    "ZeroShotUnavailableError",
    "add_imagenet_columns",
    "auto_batch_size",
    "build_embedder",
    "chunk_uri",
    "embed_shard",
    "embedding_metadata",
    "embeddings_to_numpy",
    "imagenet_class_names",
    "imagenet_columns",
    "load_state_dict_safely",
    "map_lukemelas_state_dict",
    "packaged_efficientnet_lite0_path",
    "read_bytes_uri",
    "read_image_uri",
    "resolve_device",
    "resolve_dtype",
    "split_errors",
]
