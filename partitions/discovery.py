"""Finding files that are in no shard yet, a page at a time, and cutting them into shards.

Used by the sensor (one page per source per tick, so a tick over a source of millions of files
stays inside Dagster's sensor time limit) and by the CLI (pages until the source is exhausted).

Cursor per source: {"after": <last relative path consumed>, "passes": <completed full passes>}.
A tick lists up to `page_size` files after `after`, keeps those not yet registered, registers every
FULL shard among them and, when the listing is exhausted, the final partial shard too. Files of a
trailing partial shard are left for the next tick (the cursor stops just before them), unless no
full shard was cut at all, in which case they are registered anyway so that sparse new files can
never stall the sensor. When a pass reaches the end of the source, the next tick starts a new pass
from the beginning, so files added anywhere in the listing order are found on the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from curation.sources import ListingSkips, SourceFile, list_source
from partitions.shards import ShardInfo, ShardRegistry, image_id


@dataclass
class SourceCursor:
    after: str = ""
    passes: int = 0

    def to_json(self) -> dict:
        return {"after": self.after, "passes": self.passes}

    @classmethod
    def from_json(cls, d: dict | None) -> SourceCursor:
        d = d or {}
        return cls(after=str(d.get("after", "")), passes=int(d.get("passes", 0)))


@dataclass
class TickResult:
    shards: list[ShardInfo] = field(default_factory=list)
    cursor: SourceCursor = field(default_factory=SourceCursor)
    listed: int = 0
    new_files: int = 0
    exhausted: bool = False
    skipped: ListingSkips = field(default_factory=ListingSkips)  # excluded entries (hidden, patterns), by reason

    def skipped_note(self) -> str:
        """'excluded 3 (hidden: 2, e.g. .DS_Store; exclude pattern: 1, ...)' or '' when nothing was."""
        if not self.skipped.total:
            return ""
        parts = [f"{reason}: {n}, e.g. {', '.join(self.skipped.examples.get(reason, [])[:2])}"
                 for reason, n in sorted(self.skipped.counts.items())]
        return f"excluded {self.skipped.total} ({'; '.join(parts)})"


def discover_page(
    registry: ShardRegistry,
    source_name: str,
    source_uri: str,
    cursor: SourceCursor,
    *,
    shard_size: int,
    page_size: int,
    skipped: ListingSkips | None = None,
) -> TickResult:
    skipped = skipped if skipped is not None else ListingSkips()
    files, exhausted = list_source(source_uri, after=cursor.after, limit=page_size, skipped=skipped)
    known = registry.registered_ids()
    new: list[SourceFile] = [f for f in files if image_id(f.uri) not in known]
    n_full = len(new) // shard_size
    if exhausted or n_full == 0:
        take = new
    else:
        take = new[: n_full * shard_size]
    shards = registry.register(source_name, take, shard_size) if take else []
    if exhausted:
        next_cursor = SourceCursor(after="", passes=cursor.passes + 1)
    elif len(take) < len(new):
        # stop just before the first file left for the next tick
        first_left = new[len(take)]
        idx = files.index(first_left)
        next_cursor = SourceCursor(after=files[idx - 1].rel_path if idx > 0 else cursor.after, passes=cursor.passes)
    else:
        next_cursor = SourceCursor(after=files[-1].rel_path if files else cursor.after, passes=cursor.passes)
    return TickResult(shards, next_cursor, len(files), len(new), exhausted, skipped)


def discover_all(
    registry: ShardRegistry, source_name: str, source_uri: str, *, shard_size: int, page_size: int = 100_000,
    skipped: ListingSkips | None = None,
) -> list[ShardInfo]:
    """Register every file of the source that is in no shard yet (one full pass); entries the
    listing rules exclude are counted in `skipped` when given."""
    cursor = SourceCursor()
    out: list[ShardInfo] = []
    while True:
        res = discover_page(registry, source_name, source_uri, cursor, shard_size=shard_size, page_size=page_size,
                            skipped=skipped)
        out.extend(res.shards)
        if res.exhausted:
            return out
        cursor = res.cursor
