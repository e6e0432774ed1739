"""The typed stage settings (resources/stages.py) check what their library configs check: fields of
a library range table get their rules from that table, and every other rule accepts exactly what
the library accepts on probe values, except the rules the resource declares `resource_only`."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from curation.quality.config import _RANGES as QUALITY_RANGES
from resources.environment import SettingError
from resources.stages import STAGE_CONFIGS, QualitySettings, StageConfig, range_rule

# Library range tables and the settings that mirror them (add one when a library config gets a table).
LIBRARY_TABLES: list[tuple[type[StageConfig], dict[str, tuple[float, float]]]] = [(QualitySettings, QUALITY_RANGES)]
PROBES = (-1, 0, 0.5, 1, 1.5, 2, 3, 4, 5, 8, 31, 32, 63, 64, 100, 101, 255, 256, 65535, 65536, 1e9)


def library_defaults(cls: type[StageConfig]) -> dict[str, Any]:
    lib = cls.library()
    return {f.name: getattr(lib, f.name) for f in dataclasses.fields(cls.library)}


def library_error(cls: type[StageConfig], name: str, value: Any) -> str | None:
    try:
        cls.library(**{**library_defaults(cls), name: value})
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def resource_error(cls: type[StageConfig], name: str, value: Any) -> SettingError | None:
    try:
        cls(**{name: value})
    except SettingError as exc:
        return exc
    return None


def other_fields_named(cls: type[StageConfig], name: str, message: str) -> list[str]:
    """Fields other than `name` that a library message names (a rule across fields: the resource
    reports it for the section, with the library's message)."""
    return [f for f in cls.model_fields if f != name and re.search(rf"(?<!\w){f}(?!\w)", message)]


def outside(lo: float, hi: float, whole: bool) -> list[float]:
    """The nearest values outside [lo, hi] (a step of 1 for whole numbers)."""
    below = [lo - 1 if whole else math.nextafter(lo, -math.inf)] if not math.isinf(lo) else []
    above = [hi + 1 if whole else math.nextafter(hi, math.inf)] if not math.isinf(hi) else []
    return [*below, *above]


@pytest.mark.parametrize("cls, name", [(c, n) for c, table in LIBRARY_TABLES for n in table],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_a_table_field_has_the_librarys_range_and_the_same_one_line_error(cls, name):
    lo, hi = dict(LIBRARY_TABLES)[cls][name]
    assert name in cls.model_fields, f"{cls.__name__} does not mirror {cls.library.__name__}.{name}"
    whole = isinstance(library_defaults(cls)[name], int)
    cast = int if whole else float
    for v in (lo, hi):  # the bounds themselves are allowed by both
        if not math.isinf(v):
            assert library_error(cls, name, cast(v)) is None and resource_error(cls, name, cast(v)) is None, v
    for v in outside(lo, hi, whole):  # one step outside is refused by both, each naming the field
        lib = library_error(cls, name, cast(v))
        res = resource_error(cls, name, cast(v))
        assert lib is not None and name in lib and "\n" not in lib, (v, lib)
        assert res is not None and res.setting == f"{cls.section}.{name}", (v, res)
        bounds = f">= {lo:g}" if math.isinf(hi) else f"<= {hi:g}" if math.isinf(lo) else f"in [{lo:g}, {hi:g}]"
        assert str(res).startswith(f"{cls.section}.{name}={cast(v)!r}: ") and bounds in str(res), str(res)


@pytest.mark.parametrize("cls", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_every_rule_accepts_what_the_library_accepts(cls):
    defaults = library_defaults(cls)
    compared = 0
    for name in cls.rules:
        default = defaults[name]
        if name in cls.resource_only or isinstance(default, bool) or not isinstance(default, int | float | str):
            continue
        values = [default, "no_such_choice"] if isinstance(default, str) else sorted(
            {type(default)(v) for v in PROBES} | {default})
        for v in values:
            lib, res = library_error(cls, name, v), resource_error(cls, name, v)
            assert (lib is None) == (res is None), f"{cls.__name__}.{name}={v!r}: library {lib!r}, resource {res}"
            if lib is not None and not other_fields_named(cls, name, lib):  # refused for this field alone:
                assert res is not None and res.setting == f"{cls.section}.{name}", (v, str(res))  # by its rule
            compared += 1
    assert compared > 0 or not cls.rules


@pytest.mark.parametrize("cls", [c for c in STAGE_CONFIGS if c.resource_only], ids=lambda c: c.__name__)
def test_resource_only_rules_are_stricter_than_the_library(cls):
    """A rule declared resource-only refuses a value the library takes (else it mirrors a library
    rule and must be compared like the others), and is in no library table."""
    tables = {n for c, table in LIBRARY_TABLES if c is cls for n in table}
    for name in cls.resource_only:
        assert name in cls.rules and name not in tables, name
        default = library_defaults(cls)[name]
        values = ["no_such_choice"] if isinstance(default, str) else [type(default)(v) for v in PROBES]
        assert any(resource_error(cls, name, v) is not None and library_error(cls, name, v) is None
                   for v in values), name


def test_range_rule_wording():
    inf = float("inf")
    assert range_rule(0.0, 1.0)[1] == "a number in [0, 1]"
    assert range_rule(1, inf)[1] == "a whole number >= 1"
    assert range_rule(0, 100, "a JPEG quality")[1] == "a JPEG quality in [0, 100]"
    assert range_rule(1.0, inf, "a ratio {} (long side / short side)")[1] == "a ratio >= 1 (long side / short side)"
    ok, _ = range_rule(0.0, 1.0)
    assert ok(0.0) and ok(1.0) and not ok(1.0000001) and not ok(-1e-9)
