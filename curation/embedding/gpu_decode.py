"""JPEG decoding on the GPU with nvJPEG (``torchvision.io.decode_jpeg``).

* `jpeg_ok_for_gpu` - which files may take the GPU path: complete JPEGs whose GPU pixels equal the
  CPU path's (no EXIF rotation, RGB/grey). Everything else is decoded on the CPU.
* `decode_on_gpu` - decodes a list of JPEG byte strings on a side CUDA stream in sub-batches of
  `NVJPEG_BATCH`, resizes/crops them with `Embedder.resize_crop_on_device`, and records a CUDA event
  after them, so that the consumer can wait on the event rather than the whole stream. Files nvJPEG
  rejects, and sub-batches that run out of GPU memory, are returned as failed (decode them on the
  CPU); a device failure raises `RetryableDeviceError`.

torch, torchvision and PIL are imported inside the functions.
"""

from __future__ import annotations

import io
from typing import Any

from curation.embedding.base import Embedder
from curation.embedding.errors import RetryableDeviceError, is_cuda_failure

NVJPEG_BATCH = 256  # nvJPEG batched decode is fastest around 256 images per call (H100: ~20k img/s)
_JPEG_MAGIC = b"\xff\xd8\xff"


def jpeg_ok_for_gpu(data: bytes) -> bool:
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


def decode_on_gpu(embedder: Embedder, jpegs: list[bytes], stream: Any) -> tuple[Any, list[int], list[int]]:
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
                if is_cuda_failure(exc) and "decode" not in str(exc).lower():
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
