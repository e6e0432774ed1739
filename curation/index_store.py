"""Store of cross-shard indexes: one index file per shard plus binary block files, so that a shard
reads the indexes of every earlier shard as O(log N) files. Used by the hash pass (`dedup_index`)
and the semantic pass (`semantic_index`).

Layout. Shards are numbered by position 1, 2, 3, ... in registration order. Each shard writes its
own index (a block of size 1, `shard_uri(key)`). When shard p closes a block of size 2^k (p divisible
by 2^k), the store also writes that block as one file `<block_dir>/<first key>__<last key>.parquet`,
the concatenation of its two halves. Shard p then reads shards 1..p-1 as the Fenwick decomposition
of [1, p-1]: at most log2(p) + 1 files instead of p-1 (shard 500 reads 7 files instead of 499, which
matters for object stores).

Guarantees. Blocks hold exactly the rows of their shards' indexes (derived data): a missing or
corrupt block is rebuilt from its halves, and re-writing a shard's index drops every block that
contains it, so the rows read, and so the results, are the same whichever way they are grouped.
An earlier shard without an index raises `MissingEarlierIndexError` (callers retry later).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import polars as pl

from curation import storage


def earlier_blocks(position: int) -> list[tuple[int, int]]:
    """(start, end) blocks, 1-based inclusive, covering shards 1..position-1 exactly once."""
    if position < 1:
        raise ValueError("positions start at 1")
    out, end = [], position - 1
    while end > 0:
        size = end & -end  # the largest power of two dividing `end`
        out.append((end - size + 1, end))
        end -= size
    return out[::-1]


def closing_blocks(position: int) -> list[tuple[int, int, int]]:
    """Blocks of size >= 2 that shard `position` closes, smallest first, as (start, mid, end): the
    block [start, end] is the concatenation of [start, mid] and [mid + 1, end]."""
    out, size = [], 2
    while position % size == 0:
        start = position - size + 1
        out.append((start, start + size // 2 - 1, position))
        size *= 2
    return out


class MissingEarlierIndexError(LookupError):
    """Some shards before `shard` have no index yet (e.g. a parallel backfill has not reached them)."""

    def __init__(self, dataset: str, shard: str, missing: list[str]):
        self.dataset, self.shard, self.missing = dataset, shard, missing
        more = "..." if len(missing) > 10 else ""
        super().__init__(f"{shard} compares against every earlier shard, but {len(missing)} earlier shard(s) "
                         f"have no {dataset} yet: {missing[:10]}{more}")


def _read_parquet(uri: str) -> pl.DataFrame:
    return storage.read_parquet(uri)


@dataclass(frozen=True)
class IndexStore:
    """Per-shard index files of one dataset and their block files.

    dataset: the dataset's name (in messages). shard_uri: a shard key -> that shard's index file.
    block_dir: the folder of block files. read_shard: reads one shard's index file by key (the
    orchestration layer passes a reader that handles corrupt files); default: plain Parquet read."""

    dataset: str
    shard_uri: Callable[[str], str]
    block_dir: str
    read_shard: Callable[[str], pl.DataFrame] | None = field(default=None, compare=False)

    def block_uri(self, first: str, last: str) -> str:
        return storage.join(self.block_dir, f"{first}__{last}.parquet")

    def _read_one(self, key: str) -> pl.DataFrame:
        return self.read_shard(key) if self.read_shard is not None else _read_parquet(self.shard_uri(key))

    def _load(self, keys: Sequence[str], start: int, end: int, missing: list[str]) -> list[pl.DataFrame]:
        """Rows of shards start..end (1-based): one block file when it exists, else its two halves
        (recursively), rebuilding the block file from them. Shards without an index go to `missing`."""
        if start == end:
            key = keys[start - 1]
            if not storage.exists(self.shard_uri(key)):
                missing.append(key)
                return []
            return [self._read_one(key)]
        uri = self.block_uri(keys[start - 1], keys[end - 1])
        try:
            return [storage.read_parquet(uri)]
        except FileNotFoundError:
            pass
        except storage.CorruptOutputError:
            storage.delete(uri)  # derived data: rebuilt below from the shards' own indexes
        mid = start + (end - start + 1) // 2 - 1
        n_missing = len(missing)
        parts = self._load(keys, start, mid, missing) + self._load(keys, mid + 1, end, missing)
        if len(missing) == n_missing and parts:
            storage.write_parquet(pl.concat(parts, how="diagonal_relaxed"), uri)
        return parts

    def iter_earlier(self, keys: Sequence[str], shard: str) -> Iterator[pl.DataFrame]:
        """The index rows of every shard before `shard` (in `keys`, registration order), one block at a
        time (memory bounded by the largest block). Raises MissingEarlierIndexError, after reading the
        blocks, when an earlier shard has no index."""
        missing: list[str] = []
        for start, end in earlier_blocks(list(keys).index(shard) + 1):
            parts = self._load(keys, start, end, missing)
            if parts:
                yield parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
        if missing:
            raise MissingEarlierIndexError(self.dataset, shard, missing)

    def load_earlier(self, keys: Sequence[str], shard: str) -> pl.DataFrame | None:
        """All index rows of the shards before `shard` as one frame (None for the first shard)."""
        frames = list(self.iter_earlier(keys, shard))
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def write_blocks(self, keys: Sequence[str], shard: str, write: bool = True) -> list[str]:
        """After `shard` wrote its index: drop block files that contain it (they may hold an older
        version of its index) and write the blocks it closes (write=False: only drop; missing blocks
        are rebuilt when read). Returns the block files written."""
        keys = list(keys)
        position = keys.index(shard) + 1
        pos_of = {k: i + 1 for i, k in enumerate(keys)}
        for name in storage.list_dir(self.block_dir):
            first, sep, last = name.removesuffix(".parquet").partition("__")
            if sep and pos_of.get(first, 0) <= position <= pos_of.get(last, 0):
                storage.delete(storage.join(self.block_dir, name))
        written: list[str] = []
        for start, _mid, end in closing_blocks(position) if write else ():
            self._load(keys, start, end, [])
            written.append(self.block_uri(keys[start - 1], keys[end - 1]))
        return written
