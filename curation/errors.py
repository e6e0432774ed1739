"""Error codes recorded in raw_inventory.error_code (every unreadable input gets one of these), and
`classify_exception`, the one mapping from a read/decode exception to `(code, message)` used by
every stage (reader, imaging, embedding)."""

from __future__ import annotations

import errno as _errno
import sys
from typing import Literal

NOT_FOUND = "not_found"  # listed, then gone before it was read
PERMISSION_DENIED = "permission_denied"
READ_ERROR = "read_error"  # any other I/O failure (network, EIO)
EMPTY_FILE = "empty_file"  # zero bytes
NOT_AN_IMAGE = "not_an_image"  # no decoder recognises the bytes (text, HTML, SVG without a plugin)
UNSUPPORTED_FORMAT = "unsupported_format"  # recognised container without a decoder (e.g. HEIC)
TRUNCATED = "truncated"  # stream ends early
CORRUPT = "corrupt"  # decoder error: bad CRC, bad markers, broken data
DECOMPRESSION_BOMB = "decompression_bomb"  # declared pixels above the configured limit
TOO_LARGE_FILE = "too_large_file"  # bytes above the configured limit
TIMEOUT = "decode_timeout"  # decode took longer than the configured limit
NOT_A_REGULAR_FILE = "not_a_regular_file"  # directory, fifo, device
SYMLINK_OUTSIDE_ROOT = "symlink_outside_root"  # symlink that resolves outside the source root
SYMLINK_LOOP = "symlink_loop"
UNSAFE_PATH = "unsafe_path"  # '..', absolute or foreign-bucket entry in a manifest
INTERNAL_ERROR = "internal_error"  # a bug in analysis; message carries the exception
# Added by the inventory stage: the worker process analysing this file died (e.g. a decoder
# segfault or the OOM killer); the other files of its chunk are retried on a fresh worker.
WORKER_CRASHED = "worker_crashed"

ALL_CODES = frozenset(
    v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str) and k != "ALL_CODES"
)


# ------------------------------------------------------------------------- exception -> code

# `stage` of classify_exception: what the failing call was doing.
#   "read":   reading bytes (local file or object store); unknown failures are READ_ERROR
#   "decode": a decoder working on bytes already read; unknown failures are CORRUPT
#   "open":   read + decode + conversion in one call (the embedding loader); unknown -> INTERNAL_ERROR
Stage = Literal["read", "decode", "open"]
_STAGES = ("read", "decode", "open")

_ERRNO_CODES = {
    "ENOENT": NOT_FOUND, "ENOTDIR": NOT_FOUND, "EACCES": PERMISSION_DENIED, "EPERM": PERMISSION_DENIED,
    "ELOOP": SYMLINK_LOOP, "EISDIR": NOT_A_REGULAR_FILE,
}


def classify_exception(exc: BaseException, stage: Stage = "decode") -> tuple[str, str]:
    """`(code, message)` for an exception raised while reading or decoding one image.

    The one mapping from exceptions to the codes above, in this order:
      1. an exception carrying its own `.code` from this module (`curation.reader.InputError`,
         `curation.imaging.DecodeError`) keeps it;
      2. Pillow's `DecompressionBombError` (and its warning, when warnings are errors) ->
         DECOMPRESSION_BOMB; `UnidentifiedImageError` -> NOT_AN_IMAGE;
      3. an OSError by errno or subclass: ENOENT/ENOTDIR/FileNotFoundError -> NOT_FOUND,
         EACCES/EPERM/PermissionError -> PERMISSION_DENIED, ELOOP -> SYMLINK_LOOP,
         EISDIR/IsADirectoryError -> NOT_A_REGULAR_FILE;
      4. stage "read": an object store's answer without an errno, by its text (NoSuchKey/404/Not Found
         -> NOT_FOUND, AccessDenied/403/Forbidden -> PERMISSION_DENIED), else READ_ERROR;
      5. stage "decode" (any exception) or "open" (OSError/EOFError only): EOFError or a message
         with "truncated"/"premature end" -> TRUNCATED, "decoder ... not available" ->
         UNSUPPORTED_FORMAT, else CORRUPT;
      6. stage "open", anything else -> INTERNAL_ERROR.
    `message` is "<ExceptionType>: <text>".
    """
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
    message = f"{type(exc).__name__}: {exc}"
    own = getattr(exc, "code", None)
    if isinstance(own, str) and own in ALL_CODES:
        return own, message
    pil_image = _pil_image()
    if pil_image is not None:
        if isinstance(exc, (pil_image.DecompressionBombError, pil_image.DecompressionBombWarning)):
            return DECOMPRESSION_BOMB, message
        if isinstance(exc, pil_image.UnidentifiedImageError):
            return NOT_AN_IMAGE, message
    if isinstance(exc, OSError):
        by_errno = _ERRNO_CODES.get(_errno.errorcode.get(exc.errno, "")) if exc.errno is not None else None
        if by_errno is not None:
            return by_errno, message
        for cls, code in ((FileNotFoundError, NOT_FOUND), (PermissionError, PERMISSION_DENIED),
                          (IsADirectoryError, NOT_A_REGULAR_FILE)):
            if isinstance(exc, cls):
                return code, message
    if stage == "read":
        if not (isinstance(exc, OSError) and exc.errno is not None):
            text = f"{type(exc).__name__} {exc}"
            if "NoSuchKey" in text or "404" in text or "Not Found" in text:
                return NOT_FOUND, message
            if "AccessDenied" in text or "403" in text or "Forbidden" in text:
                return PERMISSION_DENIED, message
        return READ_ERROR, message
    if stage == "open" and not isinstance(exc, (OSError, EOFError)):
        return INTERNAL_ERROR, message
    low = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in low or "premature end" in low:
        return TRUNCATED, message
    if "decoder" in low and "not available" in low:
        return UNSUPPORTED_FORMAT, message
    return CORRUPT, message


def _pil_image():  # Pillow only when the caller already loaded it (errors stays import-light)
    return sys.modules.get("PIL.Image")
