"""How numbers and paths read on a report page and in its Markdown preview (plain strings).

`fmt` writes counts with thousands separators and floats with two decimals, `rate` a throughput,
`pct` a share (`n` of `d`), `basename` the last part of a path; a missing value reads "—".
"""

from __future__ import annotations


def fmt(n: int | float | None) -> str:
    if n is None:
        return "—"
    if isinstance(n, float):
        return f"{n:,.2f}"
    return f"{n:,}"


def rate(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}"


def pct(n: int | None, d: int | None) -> str:
    if n is None or not d:
        return "—"
    return f"{100 * n / d:.1f}%"


def basename(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]
