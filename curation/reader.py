"""Reading one source image's bytes, safely, from local disk or S3.

`read_source(uri, root, max_bytes=...)` returns `(data, mtime)` or raises `InputError` whose
`.code` is one of `curation.errors`. It never follows a path out of the source root and never
blocks on special files:

Local files
  * a path containing a `..` segment, or a path that is not lexically under `root` -> UNSAFE_PATH
  * the path is resolved with `realpath(strict=True)`: a symlink loop -> SYMLINK_LOOP, a missing
    file (e.g. deleted between listing and reading) -> NOT_FOUND, a resolved target outside
    `realpath(root)` -> SYMLINK_OUTSIDE_ROOT (symlinks that stay inside the root are followed, so
    the same file reached by two paths reads twice with the same bytes)
  * `stat` of the target: directory, fifo, socket, device -> NOT_A_REGULAR_FILE (a fifo is never
    opened; the regular file is opened with O_NONBLOCK|O_NOFOLLOW and re-checked with fstat, so a
    file swapped for a fifo or symlink between the checks is refused too)
  * size 0 -> EMPTY_FILE, size > max_bytes -> TOO_LARGE_FILE (checked on the listed size and again
    on the bytes actually read, so a file that grows while being read is still bounded)
  * EACCES/EPERM -> PERMISSION_DENIED; any other OSError -> READ_ERROR
S3 (`s3://bucket/key`)
  * the key must lie under `root` (same bucket and prefix, no `..`) -> else UNSAFE_PATH
  * `info` then a ranged read of at most max_bytes+1 bytes, both through
    `curation.storage.with_retries` (throttling / 5xx / connection errors are retried)
  * missing -> NOT_FOUND, access denied -> PERMISSION_DENIED, a "directory" -> NOT_A_REGULAR_FILE,
    other failures -> READ_ERROR
"""

from __future__ import annotations

import os
import stat
from datetime import datetime

from curation import errors
from curation.storage import (
    UnsafePathError,
    ensure_under,
    filesystem,
    is_s3,
    with_retries,
)


