"""WebDataset tars for one shard: planned up front, written one at a time, resumable.

`plan_tars` cuts the ordered samples into tars of about `target_tar_bytes` (from the inventory's byte
counts plus tar overhead). `export_shard` writes each planned tar (streamed: one sample in memory at
a time, manifest rows flushed every `rows_per_group` samples), then a sidecar `<tar>.json` with the
keys it holds and the samples that could not be read, then, last, the errors file and the manifest.
On a rerun with the same plan (`_plan.json`: tar names, member ids, settings), a tar whose sidecar
exists is kept as it is and its manifest rows are rebuilt by reading it back; a changed plan clears
the shard's export first. Tar headers are fixed (mtime 0, uid/gid 0, mode 0444), so the same input
gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curation import storage
from curation.export.manifest import IMAGE_COLUMN, ManifestWriter, arrow_schema
from curation.export.samples import image_extension, sample_json
from curation.scalars import max_int
from curation.schema import DType

_TAR_BLOCK = 512
_JSON_ESTIMATE = 1024
_ERROR_SCHEMA = {"image_id": pl.String, "uri": pl.String, "error_code": pl.String, "error_message": pl.String}


@dataclass(frozen=True)
class ExportConfig:
    """Settings of the export stage.

    - target_tar_bytes: tar size to aim at (WebDataset readers do best with 100 MB - 1 GB shards).
    - include_embedding: add `<key>.npy` (float32) to each sample and an `embedding` manifest column.
    - manifest_images: put the image bytes in the manifest's `image` column (Hugging Face Image), so
      the manifest alone trains; False keeps the manifest to metadata (images only in the tars).
    - rows_per_group: manifest rows buffered before a row group is written (bounds memory).
    """

    target_tar_bytes: int = 256 * 1024 * 1024
    include_embedding: bool = False
    manifest_images: bool = True
    rows_per_group: int = 256

    def __post_init__(self) -> None:
        if self.target_tar_bytes < 64 * 1024:
            raise ValueError(f"export.target_tar_bytes={self.target_tar_bytes}: must be >= 65536 (64 KiB)")
        if self.rows_per_group < 1:
            raise ValueError(f"export.rows_per_group={self.rows_per_group}: must be >= 1")


@dataclass(frozen=True)
class TarPlan:
    name: str  # "<shard>-NNNNNN.tar"
    start: int  # first sample row (inclusive)
    end: int  # last sample row (exclusive)


@dataclass
class ExportResult:
    manifest_uri: str
    errors_uri: str
    tars: list[str]
    samples: int  # exported samples
    errors: pl.DataFrame
    reused_tars: int
    bytes_written: int
    plan: list[TarPlan] = field(default_factory=list)


def _padded(n: int) -> int:
    return _TAR_BLOCK + -(-n // _TAR_BLOCK) * _TAR_BLOCK


def estimated_sizes(samples: pl.DataFrame, cfg: ExportConfig) -> list[int]:
    """Bytes each sample will take in a tar (headers and padding included)."""
    dim = 0
    if cfg.include_embedding and "embedding" in samples.columns and len(samples):
        lens = samples["embedding"].list.len().drop_nulls()
        dim = max_int(lens) if len(lens) else 0
    npy = _padded(128 + 4 * dim) if cfg.include_embedding else 0
    sizes = samples["bytes"].fill_null(0).to_list() if "bytes" in samples.columns else [0] * len(samples)
    return [_padded(int(b)) + _padded(_JSON_ESTIMATE) + npy for b in sizes]


def plan_tars(shard: str, sizes: list[int], target: int) -> list[TarPlan]:
    """Greedy cut of samples (in order) into tars of at most `target` bytes; a sample larger than
    the target gets a tar of its own. No samples, no tars."""
    plan: list[TarPlan] = []
    start, acc = 0, 0
    for i, size in enumerate(sizes):
        if i > start and acc + size > target:
            plan.append(TarPlan(f"{shard}-{len(plan):06d}.tar", start, i))
            start, acc = i, 0
        acc += size
    if start < len(sizes):
        plan.append(TarPlan(f"{shard}-{len(plan):06d}.tar", start, len(sizes)))
    return plan


def _fingerprint(plan: list[TarPlan], samples: pl.DataFrame, cfg: ExportConfig) -> dict[str, Any]:
    ids = samples["image_id"].to_list()
    h = hashlib.sha256()
    for tp in plan:
        h.update(tp.name.encode())
        h.update("\x00".join(ids[tp.start:tp.end]).encode())
    sha = samples["sha256"].fill_null("").to_list() if "sha256" in samples.columns else []
    h.update("\x00".join(sha).encode())
    return {"tars": [asdict(tp) for tp in plan], "digest": h.hexdigest(), "settings": asdict(cfg)}


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _npy(vec: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(vec, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _read_sample(row: dict[str, Any], read_bytes: Callable[[str], bytes]) -> bytes | dict:
    """The image bytes, or the error row (a dict) when the source is gone or changed since the inventory."""
    try:
        data = read_bytes(row["uri"])
    except Exception as exc:  # noqa: BLE001 - recorded per sample, never fatal
        code = getattr(exc, "code", None) or ("not_found" if isinstance(exc, FileNotFoundError) else "read_error")
        return {"image_id": row["image_id"], "uri": row["uri"], "error_code": str(code),
                "error_message": f"{type(exc).__name__}: {exc}"}
    expected = row.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        return {"image_id": row["image_id"], "uri": row["uri"], "error_code": "changed_since_inventory",
                "error_message": f"sha256 differs from the inventory's {expected[:12]}...: the file changed "
                                 "after the shard was inventoried; re-run the shard"}
    return data


class _Rows:
    """Manifest rows of the tar being written, flushed to the manifest every `limit` rows."""

    def __init__(self, writer: ManifestWriter, schema: Mapping[str, DType], limit: int):
        self.writer, self.schema, self.limit = writer, schema, limit
        self.buf: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.buf.append(row)
        if len(self.buf) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.writer.write(pl.DataFrame(self.buf, schema=self.schema, strict=False))
            self.buf = []


def _manifest_row(row: dict[str, Any], tar: str, ext: str, data: bytes | None, cfg: ExportConfig) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "embedding" or cfg.include_embedding}
    out["key"] = row["image_id"]
    out["tar"] = tar
    if cfg.manifest_images:
        out[IMAGE_COLUMN] = {"bytes": data, "path": f"{row['image_id']}.{ext}"}
    return out


def _write_tar(rows: list[dict[str, Any]], tar_uri: str, tar_rel: str, read_bytes: Callable[[str], bytes],
               cfg: ExportConfig, sink: _Rows) -> tuple[list[str], list[dict], int]:
    """Stream `rows` into a tar at `tar_uri` (atomically); returns keys written, errors, bytes."""
    keys, errs = [], []
    fd, tmp = tempfile.mkstemp(suffix=".tar", prefix=".export-")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows:
                data = _read_sample(row, read_bytes)
                if isinstance(data, dict):
                    errs.append(data)
                    continue
                key, ext = row["image_id"], image_extension(row.get("format"), row["uri"])
                _tar_member(tar, f"{key}.{ext}", data)
                _tar_member(tar, f"{key}.json", json.dumps(sample_json(row), sort_keys=True).encode())
                if cfg.include_embedding and row.get("embedding") is not None:
                    _tar_member(tar, f"{key}.npy", _npy(row["embedding"]))
                keys.append(key)
                sink.add(_manifest_row(row, tar_rel, ext, data, cfg))
        size = os.path.getsize(tmp)
        storage.upload_file_atomic(tmp, tar_uri)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return keys, errs, size


def _iter_tar_images(tar_uri: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of each image member of an existing tar, streamed."""
    fs = storage.filesystem(tar_uri)
    path = tar_uri[5:] if storage.is_s3(tar_uri) else tar_uri
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext in ("json", "npy") or not member.isfile():
                continue
            fh = tar.extractfile(member)
            yield key, ext, fh.read() if fh else b""


