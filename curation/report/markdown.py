"""A short Markdown block for Dagster metadata: stage counts, rejects, decode errors and a strip of
small inline thumbnails, each captioned kept or rejected and why (`markdown_preview`), with
`preview_thumbs` choosing and loading them.

The block stays under `max_chars` characters (thumbnails are dropped from the end until it fits);
image loading failures skip that image, never raise.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import polars as pl
from PIL import Image

from curation.report.formatting import basename, fmt, pct
from curation.report.spec import PREVIEW_PX, STAGES, ImageLoader
from curation.report.thumbnails import Thumb, Thumbnailer, open_image, to_rgb


def preview_thumbs(curated: pl.DataFrame, *, load_image: ImageLoader = open_image, n: int = 8,
                   size: int = PREVIEW_PX) -> list[Thumb]:
    """Up to `n` small thumbnails for `markdown_preview`: kept images and, when the shard has any,
    up to `n // 2` rejected ones (a deterministic spread over the shard, rejected first), each
    captioned `kept: <file>` or `rejected (<reasons>): <file>`. Images that fail to load are
    skipped, never raised."""
    has_reasons = "reasons" in curated.columns
    cols = ["image_id", "uri", "rel_path", "keep"] + (["reasons"] if has_reasons else [])
    rows = curated.select(cols).with_columns(pl.col("keep").fill_null(False),
                                             pl.col("image_id").hash(seed=11).alias("_h")).sort("_h")
    rejected = rows.filter(~pl.col("keep")).head(n // 2)
    ordered = pl.concat([rejected, rows.filter(pl.col("keep"))], how="vertical_relaxed")
    th = Thumbnailer(load_image, max_thumbs=n * 3, size=size)
    out: list[Thumb] = []
    for r in ordered.iter_rows(named=True):
        if len(out) >= n or th.remaining <= 0:
            break
        t = th.tile(r["image_id"], r["uri"], caption=_caption(r), title=r["rel_path"] or "")
        if t is not None and t.ok:
            out.append(t)
    return out


def _caption(row: dict[str, Any]) -> str:
    name = basename(row["rel_path"])
    if row["keep"]:
        return f"kept: {name}"
    reasons = ", ".join(row.get("reasons") or []) or "no reason recorded"
    return f"rejected ({reasons}): {name}"


def _thumb_table(cells: list[tuple[str, str]], per_row: int = 4) -> str:
    """Captioned thumbnails as Markdown tables: a row of images over a row of their captions."""
    blocks = []
    for i in range(0, len(cells), per_row):
        group = cells[i:i + per_row]
        blocks.append("| " + " | ".join(img for img, _ in group) + " |\n"
                      + "|" + "---|" * len(group) + "\n"
                      + "| " + " | ".join(cap.replace("|", "/") for _, cap in group) + " |")
    return "\n\n".join(blocks)


def markdown_preview(summary: dict[str, Any], thumbs: Sequence[Thumb | Image.Image], *, max_thumbs: int = 8,
                     size: int = PREVIEW_PX, max_chars: int = 16_000) -> str:
    """A short Markdown block for Dagster metadata: stage counts, rejects by reason (non-zero) and
    a strip of at most `max_thumbs` inline thumbnails (`size` px JPEG data URIs). Thumbnails are
    dropped from the end until the block is at most `max_chars` characters."""
    c = summary["counts"]
    listed = c.get("listed") or 0
    lines = ["| stage | images | of listed |", "|---|---:|---:|"]
    lines += [f"| {s} | {fmt(c.get(s))} | {pct(c.get(s), listed)} |" for s in STAGES]
    rej = {k: v for k, v in summary.get("rejects_by_reason", {}).items() if v}
    text = "\n".join(lines)
    if rej:
        text += "\n\n| reject reason | images |\n|---|---:|\n"
        text += "\n".join(f"| {k} | {fmt(v)} |" for k, v in rej.items())
    errs = summary.get("decode_errors") or {}
    if errs:
        text += "\n\n| decode error | files |\n|---|---:|\n"
        text += "\n".join(f"| {k} | {fmt(v)} |" for k, v in errs.items())
    imgs = []
    for t in list(thumbs)[: max(0, max_thumbs)]:
        img = t.image if isinstance(t, Thumb) else to_rgb(t)
        small = img.copy()
        small.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        to_rgb(small).save(buf, "JPEG", quality=70, optimize=True)
        imgs.append((f"![](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})",
                     t.caption if isinstance(t, Thumb) else ""))
    while imgs and len(text) + 2 + len(_strip(imgs)) > max_chars:
        imgs.pop()
    if imgs:
        text += "\n\n" + _strip(imgs)
    return text


def _strip(imgs: list[tuple[str, str]]) -> str:
    """Captioned thumbnails as tables; uncaptioned ones as one line of images."""
    if any(cap for _, cap in imgs):
        return _thumb_table(imgs)
    return " ".join(img for img, _ in imgs)
