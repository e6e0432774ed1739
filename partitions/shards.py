"""Shards: the unit of partitioning. A shard is a fixed list of files (its manifest), registered once.

Shard keys look like `demo-000003`: the source name and a corpus-wide sequence number, so they sort
in registration order, and contain only `[a-z0-9_-]` (safe in the UI, in backfill selections and in
file names: no commas, pipes, brackets, spaces or `...`). The sequence number is global across
sources because cross-shard dedup compares a shard against every shard registered before it.

The registry lives beside the outputs (`<output_root>/registry/manifests/<key>.parquet`), so it is the
source of truth: Dagster's dynamic partitions are reconciled from it, never the other way round.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg
import polars as pl

from curation import storage
from curation.schema import MANIFEST_SCHEMA, conform
from curation.sources import SourceFile

SHARDS_NAME = "shards"
SHARDS = dg.DynamicPartitionsDefinition(name=SHARDS_NAME)

DEFAULT_SHARD_SIZE = 10_000
_KEY_RE = re.compile(r"^([a-z0-9][a-z0-9_]*)-(\d{6,})$")
_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,39}$")


def validate_source_name(name: str) -> str:
    if not _SOURCE_RE.match(name):
        raise ValueError(
            f"source name {name!r} must match {_SOURCE_RE.pattern} (lower-case letters, digits, '_'; "
            "it becomes part of every shard key)"
        )
    return name


def shard_key(source: str, seq: int) -> str:
    return f"{validate_source_name(source)}-{seq:06d}"


def parse_shard_key(key: str) -> tuple[str, int]:
    m = _KEY_RE.match(key)
    if not m:
        raise ValueError(f"not a shard key: {key!r} (expected '<source>-<6+ digit sequence>')")
    return m.group(1), int(m.group(2))


def shard_seq(key: str) -> int:
    return parse_shard_key(key)[1]


def image_id(uri: str) -> str:
    """Stable id of a file: 16 hex chars of sha1(uri)."""
    return hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def manifest_frame(files: Sequence[SourceFile]) -> pl.DataFrame:
    df = pl.DataFrame(
        {
            "image_id": [image_id(f.uri) for f in files],
            "uri": [f.uri for f in files],
            "rel_path": [f.rel_path for f in files],
            "listed_bytes": [f.size for f in files],
            "listed_mtime": [f.mtime for f in files],
        },
        schema=MANIFEST_SCHEMA,
    )
    return conform(df, MANIFEST_SCHEMA)


def chunk(files: Sequence[SourceFile], shard_size: int) -> list[list[SourceFile]]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [list(files[i : i + shard_size]) for i in range(0, len(files), shard_size)]


@dataclass(frozen=True)
class ShardInfo:
    key: str
    source: str
    seq: int
    n_files: int


class ShardRegistry:
    """The registered shards of one output root, and their manifests."""

    def __init__(self, output_root: str):
        self.output_root = output_root
        self.manifest_dir = storage.join(output_root, "registry", "manifests")
        self._id_cache: dict[str, frozenset[str]] = {}

    def manifest_uri(self, key: str) -> str:
        parse_shard_key(key)
        return storage.join(self.manifest_dir, f"{key}.parquet")

    def keys(self) -> list[str]:
        """Registered shard keys in registration (sequence) order."""
        keys = []
        for name in storage.list_dir(self.manifest_dir):
            if name.endswith(".parquet") and not name.startswith("."):
                try:
                    parse_shard_key(name[: -len(".parquet")])
                except ValueError:
                    continue
                keys.append(name[: -len(".parquet")])
        return sorted(keys, key=shard_seq)

    def manifest(self, key: str) -> pl.DataFrame:
        return storage.read_parquet(self.manifest_uri(key))

    def earlier_keys(self, key: str) -> list[str]:
        seq = shard_seq(key)
        return [k for k in self.keys() if shard_seq(k) < seq]

    def registered_ids(self, keys: Iterable[str] | None = None) -> set[str]:
        """Ids of every registered file (manifests are immutable, so they are cached per key)."""
        out: set[str] = set()
        for k in self.keys() if keys is None else keys:
            ids = self._id_cache.get(k)
            if ids is None:
                ids = frozenset(storage.read_parquet(self.manifest_uri(k), columns=["image_id"])["image_id"])
                self._id_cache[k] = ids
            out |= ids
        return out

    def register(self, source: str, files: Sequence[SourceFile], shard_size: int) -> list[ShardInfo]:
        """Register `files` (not yet in any shard) as new shards of at most `shard_size` files.

        A manifest is written once and never rewritten: a key that already exists is skipped and
        the next sequence number taken, so two registrations at once cannot overwrite each other
        on local disk (the manifest is created with O_EXCL semantics through os.link).
        """
        validate_source_name(source)
        registered: list[ShardInfo] = []
        existing = self.keys()
        next_seq = (shard_seq(existing[-1]) + 1) if existing else 1
        for group in chunk(files, shard_size):
            df = manifest_frame(group)
            while True:
                key = shard_key(source, next_seq)
                next_seq += 1
                if self._create_once(self.manifest_uri(key), df):
                    break
            registered.append(ShardInfo(key, source, shard_seq(key), len(group)))
        return registered

    def _create_once(self, uri: str, df: pl.DataFrame) -> bool:
        if storage.is_s3(uri):
            if storage.exists(uri):
                return False
            storage.write_parquet(df, uri)
            return True
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        tmp = uri + f".{os.getpid()}.tmp"
        df.write_parquet(tmp, compression="zstd")
        try:
            os.link(tmp, uri)  # fails if uri exists: create-once
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
