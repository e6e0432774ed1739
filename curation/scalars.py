"""Typed reads of polars aggregates.

polars types `Series.max()` / `.min()` as any scalar a column can hold (numbers, dates, strings,
lists...). These helpers read the aggregate of a numeric column as a plain Python number with the
pipeline's conventions: `max_int` is 0 for an empty or all-null column, `min_float` is None.
A non-numeric column raises TypeError/ValueError from `int()`/`float()`, as before.
"""

from __future__ import annotations

from typing import SupportsFloat, SupportsInt, cast

import polars as pl


def max_int(series: pl.Series) -> int:
    """The largest value of a numeric Series as an int; 0 when it is empty or all null."""
    return int(cast(SupportsInt, series.max() or 0))


def min_float(series: pl.Series) -> float | None:
    """The smallest value of a numeric Series as a float; None when it is empty or all null."""
    value = series.min()
    return None if value is None else float(cast(SupportsFloat, value))