def _reuse_tar(rows: list[dict[str, Any]], tar_uri: str, tar_rel: str, cfg: ExportConfig, sink: _Rows) -> list[str]:
    by_id = {r["image_id"]: r for r in rows}
    keys = []
    if cfg.manifest_images:
        for key, ext, data in _iter_tar_images(tar_uri):
            sink.add(_manifest_row(by_id[key], tar_rel, ext, data, cfg))
            keys.append(key)
        return keys
    sidecar = storage.read_json(tar_uri + ".json")
    for key in sidecar["keys"]:
        row = by_id[key]
        sink.add(_manifest_row(row, tar_rel, image_extension(row.get("format"), row["uri"]), None, cfg))
        keys.append(key)
    return keys


def _prepare(tar_dir: str, manifest_uri: str, errors_uri: str, fingerprint: dict[str, Any]) -> bool:
    """True when the shard's export is already complete for this plan; clears a stale one."""
    plan_uri = storage.join(tar_dir, "_plan.json")
    previous = storage.read_json(plan_uri) if storage.exists(plan_uri) else None
    if previous == fingerprint:
        return storage.exists(manifest_uri) and storage.exists(errors_uri)
    for uri in (tar_dir, manifest_uri, errors_uri):
        storage.delete(uri)
    storage.write_json(fingerprint, plan_uri)
    return False


