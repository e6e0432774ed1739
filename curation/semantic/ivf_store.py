"""The partitioned (IVF) cross-shard index of the semantic pass on storage: generations, their block
parts and the later shards' own parts (`curation.semantic.ivf` has the index itself).

Layout under ``root`` (``<output_root>/semantic_index_ivf``)::

    settings.json                          the corpus's index settings (`check_settings`)
    gen-<b>-<key of shard b>/quantizer.npz the quantizer of generation b (trained on shards 1..b)
    gen-<b>-<key of shard b>/block/        shards 1..b's representatives, sorted by list
    gen-<b>-<key of shard b>/tail/<shard>/ one later shard's representatives under that quantizer

Shard p (1-based position) queries generation b = `generation_end(p)`: its block and the tail parts
of shards b+1..p-1. Everything here is derived from the shards' ``semantic_index`` files (the
source of truth, read through ``read_index``): a missing block or tail part is rebuilt from them;
re-writing shard j's index drops every block that contains it (its quantizer is kept: any rows can
be filed under it) and rewrites its own tail part. Parts are local .npy files, memory-mapped; on an
object store they are uploaded after writing and downloaded whole into a local cache to be read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from curation import storage
from curation.index_store import MissingEarlierIndexError
from curation.semantic.config import SemanticDedupConfig
from curation.semantic.ivf import (
    IvfConfig,
    IvfPart,
    Quantizer,
    ShardRows,
    assign_part,
    build_generation,
    generation_end,
    generation_ends,
    load_part,
    load_quantizer,
    save_part,
)
from curation.semantic.lsh import pack_bits

__all__ = ["INDEX_METHODS", "IndexSettingsError", "IvfStore", "index_settings", "shard_rows"]

THUMB_BYTES = 192
INDEX_METHODS = ("ivf", "stream")  # the semantic pass's cross-shard search: partitioned index, or every row


class IndexSettingsError(ValueError):
    """A shard's index settings differ from those the corpus's earlier shards were indexed with."""


def index_settings(cfg: SemanticDedupConfig, icfg: IvfConfig | None, dim: int) -> dict:
    """The settings that fix the semantic index's format: the band keys, the vector encoding, the
    seed and the embedding dimension, plus the partitioned index's layout when it is used."""
    out: dict = {"search": {"band_bits": cfg.band_bits, "n_bands": cfg.n_bands, "index_vectors": cfg.index_vectors,
                            "proj_dim": cfg.proj_dim, "seed": cfg.seed, "dim": int(dim)}}
    if icfg is not None:
        out["ivf"] = icfg.format_settings()
    return out


def _utf8(col: pl.Series) -> np.ndarray:
    vals = [b"" if v is None else v.encode() for v in col.cast(pl.String).to_list()]
    return np.array(vals, dtype=f"S{max([1] + [len(v) for v in vals])}")


def shard_rows(frame: pl.DataFrame, cfg: SemanticDedupConfig) -> ShardRows:
    """The representatives of one shard's index frame (`index_schema`) as part rows: packed band
    keys, stored vectors and the payload a match needs (seq, cluster_id, rep_shard, thumb: zeros
    where unknown)."""
    usable = pl.col("is_representative") & pl.col("keys").is_not_null() & pl.col("vec").is_not_null()
    reps = frame.filter(usable.fill_null(False))
    n = reps.height
    keys = reps["keys"].to_numpy().astype(np.uint32, copy=False).reshape(n, cfg.n_bands)
    vec = reps["vec"].to_numpy() if n else np.empty((0, 1), np.int8)
    thumb = np.zeros((n, THUMB_BYTES), np.uint8)
    if "thumb" in reps.columns and n:
        for i, t in enumerate(reps["thumb"].cast(pl.Binary).to_list()):
            if t is not None and len(t) == THUMB_BYTES:
                thumb[i] = np.frombuffer(t, np.uint8)
    payload = {"seq": reps["shard_seq"].cast(pl.Int32).to_numpy(), "cluster_id": _utf8(reps["cluster_id"]),
               "rep_shard": _utf8(reps["rep_shard"]), "thumb": thumb}
    return pack_bits(keys, cfg.band_bits), vec, payload


