"""The export's Parquet manifest: Hugging Face `datasets`-readable, written one row group per tar.

The manifest is written incrementally (`ManifestWriter`: one row group per tar, so memory holds one
tar's rows at a time) to a local temporary file and moved into place atomically when complete. Its
Arrow schema uses the plain (not "large") string/binary/list types and carries Hugging Face features
in the schema metadata (key `huggingface`), so the `image` column (a struct of `bytes` and `path`)
loads as `datasets.Image` (PIL images) and every other column as its plain type.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import polars as pl

from curation import storage

IMAGE_COLUMN = "image"


def _small(t: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_small(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _small(f.type)) for f in t])
    return t


def _hf_type(t: Any) -> dict[str, Any]:
    import pyarrow as pa

    if pa.types.is_list(t):
        return {"feature": _hf_type(t.value_type), "_type": "List"}
    if pa.types.is_struct(t):
        return {f.name: _hf_type(f.type) for f in t}
    names = {pa.string(): "string", pa.binary(): "binary", pa.bool_(): "bool", pa.float16(): "float16",
             pa.float32(): "float32", pa.float64(): "float64", pa.int8(): "int8", pa.int16(): "int16",
             pa.int32(): "int32", pa.int64(): "int64", pa.uint8(): "uint8", pa.uint16(): "uint16",
             pa.uint32(): "uint32", pa.uint64(): "uint64", pa.null(): "null"}
    return {"dtype": names.get(t, str(t)), "_type": "Value"}


def hf_features(schema: Any) -> dict[str, Any]:
    """Hugging Face `datasets` features (as its JSON) for an Arrow schema; `image` becomes an Image."""
    return {f.name: ({"_type": "Image"} if f.name == IMAGE_COLUMN else _hf_type(f.type)) for f in schema}


def arrow_schema(frame: pl.DataFrame) -> Any:
    """The manifest's Arrow schema for a frame of its rows (small types, HF features attached)."""
    import pyarrow as pa

    base = frame.head(0).to_arrow().schema
    schema = pa.schema([pa.field(f.name, _small(f.type)) for f in base])
    meta = {"huggingface": json.dumps({"info": {"features": hf_features(schema)}})}
    return schema.with_metadata(meta)


class ManifestWriter:
    """Writes manifest row groups to a local temporary file; `commit()` moves it to `uri` atomically."""

    def __init__(self, uri: str, schema: Any):
        import pyarrow.parquet as pq

        self.uri, self.schema, self.rows = uri, schema, 0
        fd, self._tmp = tempfile.mkstemp(suffix=".parquet", prefix=".manifest-")
        os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, frame: pl.DataFrame) -> None:
        if not len(frame):
            return
        table = frame.to_arrow().cast(self.schema)
        self._writer.write_table(table)
        self.rows += len(frame)

    def commit(self) -> None:
        self._writer.close()
        try:
            storage.upload_file_atomic(self._tmp, self.uri)
        finally:
            self.abort()

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


def write_manifest(frame: pl.DataFrame, uri: str) -> None:
    """Write a whole manifest at once (small shards, tests)."""
    writer = ManifestWriter(uri, arrow_schema(frame))
    try:
        writer.write(frame)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
