"""Binary-block layout of per-shard indexes, so a shard reads O(log N) files of earlier indexes.

Shards are numbered by position 1, 2, 3, ... in registration order. Each shard writes its own index
(a block of size 1). When shard p closes a block of size 2^k (p divisible by 2^k), it also writes
that block as one file, the concatenation of its two halves. Shard p then reads the indexes of
shards 1..p-1 as the Fenwick decomposition of [1, p-1]: at most log2(p) + 1 block files instead of
p-1 shard files (shard 500 reads 7 files instead of 499, which matters for object stores). Blocks hold
exactly the rows of their shards' indexes, so the rows read, and so the result, are the same
whichever way they are grouped.
"""

from __future__ import annotations


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
