"""Listing image sources (a local folder or an s3:// prefix) in pages, in a stable order.

A listing is sorted lexicographically by URI so that a cursor ("everything after this key") can
page through a source of millions of files across sensor ticks without holding it in memory.
Symlinks are listed, never followed: the reader decides what they may point at.

What is listed (every listed file gets one raw_inventory row):
  * By default EVERY regular file, whatever its name or extension: the stage identifies images by
    their content (the decoder reads the signature), so an extension-less or misnamed PNG/JPEG is
    analysed and anything else gets a row with `not_an_image` (and a description: text, HTML,
    SVG, ...). Nothing is dropped for its name.
  * `ListingRules` (documented glob patterns, `fnmatch` on the '/'-separated relative path and
    on the base name): `include` (default `*`: everything), `exclude` (default none), and
    `hidden` (default False): files whose name starts with '.' and dot-folders (`.git/`,
    `.thumbnails/`, `._x.jpg` AppleDouble forks, `.DS_Store`) are excluded unless `hidden=True`.
    `extensions` (optional) restricts to names with those extensions (the pre-sniffing
    behaviour, kept for callers that want it).
  * Nothing is excluded silently: pass `skipped=ListingSkips()` and it counts every excluded
    entry by reason (`hidden_file`, `hidden_dir`, `excluded_pattern`, `not_included`,
    `extension`, `unreadable_dir`, `not_regular`) with a few example paths. A hidden folder
    counts once (its content is not walked).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class ListingRules:
    """Which files of a source are listed (see the module docstring). Patterns are globs."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    hidden: bool = False
    extensions: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
                raise ValueError(f"ListingRules.{name} must be a tuple of non-empty glob patterns, got {value!r}")


@dataclass
class ListingSkips:
    """Counts of excluded entries by reason, with up to `max_examples` example paths each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, rel: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(rel)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def skip_reason(rel: str, rules: ListingRules) -> str | None:
    """Why the file at `rel` ('/'-separated) is not listed under `rules`, or None if it is."""
    parts = rel.split("/")
    if not rules.hidden:
        if any(p.startswith(".") for p in parts[:-1]):
            return "hidden_dir"
        if parts[-1].startswith("."):
            return "hidden_file"
    if not parts[-1]:
        return "not_regular"
    if rules.extensions is not None:
        dot = parts[-1].rfind(".")
        if dot < 0 or parts[-1][dot:].lower() not in rules.extensions:
            return "extension"
    if rules.exclude and _matches(rel, rules.exclude):
        return "excluded_pattern"
    if rules.include != ("*",) and not _matches(rel, rules.include):
        return "not_included"
    return None


def is_candidate(name: str, extensions: frozenset[str] | None = None, rules: ListingRules | None = None) -> bool:
    """Whether a file (relative path) is listed: `rules` (default `ListingRules()`: every
    non-hidden file), optionally restricted to `extensions`."""
    rules = rules or ListingRules()
    if extensions is not None:
        rules = ListingRules(rules.include, rules.exclude, rules.hidden, extensions)
    return skip_reason(name, rules) is None


def _rules(extensions: frozenset[str] | None, rules: ListingRules | None) -> ListingRules:
    rules = rules or ListingRules()
    if extensions is not None:
        return ListingRules(rules.include, rules.exclude, rules.hidden, extensions)
    return rules


def _walk_local(root: str, rules: ListingRules | None = None, skipped: ListingSkips | None = None,
                after_key: tuple[str, ...] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for every non-directory entry in the order of `_sort_key`
    (a folder's content where the folder's name sorts, so that an `after` cursor never skips a
    file), without following symlinks (a symlink loop cannot hang the walk). Hidden folders are
    not entered unless `rules.hidden` (counted once in `skipped`). Folders that sort entirely
    before `after_key` are not entered at all."""

    def count(reason: str, rel: str) -> None:
        if skipped is not None and (after_key is None or _sort_key(rel) > after_key):
            skipped.add(reason, rel + "/")

    def entries(rel_dir: str) -> Iterator[tuple[str, os.DirEntry]]:
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(abs_dir) as it:
                listed = sorted(it, key=lambda e: e.name)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            if rel_dir:
                count("unreadable_dir", rel_dir)
            return iter(())
        return iter([(f"{rel_dir}/{e.name}" if rel_dir else e.name, e) for e in listed])

    stack = [entries("")]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        rel, e = nxt
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield rel, st
            continue
        if rules is not None and not rules.hidden and e.name.startswith("."):
            count("hidden_dir", rel)
            continue
        key = _sort_key(rel)
        if after_key is not None and key < after_key[:len(key)]:
            continue  # everything inside sorts before the cursor
        stack.append(entries(rel))


def _sort_key(rel: str) -> tuple[str, ...]:
    return tuple(rel.split("/"))


def list_source(
    root: str,
    *,
    after: str = "",
    limit: int | None = None,
    extensions: frozenset[str] | None = None,
    rules: ListingRules | None = None,
    skipped: ListingSkips | None = None,
) -> tuple[list[SourceFile], bool]:
    """List up to `limit` files whose relative path sorts after `after`: every regular file the
    `rules` keep (default: all but hidden ones), optionally only names with `extensions`.
    Excluded entries are counted in `skipped` when given (see the module docstring).

    Returns (files, exhausted) where `exhausted` is True when the listing reached the end of the
    source. Local order is a depth-first walk with sorted names (equal to sorting by path
    components); S3 order is the key order S3 returns (lexicographic). Directories named like
    images (`x.jpg/`) are not files and are not listed.
    """
    rules = _rules(extensions, rules)
    if is_s3(root):
        return _list_s3(root, after=after, limit=limit, rules=rules, skipped=skipped)
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source root {root!r} is not a directory")
    out: list[SourceFile] = []
    after_key = _sort_key(after) if after else None
    for rel, st in _walk_local(root, rules, skipped, after_key):
        if after_key is not None and _sort_key(rel) <= after_key:
            continue
        reason = skip_reason(rel, rules) if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else "not_regular"
        if reason is not None:
            if skipped is not None:
                skipped.add(reason, rel)
            continue
        if limit is not None and len(out) >= limit:
            return out, False
        out.append(SourceFile(os.path.join(root, rel), rel, int(st.st_size), float(st.st_mtime)))
    return out, True


def _list_s3(root, *, after, limit, rules, skipped):
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

    attempt = ListingSkips()

    async def collect():
        out.clear()  # a retried listing starts over
        attempt.counts.clear()
        attempt.examples.clear()
        async for page in _pages():
            for obj in page:
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                rel = key[len(prefix):]
                reason = skip_reason(rel, rules)
                if reason is not None:
                    attempt.add(reason, rel)
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
    if skipped is not None:
        for reason, n in attempt.counts.items():
            skipped.counts[reason] = skipped.counts.get(reason, 0) + n
            room = skipped.max_examples - len(skipped.examples.setdefault(reason, []))
            skipped.examples[reason].extend(attempt.examples.get(reason, [])[:max(0, room)])
    return out, exhausted