class InputError(Exception):
    """A source file that cannot be read; `.code` is a code from `curation.errors`."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def read_source(uri: str, root: str, *, max_bytes: int) -> tuple[bytes, float | None]:
    """Return `(bytes, mtime)` of the source file `uri`, which must lie under `root`.

    `mtime` is unix seconds (None on S3 when the store does not report it). Raises `InputError`
    with a code from `curation.errors` for every unreadable input; never returns empty bytes.
    """
    if not isinstance(uri, str) or not uri or "\x00" in uri:
        raise InputError(errors.UNSAFE_PATH, f"invalid uri {uri!r}")
    if is_s3(uri) or is_s3(root):
        return _read_s3(uri, root, max_bytes)
    return _read_local(uri, root, max_bytes)


# --------------------------------------------------------------------------------------- local


def _read_code(exc: BaseException) -> str:
    """The error code of a failed read (local or S3), by `curation.errors.classify_exception`."""
    return errors.classify_exception(exc, "read")[0]


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _read_local(uri: str, root: str, max_bytes: int) -> tuple[bytes, float | None]:
    if ".." in uri.split(os.sep):
        raise InputError(errors.UNSAFE_PATH, f"path {uri!r} contains a '..' segment")
    if not os.path.isabs(uri):
        raise InputError(errors.UNSAFE_PATH, f"path {uri!r} is not absolute")
    abs_root = os.path.abspath(root)
    abs_uri = os.path.abspath(uri)
    if abs_uri != abs_root and not abs_uri.startswith(abs_root.rstrip(os.sep) + os.sep):
        raise InputError(errors.UNSAFE_PATH, f"path {uri!r} is not under the source root {root!r}")

    try:
        resolved = os.path.realpath(abs_uri, strict=True)
    except OSError as exc:
        code = _read_code(exc)
        if code == errors.SYMLINK_LOOP:
            raise InputError(code, f"symlink loop while resolving {uri!r}") from None
        if code == errors.NOT_FOUND:
            raise InputError(code, f"{uri!r} no longer exists (listed, then gone)") from None
        raise InputError(code, f"cannot resolve {uri!r}: {exc.strerror or exc}") from None
    real_root = os.path.realpath(abs_root)
    if resolved != real_root and not resolved.startswith(real_root.rstrip(os.sep) + os.sep):
        raise InputError(errors.SYMLINK_OUTSIDE_ROOT,
                         f"{uri!r} resolves to {resolved!r}, outside the source root {real_root!r}")

    try:
        st = os.stat(resolved, follow_symlinks=False)
    except OSError as exc:
        raise InputError(_read_code(exc), f"cannot stat {uri!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(errors.NOT_A_REGULAR_FILE, f"{uri!r} is a {_kind(st.st_mode)}, not a regular file")
    if st.st_size == 0:
        raise InputError(errors.EMPTY_FILE, f"{uri!r} has 0 bytes")
    if st.st_size > max_bytes:
        raise InputError(errors.TOO_LARGE_FILE, f"{uri!r} has {st.st_size} bytes, above the limit of {max_bytes}")

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(resolved, flags)
    except OSError as exc:
        code = _read_code(exc)
        if code == errors.SYMLINK_LOOP:  # O_NOFOLLOW: replaced by a symlink after the checks
            raise InputError(errors.UNSAFE_PATH, f"{uri!r} became a symlink while being read") from None
        raise InputError(code, f"cannot open {uri!r}: {exc.strerror or exc}") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
            raise InputError(errors.NOT_A_REGULAR_FILE, f"{uri!r} was replaced while being read")
        os.set_blocking(fd, True)  # a regular file: blocking reads are fine and simpler
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(8 * 1024 * 1024, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise InputError(_read_code(exc), f"cannot read {uri!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if total == 0:
        raise InputError(errors.EMPTY_FILE, f"{uri!r} has 0 bytes")
    if total > max_bytes:
        raise InputError(errors.TOO_LARGE_FILE, f"{uri!r} has more than {max_bytes} bytes (grew while read)")
    return b"".join(chunks), float(fst.st_mtime)


# ------------------------------------------------------------------------------------------ S3


def _mtime_of(info: dict) -> float | None:
    value = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _read_s3(uri: str, root: str, max_bytes: int) -> tuple[bytes, float | None]:
    try:
        ensure_under(root.rstrip("/") + "/" if is_s3(root) else root, uri)
    except UnsafePathError as exc:
        raise InputError(errors.UNSAFE_PATH, str(exc)) from None
    if uri.rstrip("/") == root.rstrip("/") or uri.endswith("/"):
        raise InputError(errors.NOT_A_REGULAR_FILE, f"{uri!r} names a prefix, not an object")
    fs = filesystem(uri)
    path = uri[5:]
    try:
        info = with_retries(lambda: fs.info(path), uri)
    except Exception as exc:  # noqa: BLE001 - classified into a code
        raise InputError(_read_code(exc), f"cannot stat {uri!r}: {type(exc).__name__}: {exc}") from None
    if info.get("type") == "directory":
        raise InputError(errors.NOT_A_REGULAR_FILE, f"{uri!r} is a prefix (directory), not an object")
    size = int(info.get("size") or info.get("Size") or 0)
    if size == 0:
        raise InputError(errors.EMPTY_FILE, f"{uri!r} has 0 bytes")
    if size > max_bytes:
        raise InputError(errors.TOO_LARGE_FILE, f"{uri!r} has {size} bytes, above the limit of {max_bytes}")
    try:
        data = with_retries(lambda: fs.cat_file(path, start=0, end=max_bytes + 1), uri)
    except Exception as exc:  # noqa: BLE001 - classified into a code
        raise InputError(_read_code(exc), f"cannot read {uri!r}: {type(exc).__name__}: {exc}") from None
    if not data:
        raise InputError(errors.EMPTY_FILE, f"{uri!r} has 0 bytes")
    if len(data) > max_bytes:
        raise InputError(errors.TOO_LARGE_FILE, f"{uri!r} has more than {max_bytes} bytes")
    return bytes(data), _mtime_of(info)
