"""Listing image sources (a local folder or an s3:// prefix) in pages, in a stable order.

A listing is sorted lexicographically by URI so that a cursor ("everything after this key") can
page through a source of millions of files across sensor ticks without holding it in memory.
Symlinks are listed, never followed: the reader decides what they may point at.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from curation.storage import filesystem, is_s3, with_retries

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .webp .bmp .tif .tiff .ppm .pgm .pbm .pnm .ico .tga .heic .heif "
    ".avif .jp2 .j2k .svg .dds .psd".split()
)


@dataclass(frozen=True)
class SourceFile:
    uri: str  # absolute local path or s3://bucket/key
    rel_path: str  # relative to the source root, '/'-separated
    size: int
    mtime: float | None


def is_candidate(name: str, extensions: frozenset[str] | None = IMAGE_EXTENSIONS) -> bool:
    """Whether a file name is one the source should account for. Hidden files (dot-files) are
    skipped; with `extensions=None` every other file is a candidate."""
    base = name.rsplit("/", 1)[-1]
    if not base or base.startswith("."):
        return False
    if extensions is None:
        return True
    dot = base.rfind(".")
    return dot >= 0 and base[dot:].lower() in extensions


def _walk_local(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for every non-directory entry, in sorted order, without
    following symlinks (so a symlink loop cannot hang the walk)."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
        subdirs = []
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
            else:
                yield rel, st
        # depth-first in sorted order: push reversed so the smallest name is visited first
        stack.extend(reversed(subdirs))


def _sort_key(rel: str) -> tuple[str, ...]:
    return tuple(rel.split("/"))


def list_source(
    root: str,
    *,
    after: str = "",
    limit: int | None = None,
    extensions: frozenset[str] | None = IMAGE_EXTENSIONS,
) -> tuple[list[SourceFile], bool]:
    """List up to `limit` candidate files whose relative path sorts after `after`.

    Returns (files, exhausted) where `exhausted` is True when the listing reached the end of the
    source. Local order is a depth-first walk with sorted names (equal to sorting by path
    components); S3 order is the key order S3 returns (lexicographic). Directories named like
    images (`x.jpg/`) are not files and are not listed.
    """
    if is_s3(root):
        return _list_s3(root, after=after, limit=limit, extensions=extensions)
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source root {root!r} is not a directory")
    out: list[SourceFile] = []
    after_key = _sort_key(after) if after else None
    for rel, st in _walk_local(root):
        if after_key is not None and _sort_key(rel) <= after_key:
            continue
        if not is_candidate(rel, extensions):
            continue
        if limit is not None and len(out) >= limit:
            return out, False
        out.append(SourceFile(os.path.join(root, rel), rel, int(st.st_size), float(st.st_mtime)))
    return out, True


def _list_s3(root, *, after, limit, extensions):
    """Page through an S3 prefix with ListObjectsV2 (StartAfter + continuation tokens), 1,000 keys
    a request, stopping at `limit` so that one call stays bounded in time."""
    fs = filesystem(root)
    bucket_prefix = root[5:].rstrip("/")
    bucket, _, prefix = bucket_prefix.partition("/")
    prefix = prefix + "/" if prefix else ""
    out: list[SourceFile] = []

    async def _pages():
        await fs.set_session()
        client = fs.s3
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if after:
            kwargs["StartAfter"] = prefix + after
        token = None
        while True:
            if token:
                kwargs["ContinuationToken"] = token
            resp = await client.list_objects_v2(**kwargs)
            yield resp.get("Contents", [])
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    import asyncio

    from fsspec.asyn import sync

    async def collect():
        out.clear()  # a retried listing starts over
        async for page in _pages():
            for obj in page:
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                rel = key[len(prefix):]
                if not is_candidate(rel, extensions):
                    continue
                if limit is not None and len(out) >= limit:
                    return False
                mtime = obj.get("LastModified")
                out.append(
                    SourceFile(f"s3://{bucket}/{key}", rel, int(obj.get("Size", 0)),
                               mtime.timestamp() if mtime is not None else None)
                )
        return True

    del asyncio
    exhausted = with_retries(lambda: sync(fs.loop, collect), root)
    return out, exhausted
