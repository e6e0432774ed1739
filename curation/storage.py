"""Reading and writing the pipeline's own outputs on local disk or S3 (through fsspec/s3fs).

Every write is atomic: the bytes go to a temporary name beside the target and are renamed into
place (local), or uploaded as one object whose multipart upload completes only at the end (S3), so
a reader never sees a half-written file and two writers of the same partition do not interleave.
Every read of Parquet verifies the footer, so a truncated file raises `CorruptOutputError` (the
partition is then recomputed) instead of being read silently. No pickle anywhere.
"""

from __future__ import annotations

import errno
import io
import json
import os
import posixpath
import random
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import polars as pl

T = TypeVar("T")


class CorruptOutputError(RuntimeError):
    """An intermediate file exists but cannot be read back (truncated, bad footer)."""

    def __init__(self, uri: str, cause: BaseException):
        super().__init__(f"corrupt output {uri}: {type(cause).__name__}: {cause}; recompute this partition")
        self.uri = uri


class UnsafePathError(ValueError):
    """A path would resolve outside the configured root."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path segments under `root`, refusing any segment that could escape it."""
    for part in parts:
        for seg in part.split("/"):
            if seg in ("..",) or part.startswith("/") or "\x00" in part:
                raise UnsafePathError(f"unsafe path segment {part!r} under {root!r}")
    if is_s3(root):
        return root.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
    return os.path.join(root, *parts)


def ensure_under(root: str, uri: str) -> str:
    """Return `uri` if it lies under `root` (same bucket for S3, no `..` escape); else raise."""
    if is_s3(root) != is_s3(uri):
        raise UnsafePathError(f"{uri!r} is not under {root!r}")
    if is_s3(root):
        r = root.rstrip("/") + "/"
        norm = "s3://" + posixpath.normpath(uri[5:])
        if not (norm + "/").startswith(r) or ".." in uri[5:].split("/"):
            raise UnsafePathError(f"{uri!r} is not under {root!r}")
        return uri
    r = os.path.realpath(root)
    p = os.path.realpath(uri)
    if p != r and not p.startswith(r.rstrip(os.sep) + os.sep):
        raise UnsafePathError(f"{uri!r} resolves outside {root!r}")
    return uri


_FS_CACHE: dict[str, Any] = {}


def filesystem(uri: str):
    """The fsspec filesystem for `uri`. S3 credentials and endpoint come from the environment only
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / S3_ENDPOINT_URL)."""
    import fsspec

    proto = "s3" if is_s3(uri) else "file"
    key = proto + ":" + (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or "")
    fs = _FS_CACHE.get(key)
    if fs is None:
        if proto == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
            client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
            fs = fsspec.filesystem(
                "s3",
                client_kwargs=client_kwargs,
                config_kwargs={"retries": {"max_attempts": 10, "mode": "adaptive"}},
                skip_instance_cache=True,
            )
        else:
            fs = fsspec.filesystem("file")
        _FS_CACHE[key] = fs
    return fs


def _strip(uri: str) -> str:
    return uri[5:] if is_s3(uri) else uri


RETRYABLE_STATUS = {429, 500, 502, 503, 504}


_RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                    "InternalError", "ServiceUnavailable", "RequestTimeout"}
_RETRYABLE_ERRNOS = {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO), errno.ETIMEDOUT, errno.ECONNRESET}
_RETRYABLE_MARKERS = ("SlowDown", "Throttl", "InternalError", "internal error", "ServiceUnavailable", "RequestTimeout",
                      "503", "500", "502", "504", "429", "Connection reset", "EndpointConnectionError")


def _is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection errors, looked for along the exception chain (s3fs wraps
    botocore's ClientError in an OSError whose text no longer carries the error code)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        resp = getattr(e, "response", None)
        if isinstance(resp, dict) and (
            (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode") in RETRYABLE_STATUS
            or (resp.get("Error") or {}).get("Code") in _RETRYABLE_CODES
        ):
            return True
        if isinstance(e, OSError) and e.errno in _RETRYABLE_ERRNOS:
            return True
        if any(m in f"{type(e).__name__} {e}" for m in _RETRYABLE_MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.2,
                 max_delay: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `fn`, retrying throttling, 5xx and connection errors with exponential backoff and full
    jitter; after the last attempt raise an error that names `what` (the object)."""
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, UnsafePathError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_retryable(exc) or attempt == attempts - 1:
                if _is_retryable(exc):
                    raise OSError(f"{what}: giving up after {attempts} attempts: {exc}") from exc
                raise
            delay = min(max_delay, base_delay * (2**attempt))
            sleep(random.uniform(0, delay))
    raise AssertionError("unreachable")


def exists(uri: str) -> bool:
    return with_retries(lambda: filesystem(uri).exists(_strip(uri)), uri)


def makedirs(uri: str) -> None:
    if not is_s3(uri):
        os.makedirs(uri, exist_ok=True)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    if is_s3(uri):
        fs = filesystem(uri)

        def put():
            # s3fs uploads through one multipart upload for large payloads; the object becomes
            # visible only when the upload completes.
            with fs.open(_strip(uri), "wb", block_size=8 * 1024 * 1024) as f:
                f.write(data)

        with_retries(put, uri)
        return
    directory = os.path.dirname(uri) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(uri)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def upload_file_atomic(local_path: str, uri: str) -> None:
    """Move (local) or upload (S3) the finished file `local_path` to `uri` atomically: a local target
    appears by rename, an S3 object only when its (multipart) upload completes. `local_path` is left
    for the caller to delete on S3, and is gone after a local move."""
    if is_s3(uri):
        fs = filesystem(uri)
        with_retries(lambda: fs.put_file(local_path, _strip(uri)), uri)
        return
    directory = os.path.dirname(uri) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(uri)}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(local_path, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_bytes(uri: str) -> bytes:
    fs = filesystem(uri)

    def get() -> bytes:
        with fs.open(_strip(uri), "rb") as f:
            return f.read()

    return with_retries(get, uri)


def write_parquet(df: pl.DataFrame, uri: str) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    write_bytes_atomic(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pl.DataFrame:
    data = read_bytes(uri)
    try:
        return pl.read_parquet(io.BytesIO(data), columns=columns)
    except Exception as exc:  # noqa: BLE001 - any decode failure means a corrupt file
        raise CorruptOutputError(uri, exc) from exc


def write_json(obj: Any, uri: str) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def list_dir(uri: str) -> list[str]:
    """Names (not paths) directly under `uri`; empty when it does not exist."""
    fs = filesystem(uri)
    try:
        entries = with_retries(lambda: fs.ls(_strip(uri), detail=False), uri)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries)


def delete(uri: str) -> None:
    fs = filesystem(uri)
    try:
        with_retries(lambda: fs.rm(_strip(uri), recursive=True), uri)
    except FileNotFoundError:
        pass
