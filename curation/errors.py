"""Error codes recorded in raw_inventory.error_code. Every unreadable input gets one of these."""

from __future__ import annotations

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