def _manifest_template(samples: pl.DataFrame, cfg: ExportConfig) -> pl.DataFrame:
    cols = [c for c in samples.columns if c != "embedding" or cfg.include_embedding]
    t = samples.select(cols).head(0).with_columns(pl.lit(None, pl.String).alias("key"), pl.lit(None, pl.String).alias("tar"))
    if cfg.manifest_images:
        t = t.with_columns(pl.lit(None, pl.Struct({"bytes": pl.Binary, "path": pl.String})).alias(IMAGE_COLUMN))
    if cfg.include_embedding and "embedding" in t.columns:
        t = t.with_columns(pl.col("embedding").cast(pl.List(pl.Float32)))
    return t


def export_shard(samples: pl.DataFrame, root: str, shard: str, read_bytes: Callable[[str], bytes],
                 cfg: ExportConfig | None = None, progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Export the kept images of `shard` (the `build_samples` frame) under `root`; see the package doc."""
    cfg = cfg or ExportConfig()
    tar_dir = storage.join(root, "tars", shard)
    manifest_uri = storage.join(root, "manifests", f"{shard}.parquet")
    errors_uri = storage.join(root, "errors", f"{shard}.parquet")
    plan = plan_tars(shard, estimated_sizes(samples, cfg), cfg.target_tar_bytes)
    fingerprint = _fingerprint(plan, samples, cfg)
    tar_uris = [storage.join(tar_dir, tp.name) for tp in plan]
    if _prepare(tar_dir, manifest_uri, errors_uri, fingerprint):
        errors = storage.read_parquet(errors_uri)
        n = len(storage.read_parquet(manifest_uri, columns=["key"]))
        return ExportResult(manifest_uri, errors_uri, tar_uris, n, errors, len(plan), 0, plan)
    template = _manifest_template(samples, cfg)
    writer = ManifestWriter(manifest_uri, arrow_schema(template))
    sink = _Rows(writer, dict(template.schema), cfg.rows_per_group)
    all_errors: list[dict] = []
    reused = written = exported = 0
    try:
        for tp, tar_uri in zip(plan, tar_uris):
            rows = samples.slice(tp.start, tp.end - tp.start).to_dicts()
            tar_rel = f"tars/{shard}/{tp.name}"
            if storage.exists(tar_uri) and storage.exists(tar_uri + ".json"):
                keys = _reuse_tar(rows, tar_uri, tar_rel, cfg, sink)
                all_errors += storage.read_json(tar_uri + ".json")["errors"]
                reused += 1
            else:
                keys, errs, size = _write_tar(rows, tar_uri, tar_rel, read_bytes, cfg, sink)
                storage.write_json({"keys": keys, "errors": errs}, tar_uri + ".json")
                all_errors += errs
                written += size
            sink.flush()
            exported += len(keys)
            if progress:
                progress(tp.end, len(samples))
        errors = pl.DataFrame(all_errors, schema=_ERROR_SCHEMA)
        storage.write_parquet(errors, errors_uri)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ExportResult(manifest_uri, errors_uri, tar_uris, exported, errors, reused, written, plan)
