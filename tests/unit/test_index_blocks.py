from __future__ import annotations

import pytest

from curation.index_store import closing_blocks, earlier_blocks


def test_earlier_blocks_cover_every_earlier_shard_once_with_few_files():
    written: set[tuple[int, int]] = set()
    for p in range(1, 600):
        blocks = earlier_blocks(p)
        covered = [i for s, e in blocks for i in range(s, e + 1)]
        assert covered == list(range(1, p)), p
        assert len(blocks) <= max(1, (p - 1).bit_length()), p
        # every block read was written before: size 1 by its shard, larger ones by the shard that closed them
        assert set(blocks) <= written, p
        written |= {(p, p)} | {(s, e) for s, _, e in closing_blocks(p)}
    assert len(earlier_blocks(500)) == 7  # 499 = 256 + 128 + 64 + 32 + 16 + 2 + 1: 7 files, not 499


def test_closing_blocks_are_built_from_existing_halves():
    assert closing_blocks(1) == [] and closing_blocks(3) == []
    assert closing_blocks(4) == [(3, 3, 4), (1, 2, 4)]
    assert closing_blocks(8) == [(7, 7, 8), (5, 6, 8), (1, 4, 8)]
    with pytest.raises(ValueError):
        earlier_blocks(0)