@dataclass(frozen=True)
class IvfStore:
    """The partitioned index of one corpus. root: folder or s3:// prefix; read_index: a shard key ->
    that shard's index frame (raises FileNotFoundError when it has none); cache_dir: local folder
    for parts of an object-store root (default: a temporary folder)."""

    root: str
    read_index: Callable[[str], pl.DataFrame]
    cfg: SemanticDedupConfig
    icfg: IvfConfig
    cache_dir: str | None = None
    exists_index: Callable[[str], bool] | None = field(default=None, compare=False)

    # --- settings -------------------------------------------------------------------------------
    def check_settings(self, settings: dict) -> dict:
        """Record the corpus's index settings on first use; raise IndexSettingsError when `settings`
        differ from the recorded ones (a sub-section not recorded yet, e.g. "ivf" after shards
        indexed with index="stream", is added). Returns the recorded settings."""
        uri = storage.join(self.root, "settings.json")
        recorded = storage.read_json(uri) if storage.exists(uri) else {}
        changed = False
        for section, values in settings.items():
            if section not in recorded:
                recorded[section], changed = values, True
                continue
            diff = {k: (recorded[section].get(k), v) for k, v in values.items() if recorded[section].get(k) != v}
            if diff:
                shown = ", ".join(f"{k}: corpus {a!r}, this run {b!r}" for k, (a, b) in sorted(diff.items()))
                raise IndexSettingsError(
                    f"semantic index settings differ from the corpus's ({section}: {shown}); use the corpus's "
                    f"settings, or re-materialise every shard after deleting {uri}")
        if changed:
            storage.write_json(recorded, uri)
        return recorded

    # --- layout ---------------------------------------------------------------------------------
    def _gen(self, keys: Sequence[str], b: int) -> str:
        return storage.join(self.root, f"gen-{b:06d}-{keys[b - 1]}")

    def _local(self, uri: str) -> str:
        if not storage.is_s3(uri):
            return uri
        base = self.cache_dir or os.path.join(tempfile.gettempdir(), "curation-semantic-ivf")
        return os.path.join(base, uri.split("://", 1)[1])

    def _publish(self, local: str, uri: str) -> None:
        """Upload a local folder's files to `uri` (object stores only; local roots are written in place)."""
        if not storage.is_s3(uri):
            return
        for dirpath, _dirs, files in os.walk(local):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), local)
                storage.upload_file_atomic(os.path.join(dirpath, f), storage.join(uri, *rel.split(os.sep)))

    def _fetch(self, uri: str) -> str | None:
        """A local copy of the folder `uri` (downloaded from an object store); None when missing."""
        local = self._local(uri)
        if not storage.is_s3(uri):
            return local if os.path.isdir(local) else None
        names = storage.list_dir(uri)
        if not names:
            return None
        os.makedirs(local, exist_ok=True)
        for name in names:
            sub = storage.join(uri, name)
            if name.endswith((".npy", ".npz")):
                if not os.path.exists(os.path.join(local, name)):
                    storage.write_bytes_atomic(os.path.join(local, name), storage.read_bytes(sub))
            else:
                self._fetch(sub)
        return local

    def _load_part(self, uri: str) -> IvfPart | None:
        local = self._fetch(uri)
        if local is None:
            return None
        try:
            return load_part(local)
        except (FileNotFoundError, ValueError, OSError):  # partly written or corrupt: derived data, rebuilt
            shutil.rmtree(local, ignore_errors=True)
            if storage.is_s3(uri):
                storage.delete(uri)
            return None

    def _frames(self, keys: Sequence[str], first: int, last: int, missing: list[str]) -> Iterator[ShardRows]:
        for pos in range(first, last + 1):
            key = keys[pos - 1]
            try:
                frame = self.read_index(key)
            except FileNotFoundError:
                missing.append(key)
                continue
            yield shard_rows(frame, self.cfg)

    # --- generations ----------------------------------------------------------------------------
    def generation(self, keys: Sequence[str], b: int) -> tuple[Quantizer, IvfPart]:
        """Generation b's quantizer and block part (shards 1..b), built when missing (then the blocks
        of older generations, superseded copies of the same rows, are dropped: disk holds one block
        plus the later shards' parts). Raises MissingEarlierIndexError when one of those shards has
        no index."""
        gen = self._gen(keys, b)
        qlocal = self._fetch(gen)
        quant = None
        if qlocal is not None and os.path.exists(os.path.join(qlocal, "quantizer.npz")):
            quant = load_quantizer(os.path.join(qlocal, "quantizer.npz"))
            block = self._load_part(storage.join(gen, "block"))
            if block is not None:
                return quant, block
        missing: list[str] = []
        local = self._local(gen)
        if quant is None:  # a new quantizer: parts filed under an older one (if any) are void
            storage.delete(storage.join(gen, "tail"))
            shutil.rmtree(os.path.join(local, "tail"), ignore_errors=True)
        quant, block = build_generation(lambda: self._frames(keys, 1, b, missing), local, self.cfg, self.icfg, quant)
        if missing:
            shutil.rmtree(os.path.join(local, "block"), ignore_errors=True)
            raise MissingEarlierIndexError("semantic_index", keys[b], sorted(set(missing)))
        if storage.is_s3(gen):
            self._publish(os.path.join(local, "block"), storage.join(gen, "block"))
            storage.upload_file_atomic(os.path.join(local, "quantizer.npz"), storage.join(gen, "quantizer.npz"))
        for older in [e for e in generation_ends(self.icfg.growth, b) if e < b]:  # superseded copies of the rows
            self._drop_block(keys, older)
        return quant, block

    def _drop_block(self, keys: Sequence[str], b: int) -> None:
        gen = self._gen(keys, b)
        storage.delete(storage.join(gen, "block"))
        shutil.rmtree(os.path.join(self._local(gen), "block"), ignore_errors=True)

    def _tail(self, keys: Sequence[str], b: int, pos: int, quant: Quantizer, missing: list[str]) -> IvfPart | None:
        uri = storage.join(self._gen(keys, b), "tail", keys[pos - 1])
        part = self._load_part(uri)
        if part is not None:
            return part
        rows = list(self._frames(keys, pos, pos, missing))
        if not rows:
            return None
        part = assign_part(rows[0], quant, self.cfg, self.icfg)
        save_part(part, self._local(uri))
        self._publish(self._local(uri), uri)
        return load_part(self._local(uri))

    def earlier(self, keys: Sequence[str], shard: str) -> tuple[Quantizer, list[IvfPart], int] | None:
        """(quantizer, parts, generation end b) that shard `shard` queries: generation b's block and
        the tail parts of shards b+1..p-1 (built when missing); None for the first shard. Raises
        MissingEarlierIndexError when an earlier shard has no index."""
        keys = list(keys)
        p = keys.index(shard) + 1
        b = generation_end(p, self.icfg.growth)
        if b == 0:
            return None
        quant, block = self.generation(keys, b)
        missing: list[str] = []
        parts = [block] + [t for t in (self._tail(keys, b, j, quant, missing) for j in range(b + 1, p)) if t is not None]
        if missing:
            raise MissingEarlierIndexError("semantic_index", shard, missing)
        return quant, parts, b

    def invalidate(self, keys: Sequence[str], shard: str) -> None:
        """Drop what may hold an older version of `shard`'s index: the generation blocks that contain
        it and its tail part (the quantizers stay)."""
        keys = list(keys)
        p = keys.index(shard) + 1
        ends = generation_ends(self.icfg.growth, len(keys))
        for b in [b for b in ends if p <= b <= len(keys)]:
            self._drop_block(keys, b)
        b = generation_end(p, self.icfg.growth)
        if b:
            uri = storage.join(self._gen(keys, b), "tail", shard)
            storage.delete(uri)
            shutil.rmtree(self._local(uri), ignore_errors=True)

    def add_shard(self, keys: Sequence[str], shard: str, index: pl.DataFrame,
                  quant: Quantizer | None = None) -> list[str]:
        """After `shard` wrote its index: drop the generation blocks that contain it (they may hold an
        older version) and the tail parts of it, then write its tail part under the generation it
        queried (none when it ends a generation: the next generation's block will hold it).
        `quant`: that generation's quantizer when already loaded. Returns the folders written."""
        keys = list(keys)
        p = keys.index(shard) + 1
        self.invalidate(keys, shard)
        b = generation_end(p, self.icfg.growth)
        if b == 0 or p in generation_ends(self.icfg.growth, p):
            return []
        uri = storage.join(self._gen(keys, b), "tail", shard)
        if quant is None:
            quant, _block = self.generation(keys, b)
        save_part(assign_part(shard_rows(index, self.cfg), quant, self.cfg, self.icfg), self._local(uri))
        self._publish(self._local(uri), uri)
        return [uri]
