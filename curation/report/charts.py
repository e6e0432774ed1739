"""Charts of a report as PNG data URIs, drawn with matplotlib's Agg canvas (no pyplot state).

`bar_chart` draws a horizontal bar chart (one bar per label, value printed beside it);
`scatter` draws the embedding map (points coloured by their `colour` column: the 11 largest
groups in the palette, the rest grey as "other"). matplotlib is imported on first use.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#17becf", "#bcbd22", "#7f7f7f")


def _png_data_uri(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bar_chart(labels: Sequence[str], values: Sequence[float], *, xlabel: str, colour: str = "#4e79a7",
              fmt: str = "{:,.0f}") -> str:
    from matplotlib.figure import Figure

    n = max(1, len(labels))
    fig = Figure(figsize=(6.4, 0.32 * n + 0.9))
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(len(labels))
    bars = ax.barh(ypos, values, color=colour, height=0.66)
    ax.set_yticks(ypos, labels=[str(label) for label in labels], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    vmax = max([float(v) for v in values] + [1e-9])
    ax.set_xlim(0, vmax * 1.18)
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_width() + vmax * 0.01, bar.get_y() + bar.get_height() / 2, fmt.format(v),
                va="center", fontsize=8, color="#333")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    return _png_data_uri(fig)


def scatter(points: pl.DataFrame, colour_title: str, explained: Sequence[float] | None) -> str:
    from matplotlib.figure import Figure

    order = points.group_by("colour").len().sort(["len", "colour"], descending=[True, False])["colour"].to_list()
    top = order[: len(PALETTE) - 1]
    fig = Figure(figsize=(8.0, 5.6))
    ax = fig.add_subplot(1, 1, 1)
    size = 10 if points.height > 1500 else 18
    other = points.filter(~pl.col("colour").is_in(top))
    if other.height:
        ax.scatter(other["x"].to_numpy(), other["y"].to_numpy(), s=size, c="#bbbbbb", alpha=0.6,
                   linewidths=0, label=f"other ({other.height})")
    for i, name in enumerate(top):
        sub = points.filter(pl.col("colour") == name)
        ax.scatter(sub["x"].to_numpy(), sub["y"].to_numpy(), s=size, c=PALETTE[i], alpha=0.75, linewidths=0,
                   label=f"{name} ({sub.height})")
    ev = explained or [0.0, 0.0]
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)", fontsize=9)
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)", fontsize=9)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(title=colour_title, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, markerscale=1.6)
    return _png_data_uri(fig)
